// Engram against golden/engram (README there): NumPy PCG64 and bounded integers, hash multipliers,
// prime layout, tokenizer compression, n-gram hash rows and the gate; plus config/loader errors,
// the model's Engram step and `dsv4 engram-ids`.
#include "runtime/model/engram.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "base/file.h"
#include "kernels/cpu/formats.h"
#include "runtime/builtin.h"
#include "runtime/engram/compression.h"
#include "runtime/engram/hash.h"
#include "runtime/engram/layout.h"
#include "runtime/engram/numpy_random.h"
#include "runtime/model/model.h"
#include "runtime/tokenizer/tokenizer.h"
#include "tests/testutil.h"

namespace dsv4 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string EngramDir() { return testing::SharedDir() + "/golden/engram"; }
bool GoldenAvailable() { return fs::exists(EngramDir() + "/hash_cases.json"); }
// The built-in models' DeepSeek tokenizer (npm; launch/setup.sh installs it); tests that need it
// skip without it.
std::string NpmTokenizer() { return FindTokenizerJson("builtin:v4-tiny-engram").value_or(""); }

#define REQUIRE_GOLDEN() \
  if (!GoldenAvailable()) GTEST_SKIP() << "golden/engram not found under " << testing::SharedDir()
#define REQUIRE_TOKENIZER() \
  if (NpmTokenizer().empty()) GTEST_SKIP() << "the DeepSeek tokenizer.json is not installed (launch/setup.sh)"

json ReadJson(const std::string& name) { return json::parse(ReadFile(EngramDir() + "/" + name).value()); }

uint64_t U64(const json& v) { return v.is_string() ? std::stoull(v.get<std::string>()) : v.get<uint64_t>(); }
int64_t I64(const json& v) { return v.is_string() ? std::stoll(v.get<std::string>()) : v.get<int64_t>(); }
std::vector<int64_t> I64s(const json& v) {
  std::vector<int64_t> out;
  for (const auto& e : v) out.push_back(I64(e));
  return out;
}

std::string Hex128(uint128 v) {
  static const char* kDigits = "0123456789abcdef";
  std::string s;
  do {
    s.insert(s.begin(), kDigits[static_cast<int>(v & 15)]);
    v >>= 4;
  } while (v != 0);
  return "0x" + s;
}

// The compression map of the npm tokenizer.json as the golden data stores it.
TokenCompression GoldenCompression() {
  std::ifstream in(EngramDir() + "/compression_map.bin", std::ios::binary);
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TokenCompression tc;
  tc.map.resize(bytes.size() / 4);
  std::memcpy(tc.map.data(), bytes.data(), tc.map.size() * 4);
  int32_t max = -1;
  for (int32_t c : tc.map) max = std::max(max, c);
  tc.num_keys = max + 1;
  return tc;
}

// ---- NumPy's stream --------------------------------------------------------------------------

TEST(EngramNumpyRandom, SeedSequenceAndPcg64MatchNumpy) {
  REQUIRE_GOLDEN();
  const json m = ReadJson("multipliers.json");
  int checked = 0;
  for (const json& c : m["pcg64"]) {
    const uint64_t seed = U64(c["seed"]);
    SCOPED_TRACE(seed);
    const std::array<uint32_t, 4> pool = SeedSequencePool(seed);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(pool[i], c["seedseq_pool_u32"][i].get<uint32_t>());
    const std::vector<uint64_t> state = SeedSequenceGenerateState(pool, 4);
    for (int i = 0; i < 4; ++i) EXPECT_EQ(state[i], U64(c["seedseq_generate_state_u64"][i]));
    Pcg64 rng(seed);
    EXPECT_EQ(Hex128(rng.state()), c["pcg_state_after_seeding_hex"].get<std::string>());
    EXPECT_EQ(Hex128(rng.increment()), c["pcg_inc_hex"].get<std::string>());
    for (const json& raw : c["random_raw"]) EXPECT_EQ(rng.NextUint64(), U64(raw));
    ++checked;
  }
  EXPECT_EQ(checked, 4);
}

TEST(EngramNumpyRandom, BoundedIntegersMatchNumpy) {
  REQUIRE_GOLDEN();
  const json m = ReadJson("multipliers.json");
  int checked = 0;
  for (const json& c : m["bounded_int64"]) {
    SCOPED_TRACE(c["path"].get<std::string>() + " high " + c["high"].get<std::string>());
    Pcg64 rng(U64(c["seed"]));
    EXPECT_EQ(NumpyIntegers(rng, I64(c["low"]), I64(c["high"]), c["size"].get<int64_t>()), I64s(c["values"]));
    ++checked;
  }
  EXPECT_EQ(checked, 6);
}

TEST(EngramNumpyRandom, IntegersUseTheWholeRange) {
  Pcg64 rng(7);
  const std::vector<int64_t> v = NumpyIntegers(rng, -5, -4, 3);  // a single value: no draw
  EXPECT_EQ(v, std::vector<int64_t>({-5, -5, -5}));
  Pcg64 a(7), b(7);
  EXPECT_EQ(NumpyIntegers(a, 0, 1, 1)[0], 0);
  EXPECT_EQ(a.NextUint64(), b.NextUint64()) << "a range of one value must not consume draws";
}

TEST(EngramMultipliers, MatchNumpyDefaultRng) {
  REQUIRE_GOLDEN();
  const json m = ReadJson("multipliers.json");
  int checked = 0;
  for (const char* variant : {"v41", "v3_tokenizer_count"}) {
    const json& v = m[variant];
    const int64_t cv = v["compressed_vocab_size"].get<int64_t>();
    EXPECT_EQ(EngramMultiplierBound(cv), I64(v["multiplier_bound"]));
    for (const json& l : v["layers"]) {
      const int64_t layer = l["layer"].get<int64_t>();
      SCOPED_TRACE(std::string(variant) + " layer " + std::to_string(layer));
      const auto mult = EngramHashMultipliers({layer}, m["max_ngram"].get<int64_t>(), cv);
      EXPECT_EQ(mult[0], I64s(l["multipliers"]));
      ++checked;
    }
  }
  EXPECT_EQ(checked, 12);
}

