// Whole-model invariants on configurations the golden data does not cover.
#include "runtime/model/model.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <numeric>
#include <random>
#include <string>
#include <vector>

#include "base/status.h"
#include "runtime/builtin.h"
#include "runtime/tokenizer/tokenizer.h"
#include "tests/runtime/test_backends.h"
#include "tests/testutil.h"

namespace dsv4 {

// The model's private layers, for tests that run one of them alone.
class ModelTestPeer {
 public:
  // `tokens` on the host, uploaded as the step's tables would hold them.
  static absl::Status MoE(const Model& m, int64_t layer, const float* x, int64_t n, std::span<const int32_t> tokens,
                          float* out) {
    const WorkspaceScope scope(m.backend());
    DeviceScratch<int32_t> ids(m.backend(), n);
    m.backend().CopyToDevice(ids.data(), tokens.data(), ids.bytes());
    return m.MoE(layer, x, n, ids.data(), out);
  }
  static absl::Status HeadBatch(const Model& m, const float* const* x_last, const float* const* pre_last, int64_t count,
                                float* logits) {
    return m.HeadBatch(x_last, pre_last, count, logits);
  }
  // Every layer's attention over the next n tokens of one sequence, set up as ForwardBatch does:
  // layer l reads x + l * n * D and writes out + l * n * D.
  static absl::Status AttentionChunk(const Model& m, SequenceCache& cache, const float* x, int64_t n, float* out) {
    const ModelConfig& c = m.config();
    const int64_t D = c.hidden_size, cand = c.candidate_source_layer_id;
    DSV4_RETURN_IF_ERROR(m.PrepareBlocks(cache, n));
    const WorkspaceScope step(m.backend());
    const int64_t blocks =
        cand < 0 ? 0 : kernels::CandidateBlockCount((cache.length + n) / c.ratio(cand), c.candidate_block_size);
    // The picks and the candidates stay in the backend's memory.
    DeviceScratch<int32_t> picks(m.backend(), n * c.index_topk);
    DeviceScratch<uint8_t> candidates(m.backend(), std::max<int64_t>(n * blocks, 1));
    StepPicks sp{0, picks.data(), 0, candidates.data(), n * blocks};
    SeqSlice s{0, n, cache.length, &cache, &sp};
    const std::vector<int32_t> tokens(n, 0);  // attention reads no token ids
    const StepTables tables(m, tokens, {&s, 1});
    for (int64_t l = 0; l < c.num_hidden_layers; ++l)
      DSV4_RETURN_IF_ERROR(m.Attention(l, x + l * n * D, n, {&s, 1}, tables.views(), out + l * n * D));
    cache.length += n;
    return absl::OkStatus();
  }
};

namespace {

using testing::CountingBackend;
using testing::GuardedBackend;
using testing::SmallConfig;

std::unique_ptr<Model> MakeModel(const nlohmann::json& config, bool qdq, uint64_t seed = 1) {
  return testing::MakeTestModel(config, qdq, seed);
}

std::vector<int32_t> Tokens(int64_t n, int64_t vocab, uint32_t seed = 9) {
  std::vector<int32_t> t(n);
  for (int64_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>((seed * 2654435761u + i * 40503u) % vocab);
  return t;
}

// Logits after running `tokens` in chunks of the given sizes.
std::vector<float> RunChunks(const Model& m, const std::vector<int32_t>& tokens, const std::vector<int64_t>& chunks) {
  SequenceCache cache = m.NewCache();
  std::vector<float> logits(m.config().vocab_size);
  int64_t at = 0;
  for (int64_t c : chunks) {
    EXPECT_TRUE(m.Forward(std::span<const int32_t>(tokens.data() + at, c), cache, logits.data()).ok());
    at += c;
  }
  EXPECT_EQ(at, static_cast<int64_t>(tokens.size()));
  EXPECT_EQ(cache.length, at);
  return logits;
}

// Prefill of T+1 tokens and prefill of T then one decode step compute the same positions with the
// same float32 arithmetic in another grouping; 1e-4 absolute on logits of spread ~2 allows for
// summation order (measured: 0) and catches any cache error (which moves logits by > 1e-2).
class PrefillVsDecode : public ::testing::TestWithParam<std::tuple<int64_t, bool>> {};

TEST_P(PrefillVsDecode, SameLastLogits) {
  const auto [T, qdq] = GetParam();
  auto m = MakeModel(SmallConfig(), qdq);
  const auto tokens = Tokens(T + 1, 512);
  const auto full = RunChunks(*m, tokens, {T + 1});
  const auto split = RunChunks(*m, tokens, {T, 1});
  EXPECT_TRUE(testing::AllClose("prefill(T+1) vs prefill(T)+decode", split.data(), full.data(), full.size(),
                                {.abs = 1e-4}));
}

// T crosses the window (8), 4-token blocks and the 128-token block.
INSTANTIATE_TEST_SUITE_P(Boundaries, PrefillVsDecode,
                         ::testing::Combine(::testing::Values(1, 3, 4, 7, 8, 9, 15, 16, 127, 128, 131),
                                            ::testing::Bool()));

TEST(Model, ChunkedPrefillMatchesOneShot) {
  auto m = MakeModel(SmallConfig(), /*qdq=*/true);
  const auto tokens = Tokens(140, 512);
  const auto full = RunChunks(*m, tokens, {140});
  for (const std::vector<int64_t>& chunks : {std::vector<int64_t>{1, 2, 3, 4, 130}, {7, 9, 124}, {127, 1, 12}}) {
    const auto got = RunChunks(*m, tokens, chunks);
    EXPECT_TRUE(testing::AllClose("chunked", got.data(), full.data(), full.size(), {.abs = 1e-4}));
  }
}

// Any top-k works, 16 included, with any number of hash layers and another ratio schedule.
TEST(Model, TopK16AndOtherSchedules) {
  auto j = SmallConfig();
  j["n_routed_experts"] = 32;
  j["num_experts_per_tok"] = 16;
  j["num_hash_layers"] = 3;
  j["compress_ratios"] = {128, 128, 4, 128, 4};
  auto m = MakeModel(j, /*qdq=*/true);
  const auto tokens = Tokens(133, 512);
  const auto full = RunChunks(*m, tokens, {133});
  const auto split = RunChunks(*m, tokens, {132, 1});
  for (float v : full) ASSERT_TRUE(std::isfinite(v));
  EXPECT_TRUE(testing::AllClose("top-16", split.data(), full.data(), full.size(), {.abs = 1e-4}));
}

// The built-in model loads through the same checks and produces finite, non-constant logits.
TEST(Model, BuiltinTinyRuns) {
  auto w = LoadModel("builtin:v4-tiny");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->config.vocab_size, 129280);
  Model m(std::shared_ptr<const ModelWeights>(std::move(*w)));
  SequenceCache cache = m.NewCache();
  std::vector<float> logits(129280);
  const std::vector<int32_t> prompt = {0, 100, 129279};
  ASSERT_TRUE(m.Forward(prompt, cache, logits.data()).ok());
  const auto [lo, hi] = std::minmax_element(logits.begin(), logits.end());
  EXPECT_TRUE(std::isfinite(*lo) && std::isfinite(*hi));
  EXPECT_GT(*hi - *lo, 1.0f);
}

// ---- V4.1 ------------------------------------------------------------------------------------

// v41-tiny's layer roles (ratios [0, 0, 2, 2, 2, 1, 1, 1], KV sources 2, 4, 5, index sources 2, 4,
// 5, 7, level 1 at layer 5) with window 8, top-3 and level 1 keeping 3 blocks of 2, so that short
// sequences cross the window, both indexer limits and odd ratio-2 groups. No Engram (vocab 512).
nlohmann::json SmallV41Config() {
  auto j = nlohmann::json::parse(*BuiltinConfigJson("v41-tiny"));
  nlohmann::json& t = j["text_config"];
  for (auto it = t.begin(); it != t.end();) it = it.key().rfind("engram_", 0) == 0 ? t.erase(it) : std::next(it);
  t["vocab_size"] = 512;
  t["sliding_window"] = 8;
  t["index_topk"] = 3;
  t["candidate_topk_blocks"] = 3;
  t["candidate_block_size"] = 2;
  return j;
}

// As PrefillVsDecode for V4: T crosses the window (8), ratio-2 groups (odd T leaves half a group
// waiting), the top-3 limit and level 1 dropping blocks (beyond 6 ratio-1 positions).
class PrefillVsDecodeV41 : public ::testing::TestWithParam<std::tuple<int64_t, bool>> {};

TEST_P(PrefillVsDecodeV41, SameLastLogits) {
  const auto [T, qdq] = GetParam();
  auto m = MakeModel(SmallV41Config(), qdq);
  const auto tokens = Tokens(T + 1, 512);
  const auto full = RunChunks(*m, tokens, {T + 1});
  const auto split = RunChunks(*m, tokens, {T, 1});
  EXPECT_TRUE(testing::AllClose("prefill(T+1) vs prefill(T)+decode", split.data(), full.data(), full.size(),
                                {.abs = 1e-4}));
}

INSTANTIATE_TEST_SUITE_P(Boundaries, PrefillVsDecodeV41,
                         ::testing::Combine(::testing::Values(1, 2, 3, 5, 6, 7, 8, 9, 12, 13, 16, 33, 64),
                                            ::testing::Bool()));

TEST(ModelV41, ChunkedPrefillMatchesOneShot) {
  auto m = MakeModel(SmallV41Config(), /*qdq=*/true);
  const auto tokens = Tokens(70, 512);
  const auto full = RunChunks(*m, tokens, {70});
  for (const std::vector<int64_t>& chunks :
       {std::vector<int64_t>{1, 2, 3, 4, 60}, {7, 9, 54}, {13, 1, 1, 1, 54}, std::vector<int64_t>(70, 1)}) {
    const auto got = RunChunks(*m, tokens, chunks);
    EXPECT_TRUE(testing::AllClose("chunked", got.data(), full.data(), full.size(), {.abs = 1e-4}));
  }
}

// The cache holds exactly the rows ModelConfig says a token adds: one compressed cache per KV source
// (layers 2 and 4 at ratio 2, 5 at ratio 1) and index keys on those three, nothing on the readers;
// a KV block's bytes are those rows for its positions, plus (V4) the overlapping compressors' rows
// kept at its end.
TEST(ModelV41, CacheHoldsTheRowsTheConfigCounts) {
  for (const nlohmann::json& j : {SmallV41Config(), SmallConfig()}) {
    auto m = MakeModel(j, /*qdq=*/true);
    const ModelConfig& c = m->config();
    const int64_t T = 256;  // a multiple of every ratio: whole blocks only
    SequenceCache cache = m->NewCache();
    ASSERT_TRUE(m->Forward(Tokens(T, 512), cache, nullptr).ok());
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      const int64_t blocks = c.ratio(l) > 0 ? T / c.ratio(l) : 0;
      EXPECT_EQ(static_cast<int64_t>(cache.CompressedRows(c, l).size()), c.compresses(l) ? blocks * c.head_dim : 0)
          << "layer " << l;
      EXPECT_EQ(static_cast<int64_t>(cache.IndexKeyRows(c, l).size()),
                c.owns_index_keys(l) ? blocks * c.index_head_dim : 0)
          << "layer " << l;
    }
    const CacheRowsPerToken rows = c.cache_rows_per_token();
    const int64_t B = m->block_tokens();
    int64_t tails = 0;  // V4 ratio 4: both compressors' previous block, kv and score, 2 x the dims wide
    for (int64_t l = 0; l < c.num_hidden_layers; ++l)
      if (c.compressor_overlap(l)) tails += 4 * 2 * 4 * 2 * (c.head_dim + c.index_head_dim);
    EXPECT_EQ(KvPool::BlockBytes(c, B),
              static_cast<int64_t>(4 * B * (rows.kv * c.head_dim + rows.index_keys * c.index_head_dim)) + tails +
                  (c.has_engram() ? 8 * (c.engram_max_ngram_size - 1) : 0));
  }
}

// builtin:v41-tiny (Engram included: needs the npm tokenizer) loads and runs.
TEST(ModelV41, BuiltinTinyRuns) {
  if (!FindTokenizerJson("builtin:v41-tiny").ok()) GTEST_SKIP() << "the DeepSeek tokenizer.json is not installed";
  auto w = LoadModel("builtin:v41-tiny");
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_TRUE((*w)->config.v41());
  Model m(std::shared_ptr<const ModelWeights>(std::move(*w)));
  ASSERT_TRUE(m.has_engram());
  const auto tokens = Tokens(40, 100000);  // ids with a compressed id in the npm tokenizer
  const auto full = RunChunks(m, tokens, {40});
  const auto split = RunChunks(m, tokens, {31, 1, 1, 7});
  const auto [lo, hi] = std::minmax_element(full.begin(), full.end());
  EXPECT_TRUE(std::isfinite(*lo) && std::isfinite(*hi));
  EXPECT_GT(*hi - *lo, 1.0f);
  EXPECT_TRUE(testing::AllClose("builtin:v41-tiny chunked", split.data(), full.data(), full.size(), {.abs = 1e-4}));
}

// Level 1 against a direct reading of its definition: per query, the newest block plus the best
// others by their max score, topk_blocks in all; blocks past the visible positions never.
TEST(CandidateBlocks, MatchTheDefinition) {
  std::mt19937 rng(7);
  std::normal_distribution<float> nd;
  for (auto [width, bs, k] : {std::tuple{1, 4, 6}, {23, 4, 6}, {24, 4, 6}, {100, 4, 6}, {37, 3, 1}, {50, 8, 2}}) {
    const int64_t n = 30, nb = kernels::CandidateBlockCount(width, bs);
    std::vector<int64_t> nvis(n);
    std::vector<float> scores(n * width);
    for (int64_t t = 0; t < n; ++t) {
      nvis[t] = t == 0 ? 0 : 1 + (t * 7) % width;  // includes a query that sees nothing
      for (int64_t p = 0; p < width; ++p)
        scores[t * width + p] = p < nvis[t] ? nd(rng) : -std::numeric_limits<float>::infinity();
    }
    std::vector<uint8_t> keep(n * nb, 7);
    kernels::SelectCandidateBlocks(scores.data(), n, width, nvis.data(), k, bs, keep.data());
    for (int64_t t = 0; t < n; ++t) {
      std::vector<std::pair<float, int64_t>> blocks;  // (score, block) of the visible blocks
      for (int64_t b = 0; b * bs < nvis[t]; ++b) {
        float mx = -std::numeric_limits<float>::infinity();
        for (int64_t p = b * bs; p < std::min(nvis[t], (b + 1) * bs); ++p) mx = std::max(mx, scores[t * width + p]);
        blocks.push_back({mx, b});
      }
      if (!blocks.empty()) blocks.back().first = std::numeric_limits<float>::infinity();
      std::sort(blocks.begin(), blocks.end(), [](auto a, auto b) { return a.first > b.first; });
      std::vector<uint8_t> want(nb, 0);
      for (size_t i = 0; i < std::min<size_t>(k, blocks.size()); ++i) want[blocks[i].second] = 1;
      for (int64_t b = 0; b < nb; ++b)
        ASSERT_EQ(keep[t * nb + b], want[b]) << "width " << width << " query " << t << " block " << b;
    }
    kernels::MaskToCandidates(scores.data(), n, width, keep.data(), bs);
    for (int64_t t = 0; t < n; ++t)
      for (int64_t p = 0; p < width; ++p)
        if (!keep[t * nb + p / bs]) {
          ASSERT_EQ(scores[t * width + p], -std::numeric_limits<float>::infinity());
        }
  }
}

// The numerical watchdog (issue 18, finding 8): a NaN in a sequence's hidden state ends it with an
// error naming the first layer whose output held it; the other sequences of the same batch are
// computed as if it were not there.
std::unique_ptr<Model> LoadDir(const std::string& dir) {
  auto w = LoadModel(dir);
  EXPECT_TRUE(w.ok()) << w.status();
  return w.ok() ? std::make_unique<Model>(std::shared_ptr<const ModelWeights>(std::move(*w))) : nullptr;
}

TEST(Watchdog, NamesTheFirstNonFiniteLayer) {
  const std::string dir = testing::WriteModelDir(testing::TinyConfig(), 1, [](TensorToWrite& t) {
    if (t.name == "layers.2.ffn_norm.weight") t.bytes[6] = 0xc0, t.bytes[7] = 0x7f;  // BF16 NaN at element 3
  });
  auto m = LoadDir(dir);
  ASSERT_NE(m, nullptr);
  SequenceCache cache = m->NewCache();
  std::vector<float> logits(m->config().vocab_size);
  const absl::Status st = m->Forward(Tokens(5, 512), cache, logits.data());
  EXPECT_TRUE(absl::IsDataLoss(st)) << st;
  EXPECT_NE(st.message().find("after layer 2"), std::string::npos) << st;
  EXPECT_EQ(cache.nonfinite_layer, 2);
  EXPECT_EQ(cache.length, 5);  // the step ran: ranks stay in step
}

TEST(Watchdog, APoisonedSequenceLeavesItsBatchNeighboursAlone) {
  const int64_t D = testing::TinyConfig()["hidden_size"].get<int64_t>();
  const std::string dir = testing::WriteModelDir(testing::TinyConfig(), 1, [&](TensorToWrite& t) {
    if (t.name != "embed.weight") return;
    for (int64_t i = 0; i < D; ++i) t.bytes[2 * (7 * D + i)] = 0xc0, t.bytes[2 * (7 * D + i) + 1] = 0x7f;  // token 7
  });
  auto m = LoadDir(dir);
  ASSERT_NE(m, nullptr);
  const int64_t V = m->config().vocab_size;
  const std::vector<int32_t> good = {1, 2, 3, 4}, bad = {5, 7, 9};
  std::vector<float> alone(V);
  SequenceCache solo = m->NewCache();
  ASSERT_TRUE(m->Forward(good, solo, alone.data()).ok());
  SequenceCache a = m->NewCache(), b = m->NewCache();
  std::vector<int32_t> tokens = good;
  tokens.insert(tokens.end(), bad.begin(), bad.end());
  const SequenceChunk seqs[] = {{&a, 4}, {&b, 3}};
  std::vector<float> logits(2 * V);
  ASSERT_TRUE(m->ForwardBatch(tokens, seqs, logits.data()).ok());  // the batch as a whole goes on
  EXPECT_EQ(a.nonfinite_layer, -1);
  EXPECT_EQ(b.nonfinite_layer, 0);
  EXPECT_TRUE(absl::IsDataLoss(m->NumericalError(b)));
  // Rows never mix across sequences: the good sequence gets its logits alone. Not bit for bit: a
  // matrix product whose input holds a NaN row runs on the plain-loop path for every row (so that
  // the NaN reaches its own outputs), whose sums are ordered differently from the vector paths';
  // 1e-5 of the largest logit is some 100 times that rounding.
  float peak = 0.f;
  for (int64_t i = 0; i < V; ++i) peak = std::max(peak, std::fabs(alone[i]));
  for (int64_t i = 0; i < V; ++i) {
    ASSERT_TRUE(std::isfinite(logits[i])) << "logit " << i;
    ASSERT_NEAR(logits[i], alone[i], 1e-5f * peak) << "logit " << i;
  }
}

// The model runs its operations on the backend it is given (the seam is not bypassed), with the
// default CPU backend's logits bit for bit, and counts expert load through it.
TEST(Model, RunsOnTheBackendItIsGiven) {
  for (bool v41 : {false, true}) {
    auto w = LoadModel(v41 ? "builtin:v41-tiny" : "builtin:v4-tiny");
    ASSERT_TRUE(w.ok()) << w.status();
    const std::shared_ptr<const ModelWeights> weights(std::move(*w));
    auto counting = std::make_shared<CountingBackend>();
    const Model plain(weights), seamed(weights, {}, nullptr, counting);
    EXPECT_EQ(&seamed.backend(), counting.get());
    const std::vector<int32_t> tokens = Tokens(40, 1000);
    const std::vector<int64_t> chunks = {37, 1, 1, 1};
    const std::vector<float> want = RunChunks(plain, tokens, chunks), got = RunChunks(seamed, tokens, chunks);
    ASSERT_EQ(got.size(), want.size());
    for (size_t i = 0; i < got.size(); ++i)
      ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i])) << "v4.1 " << v41 << " logit " << i;
    for (const char* op : {"PlaceExperts", "Linear", "LinearGroup", "QdqFp8", "RmsNorm", "HcPre", "HcPost", "EmbedRows",
                           "SparseAttention", "IndexerScores", "TopK", "Route", "SortSlotsByExpert", "GroupByExpert",
                           "GatherRows", "ExpertFfnGroup", "CombineRows"})
      EXPECT_GT(counting->calls[op], 0) << op << (v41 ? " (V4.1)" : " (V4)");
    if (!v41) {
      EXPECT_GT(counting->calls["HcHead"], 0);
    }
    EXPECT_EQ(seamed.ExpertLoad(), plain.ExpertLoad());
    const std::vector<int64_t> load = seamed.ExpertLoad();
    EXPECT_EQ(std::accumulate(load.begin(), load.end(), int64_t{0}),
              40 * seamed.config().num_experts_per_tok * seamed.config().num_hidden_layers);
  }
}

