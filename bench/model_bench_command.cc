// `dsv4 bench decode` and `dsv4 bench prefill`: flags, the runs of model_bench.h, and the report
// (text, or one JSON object with --json).
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_format.h"
#include "base/status.h"
#include "bench/commands.h"
#include "bench/limits.h"
#include "bench/model_bench.h"
#include "bench/profile.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"
#include "runtime/runtime.h"

namespace dsv4::bench {
namespace {

// Flags shared by `bench decode` and `bench prefill`.
void AddModelBenchFlags(Flags& flags, const char* context_help, int64_t context_default) {
  AddRuntimeFlags(flags);
  flags.SetDefault("model", "builtin:v4-bench")
      .Int("batch", 1, "sequences per step", 1, 1 << 16)
      .Int("context", context_default, context_help, 0, int64_t{1} << 24)
      .Int("steps", 16, "timed decode steps / prefills (the median is reported)", 1, 1 << 20)
      .Int("warmup", 2, "untimed steps first", 0, 1 << 20)
      .Int("seed", 1, "token ids are drawn at random from this seed", 0)
      .Bool("json", false, "print one JSON object")
      .String("profile-out", "", "also write this machine's dsv4-profile/1 file (`dsv4 plan --profile`) here");
}

struct BenchFigures {
  int64_t batch = 1, context = 0;
  double tokens_per_s = 0, step_ms = 0, cpu_utilization = 0;
  WorkPerToken work;
  double stream_gbps = 0;
  double ratio_to_stream = -1;  // when >= 0: the median of per-step ratios (decode), else achieved / stream
  double short_tokens_per_s = 0, context_speed_ratio = 0;  // decode with a context: side-by-side short steps
  PeakRates peaks;
  std::vector<double> steps_ms;  // decode: every timed step
  double max_step_over_median = 0;
  int64_t slow_steps = 0;  // decode: steps slower than 1.5x the median
};

// `"name": [v, ...]` with 3 decimals.
std::string JsonList(const char* name, const std::vector<double>& v) {
  std::string out = absl::StrFormat("\"%s\": [", name);
  for (size_t i = 0; i < v.size(); ++i) out += absl::StrFormat("%s%.3f", i ? ", " : "", v[i]);
  return out + "]";
}

void PrintFigures(const char* what, const BenchFigures& f, bool json) {
  const double gbps = f.work.bytes() * f.tokens_per_s / 1e9, gflops = f.work.flops * f.tokens_per_s / 1e9;
  const double ratio_to_stream = f.ratio_to_stream >= 0 ? f.ratio_to_stream : gbps / f.stream_gbps;
  const char* isa = kernels::IsaName(kernels::ActiveIsa());
  // The peak of the arithmetic the counted work used: FP32 FMAs, BF16 products, AMX tiles.
  const MixedPeak peak = PeakOfMix(f.peaks, f.work.fp32_flops(), f.work.bf16_flops, f.work.amx_flops);
  if (json) {
    std::string extra = absl::StrFormat(
        ", \"fp32_flops_share\": %.4f, \"bf16_flops_share\": %.4f, \"amx_flops_share\": %.4f, "
        "\"peak_gflops_fp32\": %.4f, \"peak_gflops_bf16\": %.4f, \"peak_gflops_amx\": %.4f, \"peak_kind_fp32\": \"%s\"",
        peak.fp32_share, peak.bf16_share, peak.amx_share, f.peaks.fp32.gflops, f.peaks.bf16.gflops, f.peaks.amx.gflops,
        f.peaks.fp32.kind);
    if (!f.steps_ms.empty())
      extra += absl::StrFormat(", \"max_step_over_median\": %.4f, \"slow_steps\": %lld, %s", f.max_step_over_median,
                               static_cast<long long>(f.slow_steps), JsonList("steps_ms", f.steps_ms));
    if (f.context_speed_ratio > 0)
      extra += absl::StrFormat(", \"short_context_tokens_per_s\": %.4f, \"context_speed_ratio\": %.4f",
                               f.short_tokens_per_s, f.context_speed_ratio);
    if (*kernels::AmxUnavailableReason() != '\0')
      extra += absl::StrFormat(", \"amx_unavailable\": \"%s\"", absl::CEscape(kernels::AmxUnavailableReason()));
    std::printf(
        "{\"bench\": \"%s\", \"threads\": %d, \"isa\": \"%s\", \"batch\": %lld, \"context\": %lld, "
        "\"tokens_per_s\": %.4f, \"step_ms\": %.3f, \"bytes_per_token\": %.0f, \"weight_bytes_per_token\": %.0f, "
        "\"cache_bytes_per_token\": %.0f, \"flops_per_token\": %.0f, \"achieved_gbps\": %.4f, "
        "\"stream_gbps\": %.4f, \"ratio_to_stream\": %.4f, \"achieved_gflops\": %.4f, \"peak_gflops\": %.4f, "
        "\"peak_kind\": \"%s\", \"ratio_to_peak\": %.4f, \"cpu_utilization\": %.3f%s}\n",
        what, kernels::NumThreads(), isa, static_cast<long long>(f.batch), static_cast<long long>(f.context),
        f.tokens_per_s, f.step_ms, f.work.bytes(), f.work.weight_bytes, f.work.cache_bytes, f.work.flops, gbps,
        f.stream_gbps, ratio_to_stream, gflops, peak.gflops, peak.kind.c_str(), gflops / peak.gflops,
        f.cpu_utilization, extra.c_str());
    return;
  }
  std::printf("%s: %d threads (%s), batch %lld, context %lld\n", what, kernels::NumThreads(), isa,
              static_cast<long long>(f.batch), static_cast<long long>(f.context));
  std::printf("  tokens/s              : %.3f  (median step %.2f ms)\n", f.tokens_per_s, f.step_ms);
  std::printf("  bytes read per token  : %.1f MB  (weights %.1f MB, caches %.2f MB)\n", f.work.bytes() / 1e6,
              f.work.weight_bytes / 1e6, f.work.cache_bytes / 1e6);
  std::printf("  achieved bandwidth    : %.2f GB/s  of STREAM triad %.2f GB/s  = %.3f%s\n", gbps, f.stream_gbps,
              ratio_to_stream, f.ratio_to_stream >= 0 ? "  (median of per-step ratios)" : "");
  std::printf("  achieved arithmetic   : %.2f GFLOP/s  of %s peak %.2f GFLOP/s  = %.3f\n", gflops, peak.kind.c_str(),
              peak.gflops, gflops / peak.gflops);
  std::printf("  arithmetic used       : %.0f%% FP32 FMAs (peak %.1f), %.0f%% BF16 products (peak %.1f), %.0f%% AMX (peak %.1f)\n",
              100 * peak.fp32_share, f.peaks.fp32.gflops, 100 * peak.bf16_share, f.peaks.bf16.gflops,
              100 * peak.amx_share, f.peaks.amx.gflops);
  if (!f.steps_ms.empty())
    std::printf("  slowest step          : %.2fx the median; %lld of %zu steps slower than 1.5x\n", f.max_step_over_median,
                static_cast<long long>(f.slow_steps), f.steps_ms.size());
  std::printf("  CPU seconds per second: %.2f of %d threads (less: other processes had the cores)\n", f.cpu_utilization,
              kernels::NumThreads());
  if (*kernels::AmxUnavailableReason() != '\0')
    std::printf("  AMX tiles unavailable : %s\n", kernels::AmxUnavailableReason());
  if (f.context_speed_ratio > 0)
    std::printf(
        "  against short context : %.3f of the speed of sequences without context (%.3f tokens/s), steps\n"
        "                          taken in alternation\n",
        f.context_speed_ratio, f.short_tokens_per_s);
}

// The profile `--profile-out` measures: the defaults and the benchmarked model's own widths.
ProfileOptions ModelProfileOptions(const Model& model) {
  return OptionsForModel(model.config().hidden_size, model.config().moe_intermediate_size, model.config().vocab_size);
}

BenchFigures CommonFigures(const Flags& flags) {
  BenchFigures f;
  f.batch = flags.GetInt("batch"), f.context = flags.GetInt("context");
  return f;
}

}  // namespace

void DecodeFlags(Flags& flags) {
  AddModelBenchFlags(flags, "tokens already in each sequence's cache before the timed steps", 0);
}

absl::Status Decode(const Flags& flags) {
  BenchFigures f = CommonFigures(flags);
  DecodeBenchOptions o;
  o.batch = f.batch, o.context = f.context;
  o.steps = flags.GetInt("steps"), o.warmup = flags.GetInt("warmup");
  o.seed = static_cast<uint64_t>(flags.GetInt("seed"));
  DSV4_ASSIGN_OR_RETURN(const RuntimeOptions options, RuntimeOptionsFromFlags(flags));
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<Runtime> rt, Runtime::Open(options));
  // The triad runs right before every timed step: each step's bandwidth is set against the limit
  // measured under the same conditions (the median of those ratios is reported).
  StreamTriad triad;
  o.triad = &triad;
  o.compare_short = o.context > 0;
  DSV4_ASSIGN_OR_RETURN(const DecodeBenchResult r, RunDecodeBench(rt->model(), o));
  f.stream_gbps = r.median_stream_gbps;
  f.ratio_to_stream = r.median_ratio_to_stream;
  f.short_tokens_per_s = r.short_tokens_per_s, f.context_speed_ratio = r.context_speed_ratio;
  f.peaks = MeasurePeakRates();
  f.tokens_per_s = r.tokens_per_s, f.step_ms = r.median_step_seconds * 1e3, f.work = r.work;
  f.cpu_utilization = r.cpu_utilization;
  for (double t : r.step_seconds) f.steps_ms.push_back(t * 1e3);
  f.max_step_over_median = r.max_step_over_median, f.slow_steps = r.slow_steps;
  PrintFigures("decode", f, flags.GetBool("json"));
  if (flags.Given("profile-out"))
    DSV4_RETURN_IF_ERROR(bench::MeasureAndWriteCpuProfile(flags.GetString("profile-out"), "dsv4 bench decode",
                                                          ModelProfileOptions(rt->model())));
  return absl::OkStatus();
}