// ---- primes and layout ----------------------------------------------------------------------

TEST(EngramLayout, IsPrimeMatchesTrialDivision) {
  for (uint64_t n = 0; n < 20000; ++n) {
    bool prime = n >= 2;
    for (uint64_t d = 2; d * d <= n && prime; ++d) prime = n % d != 0;
    ASSERT_EQ(IsPrime(n), prime) << n;
  }
  EXPECT_TRUE(IsPrime((uint64_t{1} << 61) - 1));
  EXPECT_FALSE(IsPrime((uint64_t{1} << 61) + 1));
  EXPECT_TRUE(IsPrime(18446744073709551557ull));   // the largest 64-bit prime
  EXPECT_FALSE(IsPrime(3215031751ull));            // strong pseudoprime to bases 2, 3, 5, 7
}

TEST(EngramLayout, PrimesAndOffsetsMatchGolden) {
  REQUIRE_GOLDEN();
  const json p = ReadJson("primes.json");
  for (const char* name : {"small", "v41"}) {
    SCOPED_TRACE(name);
    const json& c = p[name];
    auto layout = BuildEngramLayout(c["engram_vocab_size"].get<int64_t>(), I64s(c["layer_ids"]),
                                    c["max_ngram"].get<int64_t>(), c["n_heads"].get<int64_t>());
    ASSERT_TRUE(layout.ok()) << layout.status();
    for (size_t l = 0; l < c["layer_ids"].size(); ++l) {
      std::vector<int64_t> primes;
      for (const json& per_n : c["primes"][l])
        for (const json& q : per_n) primes.push_back(q.get<int64_t>());
      EXPECT_EQ(layout->primes[l], primes);
      EXPECT_EQ(layout->offsets[l], I64s(c["offsets"][l]));
    }
    EXPECT_EQ(layout->num_rows, I64s(c["num_embeddings"]));
  }
  // V4.1's published table sizes.
  EXPECT_EQ(I64s(p["v41"]["num_embeddings"]), std::vector<int64_t>({384006168, 384016682}));
}

TEST(EngramLayout, APrimeEqualToTheVocabSizeIsTaken) {
  auto layout = BuildEngramLayout(1009, {0}, 2, 2);
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->primes[0], std::vector<int64_t>({1009, 1013}));
  EXPECT_EQ(layout->offsets[0], std::vector<int64_t>({0, 1009}));
}

// ---- tokenizer compression ------------------------------------------------------------------

TEST(EngramCompression, SampleKeysMatchGolden) {
  REQUIRE_GOLDEN();
  const json c = ReadJson("compression.json");
  int checked = 0, raw = 0;
  for (const json& s : c["samples"]) {
    const std::string token = s["token"].get<std::string>();
    SCOPED_TRACE("id " + std::to_string(s["id"].get<int64_t>()) + " token " + token);
    EXPECT_EQ(EngramCompressionKey(token), s["key"].get<std::string>());
    if (s["decoded"].get<std::string>().find("\xEF\xBF\xBD") == std::string::npos)
      EXPECT_EQ(ByteLevelDecode(token), s["decoded"].get<std::string>());
    else
      ++raw;
    ++checked;
  }
  EXPECT_EQ(checked, 2000);
  EXPECT_GT(raw, 0);
}

TEST(EngramCompression, WholeVocabularyMatchesGoldenMap) {
  REQUIRE_GOLDEN();
  REQUIRE_TOKENIZER();
  auto tc = LoadTokenCompression(NpmTokenizer());
  ASSERT_TRUE(tc.ok()) << tc.status();
  const TokenCompression golden = GoldenCompression();
  const json c = ReadJson("compression.json");
  ASSERT_EQ(tc->map.size(), golden.map.size());
  EXPECT_EQ(static_cast<int64_t>(tc->map.size()), c["tokenizer_len"].get<int64_t>());
  EXPECT_EQ(tc->num_keys, c["compressed_vocab_size"].get<int64_t>());
  int64_t wrong = 0;
  for (size_t i = 0; i < golden.map.size(); ++i)
    if (tc->map[i] != golden.map[i] && ++wrong <= 10)
      ADD_FAILURE() << "token " << i << ": compressed " << tc->map[i] << ", golden " << golden.map[i];
  EXPECT_EQ(wrong, 0);
  EXPECT_EQ(tc->map[c["pad_token_id"].get<int64_t>()], c["pad_compressed"].get<int64_t>());
}

TEST(EngramCompression, TokenizerJsonErrorsNameTheProblem) {
  auto gap = ReadTokenizerVocab(R"({"model": {"vocab": {"a": 0, "b": 2}}})", "t.json");
  ASSERT_FALSE(gap.ok());
  EXPECT_NE(gap.status().message().find("token id 1 has no token"), std::string::npos) << gap.status();
  auto no_vocab = ReadTokenizerVocab(R"({"model": {}})", "t.json");
  EXPECT_NE(no_vocab.status().message().find("model.vocab"), std::string::npos) << no_vocab.status();
  auto twice = ReadTokenizerVocab(R"({"model": {"vocab": {"a": 0, "b": 0}}})", "t.json");
  EXPECT_FALSE(twice.ok());
  auto added = ReadTokenizerVocab(R"({"model": {"vocab": {"a": 0}}, "added_tokens": [{"id": 1, "content": "<x>"}]})",
                                  "t.json");
  ASSERT_TRUE(added.ok()) << added.status();
  EXPECT_EQ(*added, std::vector<std::string>({"a", "<x>"}));
}