// A sequence's compressor states (about 60 in V4-Flash, 2 per layer here at most) are one allocation
// of the backend, taken once, zeroed, and carved in layer order without overlap: a GPU pays one
// cudaMalloc per admitted sequence.
TEST(SequenceCache, CompressorStatesAreOneAllocation) {
  for (const char* name : {"builtin:v4-tiny", "builtin:v41-tiny"}) {
    auto w = LoadModel(name);
    ASSERT_TRUE(w.ok()) << w.status();
    auto counting = std::make_shared<CountingBackend>();
    const Model m(std::shared_ptr<const ModelWeights>(std::move(*w)), {}, nullptr, counting);
    SequenceCache cache = m.NewCache();
    int states = 0;
    int64_t floats = 0;
    for (const LayerCache& l : cache.layers)
      for (const CompressorState* st : {&l.compressor, &l.index_compressor}) {
        EXPECT_EQ(st->rows, nullptr);
        states += st->floats() > 0, floats += st->floats();
      }
    ASSERT_GT(states, 1) << name;
    const int before = counting->allocations;
    ASSERT_TRUE(cache.ReserveCompressors(*counting).ok());
    ASSERT_TRUE(cache.ReserveCompressors(*counting).ok());  // once
    EXPECT_EQ(counting->allocations, before + 1) << name;
    const float* at = cache.compressor_rows.floats();
    for (const LayerCache& l : cache.layers)
      for (const CompressorState* st : {&l.compressor, &l.index_compressor}) {
        if (st->floats() == 0) continue;
        EXPECT_EQ(st->rows, at) << name;
        at += st->floats();
      }
    EXPECT_EQ(at, cache.compressor_rows.floats() + floats) << name;
    std::vector<float> host(floats, 1.f);
    counting->CopyToHost(host.data(), cache.compressor_rows.get(), floats * static_cast<int64_t>(sizeof(float)));
    EXPECT_EQ(std::count(host.begin(), host.end(), 0.f), floats) << name;
  }
}

