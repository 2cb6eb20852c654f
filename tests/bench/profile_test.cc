// The profile `dsv4 bench ... --profile-out` writes: measured, written, read back by the planner's
// parser with every rate intact, and a plan answered with it. How well the planner predicts this
// runtime on such a profile is a timing figure, so it is measured by the benchmarks (README,
// "Planning with a measured profile"), not asserted here.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/model_bench.h"
#include "bench/profile.h"
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

TEST(ProfileLoop, BadOptionsAndPathsAreErrors) {
  bench::ProfileOptions po;
  po.tokens.clear();
  auto p = bench::MeasureCpuProfile(po);
  ASSERT_FALSE(p.ok());
  EXPECT_NE(p.status().message().find("token lists"), std::string::npos) << p.status();
  bench::CpuProfile empty;
  const absl::Status st = bench::WriteCpuProfile(empty, "test", "/nonexistent-dir/p.json");
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("/nonexistent-dir/p.json"), std::string::npos) << st;
}

}  // namespace
}  // namespace dsv4