TEST(EngramCompression, NormalizationRules) {
  EXPECT_EQ(EngramCompressionKey("ĠThe"), "the");
  EXPECT_EQ(EngramCompressionKey("Ġ"), " ");       // exactly one space survives Strip
  EXPECT_EQ(EngramCompressionKey("ĠĠ"), " ");      // collapsed to one space first
  EXPECT_EQ(EngramCompressionKey("Ċ"), " ");       // \n is collapsed to a space, then kept
  EXPECT_EQ(EngramCompressionKey("ĉa"), "a");      // \t a -> " a" -> stripped
  EXPECT_EQ(EngramCompressionKey("ċ"), "\x0b");    // \v: not collapsed, stripped -> empty -> raw text
  EXPECT_EQ(EngramCompressionKey("Ĝ"), "\x1c");    // U+001C is not White_Space: kept
  EXPECT_EQ(EngramCompressionKey("Ã©"), "e");      // é: NFD + mark removal
  EXPECT_EQ(EngramCompressionKey("Ã"), "Ã");       // a lone UTF-8 lead byte: the raw token string
  EXPECT_EQ(EngramCompressionKey("ï¬ģ"), "fi");    // U+FB01 ligature: NFKC
}

// ---- hash rows ------------------------------------------------------------------------------

struct HashVariant {
  std::string name;
  std::unique_ptr<EngramHasher> hasher;
};

std::vector<HashVariant> GoldenHashers(const json& h) {
  const json& cfg = h["layout"];
  auto layout = BuildEngramLayout(cfg["engram_vocab_size"].get<int64_t>(), I64s(cfg["layer_ids"]),
                                  cfg["max_ngram"].get<int64_t>(), cfg["n_heads"].get<int64_t>());
  EXPECT_TRUE(layout.ok());
  const TokenCompression tc = GoldenCompression();
  std::vector<HashVariant> out;
  for (const auto& [name, v] : h["variants"].items()) {
    const int64_t cv = v["compressed_vocab_size"].get<int64_t>();
    auto mult = EngramHashMultipliers(layout->layer_ids, layout->max_ngram, cv);
    for (size_t l = 0; l < mult.size(); ++l) EXPECT_EQ(mult[l], I64s(v["multipliers"][l])) << name;
    out.push_back({name, std::make_unique<EngramHasher>(*layout, tc.map, cv,
                                                        h["config"]["pad_compressed"].get<int64_t>(), mult)});
  }
  return out;
}

struct HashCase {
  std::string name;
  std::vector<int32_t> ids;
  std::vector<uint8_t> mask;  // empty: all tokens take part
};

HashCase ReadCase(const json& c) {
  HashCase hc{c["name"].get<std::string>(), {}, {}};
  for (const json& t : c["token_ids"]) hc.ids.push_back(t.get<int32_t>());
  if (!c["token_mask"].is_null())
    for (const json& m : c["token_mask"]) hc.mask.push_back(m.get<bool>() ? 1 : 0);
  return hc;
}

// Rows of `ids` hashed in chunks of the given sizes (the last chunk takes the rest).
std::vector<int64_t> HashInChunks(const EngramHasher& h, const HashCase& c, std::vector<size_t> chunks) {
  const size_t n = c.ids.size(), width = h.num_layers() * h.num_cols();
  std::vector<int64_t> rows(n * width);
  EngramHistory history = h.NewHistory();
  size_t at = 0;
  chunks.push_back(n);
  for (size_t len : chunks) {
    len = std::min(len, n - at);
    if (len == 0) continue;
    h.Hash(std::span<const int32_t>(c.ids.data() + at, len), c.mask.empty() ? nullptr : c.mask.data() + at, history,
           rows.data() + at * width);
    at += len;
  }
  return rows;
}

TEST(EngramHash, RowsMatchGoldenCases) {
  REQUIRE_GOLDEN();
  const json h = ReadJson("hash_cases.json");
  const auto hashers = GoldenHashers(h);
  ASSERT_EQ(hashers.size(), 2u);
  int checked = 0;
  for (const json& jc : h["cases"]) {
    const HashCase c = ReadCase(jc);
    const EngramHasher& first = *hashers[0].hasher;
    const int64_t n = static_cast<int64_t>(c.ids.size()), max_n = first.layout().max_ngram;
    for (int64_t t = 0; t < n; ++t) EXPECT_EQ(first.token_map()[c.ids[t]], jc["compressed"][t].get<int64_t>());
    for (const HashVariant& v : hashers) {
      SCOPED_TRACE(c.name + " " + v.name);
      const EngramHasher& hasher = *v.hasher;
      std::vector<int64_t> rows(n * hasher.num_layers() * hasher.num_cols()), ngrams(n * max_n);
      EngramHistory history = hasher.NewHistory();
      ASSERT_TRUE(hasher.CheckTokens(c.ids).ok());
      hasher.Hash(c.ids, c.mask.empty() ? nullptr : c.mask.data(), history, rows.data(), ngrams.data());
      std::vector<int64_t> want_rows, want_ngrams;
      for (const json& per_t : jc["rows"][v.name])
        for (const json& per_layer : per_t)
          for (const json& r : per_layer) want_rows.push_back(r.get<int64_t>());
      for (const json& per_t : jc["ngram_compressed"])
        for (const json& g : per_t) want_ngrams.push_back(g.get<int64_t>());
      EXPECT_EQ(ngrams, want_ngrams);
      EXPECT_EQ(rows, want_rows);
      // Prefill of a prefix then decode steps, and ragged chunks, give the same rows.
      std::vector<size_t> ones(n, 1);
      EXPECT_EQ(HashInChunks(hasher, c, ones), want_rows);
      EXPECT_EQ(HashInChunks(hasher, c, {static_cast<size_t>(n / 2), 1, 2}), want_rows);
      EXPECT_EQ(HashInChunks(hasher, c, {1, 3, 5, 7}), want_rows);
      ++checked;
    }
  }
  EXPECT_EQ(checked, 12);
}