// The guard can fail: a host access to its memory faults, and host memory handed to an operation
// is an error that names the operation.
TEST(GuardedBackendDeathTest, HostAccessFaults) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        GuardedBackend be;
        auto p = be.Allocate(64);
        static_cast<volatile float*>(*p)[3] = 1.f;
      },
      "host access to device memory");
}

TEST(GuardedBackend, RefusesHostMemoryInAnOperation) {
  GuardedBackend be;
  std::vector<int32_t> host(8);
  auto dev = be.Allocate(8 * sizeof(int32_t));
  ASSERT_TRUE(dev.ok());
  be.Iota(static_cast<int32_t*>(*dev), 8, 0, 1);
  EXPECT_TRUE(be.Synchronize().ok());
  be.Iota(host.data(), 8, 0, 1);
  const absl::Status s = be.Synchronize();
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("Iota was handed host memory"), std::string::npos) << s;
}

// A built-in tiny model (parameter: V4.1) twice over the same weights: on the CPU backend
// (plain) and on a guarded one (seamed).
class OnGuardedBackend : public ::testing::TestWithParam<bool> {
 protected:
  void SetUp() override {
    auto w = LoadModel(v41() ? "builtin:v41-tiny" : "builtin:v4-tiny");
    ASSERT_TRUE(w.ok()) << w.status();
    const std::shared_ptr<const ModelWeights> weights(std::move(*w));
    plain_ = std::make_unique<Model>(weights);
    seamed_ = std::make_unique<Model>(weights, ForwardOptions{}, nullptr, guarded_);
  }
  bool v41() const { return GetParam(); }
  const Model& plain() const { return *plain_; }
  const Model& seamed() const { return *seamed_; }
  GuardedBackend& guarded() const { return *guarded_; }

