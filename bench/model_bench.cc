#include "bench/model_bench.h"

#include <time.h>

#include <algorithm>
#include <chrono>
#include <random>

#include "base/status.h"
#include "bench/limits.h"
#include "kernels/cpu/kernels.h"

namespace dsv4::bench {
namespace {

using Clock = std::chrono::steady_clock;

double CpuSeconds() {
  timespec ts;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

std::vector<int32_t> RandomTokens(std::mt19937_64& rng, int64_t n, int64_t vocab) {
  std::uniform_int_distribution<int32_t> pick(0, static_cast<int32_t>(vocab - 1));
  std::vector<int32_t> t(n);
  for (auto& v : t) v = pick(rng);
  return t;
}

WorkPerToken PerToken(const kernels::WorkCounts& c, double tokens) {
  WorkPerToken w;
  w.weight_bytes = static_cast<double>(c.weight_bytes) / tokens;
  w.cache_bytes = static_cast<double>(c.cache_bytes) / tokens;
  w.flops = static_cast<double>(c.flops) / tokens;
  w.bf16_flops = static_cast<double>(c.bf16_flops) / tokens;
  w.amx_flops = static_cast<double>(c.amx_flops) / tokens;
  return w;
}

}  // namespace

absl::StatusOr<DecodeBenchResult> RunDecodeBench(const Model& model, const DecodeBenchOptions& o) {
  if (o.batch < 1 || o.steps < 1 || o.context < 0 || o.warmup < 0)
    return absl::InvalidArgumentError("decode bench: batch and steps must be >= 1, context and warmup >= 0");
  const int64_t vocab = model.config().vocab_size;
  std::mt19937_64 rng(o.seed);
  DecodeBenchResult r;
  std::vector<SequenceCache> caches;
  for (int64_t b = 0; b < o.batch; ++b) caches.push_back(model.NewCache());
  // The context: each sequence prefilled on its own, in chunks.
  const auto c0 = Clock::now();
  for (auto& cache : caches) {
    const std::vector<int32_t> prompt = RandomTokens(rng, o.context, vocab);
    for (int64_t at = 0; at < o.context; at += 512) {
      const int64_t n = std::min<int64_t>(512, o.context - at);
      DSV4_RETURN_IF_ERROR(model.Forward(std::span<const int32_t>(prompt.data() + at, n), cache, nullptr));
    }
  }
  r.context_seconds = std::chrono::duration<double>(Clock::now() - c0).count();

  std::vector<SequenceChunk> seqs(o.batch), short_seqs;
  for (int64_t b = 0; b < o.batch; ++b) seqs[b] = {&caches[b], 1};
  std::vector<SequenceCache> short_caches;
  if (o.compare_short) {
    for (int64_t b = 0; b < o.batch; ++b) short_caches.push_back(model.NewCache());
    for (auto& c : short_caches) short_seqs.push_back({&c, 1});
  }
  std::vector<float> logits(o.batch * vocab);
  kernels::ResetWorkCounters();
  double cpu0 = 0;
  for (int64_t s = 0; s < o.warmup + o.steps; ++s) {
    const std::vector<int32_t> tokens = RandomTokens(rng, o.batch, vocab);
    if (s == o.warmup) {
      kernels::ResetWorkCounters();
      kernels::EnableWorkCounters(true);
      cpu0 = CpuSeconds();
    }
    if (s >= o.warmup && o.triad != nullptr) {
      const double c = CpuSeconds();
      r.stream_gbps.push_back(o.triad->BestGBps(2));
      cpu0 += CpuSeconds() - c;  // the triad's CPU time is not the step's
    }
    const auto t0 = Clock::now();
    DSV4_RETURN_IF_ERROR(model.ForwardBatch(tokens, seqs, logits.data()));
    if (s >= o.warmup) r.step_seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    if (o.compare_short) {
      const bool counting = s >= o.warmup;
      kernels::EnableWorkCounters(false);
      const double c = CpuSeconds();
      const auto t1 = Clock::now();
      DSV4_RETURN_IF_ERROR(model.ForwardBatch(tokens, short_seqs, logits.data()));
      if (counting) r.short_step_seconds.push_back(std::chrono::duration<double>(Clock::now() - t1).count());
      cpu0 += CpuSeconds() - c;
      kernels::EnableWorkCounters(counting);
    }
  }
  kernels::EnableWorkCounters(false);
  double wall = 0;
  for (double t : r.step_seconds) wall += t;
  r.cpu_utilization = (CpuSeconds() - cpu0) / wall;
  r.median_step_seconds = Median(r.step_seconds);
  for (double t : r.step_seconds) {
    r.max_step_over_median = std::max(r.max_step_over_median, t / r.median_step_seconds);
    r.slow_steps += t > 1.5 * r.median_step_seconds;
  }
  r.tokens_per_s = static_cast<double>(o.batch) / r.median_step_seconds;
  r.work = PerToken(kernels::ReadWorkCounters(), static_cast<double>(o.batch * o.steps));
  if (!r.stream_gbps.empty()) {
    std::vector<double> ratios;
    for (size_t i = 0; i < r.step_seconds.size(); ++i)
      ratios.push_back(r.work.bytes() * static_cast<double>(o.batch) / r.step_seconds[i] / 1e9 / r.stream_gbps[i]);
    r.median_ratio_to_stream = Median(ratios);
    r.median_stream_gbps = Median(r.stream_gbps);
  }
  if (!r.short_step_seconds.empty()) {
    std::vector<double> speed;
    for (size_t i = 0; i < r.step_seconds.size(); ++i) speed.push_back(r.short_step_seconds[i] / r.step_seconds[i]);
    r.context_speed_ratio = Median(speed);
    r.short_tokens_per_s = static_cast<double>(o.batch) / Median(r.short_step_seconds);
  }
  return r;
}

absl::StatusOr<PrefillBenchResult> RunPrefillBench(const Model& model, const PrefillBenchOptions& o) {
  if (o.tokens < 1 || o.iters < 1 || o.warmup < 0)
    return absl::InvalidArgumentError("prefill bench: tokens and iters must be >= 1, warmup >= 0");
  const int64_t vocab = model.config().vocab_size;
  std::mt19937_64 rng(o.seed);
  if (o.batch < 1) return absl::InvalidArgumentError("prefill bench: batch must be >= 1");
  PrefillBenchResult r;
  std::vector<float> logits(o.batch * vocab);
  kernels::ResetWorkCounters();
  for (int64_t i = 0; i < o.warmup + o.iters; ++i) {
    const std::vector<int32_t> prompts = RandomTokens(rng, o.batch * o.tokens, vocab);
    std::vector<SequenceCache> caches;
    for (int64_t b = 0; b < o.batch; ++b) caches.push_back(model.NewCache());
    std::vector<SequenceChunk> seqs(o.batch);
    for (int64_t b = 0; b < o.batch; ++b) seqs[b] = {&caches[b], o.tokens};
    if (i == o.warmup) {
      kernels::ResetWorkCounters();
      kernels::EnableWorkCounters(true);
    }
    const auto t0 = Clock::now();
    const double c0 = CpuSeconds();
    DSV4_RETURN_IF_ERROR(model.ForwardBatch(prompts, seqs, logits.data()));
    if (i >= o.warmup) {
      r.seconds.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
      r.cpu_utilization += (CpuSeconds() - c0) / r.seconds.back() / static_cast<double>(o.iters);
    }
  }
  kernels::EnableWorkCounters(false);
  r.median_seconds = Median(r.seconds);
  r.tokens_per_s = static_cast<double>(o.batch * o.tokens) / r.median_seconds;
  r.work = PerToken(kernels::ReadWorkCounters(), static_cast<double>(o.batch * o.tokens * o.iters));
  return r;
}

}  // namespace dsv4::bench
