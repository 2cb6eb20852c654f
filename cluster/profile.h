// Calibration profile: measured operator and collective throughput of one machine, used by
// `dsv4 plan --profile FILE` in place of the catalog's efficiency factors (the way profiling-based
// simulators such as Vidur replace analytic kernels with measured ones). The format is documented in
// cluster/README.md ("Profile format"); `dsv4 bench` will write it.
#pragma once

#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv4::cluster {

// Achieved rate at a size; rates between points are interpolated linearly in log(size), and held
// constant outside the measured range. Matrix-product points may also carry the reduction size K
// they were measured at: the same token count runs at different rates at K = 256 and K = 4096 (the
// micro-kernel's loop is shorter than its setup, the panel fits another cache level). A curve with
// several K is a surface: the rate at (size, k) interpolates, in log(k), the two measured K around k
// (each at `size`), and takes the nearest K outside the measured range.
struct RatePoint {
  double size = 0;  // tokens (GEMMs), context tokens (attention), bytes (collectives)
  double rate = 0;  // TFLOP/s for compute, GB/s for bandwidth
  double k = 0;     // reduction size of a matrix product; 0 = not stated
};

struct RateCurve {
  std::vector<RatePoint> points;  // sorted by k, then by size
  bool empty() const { return points.empty(); }
  // A curve measured at one K (or none stated): the rate by size alone. k <= 0 on a surface: the
  // widest K measured.
  double At(double size, double k = 0) const;
};

struct Profile {
  std::string device;                // catalog name of the measured device ("" = any)
  std::string source;                // file name, for reports
  RateCurve gemm_fp8;                // dense GEMM [tokens x K] x [K x N] with FP8 weights, TFLOP/s by tokens
  RateCurve gemm_bf16;               // the same with BF16 weights
  RateCurve grouped_gemm;            // MoE grouped GEMM, TFLOP/s by tokens per expert
  RateCurve attention_prefill;       // TFLOP/s by context length
  double memory_gbps = 0;            // streaming bandwidth (0 = catalog x efficiency)
  double kernel_floor_us = 0;        // least time per kernel (0 = catalog)
  // Device "cpu": the fixed time of one matrix product by token count (us; the intercept of its time
  // over its output width: the pool's fork and join, the activations' packing). A CPU operator's
  // fixed time does not overlap its work as a GPU launch does, so the step model adds it per kernel.
  RateCurve product_floor_us;
  RateCurve allreduce;               // algorithm bandwidth GB/s by message bytes (TP group of the run)
  double all_to_all_intra_gbps = 0;  // EP dispatch/combine within a node, per device
  double all_to_all_inter_gbps = 0;  // across nodes, per device
  double all_to_all_latency_us = 0;
  double host_memory_gbps = 0;  // host DRAM streaming for CPU experts
  double host_gflops = 0;       // host expert GEMMs, whole host
};

absl::StatusOr<Profile> ParseProfile(const std::string& json_text, const std::string& source);
absl::StatusOr<Profile> LoadProfile(const std::string& path);

}  // namespace dsv4::cluster