TEST(EngramHash, RejectsTokensWithoutCompressedId) {
  REQUIRE_GOLDEN();
  const auto hashers = GoldenHashers(ReadJson("hash_cases.json"));
  const std::vector<int32_t> ok = {0, 128814}, bad = {0, 5, 128815}, negative = {-1};
  EXPECT_TRUE(hashers[0].hasher->CheckTokens(ok).ok());
  const absl::Status st = hashers[0].hasher->CheckTokens(bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(st.message().find("token id 128815 at index 2"), std::string::npos) << st;
  EXPECT_FALSE(hashers[0].hasher->CheckTokens(negative).ok());
}

// ---- the gate -------------------------------------------------------------------------------

// |got - ref| <= n_ulp bf16 ulps of ref.
::testing::AssertionResult WithinBf16Ulps(const std::string& what, const float* got, const float* ref, int64_t n,
                                          int n_ulp) {
  int64_t bad = 0, worst = -1;
  for (int64_t i = 0; i < n; ++i) {
    const float r = ref[i];
    int e = 0;
    std::frexp(r, &e);
    const float ulp = r == 0 ? std::ldexp(1.0f, -133) : std::ldexp(1.0f, e - 8);
    if (std::fabs(got[i] - r) > n_ulp * ulp && ++bad == 1) worst = i;
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << what << ": " << bad << " of " << n << " beyond " << n_ulp
                                       << " bf16 ulp; first at " << worst << ": got " << got[worst] << ", want "
                                       << ref[worst];
}

struct GateCase {
  std::unique_ptr<SafetensorsFile> file;
  std::string p;  // tensor name prefix
  const TensorInfo& T(const std::string& name) const { return file->tensors().at(p + name); }
  std::vector<float> F(const std::string& name) const { return testing::ReadF32(*file, p + name); }
};

EngramWeights GateWeights(const GateCase& g, int64_t* head_dim) {
  EngramWeights w;
  const TensorInfo& table = g.T("engram.embed.weight");
  *head_dim = table.shape[1];
  w.table.type = kernels::WeightType::kFP8;
  w.table.data = table.data;
  w.table.scales = g.T("engram.embed.scale").data;
  w.table.ld = table.shape[1], w.table.scale_ld = table.shape[1] / 32;
  w.table.block_rows = 1, w.table.block_cols = 32;
  w.table.row_end = table.shape[0], w.table.col_end = table.shape[1];
  const TensorInfo& wkv = g.T("engram.wkv.weight");
  w.wkv.type = kernels::WeightType::kFP8;
  w.wkv.data = wkv.data;
  w.wkv.scales = g.T("engram.wkv.scale").data;
  w.wkv.ld = wkv.shape[1], w.wkv.scale_ld = g.T("engram.wkv.scale").shape[1];
  w.wkv.block_rows = w.wkv.block_cols = 32;
  w.wkv.row_end = wkv.shape[0], w.wkv.col_end = wkv.shape[1];
  const std::vector<float> q = g.F("engram.q_weight"), k = g.F("engram.k_weight");
  for (size_t i = 0; i < q.size(); ++i) w.gate_weight.push_back(q[i] * k[i]);
  return w;
}

TEST(EngramGate, MatchesGoldenCases) {
  REQUIRE_GOLDEN();
  auto file = SafetensorsFile::Open(EngramDir() + "/gate_cases.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  GateCase g{std::move(*file), ""};
  for (const char* prefix : {"e2e.", "gauss."}) {
    SCOPED_TRACE(prefix);
    g.p = prefix;
    const json shape = json::parse(g.file->metadata().at(g.p + "shape"));
    const int64_t T = shape["T"], hc = shape["hc"], D = shape["dim"], cols = shape["n_cols"];
    int64_t hd = 0;
    const EngramWeights w = GateWeights(g, &hd);
    const std::vector<int64_t> rows = testing::ReadI64(*g.file, g.p + "hash_rows");
    const TensorInfo& mask_t = g.T("token_mask");
    const std::vector<uint8_t> mask(mask_t.data, mask_t.data + T);

    // Gather through the local row source: the exact golden bytes.
    LocalEngramRowSource source({{static_cast<const uint8_t*>(w.table.data), w.table.scales, w.table.rows()}}, hd);
    std::vector<uint8_t> codes(T * cols * hd), scales(T * cols * hd / 32);
    auto fetch = source.Start(0, rows, codes.data(), scales.data());
    ASSERT_TRUE(fetch.ok()) << fetch.status();
    ASSERT_TRUE((*fetch)->Wait().ok());
    EXPECT_EQ(0, std::memcmp(codes.data(), g.T("gathered_rows").data, codes.size()));
    EXPECT_EQ(0, std::memcmp(scales.data(), g.T("gathered_scales").data, scales.size()));
    std::vector<float> emb(T * cols * hd);
    EngramDequantRows(codes.data(), scales.data(), T * cols, hd, emb.data());
    EXPECT_EQ(emb, g.F("emb"));

    const std::vector<float> x0 = g.F("x");
    const float eps = 1e-20f;  // V4.1's norm_eps, as the cases use
    std::vector<float> kv_f32, dot, gate;
    EngramGateTaps taps{&kv_f32, &dot, &gate};
    // The reference's arithmetic: BF16 kv, BF16 output.
    {
      std::vector<float> x = x0, e = emb;
      EngramGate(w, e.data(), T, hc, D, eps, mask.data(), {.act_qdq = true, .bf16_kv = true, .bf16_out = true},
                 x.data(), &taps);
      const std::vector<float> want_kv = g.F("kv_f32");
      if (std::string(prefix) == "e2e.") {
        EXPECT_EQ(kv_f32, want_kv) << "e2e block sums are exact: kv_f32 must be too";
      } else {
        EXPECT_TRUE(WithinBf16Ulps("kv_f32", kv_f32.data(), want_kv.data(), want_kv.size(), 1));
      }
      EXPECT_TRUE(testing::AllClose("dot", dot.data(), g.F("dot").data(), T * hc, {.abs = 1e-6}));
      EXPECT_TRUE(testing::AllClose("gate", gate.data(), g.F("gate").data(), T * hc, {.abs = 1e-6}));
      EXPECT_TRUE(WithinBf16Ulps("out", x.data(), g.F("out").data(), x.size(), 1));
    }
    // The same before the final rounding.
    {
      std::vector<float> x = x0, e = emb;
      EngramGate(w, e.data(), T, hc, D, eps, mask.data(), {.act_qdq = true, .bf16_kv = true, .bf16_out = false},
                 x.data());
      const std::vector<float> want = g.F("out_f32");
      int64_t bad = 0;
      for (size_t i = 0; i < want.size(); ++i) bad += std::fabs(x[i] - want[i]) > 1e-6 + 1e-6 * std::fabs(want[i]);
      EXPECT_EQ(bad, 0) << "out_f32 elements beyond 1e-6 + 1e-6 |out|";
    }
    // The runtime's float32 path (kv not rounded) against float64 math.
    {
      std::vector<float> x = x0, e = emb;
      EngramGate(w, e.data(), T, hc, D, eps, mask.data(), {}, x.data());
      EXPECT_TRUE(testing::AllClose("out (fp32 kv)", x.data(), g.F("out_f64math").data(), x.size(), {.abs = 2e-3}));
      // Masked tokens pass through unchanged.
      int64_t masked = 0;
      for (int64_t t = 0; t < T; ++t) {
        if (mask[t]) continue;
        ++masked;
        EXPECT_EQ(gate[t * hc], 0.f) << t;
        EXPECT_TRUE(std::equal(&x[t * hc * D], &x[(t + 1) * hc * D], &x0[t * hc * D])) << t;
      }
      EXPECT_EQ(masked, 1);
    }
  }
}

TEST(EngramGate, EndToEndHashRowsMatchTheGateCase) {
  REQUIRE_GOLDEN();
  auto file = SafetensorsFile::Open(EngramDir() + "/gate_cases.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();
  const json cfg = json::parse((*file)->metadata().at("e2e.config"));
  auto layout = BuildEngramLayout(cfg["engram_vocab_size"], I64s(cfg["engram_layer_ids"]),
                                  cfg["engram_max_ngram_size"], cfg["engram_n_heads"]);
  ASSERT_TRUE(layout.ok());
  EXPECT_EQ(layout->num_rows, I64s(cfg["engram_num_embeddings"]));
  const int64_t cv = cfg["compressed_vocab_size"];
  auto mult = EngramHashMultipliers(layout->layer_ids, layout->max_ngram, cv);
  const std::vector<int64_t> want_mult = testing::ReadI64(**file, "e2e.hash_multipliers");
  EXPECT_EQ(mult[0], std::vector<int64_t>(want_mult.begin(), want_mult.begin() + 3));
  EXPECT_EQ(mult[1], std::vector<int64_t>(want_mult.begin() + 3, want_mult.end()));
  EngramHasher hasher(*layout, GoldenCompression().map, cv, cfg["pad_compressed"], mult);
  std::vector<int32_t> ids;
  for (int64_t id : testing::ReadI64(**file, "e2e.token_ids")) ids.push_back(static_cast<int32_t>(id));
  const TensorInfo& mask_t = (*file)->tensors().at("e2e.token_mask");
  std::vector<int64_t> rows(ids.size() * 2 * hasher.num_cols());
  EngramHistory history = hasher.NewHistory();
  hasher.Hash(ids, mask_t.data, history, rows.data());
  const int64_t li = cfg["layer_hash_index"], cols = hasher.num_cols();
  std::vector<int64_t> got;
  for (size_t t = 0; t < ids.size(); ++t)
    for (int64_t c = 0; c < cols; ++c) got.push_back(rows[(t * 2 + li) * cols + c]);
  EXPECT_EQ(got, testing::ReadI64(**file, "e2e.hash_rows"));
}

// ---- config, hasher and loader errors -------------------------------------------------------

json TinyEngramConfig() { return json::parse(*BuiltinConfigJson("v4-tiny-engram")); }

TEST(EngramConfig, ParsesThePublishedKeys) {
  auto c = ParseModelConfig(TinyEngramConfig().dump(), "cfg");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->engram_layer_ids, std::vector<int64_t>({1, 3}));
  EXPECT_EQ(c->engram_num_embeddings, std::vector<int64_t>({8214, 8612}));
  EXPECT_EQ(c->engram_max_ngram_size, 3);
  EXPECT_EQ(c->engram_head_dim, 64);
  EXPECT_EQ(c->engram_compressed_vocab_size, 98627);
  EXPECT_EQ(c->engram_index(3), 1);
  EXPECT_EQ(c->engram_index(2), -1);
  auto plain = ParseModelConfig(*BuiltinConfigJson("v4-tiny"), "cfg");
  ASSERT_TRUE(plain.ok());
  EXPECT_FALSE(plain->has_engram());
}

TEST(EngramConfig, BadFieldsFailNamingTheField) {
  struct Case {
    const char* field;
    json value;
  };
  const Case cases[] = {
      {"engram_num_embeddings", json::array({8214})},
      {"engram_layer_ids", json::array({1, 5})},
      {"engram_layer_ids", json::array({1, 1})},
      {"engram_head_dim", 48},
      {"engram_max_ngram_size", 1},
      {"engram_pad_id", 129280},
      {"engram_n_heads", 0},
      {"engram_vocab_size", "1000"},
  };
  for (const Case& c : cases) {
    json j = TinyEngramConfig();
    j[c.field] = c.value;
    auto parsed = ParseModelConfig(j.dump(), "cfg");
    ASSERT_FALSE(parsed.ok()) << c.field << " = " << c.value;
    EXPECT_NE(parsed.status().message().find(c.field), std::string::npos) << parsed.status();
  }
  json j = TinyEngramConfig();
  j.erase("engram_head_dim");
  auto missing = ParseModelConfig(j.dump(), "cfg");
  ASSERT_FALSE(missing.ok());
  EXPECT_NE(missing.status().message().find("engram_head_dim' is missing"), std::string::npos) << missing.status();
}

TEST(EngramHasher, ChecksTheConfigAgainstTokenizerAndLayout) {
  REQUIRE_GOLDEN();
  auto c = ParseModelConfig(TinyEngramConfig().dump(), "cfg");
  ASSERT_TRUE(c.ok());
  auto h = MakeEngramHasher(*c, GoldenCompression(), "golden map");
  ASSERT_TRUE(h.ok()) << h.status();
  EXPECT_EQ((*h)->pad_compressed(), 2);

  ModelConfig v41_count = *c;
  v41_count.engram_compressed_vocab_size = 99092;  // the released config with this tokenizer
  auto bad_cv = MakeEngramHasher(v41_count, GoldenCompression(), "golden map");
  ASSERT_FALSE(bad_cv.ok());
  EXPECT_NE(bad_cv.status().message().find("engram_compressed_vocab_size = 99092"), std::string::npos);
  EXPECT_NE(bad_cv.status().message().find("98627 keys"), std::string::npos) << bad_cv.status();

  ModelConfig bad_rows = *c;
  bad_rows.engram_num_embeddings = {8214, 8613};
  auto rows = MakeEngramHasher(bad_rows, GoldenCompression(), "golden map");
  ASSERT_FALSE(rows.ok());
  EXPECT_NE(rows.status().message().find("engram_num_embeddings"), std::string::npos) << rows.status();

  auto missing = LoadEngramHasher(*c, "/nonexistent/tokenizer.json");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

// A copy of a checkpoint with tensors replaced (or removed when `mutate` clears the name).
std::shared_ptr<const Checkpoint> EditCheckpoint(const Checkpoint& ckpt,
                                                 const std::function<void(TensorToWrite&)>& mutate) {
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, info] : ckpt.all()) {
    TensorToWrite t{name, info->dtype, info->shape, std::vector<uint8_t>(info->data, info->data + info->nbytes)};
    mutate(t);
    if (!t.name.empty()) tensors.push_back(std::move(t));
  }
  auto image = std::make_shared<const std::vector<uint8_t>>(WriteSafetensors(tensors));
  auto file = SafetensorsFile::FromMemory(image, "edited");
  EXPECT_TRUE(file.ok()) << file.status();
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  files.push_back(std::move(*file));
  return Checkpoint::FromFiles(std::move(files));
}

// builtin:v4-tiny-engram with the hasher built from the golden compression map (so these tests do
// not need the npm tokenizer). The model is generated once for the suite.
class EngramModelTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    if (!GoldenAvailable()) return;
    auto b = MakeBuiltinModel("v4-tiny-engram");
    ASSERT_TRUE(b.ok()) << b.status();
    builtin_ = new BuiltinModel(std::move(*b));
  }
  void SetUp() override {
    if (!GoldenAvailable()) GTEST_SKIP() << "golden/engram not found";
    ASSERT_NE(builtin_, nullptr);
    auto h = MakeEngramHasher(builtin().config, GoldenCompression(), "golden map");
    ASSERT_TRUE(h.ok()) << h.status();
    options_.engram_hasher = *h;
  }
  static const BuiltinModel& builtin() { return *builtin_; }

  absl::StatusOr<std::unique_ptr<ModelWeights>> Load(std::shared_ptr<const Checkpoint> ckpt) const {
    return LoadWeights(std::move(ckpt), builtin().config, options_);
  }

  std::unique_ptr<Model> MakeModel(bool qdq = true) const {
    auto w = Load(builtin().checkpoint);
    EXPECT_TRUE(w.ok()) << w.status();
    ForwardOptions opt;
    opt.qdq = qdq;
    return std::make_unique<Model>(std::shared_ptr<const ModelWeights>(std::move(*w)), opt);
  }

  static inline BuiltinModel* builtin_ = nullptr;  // shared by the suite, never freed
  LoadOptions options_;
};