 private:
  std::shared_ptr<GuardedBackend> guarded_ = std::make_shared<GuardedBackend>();
  std::unique_ptr<Model> plain_, seamed_;
};

// The MoE keeps to device memory: on a backend whose memory faults on a host access outside an
// operation and that refuses host memory in one, the first and last layers (V4's first routes by
// token id) give the CPU backend's output bit for bit (V4 and V4.1).
TEST_P(OnGuardedBackend, MoeKeepsToDeviceMemory) {
  const Model &plain = this->plain(), &seamed = this->seamed();
  GuardedBackend* guarded = &this->guarded();
  const bool v41 = this->v41();
  const ModelConfig& c = plain.config();
  const int64_t n = 7, D = c.hidden_size;
  std::vector<float> x(n * D);
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (float& v : x) v = nd(rng);
  const std::vector<int32_t> tokens = Tokens(n, 1000);
  const int64_t bytes = n * D * static_cast<int64_t>(sizeof(float));
  auto dx = guarded->Allocate(bytes), dout = guarded->Allocate(bytes);
  ASSERT_TRUE(dx.ok() && dout.ok());
  guarded->CopyToDevice(*dx, x.data(), bytes);
  if (!v41) {
    ASSERT_GT(c.num_hash_layers, 0);  // layer 0 routes by token id
  }
  for (int64_t layer : {int64_t{0}, c.num_hidden_layers - 1}) {
    std::vector<float> want(n * D), got(n * D);
    ASSERT_TRUE(ModelTestPeer::MoE(plain, layer, x.data(), n, tokens, want.data()).ok());
    ASSERT_TRUE(
        ModelTestPeer::MoE(seamed, layer, static_cast<float*>(*dx), n, tokens, static_cast<float*>(*dout)).ok());
    guarded->CopyToHost(got.data(), *dout, bytes);
    ASSERT_TRUE(guarded->Synchronize().ok()) << guarded->status();
    for (int64_t i = 0; i < n * D; ++i)
      ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
          << "v4.1 " << v41 << " layer " << layer << " value " << i;
  }
}

