// What `dsv4 bench decode` reports, checked without timing anything: the bytes it counts per step
// (experts read once per step, not once per token) and the bookkeeping of its per-step ratios.
#include <gtest/gtest.h>

#include <algorithm>
#include <nlohmann/json.hpp>
#include <vector>

#include "base/flags.h"
#include "bench/commands.h"
#include "bench/limits.h"
#include "bench/model_bench.h"
#include "runtime/builtin.h"
#include "runtime/model/model.h"
#include "tests/testutil.h"

namespace dsv4 {
namespace {

// v4-tiny (16 experts, top-4, 5 layers) with a small vocabulary.
std::unique_ptr<Model> TinyModel() { return testing::MakeTestModel(testing::TinyConfig(), /*qdq=*/true, 7); }

double WeightBytesPerStep(const Model& m, int64_t batch) {
  bench::DecodeBenchOptions o;
  o.batch = batch, o.steps = 3, o.warmup = 1, o.context = 5;
  auto r = bench::RunDecodeBench(m, o);
  EXPECT_TRUE(r.ok()) << r.status();
  return r->work.weight_bytes * static_cast<double>(batch);
}

// At batch 8 the 32 (token, expert) pairs of a layer hit at most the 16 experts, and each expert
// routed to is read once: the step reads at most 12 more experts per layer than a batch-1 step.
// Reading per token would add 28 per layer.
TEST(DecodeBench, ExpertsAreReadOncePerStep) {
  auto m = TinyModel();
  const ModelConfig& c = m->config();
  const double D = static_cast<double>(c.hidden_size), I = static_cast<double>(c.moe_intermediate_size);
  const double expert_bytes = 3 * (D * I / 2 + D * I / 32);  // w1, w3, w2 in FP4 with per-32 E8M0 scales
  const double layers = static_cast<double>(c.num_hidden_layers);
  const double one = WeightBytesPerStep(*m, 1), eight = WeightBytesPerStep(*m, 8);
  const double extra_experts = (eight - one) / expert_bytes / layers;
  EXPECT_GT(extra_experts, 0.0);
  EXPECT_LE(extra_experts, static_cast<double>(c.n_routed_experts - c.num_experts_per_tok) + 1e-9)
      << "batch 1: " << one << " bytes per step, batch 8: " << eight;
}

// With a triad, every timed step has its own limit, and the reported ratio is the median of the
// per-step ratios.
TEST(DecodeBench, RatioIsTheMedianOfPerStepRatios) {
  auto m = TinyModel();
  bench::StreamTriad triad(int64_t{1} << 18);
  bench::DecodeBenchOptions o;
  o.steps = 5, o.warmup = 1, o.triad = &triad;
  auto r = bench::RunDecodeBench(*m, o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->stream_gbps.size(), 5u);
  ASSERT_EQ(r->step_seconds.size(), 5u);
  std::vector<double> ratios;
  for (size_t i = 0; i < 5; ++i) {
    EXPECT_GT(r->stream_gbps[i], 0.0);
    ratios.push_back(r->work.bytes() / r->step_seconds[i] / 1e9 / r->stream_gbps[i]);
  }
  std::nth_element(ratios.begin(), ratios.begin() + 2, ratios.end());
  EXPECT_DOUBLE_EQ(r->median_ratio_to_stream, ratios[2]);
  // Without one, nothing is measured.
  o.triad = nullptr;
  auto plain = bench::RunDecodeBench(*m, o);
  ASSERT_TRUE(plain.ok());
  EXPECT_TRUE(plain->stream_gbps.empty());
  EXPECT_EQ(plain->median_ratio_to_stream, 0.0);
}

// With a context, the short sequences' steps alternate with the long ones, are left out of the
// work counted (same bytes per token as without them), and the speed ratio is the median of the
// per-pair ratios.
TEST(DecodeBench, ShortContextStepsAlternateAndAreNotCounted) {
  auto m = TinyModel();
  bench::DecodeBenchOptions o;
  o.steps = 5, o.warmup = 1, o.context = 9;
  auto plain = bench::RunDecodeBench(*m, o);
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_TRUE(plain->short_step_seconds.empty());
  o.compare_short = true;
  auto r = bench::RunDecodeBench(*m, o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->short_step_seconds.size(), 5u);
  EXPECT_EQ(r->work.weight_bytes, plain->work.weight_bytes);
  EXPECT_EQ(r->work.cache_bytes, plain->work.cache_bytes);
  std::vector<double> speed;
  for (size_t i = 0; i < 5; ++i) speed.push_back(r->short_step_seconds[i] / r->step_seconds[i]);
  std::nth_element(speed.begin(), speed.begin() + 2, speed.end());
  EXPECT_DOUBLE_EQ(r->context_speed_ratio, speed[2]);
  EXPECT_GT(r->short_tokens_per_s, 0.0);
}

TEST(DecodeBench, RejectsBadOptions) {
  auto m = TinyModel();
  bench::DecodeBenchOptions o;
  o.batch = 0;
  auto r = bench::RunDecodeBench(*m, o);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.status().message().find("batch"), std::string::npos);
}

// `bench kernels` names a bad flag before it touches a device (so on any machine), and without a
// GPU or a CUDA build it fails with an error that says so; it never reports figures it did not take.
absl::Status RunKernelsBench(std::vector<std::string> args) {
  Flags flags;
  bench::KernelsFlags(flags);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  if (absl::Status s = flags.Parse(static_cast<int>(argv.size()), argv.data(), 0); !s.ok()) return s;
  return bench::Kernels(flags);
}

TEST(KernelsBench, BadFlagsAreNamedBeforeTheDevice) {
  absl::Status s = RunKernelsBench({"--models", "flash,v5"});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("'v5'"), std::string::npos) << s;
  s = RunKernelsBench({"--device", "cpu"});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("--device cuda"), std::string::npos) << s;
}

