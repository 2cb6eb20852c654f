// Batched steps (Model::ForwardBatch) against one Forward per sequence, and the decode path's
// promise of no heap allocation once warmed up.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <bit>
#include <cstdlib>
#include <new>
#include <nlohmann/json.hpp>
#include <vector>

#include "runtime/builtin.h"
#include "runtime/model/model.h"
#include "tests/runtime/test_backends.h"
#include "tests/testutil.h"

// Every operator new of this binary is counted (the decode path must make none).
namespace {
std::atomic<int64_t> g_news{0};
}  // namespace

void* operator new(std::size_t n) {
  g_news.fetch_add(1, std::memory_order_relaxed);
  if (void* p = std::malloc(n == 0 ? 1 : n)) return p;
  throw std::bad_alloc();
}
// GCC takes operator new for the library's and warns that free() does not match it; this new is
// malloc, so free() is its match.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, std::size_t) noexcept { std::free(p); }
#pragma GCC diagnostic pop

namespace dsv4 {
namespace {

// v4-tiny's layer kinds with a window of 8 and top-3 blocks, so short sequences cross both, and two
// hash-routed layers; or
// v41-tiny's (shared KV, both indexer levels, lagged mHC) with the same window and top-k and level
// 1 keeping 3 blocks of 2 (no Engram: vocab 512).
std::unique_ptr<Model> MakeModel(bool qdq, bool v41 = false) {
  if (!v41) {
    nlohmann::json j = testing::SmallConfig();
    j["num_hash_layers"] = 2;  // the first two route by token id, as V4's first three do
    return testing::MakeTestModel(j, qdq, 5);
  }
  auto j = nlohmann::json::parse(*BuiltinConfigJson("v41-tiny"));
  nlohmann::json& t = j["text_config"];
  for (auto it = t.begin(); it != t.end();) it = it.key().rfind("engram_", 0) == 0 ? t.erase(it) : std::next(it);
  t["vocab_size"] = 512;
  t["sliding_window"] = 8;
  t["index_topk"] = 3;
  t["candidate_topk_blocks"] = 3;
  t["candidate_block_size"] = 2;
  return testing::MakeTestModel(j, qdq, 5);
}

std::vector<int32_t> Tokens(int64_t n, uint32_t seed) {
  std::vector<int32_t> t(n);
  for (int64_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>((seed * 2654435761u + i * 40503u) % 512);
  return t;
}

// Sequences of different lengths decoded together, mixed with a prefill chunk in the same step,
// give the logits one Forward per sequence gives, bit for bit (the kernels' sums do not depend on
// the batch) and leave the same caches behind.
class ForwardBatch : public ::testing::TestWithParam<bool> {};  // V4.1?

TEST_P(ForwardBatch, EqualsOneForwardPerSequence) {
  for (bool qdq : {false, true}) {
    auto m = MakeModel(qdq, GetParam());
    const int64_t V = m->config().vocab_size;
    const std::vector<int64_t> context = {0, 3, 17, 40};
    std::vector<SequenceCache> solo, batched;
    for (size_t s = 0; s < context.size(); ++s) {
      solo.push_back(m->NewCache());
      batched.push_back(m->NewCache());
      if (context[s] == 0) continue;
      const std::vector<int32_t> prompt = Tokens(context[s], 100 + s);
      ASSERT_TRUE(m->Forward(prompt, solo.back(), nullptr).ok());
      ASSERT_TRUE(m->Forward(prompt, batched.back(), nullptr).ok());
    }
    for (int step = 0; step < 6; ++step) {
      // Sequence 0 takes a 5-token chunk in the first step, the others one token per step.
      std::vector<int32_t> tokens;
      std::vector<SequenceChunk> seqs;
      std::vector<float> want(context.size() * V);
      for (size_t s = 0; s < context.size(); ++s) {
        const int64_t n = (s == 0 && step == 0) ? 5 : 1;
        const std::vector<int32_t> t = Tokens(n, 1000 * step + s);
        tokens.insert(tokens.end(), t.begin(), t.end());
        seqs.push_back({&batched[s], n});
        ASSERT_TRUE(m->Forward(t, solo[s], &want[s * V]).ok());
      }
      std::vector<float> got(context.size() * V);
      ASSERT_TRUE(m->ForwardBatch(tokens, seqs, got.data()).ok());
      for (int64_t i = 0; i < static_cast<int64_t>(got.size()); ++i)
        ASSERT_EQ(std::bit_cast<uint32_t>(got[i]), std::bit_cast<uint32_t>(want[i]))
            << "qdq " << qdq << " step " << step << " sequence " << i / V << " logit " << i % V;
    }
    // The same caches behind: every row the sequence holds, bit for bit.
    const ModelConfig& c = m->config();
    for (size_t s = 0; s < context.size(); ++s) {
      EXPECT_EQ(batched[s].length, solo[s].length);
      for (size_t l = 0; l < solo[s].layers.size(); ++l) {
        EXPECT_EQ(batched[s].WindowRows(c, l), solo[s].WindowRows(c, l));
        EXPECT_EQ(batched[s].CompressedRows(c, l), solo[s].CompressedRows(c, l));
        EXPECT_EQ(batched[s].IndexKeyRows(c, l), solo[s].IndexKeyRows(c, l));
      }
    }
  }
}

TEST_P(ForwardBatch, RejectsInconsistentChunks) {
  auto m = MakeModel(true, GetParam());
  SequenceCache a = m->NewCache();
  const std::vector<int32_t> tokens = Tokens(3, 1);
  const std::vector<SequenceChunk> wrong_total = {{&a, 2}};
  EXPECT_FALSE(m->ForwardBatch(tokens, wrong_total, nullptr).ok());
  const std::vector<SequenceChunk> empty_chunk = {{&a, 3}, {&a, 0}};
  EXPECT_FALSE(m->ForwardBatch(tokens, empty_chunk, nullptr).ok());
}

// Once a first step has grown the scratch arenas, decode steps (batch 1 and 3) make no heap
// allocation; the compressed caches, which grow by a block every few tokens (every token at V4.1's
// ratio 1), are reserved first.
TEST_P(ForwardBatch, DecodeAllocatesNothingOnceWarm) {
  const int64_t at_start = g_news.load();
  auto m = MakeModel(true, GetParam());
  ASSERT_GT(g_news.load(), at_start) << "the counting operator new is not in use";
  const int64_t V = m->config().vocab_size;
  std::vector<SequenceCache> caches;
  for (int s = 0; s < 3; ++s) {
    caches.push_back(m->NewCache(/*reserve_tokens=*/4096));  // compressed blocks allocated up front
    ASSERT_TRUE(m->Forward(Tokens(20 + s, 7 + s), caches.back(), nullptr).ok());
  }
  std::vector<float> logits(3 * V);
  std::vector<int32_t> tokens = {1, 2, 3};
  std::vector<SequenceChunk> one = {{&caches[0], 1}}, three = {{&caches[0], 1}, {&caches[1], 1}, {&caches[2], 1}};
  for (int warm = 0; warm < 2; ++warm) {
    ASSERT_TRUE(m->ForwardBatch(std::span(tokens.data(), 1), one, logits.data()).ok());
    ASSERT_TRUE(m->ForwardBatch(tokens, three, logits.data()).ok());
  }
  const int64_t before = g_news.load();
  for (int step = 0; step < 9; ++step) {  // crosses window and block boundaries
    tokens = {static_cast<int32_t>(step), static_cast<int32_t>(step + 50), static_cast<int32_t>(step + 99)};
    ASSERT_TRUE(m->ForwardBatch(std::span(tokens.data(), 1), one, logits.data()).ok());
    ASSERT_TRUE(m->ForwardBatch(tokens, three, logits.data()).ok());
  }
  EXPECT_EQ(g_news.load() - before, 0) << "heap allocations on the decode path";
}

// What a batched step copies to a device does not grow with its sequences or its layers: the tables
// the layers share (token ids, rotations, attention rows, index key rows) go up in one copy, and
// no layer uploads anything (an upload from pageable memory would also drain the GPU's queue).
// Counted on a backend that takes the device path, over decode steps that complete compressed
// blocks (V4.1's ratio-1 layers: every step).
TEST_P(ForwardBatch, UploadsDoNotGrowWithTheBatchOrTheLayers) {
  auto m0 = MakeModel(true, GetParam());
  auto counting = std::make_shared<testing::CountingBackend>(/*separate_memory=*/true);
  const Model m(std::shared_ptr<const ModelWeights>(&m0->weights(), [](const ModelWeights*) {}), m0->options(), nullptr,
                counting);
  const ModelConfig& c = m.config();
  int device_copies[2][6] = {};
  for (int batch : {1, 4}) {
    std::vector<SequenceCache> caches;
    for (int s = 0; s < batch; ++s) {
      caches.push_back(m.NewCache(/*reserve_tokens=*/4096));
      ASSERT_TRUE(m.Forward(Tokens(37, 3 + s), caches.back(), nullptr).ok());
    }
    std::vector<SequenceChunk> chunks;
    for (SequenceCache& cache : caches) chunks.push_back({&cache, 1});
    std::vector<float> logits(batch * c.vocab_size);
    for (int step = 0; step < 6; ++step) {  // positions 37..42: ratio-4 blocks complete at 39
      const std::vector<int32_t> tokens(batch, 10 + step);
      counting->calls.clear();
      ASSERT_TRUE(m.ForwardBatch(tokens, chunks, logits.data()).ok());
      EXPECT_EQ(counting->calls["CopyToDevice"], 1) << "batch " << batch << ", step " << step;
      EXPECT_EQ(counting->calls["ScatterRows"], batch * c.num_hidden_layers) << "one per layer and private pool";
      device_copies[batch == 1 ? 0 : 1][step] = counting->calls["CopyOnDevice"];
    }
  }
  // Nor do its device copies, at steps that complete no compressed block (position 39 completes a
  // ratio-4 block; V4.1's ratio-1 layers complete one every step and store it per sequence): the
  // rows that join a compressor's state go in one scatter per compressor, whatever the batch.
  for (int step = 0; step < 6; ++step) {
    if (!GetParam() && 37 + step != 39) {
      EXPECT_EQ(device_copies[1][step], device_copies[0][step]) << "step " << step;
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Families, ForwardBatch, ::testing::Bool(),
                         [](const auto& info) { return info.param ? "V41" : "V4"; });

}  // namespace
}  // namespace dsv4