// The embedding and the head keep to device memory too: token ids in, the last rows' logits out to
// the host, bit for bit as on the CPU backend (V4's own final collapse, V4.1's lagged one).
TEST_P(OnGuardedBackend, EmbedAndHeadKeepToDeviceMemory) {
  const Model &plain = this->plain(), &seamed = this->seamed();
  GuardedBackend* guarded = &this->guarded();
  const bool v41 = this->v41();
  const ModelConfig& c = plain.config();
  const int64_t n = 5, D = c.hidden_size, hc = c.hc_mult, V = c.vocab_size;
  const std::vector<int32_t> tokens = Tokens(n, 1000);
  std::vector<float> want(n * hc * D), got(n * hc * D);
  plain.Embed(tokens, want.data());
  const int64_t bytes = n * hc * D * static_cast<int64_t>(sizeof(float));
  auto dx = guarded->Allocate(bytes);
  ASSERT_TRUE(dx.ok());
  float* x = static_cast<float*>(*dx);
  seamed.Embed(tokens, x);
  guarded->CopyToHost(got.data(), x, bytes);
  ASSERT_TRUE(guarded->Synchronize().ok()) << guarded->status();
  ASSERT_EQ(got, want) << "v4.1 " << v41;

  // The head over rows 4 and 1, with (V4.1) collapse weights of the previous block.
  std::vector<float> pre(2 * hc);
  for (int64_t i = 0; i < 2 * hc; ++i) pre[i] = 0.25f + 0.1f * static_cast<float>(i % 3);
  auto dpre = guarded->Allocate(2 * hc * static_cast<int64_t>(sizeof(float)));
  ASSERT_TRUE(dpre.ok());
  guarded->CopyToDevice(*dpre, pre.data(), 2 * hc * static_cast<int64_t>(sizeof(float)));
  const float* host_rows[2] = {&want[4 * hc * D], &want[1 * hc * D]};
  const float* dev_rows[2] = {x + 4 * hc * D, x + 1 * hc * D};
  const float* host_pre[2] = {&pre[0], &pre[hc]};
  const float* dev_pre[2] = {static_cast<float*>(*dpre), static_cast<float*>(*dpre) + hc};
  std::vector<float> logits_want(2 * V), logits_got(2 * V);
  ASSERT_TRUE(ModelTestPeer::HeadBatch(plain, host_rows, v41 ? host_pre : nullptr, 2, logits_want.data()).ok());
  ASSERT_TRUE(ModelTestPeer::HeadBatch(seamed, dev_rows, v41 ? dev_pre : nullptr, 2, logits_got.data()).ok());
  ASSERT_TRUE(guarded->Synchronize().ok()) << guarded->status();
  for (int64_t i = 0; i < 2 * V; ++i)
    ASSERT_EQ(std::bit_cast<uint32_t>(logits_got[i]), std::bit_cast<uint32_t>(logits_want[i]))
        << "v4.1 " << v41 << " logit " << i;
}

