// Whole-model invariants on configurations the golden data does not cover.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <numeric>
#include <vector>

#include "runtime/builtin.h"
#include "runtime/model/model.h"
#include "tests/testutil.h"

namespace dsv4 {
namespace {

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

TEST(Model, UnknownBuiltinIsAnError) {
  auto w = LoadModel("builtin:nope");
  ASSERT_FALSE(w.ok());
  EXPECT_NE(w.status().message().find("builtin:nope"), std::string::npos);
}

}  // namespace
}  // namespace dsv4