// `bench sample` reports every case it was asked for (and the peaked one) against a read pass it
// took itself, and names a bad spread or sampling value before it times anything.
absl::Status RunSampleBench(std::vector<std::string> args, std::string* out) {
  Flags flags;
  bench::SampleFlags(flags);
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  if (absl::Status s = flags.Parse(static_cast<int>(argv.size()), argv.data(), 0); !s.ok()) return s;
  ::testing::internal::CaptureStdout();
  const absl::Status s = bench::Sample(flags);
  *out = ::testing::internal::GetCapturedStdout();
  return s;
}

TEST(SampleBench, ReportsEveryCaseAgainstAReadPass) {
  std::string out;
  ASSERT_TRUE(RunSampleBench({"--vocab", "4096", "--rows", "3", "--sd", "1,3", "--json", "true"}, &out).ok()) << out;
  const nlohmann::json j = nlohmann::json::parse(out);
  EXPECT_EQ(j["vocab"], 4096);
  ASSERT_EQ(j["cases"].size(), 3u);
  EXPECT_EQ(j["cases"][0]["logits"], "sd 1");
  EXPECT_EQ(j["cases"][1]["logits"], "sd 3");
  EXPECT_EQ(j["cases"][2]["logits"], "peaked");
  for (const auto& c : j["cases"]) {
    EXPECT_GT(c["us_per_row"].get<double>(), 0);
    EXPECT_GT(c["pass_us"].get<double>(), 0);
    // The figures are printed to 3 decimals, so their quotient matches the ratio within 2%.
    const double ratio = c["us_per_row"].get<double>() / c["pass_us"].get<double>();
    EXPECT_NEAR(c["ratio_to_pass"].get<double>(), ratio, 0.02 * ratio);
  }
}

TEST(SampleBench, BadValuesAreNamed) {
  std::string out;
  absl::Status s = RunSampleBench({"--sd", "1,-2"}, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("'-2'"), std::string::npos) << s;
  s = RunSampleBench({"--top-p", "0"}, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("sampling.top_p"), std::string::npos) << s;
}

}  // namespace
}  // namespace dsv4