// Attention, its compressors and its indexer keep to device memory: a sequence whose cache lives in
// the guarded backend's memory, every layer over a prefill and decode steps that complete blocks of
// every compression ratio (V4: the overlapping ratio 4 and ratio 128; V4.1: ratios 2 and 1, picks
// inside level-1 candidates), gives the CPU backend's outputs and cached rows bit for bit.
TEST_P(OnGuardedBackend, AttentionKeepsToDeviceMemory) {
  const Model &plain = this->plain(), &seamed = this->seamed();
  GuardedBackend* guarded = &this->guarded();
  const bool v41 = this->v41();
  const ModelConfig& c = plain.config();
  const int64_t L = c.num_hidden_layers, D = c.hidden_size;
  SequenceCache want_cache = plain.NewCache(), got_cache = seamed.NewCache();
  std::mt19937 rng(11);
  std::normal_distribution<float> nd(0.f, 1.f);
  int64_t length = 0;
  for (int64_t n : {130, 1, 1, 2, 3}) {
    std::vector<float> x(L * n * D), want(L * n * D), got(L * n * D);
    for (float& v : x) v = nd(rng);
    ASSERT_TRUE(ModelTestPeer::AttentionChunk(plain, want_cache, x.data(), n, want.data()).ok());
    const int64_t bytes = L * n * D * static_cast<int64_t>(sizeof(float));
    auto dx = guarded->Allocate(bytes), dout = guarded->Allocate(bytes);
    ASSERT_TRUE(dx.ok() && dout.ok());
    guarded->CopyToDevice(*dx, x.data(), bytes);
    const absl::Status st =
        ModelTestPeer::AttentionChunk(seamed, got_cache, static_cast<const float*>(*dx), n, static_cast<float*>(*dout));
    ASSERT_TRUE(st.ok()) << st;
    guarded->CopyToHost(got.data(), *dout, bytes);
    ASSERT_TRUE(guarded->Synchronize().ok()) << guarded->status();
    length += n;
    for (int64_t i = 0; i < L * n * D; ++i)
      ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
          << "v4.1 " << v41 << " at " << length << ": layer " << i / (n * D) << " value " << i % (n * D);
  }
  int64_t compressed = 0;
  for (int64_t l = 0; l < L; ++l) {
    ASSERT_EQ(got_cache.CompressedRows(c, l), want_cache.CompressedRows(c, l)) << "layer " << l;
    ASSERT_EQ(got_cache.IndexKeyRows(c, l), want_cache.IndexKeyRows(c, l)) << "layer " << l;
    ASSERT_EQ(got_cache.WindowRows(c, l), want_cache.WindowRows(c, l)) << "layer " << l;
    compressed += static_cast<int64_t>(got_cache.CompressedRows(c, l).size());
  }
  EXPECT_GT(compressed, 0);
  ASSERT_TRUE(guarded->Synchronize().ok()) << guarded->status();
}

