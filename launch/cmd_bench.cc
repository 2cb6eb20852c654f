// dsv4 bench <what> [flags]: throughput figures as ratios to limits measured in the same run.
//
//   comm     MoE dispatch + combine against raw MPI_Alltoallv moving the same bytes
//            (run under mpirun; --json prints dispatch_combine_gbps, raw_alltoallv_gbps, ratio)
//   decode   CPU decode steps against this machine's STREAM triad bandwidth (bench/)
//   prefill  CPU prefill against the peak rate of the kernels' arithmetic (bench/)
//   serve  N concurrent gRPC streams against the engine in-process, same workload (bench_serve.cc;
//          --json prints ttft_ms_p50/p99, itl_ms_p50/p99, tokens_per_s, inprocess_tokens_per_s, ratio)
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "bench/limits.h"
#include "bench/model_bench.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"
#include "launch/commands.h"
#include "launch/common.h"
#include "parallel/comm_bench.h"

namespace dsv4 {
namespace {

std::unique_ptr<Communicator> WorldOrLocal() {
  if (LaunchedByMpirun()) {
    auto w = MakeMpiWorldCommunicator();
    if (w.ok()) return std::move(*w);
  }
  return MakeLocalCommunicator();
}

int BenchComm(int argc, char** argv) {
  Flags flags;
  flags.Add("hidden", "4096", "hidden size (V4-Flash: 4096)")
      .Add("experts", "256", "routed experts")
      .Add("topk", "6", "experts per token")
      .Add("tokens", "256", "tokens per rank per step")
      .Add("iters", "20", "timed iterations (median reported)")
      .Add("json", "false", "print one JSON object")
      .Add("comm-timeout-s", "120", "seconds a collective may wait");
  if (WantsHelp(argc, argv)) return PrintHelp("bench comm", flags);
  if (auto st = flags.Parse(argc, argv, 3); !st.ok()) return Fail(st);
  CommBenchConfig cfg;
  for (auto [name, dst] : {std::pair{"hidden", &cfg.hidden}, {"experts", &cfg.experts}, {"tokens", &cfg.tokens}}) {
    auto v = flags.Int(name);
    if (!v.ok()) return Fail(v.status());
    if (*v < 1) return Fail(absl::InvalidArgumentError(absl::StrCat("--", name, " must be >= 1")));
    *dst = *v;
  }
  auto topk = flags.Int("topk");
  auto iters = flags.Int("iters");
  auto json = flags.OnOff("json");
  auto timeout = flags.Double("comm-timeout-s");
  if (!topk.ok()) return Fail(topk.status());
  if (!iters.ok()) return Fail(iters.status());
  if (!json.ok()) return Fail(json.status());
  if (!timeout.ok()) return Fail(timeout.status());
  if (*iters < 1) return Fail(absl::InvalidArgumentError("--iters must be >= 1"));
  cfg.topk = static_cast<int>(*topk);
  cfg.iters = static_cast<int>(*iters);
  auto world = WorldOrLocal();
  world->set_timeout(std::chrono::milliseconds(static_cast<int64_t>(*timeout * 1000)));
  auto r = RunMoeCommBench(*world, cfg);
  if (!r.ok()) return Fail(r.status());
  if (world->rank() != 0) return 0;
  if (*json) {
    std::printf(
        "{\"ranks\": %d, \"hidden\": %lld, \"experts\": %lld, \"topk\": %d, \"tokens_per_rank\": %lld, "
        "\"bytes_per_rank\": %lld, \"dispatch_combine_ms\": %.4f, \"raw_alltoallv_ms\": %.4f, "
        "\"dispatch_combine_gbps\": %.4f, \"raw_alltoallv_gbps\": %.4f, \"ratio\": %.4f}\n",
        r->ranks, static_cast<long long>(cfg.hidden), static_cast<long long>(cfg.experts), cfg.topk,
        static_cast<long long>(cfg.tokens), static_cast<long long>(r->bytes_per_rank), r->dispatch_combine_s * 1e3,
        r->raw_alltoallv_s * 1e3, r->dispatch_combine_gbps, r->raw_alltoallv_gbps, r->ratio);
  } else {
    std::printf("MoE dispatch+combine, %d ranks, hidden %lld, %lld experts top-%d, %lld tokens/rank\n", r->ranks,
                static_cast<long long>(cfg.hidden), static_cast<long long>(cfg.experts), cfg.topk,
                static_cast<long long>(cfg.tokens));
    std::printf("  bytes per rank per step : %lld\n", static_cast<long long>(r->bytes_per_rank));
    std::printf("  dispatch+combine        : %.3f ms  %.3f GB/s\n", r->dispatch_combine_s * 1e3,
                r->dispatch_combine_gbps);
    std::printf("  raw MPI_Alltoallv x2    : %.3f ms  %.3f GB/s\n", r->raw_alltoallv_s * 1e3, r->raw_alltoallv_gbps);
    std::printf("  ratio (ours / raw)      : %.3f\n", r->ratio);
  }
  return 0;
}

// Flags shared by `bench decode` and `bench prefill`.
void AddModelBenchFlags(Flags& flags, const char* context_help, const char* context_default) {
  AddModelFlags(flags);
  flags.SetDefault("model", "builtin:v4-bench")
      .Add("batch", "1", "sequences per step")
      .Add("context", context_default, context_help)
      .Add("steps", "16", "timed decode steps / prefills (the median is reported)")
      .Add("warmup", "2", "untimed steps first")
      .Add("seed", "1", "token ids are drawn at random from this seed")
      .Add("json", "false", "print one JSON object");
}

struct BenchFigures {
  int64_t batch = 1, context = 0;
  double tokens_per_s = 0, step_ms = 0, cpu_utilization = 0;
  bench::WorkPerToken work;
  double stream_gbps = 0;
  double ratio_to_stream = -1;  // when >= 0: the median of per-step ratios (decode), else achieved / stream
  double short_tokens_per_s = 0, context_speed_ratio = 0;  // decode with a context: side-by-side short steps
  bench::PeakRate peak;
};

void PrintFigures(const char* what, const BenchFigures& f, bool json) {
  const double gbps = f.work.bytes() * f.tokens_per_s / 1e9, gflops = f.work.flops * f.tokens_per_s / 1e9;
  const double ratio_to_stream = f.ratio_to_stream >= 0 ? f.ratio_to_stream : gbps / f.stream_gbps;
  const char* isa = kernels::IsaName(kernels::ActiveIsa());
  if (json) {
    std::printf(
        "{\"bench\": \"%s\", \"threads\": %d, \"isa\": \"%s\", \"batch\": %lld, \"context\": %lld, "
        "\"tokens_per_s\": %.4f, \"step_ms\": %.3f, \"bytes_per_token\": %.0f, \"weight_bytes_per_token\": %.0f, "
        "\"cache_bytes_per_token\": %.0f, \"flops_per_token\": %.0f, \"achieved_gbps\": %.4f, "
        "\"stream_gbps\": %.4f, \"ratio_to_stream\": %.4f, \"achieved_gflops\": %.4f, \"peak_gflops\": %.4f, "
        "\"peak_kind\": \"%s\", \"ratio_to_peak\": %.4f, \"cpu_utilization\": %.3f%s}\n",
        what, kernels::NumThreads(), isa, static_cast<long long>(f.batch), static_cast<long long>(f.context),
        f.tokens_per_s, f.step_ms, f.work.bytes(), f.work.weight_bytes, f.work.cache_bytes, f.work.flops, gbps,
        f.stream_gbps, ratio_to_stream, gflops, f.peak.gflops, f.peak.kind.c_str(), gflops / f.peak.gflops,
        f.cpu_utilization,
        f.context_speed_ratio > 0
            ? absl::StrFormat(", \"short_context_tokens_per_s\": %.4f, \"context_speed_ratio\": %.4f",
                              f.short_tokens_per_s, f.context_speed_ratio)
                  .c_str()
            : "");
    return;
  }
  std::printf("%s: %d threads (%s), batch %lld, context %lld\n", what, kernels::NumThreads(), isa,
              static_cast<long long>(f.batch), static_cast<long long>(f.context));
  std::printf("  tokens/s              : %.3f  (median step %.2f ms)\n", f.tokens_per_s, f.step_ms);
  std::printf("  bytes read per token  : %.1f MB  (weights %.1f MB, caches %.2f MB)\n", f.work.bytes() / 1e6,
              f.work.weight_bytes / 1e6, f.work.cache_bytes / 1e6);
  std::printf("  achieved bandwidth    : %.2f GB/s  of STREAM triad %.2f GB/s  = %.3f%s\n", gbps, f.stream_gbps,
              ratio_to_stream, f.ratio_to_stream >= 0 ? "  (median of per-step ratios)" : "");
  std::printf("  achieved arithmetic   : %.2f GFLOP/s  of %s peak %.2f GFLOP/s  = %.3f\n", gflops,
              f.peak.kind.c_str(), f.peak.gflops, gflops / f.peak.gflops);
  std::printf("  CPU seconds per second: %.2f of %d threads (less: other processes had the cores)\n",
              f.cpu_utilization, kernels::NumThreads());
  if (f.context_speed_ratio > 0)
    std::printf("  against short context : %.3f of the speed of sequences without context (%.3f tokens/s), steps\n"
                "                          taken in alternation\n",
                f.context_speed_ratio, f.short_tokens_per_s);
}

absl::StatusOr<BenchFigures> ParseCommon(const Flags& flags, int64_t* steps, int64_t* warmup, uint64_t* seed) {
  BenchFigures f;
  auto batch = flags.Int("batch"), context = flags.Int("context"), st = flags.Int("steps"), wu = flags.Int("warmup"),
       sd = flags.Int("seed");
  for (auto* v : {&batch, &context, &st, &wu, &sd})
    if (!v->ok()) return v->status();
  f.batch = *batch, f.context = *context, *steps = *st, *warmup = *wu, *seed = static_cast<uint64_t>(*sd);
  return f;
}

int BenchDecode(int argc, char** argv) {
  Flags flags;
  AddModelBenchFlags(flags, "tokens already in each sequence's cache before the timed steps", "0");
  if (WantsHelp(argc, argv)) return PrintHelp("bench decode", flags);
  if (auto st = flags.Parse(argc, argv, 3); !st.ok()) return Fail(st);
  bench::DecodeBenchOptions o;
  auto f = ParseCommon(flags, &o.steps, &o.warmup, &o.seed);
  auto json = flags.OnOff("json");
  if (!f.ok()) return Fail(f.status());
  if (!json.ok()) return Fail(json.status());
  o.batch = f->batch, o.context = f->context;
  auto rt = OpenRuntime(flags);
  if (!rt.ok()) return Fail(rt.status());
  // The triad runs right before every timed step: each step's bandwidth is set against the limit
  // measured under the same conditions (the median of those ratios is reported).
  bench::StreamTriad triad;
  o.triad = &triad;
  o.compare_short = o.context > 0;
  auto r = bench::RunDecodeBench(*(*rt)->model, o);
  if (!r.ok()) return Fail(r.status());
  f->stream_gbps = r->median_stream_gbps;
  f->ratio_to_stream = r->median_ratio_to_stream;
  f->short_tokens_per_s = r->short_tokens_per_s, f->context_speed_ratio = r->context_speed_ratio;
  f->peak = bench::MeasurePeakGflops();
  f->tokens_per_s = r->tokens_per_s, f->step_ms = r->median_step_seconds * 1e3, f->work = r->work;
  f->cpu_utilization = r->cpu_utilization;
  PrintFigures("decode", *f, *json);
  return 0;
}

int BenchPrefill(int argc, char** argv) {
  Flags flags;
  AddModelBenchFlags(flags, "prompt tokens prefilled per sequence", "512");
  flags.SetDefault("steps", "2").SetDefault("warmup", "1");
  if (WantsHelp(argc, argv)) return PrintHelp("bench prefill", flags);
  if (auto st = flags.Parse(argc, argv, 3); !st.ok()) return Fail(st);
  bench::PrefillBenchOptions o;
  auto f = ParseCommon(flags, &o.iters, &o.warmup, &o.seed);
  auto json = flags.OnOff("json");
  if (!f.ok()) return Fail(f.status());
  if (!json.ok()) return Fail(json.status());
  o.tokens = f->context, o.batch = f->batch;
  auto rt = OpenRuntime(flags);
  if (!rt.ok()) return Fail(rt.status());
  auto r = bench::RunPrefillBench(*(*rt)->model, o);
  if (!r.ok()) return Fail(r.status());
  f->stream_gbps = bench::MeasureStreamTriadGBps();
  f->peak = bench::MeasurePeakGflops();
  f->tokens_per_s = r->tokens_per_s, f->step_ms = r->median_seconds * 1e3, f->work = r->work;
  f->cpu_utilization = r->cpu_utilization;
  PrintFigures("prefill", *f, *json);
  return 0;
}

struct BenchCommand {
  const char* name;
  int (*run)(int argc, char** argv);
  const char* help;
};

constexpr BenchCommand kBenches[] = {
    {"comm", BenchComm, "MoE dispatch + combine against raw MPI_Alltoallv (run under mpirun)"},
    {"engram", BenchEngram, "Engram decode steps, tables sharded vs whole on every rank (run under mpirun -np 2)"},
    {"decode", BenchDecode, "CPU decode tokens/s and GB/s against STREAM triad (default builtin:v4-bench)"},
    {"prefill", BenchPrefill, "CPU prefill tokens/s and GFLOP/s against the FP32 FMA peak (default builtin:v4-bench)"},
    {"serve", BenchServe, "N concurrent gRPC streams against the same workload on the engine in-process"},
};

}  // namespace

int RunBench(int argc, char** argv) {
  if (argc >= 3)
    for (const auto& b : kBenches)
      if (!std::strcmp(argv[2], b.name)) return b.run(argc, argv);
  std::fprintf(stderr, "usage: dsv4 bench <what> [flags]\n");
  for (const auto& b : kBenches) std::fprintf(stderr, "  %-8s %s\n", b.name, b.help);
  return 2;
}

}  // namespace dsv4
