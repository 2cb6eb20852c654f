// The calibration profile of this machine's CPU kernels, in the dsv4-profile/1 format that
// `dsv4 plan --profile FILE` reads (cluster/README.md, "Profile format"): achieved TFLOP/s of the
// matrix products the model runs (FP8 and BF16 weights through kernels::Linear; the FP4 routed
// experts' w1/w3 and w2 through kernels::LinearGroup, as runtime/model/moe.cc calls them) by token
// count, the host's STREAM bandwidth, the least time of one parallel operator, and the FMA peak.
// With it the planner's device "cpu" predicts this runtime here.
//
// Weights are sized and cycled so the products stream them from DRAM as a model's layers do (a set
// of matrices several times the last-level cache), hold values distributed as the built-in
// checkpoints' (the speed of the x86 kernels depends on the codes: those that decode to subnormal
// floats are slow), and every figure is the median of its repetitions.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dsv4::bench {

struct ProfileOptions {
  std::vector<int64_t> tokens = {1, 2, 4, 8, 16, 32, 64};    // token rows of the dense products
  std::vector<int64_t> tokens_per_expert = {1, 2, 4, 8, 16};  // of the grouped expert products
  // K of the dense products: a curve by tokens at each (the rate at 16 tokens differs by 2x between
  // K = 256 and K = 2048 on AVX-512). Multiples of 128.
  std::vector<int64_t> widths = {2048};
  int64_t hidden = 2048;        // the model's hidden size: K of the experts' gate/up and of its head
  int64_t out_features = 4096;  // N of the dense products
  // N of the BF16 products at K = hidden: the model's vocabulary head, its largest BF16 product (and
  // most of a small model's decode step), measured at its own shape (0: out_features).
  int64_t head_rows = 0;
  int64_t expert_inter = 1024;  // N of one expert's w1/w3, K of its w2
  int64_t experts = 16;         // experts in one grouped call
  int64_t stream_bytes = int64_t{1} << 30;  // weight bytes cycled through (several times the LLC)
  int reps = 3;                 // timed repetitions per size (the median is kept)
};

struct RatePoint {
  double size = 0;         // tokens, or tokens per expert
  double tflops = 0;       // achieved: the median pass
  double full_tflops = 0;  // per CPU-second of the process times the threads: the rate with a core per thread
  double wall_seconds = 0, cpu_seconds = 0;  // of the timed passes
  double k = 0;                              // the reduction size (of the experts' gate/up for the grouped products)
};

struct CpuProfile {
  std::vector<RatePoint> gemm_fp8, gemm_bf16, grouped_gemm;
  double stream_gbps = 0;      // STREAM triad
  double kernel_floor_us = 0;  // median time of an empty parallel operator
  struct FloorPoint {
    double tokens = 0, us = 0;
  };
  std::vector<FloorPoint> product_floor;  // the fixed time of one product by token rows
  double peak_gflops = 0;      // FP32 FMA peak of the kernels' vector width (recorded, not planned with)
  double expert_gflops = 0;    // the best grouped-expert rate: the host GEMM rate for host experts
  double all_to_all_gbps = 0;  // MoE dispatch + combine per rank (bench comm), 0 = not measured
  double all_to_all_latency_us = 0;
  int threads = 0;
  std::string isa;
  // CPU-seconds the process got per wall-second and thread over the timed products: 1 on a quiet
  // machine, less where other processes share the cores (the rates are then that much lower).
  double cpu_availability = 0;
};

absl::StatusOr<CpuProfile> MeasureCpuProfile(const ProfileOptions& options);

// The profile with every matrix-product rate replaced by its full_tflops: what this machine's cores
// do with a core per thread, for comparing figures taken while other processes shared the machine.
CpuProfile FullMachine(const CpuProfile& p);

// The dsv4-profile/1 JSON of a profile for device "cpu"; `measured_by` names the command.
std::string CpuProfileJson(const CpuProfile& p, const std::string& measured_by);
// Writes it; errors name the path.
absl::Status WriteCpuProfile(const CpuProfile& p, const std::string& measured_by, const std::string& path);
// The options that measure a model's own shapes besides the defaults: its hidden size among the
// dense widths, its experts' hidden and intermediate sizes for the grouped products, the BF16
// products at its hidden size on its head's shape (vocab x hidden). Sizes that are not multiples of
// 128 keep the defaults.
ProfileOptions OptionsForModel(int64_t hidden, int64_t expert_inter, int64_t vocab);

// What `dsv4 bench ... --profile-out PATH` runs after its benchmark: measures the profile with
// `options` (plus the all-to-all figures `bench comm` measured, when given) and writes it.
absl::Status MeasureAndWriteCpuProfile(const std::string& path, const std::string& measured_by,
                                       const ProfileOptions& options = {}, double all_to_all_gbps = 0,
                                       double all_to_all_latency_us = 0);

}  // namespace dsv4::bench
