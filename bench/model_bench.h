// Decode and prefill throughput of the CPU model, with the work the kernels count (bytes of
// weights and caches read, floating-point operations) so each figure can be set against the
// machine's limits (bench/limits.h).
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/model/model.h"

namespace dsv4::bench {

class StreamTriad;  // bench/limits.h

struct DecodeBenchOptions {
  int64_t batch = 1;    // sequences decoding together, one token each per step
  int64_t context = 0;  // tokens prefilled into each sequence before the timed steps
  int64_t steps = 16;   // timed steps (the median is reported)
  int64_t warmup = 2;   // untimed steps first (page in the weights, grow the scratch arenas)
  uint64_t seed = 1;
  // When set, STREAM triad is measured (best of 2 passes) right before every timed step, so each
  // step's bandwidth has a limit taken under the same conditions.
  StreamTriad* triad = nullptr;
  // With a context: also decode `batch` sequences that start empty, one step of them after each
  // step of the long ones (not counted in the work or CPU figures), so the cost of the context is
  // a ratio of steps taken side by side.
  bool compare_short = false;
};

struct WorkPerToken {
  double weight_bytes = 0, cache_bytes = 0, flops = 0;
  double bf16_flops = 0, amx_flops = 0;  // of flops: taken as BF16 products (vdpbf16ps, AMX tiles)
  double bytes() const { return weight_bytes + cache_bytes; }
  double fp32_flops() const { return flops - bf16_flops - amx_flops; }
};

struct DecodeBenchResult {
  double context_seconds = 0;         // building the context (chunked prefill)
  std::vector<double> step_seconds;   // every timed step
  double median_step_seconds = 0;
  // The slowest timed step over the median, and the steps slower than 1.5x the median (a stall,
  // such as FP operations on subnormal numbers, shows here before it moves the median).
  double max_step_over_median = 0;
  int64_t slow_steps = 0;
  double tokens_per_s = 0;            // batch / median step
  WorkPerToken work;                  // counted over the timed steps
  double cpu_utilization = 0;         // process CPU seconds per wall second over the timed steps
  std::vector<double> stream_gbps;    // the triad before each timed step (with options.triad)
  double median_stream_gbps = 0;
  std::vector<double> short_step_seconds;  // with options.compare_short: the short sequences' steps
  double short_tokens_per_s = 0;           // batch / their median step
  // Median over the step pairs of (short step time / long step time): the long context's decode
  // speed as a fraction of the short context's.
  double context_speed_ratio = 0;
  // Median over the timed steps of the step's bandwidth (bytes counted per token) over the triad
  // measured just before it (with options.triad).
  double median_ratio_to_stream = 0;
};

absl::StatusOr<DecodeBenchResult> RunDecodeBench(const Model& model, const DecodeBenchOptions& options);

struct PrefillBenchOptions {
  int64_t tokens = 512;  // prompt length of each sequence, all prefilled in one forward step
  int64_t batch = 1;     // sequences
  int64_t iters = 2;     // timed prefills (median reported)
  int64_t warmup = 1;
  uint64_t seed = 1;
};

struct PrefillBenchResult {
  std::vector<double> seconds;
  double median_seconds = 0;
  double tokens_per_s = 0;
  WorkPerToken work;
  double cpu_utilization = 0;  // process CPU seconds per wall second over the timed prefills
};

absl::StatusOr<PrefillBenchResult> RunPrefillBench(const Model& model, const PrefillBenchOptions& options);

}  // namespace dsv4::bench
