#include "bench/comm_bench.h"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "bench/commands.h"
#include "parallel/layout.h"
#include "parallel/moe_dispatch.h"

#if DSV4_MPI
#include <mpi.h>
#endif

namespace dsv4 {
namespace {

using Clock = std::chrono::steady_clock;

// The slowest rank's time for each iteration, then the median over iterations.
absl::StatusOr<double> MedianOfMax(Communicator& c, std::vector<double> times) {
  std::vector<float> mine(times.begin(), times.end()), all(times.size() * c.size());
  std::vector<int64_t> counts(c.size(), static_cast<int64_t>(times.size()));
  DSV4_RETURN_IF_ERROR(c.AllGatherV(mine.data(), counts.data(), all.data()));
  std::vector<double> worst(times.size(), 0);
  for (int r = 0; r < c.size(); ++r)
    for (size_t i = 0; i < times.size(); ++i)
      worst[i] = std::max(worst[i], static_cast<double>(all[r * times.size() + i]));
  std::nth_element(worst.begin(), worst.begin() + worst.size() / 2, worst.end());
  return worst[worst.size() / 2];
}

}  // namespace

absl::StatusOr<CommBenchResult> RunMoeCommBench(Communicator& ep, const CommBenchConfig& cfg) {
  const int P = ep.size(), K = cfg.topk;
  const int64_t n = cfg.tokens, D = cfg.hidden;
  if (cfg.experts % P != 0)
    return absl::InvalidArgumentError(absl::StrCat(P, " ranks do not divide ", cfg.experts, " experts"));
  if (K < 1 || K > cfg.experts) return absl::InvalidArgumentError(absl::StrCat("top-k ", K, " out of range"));
  std::mt19937_64 rng(cfg.seed * 7919 + ep.rank());
  std::vector<float> x(n * D), w(n * K, 1.0f / K);
  std::vector<int32_t> e(n * K);
  for (auto& v : x) v = static_cast<float>(rng() % 1000) * 1e-3f;
  std::vector<int32_t> pool(cfg.experts);
  for (int64_t t = 0; t < n; ++t) {  // K distinct uniformly random experts
    for (int64_t i = 0; i < cfg.experts; ++i) pool[i] = static_cast<int32_t>(i);
    for (int j = 0; j < K; ++j) {
      std::swap(pool[j], pool[j + rng() % (cfg.experts - j)]);
      e[t * K + j] = pool[j];
    }
  }
  const ExpertPlacement placement = ExpertPlacement::Contiguous(cfg.experts, P);
  MoeDispatcher disp(&ep, &placement);
  std::vector<float> y, out(n * D);
  std::vector<double> ours;
  for (int it = 0; it < cfg.warmup + cfg.iters; ++it) {
    DSV4_RETURN_IF_ERROR(ep.Barrier());
    const auto t0 = Clock::now();
    DSV4_RETURN_IF_ERROR(disp.Dispatch(x.data(), n, D, e.data(), w.data(), K));
    y.resize(disp.num_received() * D);  // the experts' work is not part of the figure
    DSV4_RETURN_IF_ERROR(disp.Combine(y.data(), out.data()));
    if (it >= cfg.warmup) ours.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
  }
  CommBenchResult r;
  r.ranks = P;
  DSV4_ASSIGN_OR_RETURN(r.dispatch_combine_s, MedianOfMax(ep, ours));

  // The same bytes, per peer, through MPI_Alltoallv: dispatch's counts, then combine's.
  std::vector<float> counts_f(1, static_cast<float>(disp.bytes_moved()));
  std::vector<float> all_bytes(P);
  std::vector<int64_t> ones(P, 1);
  DSV4_RETURN_IF_ERROR(ep.AllGatherV(counts_f.data(), ones.data(), all_bytes.data()));
  double total = 0;
  for (float b : all_bytes) total += b;
  r.bytes_per_rank = static_cast<int64_t>(total / P);
#if DSV4_MPI
  if (ep.NativeHandle() != nullptr) {
    MPI_Comm comm = *static_cast<const MPI_Comm*>(ep.NativeHandle());
    // Re-derive the per-peer byte counts of one dispatch and one combine.
    const int64_t rec = (D + 2 * K) * 4;
    std::vector<int> sdisp(P, 0), rdisp(P, 0), scnt(P, 0), rcnt(P, 0), scnt2(P), rcnt2(P), sd2(P), rd2(P);
    std::vector<int64_t> per_dest(P, 0);
    for (int64_t t = 0; t < n; ++t) {
      std::vector<bool> hit(P, false);
      for (int j = 0; j < K; ++j) hit[placement.Route(e[t * K + j], t)] = true;
      for (int p = 0; p < P; ++p) per_dest[p] += hit[p];
    }
    std::vector<int> recv_tokens(P);
    std::vector<int> per_dest_i(per_dest.begin(), per_dest.end());
    MPI_Alltoall(per_dest_i.data(), 1, MPI_INT, recv_tokens.data(), 1, MPI_INT, comm);
    int so = 0, ro = 0, so2 = 0, ro2 = 0;
    for (int p = 0; p < P; ++p) {
      scnt[p] = static_cast<int>(per_dest[p] * rec), sdisp[p] = so, so += scnt[p];
      rcnt[p] = static_cast<int>(recv_tokens[p] * rec), rdisp[p] = ro, ro += rcnt[p];
      scnt2[p] = static_cast<int>(recv_tokens[p] * D * 4), sd2[p] = so2, so2 += scnt2[p];
      rcnt2[p] = static_cast<int>(per_dest[p] * D * 4), rd2[p] = ro2, ro2 += rcnt2[p];
    }
    std::vector<char> sbuf(std::max(so, so2)), rbuf(std::max(ro, ro2));
    std::vector<double> raw;
    for (int it = 0; it < cfg.warmup + cfg.iters; ++it) {
      MPI_Barrier(comm);
      const auto t0 = Clock::now();
      MPI_Alltoallv(sbuf.data(), scnt.data(), sdisp.data(), MPI_BYTE, rbuf.data(), rcnt.data(), rdisp.data(), MPI_BYTE,
                    comm);
      MPI_Alltoallv(sbuf.data(), scnt2.data(), sd2.data(), MPI_BYTE, rbuf.data(), rcnt2.data(), rd2.data(), MPI_BYTE,
                    comm);
      if (it >= cfg.warmup) raw.push_back(std::chrono::duration<double>(Clock::now() - t0).count());
    }
    DSV4_ASSIGN_OR_RETURN(r.raw_alltoallv_s, MedianOfMax(ep, raw));
  }
#endif
  r.dispatch_combine_gbps = r.bytes_per_rank / r.dispatch_combine_s / 1e9;
  if (r.raw_alltoallv_s > 0) {
    r.raw_alltoallv_gbps = r.bytes_per_rank / r.raw_alltoallv_s / 1e9;
    r.ratio = r.raw_alltoallv_s / r.dispatch_combine_s;
  }
  return r;
}

namespace bench {
namespace {

std::unique_ptr<Communicator> WorldOrLocal() {
  if (LaunchedByMpirun()) {
    auto w = MakeMpiWorldCommunicator();
    if (w.ok()) return std::move(*w);
  }
  return MakeLocalCommunicator();
}

}  // namespace

void CommFlags(Flags& flags) {
  const CommBenchConfig d;
  flags.Int("hidden", d.hidden, "hidden size (V4-Flash: 4096)", 1, 1 << 20)
      .Int("experts", d.experts, "routed experts", 1, 1 << 16)
      .Int("topk", d.topk, "experts per token", 1, 64)
      .Int("tokens", d.tokens, "tokens per rank per step", 1, 1 << 20)
      .Int("iters", d.iters, "timed iterations (median reported)", 1, 1 << 20)
      .Bool("json", false, "print one JSON object")
      .Double("comm-timeout-s", 120, "seconds a collective may wait", 0.001, 86400);
}

absl::Status Comm(const Flags& flags) {
  CommBenchConfig cfg;
  cfg.hidden = flags.GetInt("hidden"), cfg.experts = flags.GetInt("experts"), cfg.tokens = flags.GetInt("tokens");
  cfg.topk = static_cast<int>(flags.GetInt("topk"));
  cfg.iters = static_cast<int>(flags.GetInt("iters"));
  if (cfg.topk > cfg.experts) return absl::InvalidArgumentError("--topk must not exceed --experts");
  auto world = WorldOrLocal();
  world->set_timeout(std::chrono::milliseconds(static_cast<int64_t>(flags.GetDouble("comm-timeout-s") * 1000)));
  DSV4_ASSIGN_OR_RETURN(const CommBenchResult r, RunMoeCommBench(*world, cfg));
  if (world->rank() != 0) return absl::OkStatus();
  if (flags.GetBool("json")) {
    std::printf(
        "{\"ranks\": %d, \"hidden\": %lld, \"experts\": %lld, \"topk\": %d, \"tokens_per_rank\": %lld, "
        "\"bytes_per_rank\": %lld, \"dispatch_combine_ms\": %.4f, \"raw_alltoallv_ms\": %.4f, "
        "\"dispatch_combine_gbps\": %.4f, \"raw_alltoallv_gbps\": %.4f, \"ratio\": %.4f}\n",
        r.ranks, static_cast<long long>(cfg.hidden), static_cast<long long>(cfg.experts), cfg.topk,
        static_cast<long long>(cfg.tokens), static_cast<long long>(r.bytes_per_rank), r.dispatch_combine_s * 1e3,
        r.raw_alltoallv_s * 1e3, r.dispatch_combine_gbps, r.raw_alltoallv_gbps, r.ratio);
  } else {
    std::printf("MoE dispatch+combine, %d ranks, hidden %lld, %lld experts top-%d, %lld tokens/rank\n", r.ranks,
                static_cast<long long>(cfg.hidden), static_cast<long long>(cfg.experts), cfg.topk,
                static_cast<long long>(cfg.tokens));
    std::printf("  bytes per rank per step : %lld\n", static_cast<long long>(r.bytes_per_rank));
    std::printf("  dispatch+combine        : %.3f ms  %.3f GB/s\n", r.dispatch_combine_s * 1e3,
                r.dispatch_combine_gbps);
    std::printf("  raw MPI_Alltoallv x2    : %.3f ms  %.3f GB/s\n", r.raw_alltoallv_s * 1e3, r.raw_alltoallv_gbps);
    std::printf("  ratio (ours / raw)      : %.3f\n", r.ratio);
  }
  return absl::OkStatus();
}

}  // namespace bench
}  // namespace dsv4