TEST_F(EngramModelTest, LoaderRejectsBadEngramTensors) {
  ASSERT_TRUE(Load(builtin().checkpoint).ok());
  auto expect_error = [&](const std::function<void(TensorToWrite&)>& mutate, const std::string& needle) {
    auto w = Load(EditCheckpoint(*builtin().checkpoint, mutate));
    ASSERT_FALSE(w.ok()) << needle;
    EXPECT_NE(w.status().message().find(needle), std::string::npos) << w.status();
  };
  // A table whose row count disagrees with engram_num_embeddings.
  expect_error(
      [](TensorToWrite& t) {
        if (t.name == "layers.3.engram.embed.weight") t.shape[0] -= 1, t.bytes.resize(t.bytes.size() - 64);
      },
      "layers.3.engram.embed.weight");
  expect_error(
      [](TensorToWrite& t) {
        if (t.name == "layers.1.engram.embed.scale") t.name.clear();
      },
      "layers.1.engram.embed.scale");
  expect_error(
      [](TensorToWrite& t) {
        if (t.name == "layers.1.engram.wkv.scale") t.name.clear();
      },
      "layers.1.engram.wkv.scale");
  expect_error(
      [](TensorToWrite& t) {
        if (t.name == "layers.1.engram.q_weight") t.name.clear();
      },
      "layers.1.engram.q_weight");
  expect_error(
      [](TensorToWrite& t) {
        if (t.name == "layers.1.engram.embed.weight") t.dtype = DType::kU8;
      },
      "expected F8_E4M3");
  // Engram tensors for a layer the config does not list.
  expect_error(
      [](TensorToWrite& t) {
        if (t.name == "layers.1.engram.q_weight") t.name = "layers.2.engram.q_weight";
      },
      "engram_layer_ids lacks");
  // No hasher and no tokenizer.
  LoadOptions none;
  auto w = LoadWeights(builtin().checkpoint, builtin().config, none);
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("tokenizer.json"), std::string::npos) << w.status();
}