// The whole forward keeps to device memory: the residual streams, the watchdog's checks, Engram's
// gate (V4.1: its rows copied over from the host) and the logits copied out, over a prefill and
// decode steps, bit for bit as on the CPU backend (the Watchdog tests cover its findings).
TEST_P(OnGuardedBackend, ForwardKeepsToDeviceMemory) {
  const Model &plain = this->plain(), &seamed = this->seamed();
  GuardedBackend* guarded = &this->guarded();
  const bool v41 = this->v41();
  const int64_t V = plain.config().vocab_size;
  const std::vector<int32_t> tokens = Tokens(137, 1000, 3);
  SequenceCache want_cache = plain.NewCache(), got_cache = seamed.NewCache();
  std::vector<float> want(V), got(V);
  int64_t at = 0;
  for (int64_t n : {130, 1, 1, 2, 3}) {
    const std::span<const int32_t> chunk(tokens.data() + at, n);
    ASSERT_TRUE(plain.Forward(chunk, want_cache, want.data()).ok());
    const absl::Status st = seamed.Forward(chunk, got_cache, got.data());
    ASSERT_TRUE(st.ok()) << st;
    ASSERT_TRUE(guarded->Synchronize().ok()) << guarded->status();
    at += n;
    for (int64_t i = 0; i < V; ++i)
      ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
          << "v4.1 " << v41 << " at " << at << ": logit " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(V4AndV41, OnGuardedBackend, ::testing::Bool());

TEST(Model, UnknownBuiltinIsAnError) {
  auto w = LoadModel("builtin:nope");
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("builtin:nope"), std::string::npos);
}

}  // namespace
}  // namespace dsv4