void PrefillFlags(Flags& flags) {
  AddModelBenchFlags(flags, "prompt tokens prefilled per sequence", 512);
  flags.SetDefault("steps", "2").SetDefault("warmup", "1");
}

absl::Status Prefill(const Flags& flags) {
  BenchFigures f = CommonFigures(flags);
  PrefillBenchOptions o;
  o.tokens = f.context, o.batch = f.batch;
  o.iters = flags.GetInt("steps"), o.warmup = flags.GetInt("warmup");
  o.seed = static_cast<uint64_t>(flags.GetInt("seed"));
  if (o.tokens < 1) return absl::InvalidArgumentError("--context must be at least 1 for a prefill");
  DSV4_ASSIGN_OR_RETURN(const RuntimeOptions options, RuntimeOptionsFromFlags(flags));
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<Runtime> rt, Runtime::Open(options));
  DSV4_ASSIGN_OR_RETURN(const PrefillBenchResult r, RunPrefillBench(rt->model(), o));
  f.stream_gbps = MeasureStreamTriadGBps();
  f.peaks = MeasurePeakRates();
  f.tokens_per_s = r.tokens_per_s, f.step_ms = r.median_seconds * 1e3, f.work = r.work;
  f.cpu_utilization = r.cpu_utilization;
  PrintFigures("prefill", f, flags.GetBool("json"));
  if (flags.Given("profile-out"))
    DSV4_RETURN_IF_ERROR(bench::MeasureAndWriteCpuProfile(flags.GetString("profile-out"), "dsv4 bench prefill",
                                                          ModelProfileOptions(rt->model())));
  return absl::OkStatus();
}

}  // namespace dsv4::bench