TEST_F(EngramModelTest, LocalRowSourceRejectsBadIds) {
  auto w = Load(builtin().checkpoint);
  ASSERT_TRUE(w.ok());
  const WeightMatrix& table = (*w)->layers[1].engram.table;
  LocalEngramRowSource source({{static_cast<const uint8_t*>(table.data), table.scales, table.rows()}}, 64);
  std::vector<uint8_t> codes(3 * 64), scales(3 * 2);
  const std::vector<int64_t> ok = {0, 8213, 5}, past = {0, 8214}, negative = {-1};
  EXPECT_TRUE(source.Start(0, ok, codes.data(), scales.data()).ok());
  auto st = source.Start(0, past, codes.data(), scales.data());
  EXPECT_EQ(st.status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(st.status().message().find("row id 8214"), std::string::npos) << st.status();
  EXPECT_FALSE(source.Start(0, negative, codes.data(), scales.data()).ok());
  EXPECT_FALSE(source.Start(1, ok, codes.data(), scales.data()).ok());
}

// Records the order of gathers and waits, and the ids requested.
class RecordingSource : public EngramRowSource {
 public:
  RecordingSource(std::shared_ptr<EngramRowSource> inner, std::vector<std::string>* events, bool zeros)
      : inner_(std::move(inner)), events_(events), zeros_(zeros) {}
  int64_t num_rows(int64_t e) const override { return inner_->num_rows(e); }
  int64_t head_dim() const override { return inner_->head_dim(); }
  absl::StatusOr<std::unique_ptr<EngramFetch>> Start(int64_t e, std::span<const int64_t> ids, uint8_t* codes,
                                                     uint8_t* scales) override {
    events_->push_back("start " + std::to_string(e));
    requested.emplace_back(ids.begin(), ids.end());
    auto f = inner_->Start(e, ids, codes, scales);
    if (f.ok() && zeros_) std::fill(codes, codes + ids.size() * head_dim(), 0);
    if (!f.ok()) return f.status();
    return std::unique_ptr<EngramFetch>(new Fetch(std::move(*f), events_, e));
  }
  std::vector<std::vector<int64_t>> requested;

 private:
  struct Fetch : EngramFetch {
    Fetch(std::unique_ptr<EngramFetch> inner, std::vector<std::string>* events, int64_t e)
        : inner(std::move(inner)), events(events), e(e) {}
    absl::Status Wait() override {
      events->push_back("wait " + std::to_string(e));
      return inner->Wait();
    }
    std::unique_ptr<EngramFetch> inner;
    std::vector<std::string>* events;
    int64_t e;
  };
  std::shared_ptr<EngramRowSource> inner_;
  std::vector<std::string>* events_;
  bool zeros_;
};

std::shared_ptr<EngramRowSource> LocalSourceOf(const ModelWeights& w) {
  std::vector<EngramTableView> views;
  for (int64_t l : w.config.engram_layer_ids) {
    const WeightMatrix& t = w.layers[l].engram.table;
    views.push_back({static_cast<const uint8_t*>(t.data), t.scales, t.rows()});
  }
  return std::make_shared<LocalEngramRowSource>(std::move(views), w.config.engram_head_dim);
}

std::vector<int32_t> Tokens(int64_t n) {
  std::vector<int32_t> t(n);
  for (int64_t i = 0; i < n; ++i) t[i] = static_cast<int32_t>((2654435761u * (i + 3)) % 128000u);
  t[0] = 0;
  return t;
}

std::vector<float> Logits(const Model& m, const std::vector<int32_t>& tokens, const std::vector<int64_t>& chunks) {
  SequenceCache cache = m.NewCache();
  std::vector<float> logits(m.config().vocab_size);
  int64_t at = 0;
  for (int64_t c : chunks) {
    EXPECT_TRUE(m.Forward(std::span<const int32_t>(tokens.data() + at, c), cache, logits.data()).ok());
    at += c;
  }
  return logits;
}

TEST_F(EngramModelTest, GathersEveryLayerUpFrontWithTheHashedRows) {
  auto m = MakeModel();
  std::vector<std::string> events;
  auto source = std::make_shared<RecordingSource>(LocalSourceOf(m->weights()), &events, false);
  m->SetEngramRowSource(source);
  const auto tokens = Tokens(9);
  SequenceCache cache = m->NewCache();
  ASSERT_TRUE(m->Forward(tokens, cache, nullptr).ok());
  EXPECT_EQ(events, std::vector<std::string>({"start 0", "start 1", "wait 0", "wait 1"}));
  const EngramHasher& h = *m->weights().engram_hasher;
  std::vector<int64_t> rows(tokens.size() * 2 * h.num_cols());
  EngramHistory history = h.NewHistory();
  h.Hash(tokens, nullptr, history, rows.data());
  ASSERT_EQ(source->requested.size(), 2u);
  for (int64_t e = 0; e < 2; ++e)
    for (size_t t = 0; t < tokens.size(); ++t)
      for (int64_t c = 0; c < h.num_cols(); ++c)
        ASSERT_EQ(source->requested[e][t * h.num_cols() + c], rows[(t * 2 + e) * h.num_cols() + c]);
}

TEST_F(EngramModelTest, PrefillMatchesDecodeAndEngramMatters) {
  for (bool qdq : {true, false}) {
    auto m = MakeModel(qdq);
    const auto tokens = Tokens(12);
    const auto full = Logits(*m, tokens, {12});
    EXPECT_TRUE(testing::AllClose("prefill vs decode", Logits(*m, tokens, {11, 1}).data(), full.data(), full.size(),
                                  {.abs = 1e-4}));
    EXPECT_TRUE(testing::AllClose("chunks", Logits(*m, tokens, {1, 2, 4, 5}).data(), full.data(), full.size(),
                                  {.abs = 1e-4}));
    // All-zero rows give a zero value: the logits must move.
    std::vector<std::string> events;
    m->SetEngramRowSource(std::make_shared<RecordingSource>(LocalSourceOf(m->weights()), &events, true));
    const auto zero = Logits(*m, tokens, {12});
    double diff = 0;
    for (size_t i = 0; i < full.size(); ++i) diff = std::max(diff, std::fabs(double(full[i]) - zero[i]));
    EXPECT_GT(diff, 1e-2) << "Engram rows did not change the logits";
  }
}

TEST_F(EngramModelTest, TokensWithoutCompressedIdFail) {
  auto m = MakeModel();
  const std::vector<int32_t> tokens = {0, 128815};  // in the vocab, beyond the tokenizer
  EXPECT_FALSE(m->CheckTokens(tokens).ok());
  SequenceCache cache = m->NewCache();
  const absl::Status st = m->Forward(tokens, cache, nullptr);
  EXPECT_EQ(st.code(), absl::StatusCode::kOutOfRange);
  EXPECT_NE(st.message().find("128815"), std::string::npos) << st;
}

// ---- dsv4 engram-ids ------------------------------------------------------------------------

struct CommandResult {
  int code;
  std::string out;
};

CommandResult RunDsv4(const std::string& args) {
  const std::string cmd = std::string(DSV4_BINARY) + " " + args + " 2>&1";
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  while (size_t n = fread(buf, 1, sizeof(buf), p)) out.append(buf, n);
  const int status = pclose(p);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, out};
}

