// Discrete-event simulation of a serving deployment: Poisson arrivals, input/output length
// distributions, continuous batching with a token budget (chunked prefill, decode first), a cache
// capacity limit, and prefill/decode disaggregation. Deterministic for a given seed: the random
// numbers come from std::mt19937_64 (specified by the standard) through our own transforms.
//
// One attention group is simulated (the DP groups of a deployment unit are statistically identical
// and step in lockstep, so each sees qps / dp); step times come from StepModel, memoized.
#pragma once

#include <cstdint>
#include <vector>

#include "cluster/step_model.h"

namespace dsv4::cluster {

struct SimConfig {
  double qps = 1;  // arrivals per second to this group
  int64_t requests = 400;
  uint64_t seed = 1;
  double input_tokens = 1024;  // mean
  double output_tokens = 256;  // mean
  double prefix_cache_hit = 0;
  LengthDistribution lengths = LengthDistribution::kFixed;
  double token_budget = 8192;    // tokens per step per group
  double kv_capacity_bytes = 0;  // cache bytes available to the group (per device of the group)
  // Colocated: prefill chunks and decodes share steps. PrefillOnly / DecodeOnly: the two pools of a
  // disaggregated deployment (decode-only requests arrive with their prompt in cache).
  enum class Mode { kColocated, kPrefillOnly, kDecodeOnly } mode = Mode::kColocated;
};

struct Percentiles {
  double p50 = 0, p90 = 0, p99 = 0, mean = 0;
};

struct SimResult {
  Percentiles ttft_ms;  // arrival -> first token
  Percentiles tpot_ms;  // mean time per output token after the first, per request
  Percentiles e2e_ms;
  double output_tokens_per_s = 0;  // of the group
  double input_tokens_per_s = 0;
  double mean_running = 0;  // sequences decoding per step, time-averaged
  double duration_s = 0;
  int64_t completed = 0;
  int64_t steps = 0;
  int64_t cache_limited_steps = 0;  // steps where a waiting request could not be admitted for cache
};

SimResult Simulate(const StepModel& model, const SimConfig& config);

// Percentile q (0..100) of `values` (nearest rank on a sorted copy).
double Percentile(std::vector<double> values, double q);

}  // namespace dsv4::cluster
