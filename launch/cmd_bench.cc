// dsv4 bench <what> [flags]: throughput figures as ratios to limits measured in the same run.
//
//   comm   MoE dispatch + combine against raw MPI_Alltoallv moving the same bytes
//          (run under mpirun; --json prints dispatch_combine_gbps, raw_alltoallv_gbps, ratio)
//   serve  N concurrent gRPC streams against the engine in-process, same workload (bench_serve.cc;
//          --json prints ttft_ms_p50/p99, itl_ms_p50/p99, tokens_per_s, inprocess_tokens_per_s, ratio)
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
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

struct BenchCommand {
  const char* name;
  int (*run)(int argc, char** argv);
  const char* help;
};

constexpr BenchCommand kBenches[] = {
    {"comm", BenchComm, "MoE dispatch + combine against raw MPI_Alltoallv (run under mpirun)"},
    {"engram", BenchEngram, "Engram decode steps, tables sharded vs whole on every rank (run under mpirun -np 2)"},
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