std::string JoinIds(const std::vector<int32_t>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size(); ++i) s += (i ? "," : "") + std::to_string(ids[i]);
  return s;
}

TEST(EngramIdsCommand, PrintsTheGoldenRows) {
  REQUIRE_GOLDEN();
  REQUIRE_TOKENIZER();
  const json h = ReadJson("hash_cases.json");
  // builtin:v4-tiny-engram and a model directory with the same config both use hash_cases' layout.
  const std::string dir = testing::TempDir();
  std::ofstream(dir + "/config.json") << TinyEngramConfig().dump();
  fs::copy_file(NpmTokenizer(), dir + "/tokenizer.json");
  // Each unmasked case (the command has no mask) on the built-in model, alternating the layer; the
  // longest also on the directory, both layers (each run builds the compression map: ~1 s).
  int checked = 0, run = 0;
  for (const json& jc : h["cases"]) {
    const HashCase c = ReadCase(jc);
    if (!c.mask.empty()) continue;
    ++run;
    for (const std::string& model : {std::string("builtin:v4-tiny-engram"), dir}) {
      for (int li = 0; li < 2; ++li) {
        if (model == dir ? c.name != "case_variants_len17" : li != run % 2) continue;
        const int layer = li == 0 ? 1 : 3;
        const CommandResult r = RunDsv4("engram-ids --model " + model + " --layer " + std::to_string(layer) +
                                        " --prompt-ids " + JoinIds(c.ids));
        ASSERT_EQ(r.code, 0) << r.out;
        std::istringstream lines(r.out);
        std::string line;
        size_t t = 0;
        while (std::getline(lines, line)) {
          ASSERT_LT(t, c.ids.size());
          EXPECT_EQ(json::parse(line), jc["rows"]["cv98627"][t][li]) << c.name << " t " << t;
          ++t;
        }
        EXPECT_EQ(t, c.ids.size());
        ++checked;
      }
    }
  }
  EXPECT_EQ(checked, 6);
}

