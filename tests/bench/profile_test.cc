// The profile `dsv4 bench ... --profile-out` writes: measured, written, read back by the planner's
// parser with every rate intact, and a plan answered with it; and the loop closed: the planner on
// that profile predicts the decode rate `dsv4 bench decode` measures in the same run.
#include "bench/profile.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "bench/comm_bench.h"
#include "bench/limits.h"
#include "bench/model_bench.h"
#include "cluster/hardware.h"
#include "cluster/model_preset.h"
#include "cluster/planner.h"
#include "cluster/profile.h"
#include "cluster/scenario.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"
#include "runtime/builtin.h"
#include "runtime/model/model.h"

namespace dsv4 {
namespace {

std::unique_ptr<Model> Builtin(const std::string& name) {
  auto b = MakeBuiltinModel(name);
  EXPECT_TRUE(b.ok()) << b.status();
  auto w = LoadWeights(b->checkpoint, b->config);
  EXPECT_TRUE(w.ok()) << w.status();
  cluster::RegisterModelConfig("builtin:" + name, b->config_json);
  return std::make_unique<Model>(std::shared_ptr<const ModelWeights>(std::move(*w)), ForwardOptions{});
}

// The scenario of `dsv4 bench decode` on this host: device "cpu", the runtime's formats (FP8 dense
// weights with 128x128 scales, FP4 experts with a scale per 32), `batch` sequences decoding from a
// short context (the bench starts from an empty cache; its warm-up and timed steps fill ~20 tokens).
cluster::Scenario BenchScenario(const std::string& model, double batch) {
  const nlohmann::json j = {
      {"model", "builtin:" + model},
      {"weights", {{"dense_bits", 8}, {"expert_bits", 4.25}, {"kv_bits", 8}}},
      {"hardware", {{"device", "cpu"}, {"devices_per_node", 1}, {"nodes", 1}}},
      {"parallel", {{"tp", 1}, {"ep", 1}}},
      {"software", {{"engine", "dsv4"}}},
      {"workload", {{"input_tokens", 4}, {"output_tokens", 24}, {"batch_per_device", batch}}},
      {"question", "decode_throughput"}};
  auto s = cluster::ParseScenario(j.dump(), model);
  EXPECT_TRUE(s.ok()) << s.status();
  return *s;
}

TEST(ProfileLoop, WrittenProfileReadsBackAndPlans) {
  auto tiny_model = Builtin("v4-tiny");
  ASSERT_NE(tiny_model, nullptr);
  bench::ProfileOptions po;
  po.tokens = {1, 4, 16};
  po.tokens_per_expert = {1, 4};
  po.stream_bytes = int64_t{32} << 20;
  po.reps = 1;
  auto profile = bench::MeasureCpuProfile(po);
  ASSERT_TRUE(profile.ok()) << profile.status();
  auto written = cluster::ParseProfile(bench::CpuProfileJson(*profile, "profile_test"), "profile_test.json");
  ASSERT_TRUE(written.ok()) << written.status();
  ASSERT_EQ(written->gemm_fp8.points.size(), po.tokens.size());
  // The file carries the rates as measured (printed with enough digits for 1e-5).
  EXPECT_NEAR(written->grouped_gemm.points[0].rate, profile->grouped_gemm[0].tflops,
              profile->grouped_gemm[0].tflops * 1e-5);
  cluster::PlanOptions plan;
  plan.profile = &*written;
  auto answer = cluster::Plan(BenchScenario("v4-tiny", 16), cluster::BuiltinCatalog(), plan);
  ASSERT_TRUE(answer.ok()) << answer.status();
  const double tps = (*answer)["decode_tokens_per_s_per_device"].get<double>();
  EXPECT_TRUE(std::isfinite(tps) && tps > 0) << tps;
}

// The best of two profiles of one machine, point by point: the higher rates and bandwidth, the lower
// fixed times. Another process on the cores only ever slows a measurement, so the best of several
// approaches what the machine does alone.
void KeepBest(bench::CpuProfile& best, const bench::CpuProfile& p) {
  auto curve = [](std::vector<bench::RatePoint>& into, const std::vector<bench::RatePoint>& from) {
    ASSERT_EQ(into.size(), from.size());
    for (size_t i = 0; i < into.size(); ++i) {
      into[i].tflops = std::max(into[i].tflops, from[i].tflops);
      into[i].full_tflops = std::max(into[i].full_tflops, from[i].full_tflops);
    }
  };
  curve(best.gemm_fp8, p.gemm_fp8);
  curve(best.gemm_bf16, p.gemm_bf16);
  curve(best.grouped_gemm, p.grouped_gemm);
  ASSERT_EQ(best.product_floor.size(), p.product_floor.size());
  for (size_t i = 0; i < p.product_floor.size(); ++i)
    best.product_floor[i].us = std::min(best.product_floor[i].us, p.product_floor[i].us);
  best.kernel_floor_us = std::min(best.kernel_floor_us, p.kernel_floor_us);
  best.stream_gbps = std::max(best.stream_gbps, p.stream_gbps);
  best.expert_gflops = std::max(best.expert_gflops, p.expert_gflops);
  best.peak_gflops = std::max(best.peak_gflops, p.peak_gflops);
  best.cpu_availability = std::max(best.cpu_availability, p.cpu_availability);
}

// The planner, given the profile measured here, predicts `dsv4 bench decode` within 15% (cluster/
// README.md, "Profile format"): the tiny model at batch 1 and 16, and `builtin:v4-bench` (the 4.7 GB
// V4-Flash-shaped model `dsv4 bench decode` runs by default) at batch 1. Both sides are measured in
// this run, so the machine's speed cancels; what is left is whether the step model accounts for the
// runtime's work: the product rates at the model's own reduction size (the tiny model's 129280 x 256
// head is 87% of its FLOPs, and runs at 2/3 of the rate K = 2048 gets), the fixed time of each of
// the ~150 products in a step, and the pass over the logits. The test runs alone (RUN_SERIAL):
// another process on the cores would slow one side and not the other. Bursts from outside (a shared
// host's neighbours) still do, by up to a third within one run of this test, so each side keeps its
// best over the attempts (decode rates the highest, the profile point by point) and the two bests
// are compared after every attempt, five attempts at most; every attempt is printed, and with a miss
// the machine, the planner's step and the profile.
TEST(ProfileLoop, PlannerPredictsTheMeasuredDecode) {
  struct Case {
    std::string model;
    std::vector<int64_t> batches;
    std::vector<int64_t> tokens, tokens_per_expert;  // the sizes these batches run at: a third of the time
    int steps;
  };
  const Case cases[] = {{"v4-tiny", {1, 16}, {1, 2, 4, 8, 16}, {1, 2, 4}, 12}, {"v4-bench", {1}, {1, 2}, {1}, 8}};
  constexpr double kBound = 1.15;
  constexpr int kAttempts = 5;
  for (const Case& c : cases) {
    auto model = Builtin(c.model);
    ASSERT_NE(model, nullptr);
    bench::ProfileOptions po = bench::OptionsForModel(
        model->config().hidden_size, model->config().moe_intermediate_size, model->config().vocab_size);
    ASSERT_FALSE(po.widths.empty());  // the default K = 2048 and the model's hidden size
    po.tokens = c.tokens;
    po.tokens_per_expert = c.tokens_per_expert;
    std::string attempts, step;
    bool within = false;
    std::vector<double> best(c.batches.size(), 0);
    std::optional<bench::CpuProfile> best_profile;
    // Untimed first: the first decode after the model is built ran up to 20% slow here.
    for (int64_t batch : c.batches) {
      bench::DecodeBenchOptions o;
      o.batch = batch, o.steps = 2;
      ASSERT_TRUE(bench::RunDecodeBench(*model, o).ok());
    }
    for (int attempt = 0; attempt < kAttempts && !within; ++attempt) {
      // As `dsv4 bench decode --profile-out` runs: the decode steps (a triad before every timed
      // step), then the profile.
      for (size_t i = 0; i < c.batches.size(); ++i) {
        bench::DecodeBenchOptions o;
        bench::StreamTriad triad;
        o.batch = c.batches[i], o.steps = c.steps, o.triad = &triad;
        auto m = bench::RunDecodeBench(*model, o);
        ASSERT_TRUE(m.ok()) << m.status();
        attempts +=
            absl::StrFormat("%s, attempt %d, batch %d: measured %.2f tokens/s (CPU %.2f of %d threads)\n", c.model,
                            attempt + 1, c.batches[i], m->tokens_per_s, m->cpu_utilization, kernels::NumThreads());
        best[i] = std::max(best[i], m->tokens_per_s);
      }
      auto profile = bench::MeasureCpuProfile(po);
      ASSERT_TRUE(profile.ok()) << profile.status();
      if (best_profile) {
        KeepBest(*best_profile, *profile);
        if (HasFatalFailure()) return;
      } else {
        best_profile = *profile;
      }
      auto parsed = cluster::ParseProfile(bench::CpuProfileJson(*best_profile, "profile_test"), "measured.json");
      ASSERT_TRUE(parsed.ok()) << parsed.status();
      cluster::PlanOptions plan;
      plan.profile = &*parsed;
      within = true;
      step.clear();
      for (size_t i = 0; i < c.batches.size(); ++i) {
        const int64_t batch = c.batches[i];
        auto answer =
            cluster::Plan(BenchScenario(c.model, static_cast<double>(batch)), cluster::BuiltinCatalog(), plan);
        ASSERT_TRUE(answer.ok()) << answer.status();
        const double predicted = (*answer)["decode_tokens_per_s_per_device"].get<double>();
        const double ratio = predicted / best[i];
        within = within && ratio < kBound && ratio > 1 / kBound;
        attempts += absl::StrFormat(
            "%s, best of %d, batch %d: measured %.2f tokens/s, predicted %.2f, ratio %.3f (profile's CPU "
            "availability %.2f)\n",
            c.model, attempt + 1, batch, best[i], predicted, ratio, profile->cpu_availability);
        step += absl::StrFormat("the planner's step at batch %d:", batch);
        for (const auto& op : (*answer)["decode"]["ops"])
          step += absl::StrFormat(" %s %.3f ms;", op["op"].get<std::string>(), op["ms"].get<double>());
        step += "\n";
      }
    }
    std::printf("%s", attempts.c_str());
    const std::string cpu = CpuModel();
    EXPECT_TRUE(within) << c.model << ": no attempt within " << kBound << "x at every batch on "
                        << (cpu.empty() ? "an unknown CPU" : cpu) << " (" << kernels::IsaName(kernels::ActiveIsa())
                        << ", " << kernels::NumThreads() << " threads):\n"
                        << attempts << step << "profile: " << bench::CpuProfileJson(*best_profile, "profile_test");
  }
}

TEST(ProfileLoop, BadOptionsAndPathsAreErrors) {
  bench::ProfileOptions po;
  po.tokens.clear();
  auto p = bench::MeasureCpuProfile(po);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("token lists"), std::string::npos) << p.status();
  po = bench::ProfileOptions{};
  po.head_rows = -1;
  p = bench::MeasureCpuProfile(po);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("head rows"), std::string::npos) << p.status();
  bench::CpuProfile empty;
  const absl::Status st = bench::WriteCpuProfile(empty, "test", "/nonexistent-dir/p.json");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("/nonexistent-dir/p.json"), std::string::npos) << st;
}

}  // namespace
}  // namespace dsv4