// An id the vocabulary has but the Engram compression map does not (the tokenizer's 128815 ids
// end below vocab_size 129280) is a bad input of the command, exit 2, naming the flag; an id past
// the vocabulary too.
TEST(LogitsCommand, TokenIdsAreCheckedAsTheModelChecksThem) {
  REQUIRE_TOKENIZER();
  const std::string out = testing::TempDir() + "/bad_ids.npy";
  CommandResult r = RunDsv4("logits --model builtin:v4-tiny-engram --prompt-ids 1,128815 --out " + out);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--prompt-ids: token id 128815 at index 1 has no Engram compressed id"), std::string::npos)
      << r.out;
  r = RunDsv4("logits --model builtin:v4-tiny --prompt-ids 5 --decode-ids 129280 --out " + out);
  EXPECT_EQ(r.code, 2) << r.out;
  EXPECT_NE(r.out.find("--decode-ids: token id 129280 at index 0 is outside [0, 129280)"), std::string::npos) << r.out;
}

TEST(EngramIdsCommand, BadInputsFailClearly) {
  REQUIRE_TOKENIZER();
  auto expect_fail = [](const std::string& args, const std::string& needle) {
    const CommandResult r = RunDsv4("engram-ids " + args);
    EXPECT_NE(r.code, 0) << args;
    EXPECT_NE(r.out.find(needle), std::string::npos) << args << "\n" << r.out;
  };
  expect_fail("--layer 2 --prompt-ids 1,2", "not an Engram layer");
  expect_fail("--layer 1 --prompt-ids 1,128815", "token id 128815 at index 1");
  expect_fail("--layer 1", "--prompt-ids is required");
  expect_fail("--prompt-ids 1", "--layer is required");
  expect_fail("--model builtin:v4-tiny --layer 1 --prompt-ids 1", "no Engram layers");
  // The released V4.1 compressed size with this tokenizer.
  const std::string dir = testing::TempDir();
  json cfg = TinyEngramConfig();
  cfg["engram_compressed_vocab_size"] = 99092;
  std::ofstream(dir + "/config.json") << cfg.dump();
  fs::copy_file(NpmTokenizer(), dir + "/tokenizer.json");
  expect_fail("--model " + dir + " --layer 1 --prompt-ids 1", "engram_compressed_vocab_size = 99092");
  const std::string no_tok = testing::TempDir();
  std::ofstream(no_tok + "/config.json") << TinyEngramConfig().dump();
  expect_fail("--model " + no_tok + " --layer 1 --prompt-ids 1", "has no tokenizer.json");
}

}  // namespace
}  // namespace dsv4
