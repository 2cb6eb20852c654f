#include "bench/comm_bench.h"

#include <algorithm>
#include <chrono>
#include <climits>
#include <cstdio>
#include <fstream>
#include <random>
#include <tuple>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "bench/commands.h"
#include "bench/profile.h"
#include "parallel/moe_dispatch.h"
#include "parallel/placement.h"

#if DSV4_MPI
#include <mpi.h>
#endif

namespace dsv4 {
namespace {

using Clock = std::chrono::steady_clock;

// Per iteration, the slowest rank's time of each of `a` and `b`.
absl::Status SlowestRank(Communicator& c, std::vector<double>& a, std::vector<double>& b) {
  const int64_t m = static_cast<int64_t>(a.size());
  std::vector<float> mine(2 * m), all(2 * m * c.size());
  for (int64_t i = 0; i < m; ++i) mine[i] = static_cast<float>(a[i]), mine[m + i] = static_cast<float>(b[i]);
  std::vector<int64_t> counts(c.size(), 2 * m);
  DSV4_RETURN_IF_ERROR(c.AllGatherV(mine.data(), counts.data(), all.data()));
  for (int r = 0; r < c.size(); ++r)
    for (int64_t i = 0; i < m; ++i) {
      a[i] = std::max(a[i], static_cast<double>(all[r * 2 * m + i]));
      b[i] = std::max(b[i], static_cast<double>(all[r * 2 * m + m + i]));
    }
  return absl::OkStatus();
}

double Quantile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<size_t>(q * static_cast<double>(v.size() - 1) + 0.5)];
}

// max / mean over ranks of the rows each rank receives and of the pairs its experts compute.
absl::StatusOr<std::pair<double, double>> Imbalances(Communicator& c, const ExpertPlacement& placement,
                                                     const std::vector<int32_t>& e, const std::vector<float>& w,
                                                     int64_t n, int K) {
  DSV4_ASSIGN_OR_RETURN(const MoeSendPlan plan, PlanMoeSend(placement, e.data(), w.data(), n, K, c.rank()));
  const int P = c.size();
  std::vector<float> v(2 * P);
  for (int p = 0; p < P; ++p)
    v[p] = static_cast<float>(plan.send_count[p]), v[P + p] = static_cast<float>(plan.pairs_per_rank[p]);
  DSV4_RETURN_IF_ERROR(c.AllReduceSum(v.data(), 2 * P));
  const std::vector<double> rows(v.begin(), v.begin() + P), pairs(v.begin() + P, v.end());
  return std::pair{Imbalance(rows), Imbalance(pairs)};
}

}  // namespace

std::string CpuModel() {
  std::ifstream in("/proc/cpuinfo");
  std::string line, name, family, model;
  auto value = [](const std::string& l) {
    const size_t colon = l.find(':');
    return colon == std::string::npos ? std::string() : std::string(absl::StripAsciiWhitespace(l.substr(colon + 1)));
  };
  while (std::getline(in, line) && (name.empty() || family.empty() || model.empty())) {
    if (line.rfind("model name", 0) == 0 && name.empty()) name = value(line);
    else if (line.rfind("cpu family", 0) == 0 && family.empty()) family = value(line);
    else if (line.rfind("model", 0) == 0 && line.rfind("model name", 0) != 0 && model.empty()) model = value(line);
  }
  if (name.empty()) return "";
  return family.empty() ? name : absl::StrCat(name, " (family ", family, " model ", model, ")");
}

absl::StatusOr<CommBenchResult> RunMoeCommBench(Communicator& ep, const CommBenchConfig& cfg) {
  const int P = ep.size(), K = cfg.experts_per_token;
  const int64_t n = cfg.tokens, D = cfg.hidden, E = cfg.experts;
  if (K < 1 || K > E) return absl::InvalidArgumentError(absl::StrCat("top-k ", K, " out of [1, ", E, "]"));
  if (!(cfg.hot_fraction >= 0 && cfg.hot_fraction <= 1))
    return absl::InvalidArgumentError("the hot fraction must be in [0, 1]");
  if (cfg.redundant == 0 && P > E)
    return absl::InvalidArgumentError(
        absl::StrCat(P, " ranks but ", E, " experts: give --redundant-experts so every rank holds one"));
  if (cfg.iters < 1) return absl::InvalidArgumentError("at least one timed iteration");
  std::mt19937_64 rng(cfg.seed * 7919 + ep.rank());
  std::uniform_real_distribution<double> u01(0, 1);
  std::vector<float> x(n * D), w(n * K, 1.0f / K);
  std::vector<int32_t> e(n * K);
  for (auto& v : x) v = static_cast<float>(rng() % 1000) * 1e-3f;
  std::vector<int32_t> pool(E);
  std::vector<float> load(E, 0.f);
  for (int64_t t = 0; t < n; ++t) {  // K distinct experts; expert 0 first for the hot fraction
    for (int64_t i = 0; i < E; ++i) pool[i] = static_cast<int32_t>(i);
    const int hot = u01(rng) < cfg.hot_fraction ? 1 : 0;
    for (int j = 0; j < K; ++j) {
      if (j < hot) {
        e[t * K + j] = 0;  // pool[0] is expert 0
        continue;
      }
      std::swap(pool[j], pool[j + rng() % (E - j)]);
      e[t * K + j] = pool[j];
    }
    for (int j = 0; j < K; ++j) load[e[t * K + j]] += 1;
  }
  // Every rank's routing counts, summed: the load a rebalance would see.
  DSV4_RETURN_IF_ERROR(ep.AllReduceSum(load.data(), E));
  const std::vector<double> expert_load(load.begin(), load.end());

  CommBenchResult r;
  r.ranks = P;
  ExpertPlacement timed;
  if (P <= E) {
    timed = ExpertPlacement::Contiguous(E, P);
    DSV4_ASSIGN_OR_RETURN(std::tie(r.rows_imbalance, r.pairs_imbalance), Imbalances(ep, timed, e, w, n, K));
  }
  if (cfg.redundant > 0) {
    DSV4_ASSIGN_OR_RETURN(timed, PlanEplbLayer(expert_load, P, {E + cfg.redundant, 0, 1}));
    DSV4_ASSIGN_OR_RETURN(std::tie(r.rows_imbalance_redundant, r.pairs_imbalance_redundant),
                          Imbalances(ep, timed, e, w, n, K));
  }

  MoeDispatcher disp(&ep);
  DSV4_RETURN_IF_ERROR(disp.Dispatch(timed, x.data(), n, D, e.data(), w.data(), K));  // the counts below
  std::vector<float> y(disp.num_received() * D, 0.f), out(n * D);
  DSV4_RETURN_IF_ERROR(disp.Combine(y.data(), out.data(), /*accumulate=*/false));
  std::vector<float> bytes(P), mine(1, static_cast<float>(disp.bytes_moved()));
  std::vector<int64_t> ones(P, 1);
  DSV4_RETURN_IF_ERROR(ep.AllGatherV(mine.data(), ones.data(), bytes.data()));
  double total = 0;
  for (float b : bytes) total += b;
  r.bytes_per_rank = static_cast<int64_t>(total / P);

#if DSV4_MPI
  // The same bytes per peer through MPI_Alltoallv: dispatch's records (self included), then
  // combine's rows.
  const MPI_Comm* comm = static_cast<const MPI_Comm*>(ep.NativeHandle());
  const int64_t rec = (D + 2 * K) * 4;
  std::vector<int> sc(P), sd(P), rc(P), rd(P), sc2(P), sd2(P), rc2(P), rd2(P), to(P), from(P);
  for (int p = 0; p < P; ++p) to[p] = static_cast<int>(disp.plan().send_count[p]);
  if (comm != nullptr) MPI_Alltoall(to.data(), 1, MPI_INT, from.data(), 1, MPI_INT, *comm);
  int64_t so = 0, ro = 0, so2 = 0, ro2 = 0;
  for (int p = 0; p < P; ++p) {
    if (static_cast<int64_t>(std::max(to[p], from[p])) * rec > INT_MAX)
      return absl::InvalidArgumentError("a per-peer message exceeds 2^31 bytes: fewer tokens or a smaller hidden");
    sc[p] = static_cast<int>(to[p] * rec), sd[p] = static_cast<int>(so), so += sc[p];
    rc[p] = static_cast<int>(from[p] * rec), rd[p] = static_cast<int>(ro), ro += rc[p];
    sc2[p] = static_cast<int>(from[p] * D * 4), sd2[p] = static_cast<int>(so2), so2 += sc2[p];
    rc2[p] = static_cast<int>(to[p] * D * 4), rd2[p] = static_cast<int>(ro2), ro2 += rc2[p];
  }
  std::vector<char> sbuf(std::max(so, so2), 1), rbuf(std::max(ro, ro2));
#endif
  // Each iteration times both, after a barrier each; which goes first alternates, so that neither
  // always meets the caches and the scheduler in the state the other leaves them in.
  std::vector<double> ours, raw;
  for (int it = 0; it < cfg.warmup + cfg.iters; ++it) {
    double t_ours = 0, t_raw = 0;
    auto time_ours = [&]() -> absl::Status {
      DSV4_RETURN_IF_ERROR(ep.Barrier());
      const auto t0 = Clock::now();
      DSV4_RETURN_IF_ERROR(disp.Dispatch(timed, x.data(), n, D, e.data(), w.data(), K));
      // The experts' work is not part of the figure; out is written as the model's MoE writes it.
      DSV4_RETURN_IF_ERROR(disp.Combine(y.data(), out.data(), /*accumulate=*/false));
      t_ours = std::chrono::duration<double>(Clock::now() - t0).count();
      return absl::OkStatus();
    };
    auto time_raw = [&] {
#if DSV4_MPI
      if (comm == nullptr) return;
      MPI_Barrier(*comm);
      const auto t1 = Clock::now();
      MPI_Alltoallv(sbuf.data(), sc.data(), sd.data(), MPI_BYTE, rbuf.data(), rc.data(), rd.data(), MPI_BYTE, *comm);
      MPI_Alltoallv(sbuf.data(), sc2.data(), sd2.data(), MPI_BYTE, rbuf.data(), rc2.data(), rd2.data(), MPI_BYTE, *comm);
      t_raw = std::chrono::duration<double>(Clock::now() - t1).count();
#endif
    };
    if (it % 2 == 1) time_raw();
    DSV4_RETURN_IF_ERROR(time_ours());
    if (it % 2 == 0) time_raw();
    if (it >= cfg.warmup) ours.push_back(t_ours), raw.push_back(t_raw);
  }
  DSV4_RETURN_IF_ERROR(SlowestRank(ep, ours, raw));
  r.dispatch_combine_s = Quantile(ours, 0.5);
  r.dispatch_combine_gbps = r.bytes_per_rank / r.dispatch_combine_s / 1e9;
  if (raw[0] > 0) {
    std::vector<double> ratio(ours.size());
    for (size_t i = 0; i < ours.size(); ++i) ratio[i] = raw[i] / ours[i];
    r.raw_alltoallv_s = Quantile(raw, 0.5);
    r.raw_alltoallv_gbps = r.bytes_per_rank / r.raw_alltoallv_s / 1e9;
    r.ratio = Quantile(ratio, 0.5), r.ratio_p25 = Quantile(ratio, 0.25), r.ratio_p75 = Quantile(ratio, 0.75);
    r.ratio_min = Quantile(ratio, 0), r.ratio_max = Quantile(ratio, 1);
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
      .Int("experts", d.experts, "routed experts (any number: the ranks need not divide them)", 1, 1 << 16)
      .Int("experts-per-token", d.experts_per_token,
           "routed experts per token (the model config's num_experts_per_tok)", 1, 64)
      .Alias("topk", "experts-per-token")
      .Int("tokens", d.tokens, "tokens per rank per step", 1, 1 << 20)
      .Int("iters", d.iters, "timed iterations (median reported)", 1, 1 << 20)
      .Double("hot-fraction", d.hot_fraction, "fraction of tokens routed to expert 0 (0.5: it takes half the tokens)",
              0, 1)
      .Int("redundant-experts", d.redundant,
           "time EPLB's placement with this many redundant slots (0: contiguous blocks)", 0, 1 << 20)
      .Bool("json", false, "print one JSON object")
      .String("profile-out", "", "also write this machine's dsv4-profile/1 file (`dsv4 plan --profile`) here")
      .Double("comm-timeout-s", 120, "seconds a collective may wait", 0.001, 86400);
}

absl::Status Comm(const Flags& flags) {
  CommBenchConfig cfg;
  cfg.hidden = flags.GetInt("hidden"), cfg.experts = flags.GetInt("experts"), cfg.tokens = flags.GetInt("tokens");
  cfg.experts_per_token = static_cast<int>(flags.GetInt("experts-per-token"));
  cfg.iters = static_cast<int>(flags.GetInt("iters"));
  cfg.hot_fraction = flags.GetDouble("hot-fraction");
  cfg.redundant = flags.GetInt("redundant-experts");
  if (cfg.experts_per_token > cfg.experts)
    return absl::InvalidArgumentError("--experts-per-token must not exceed --experts");
  auto world = WorldOrLocal();
  world->set_timeout(std::chrono::milliseconds(static_cast<int64_t>(flags.GetDouble("comm-timeout-s") * 1000)));
  DSV4_ASSIGN_OR_RETURN(const CommBenchResult r, RunMoeCommBench(*world, cfg));
  if (world->rank() != 0) return absl::OkStatus();
  const std::string cpu = CpuModel();
  if (flags.GetBool("json")) {
    std::printf(
        "{\"ranks\": %d, \"hidden\": %lld, \"experts\": %lld, \"experts_per_token\": %d, \"tokens_per_rank\": %lld, "
        "\"hot_fraction\": %.3f, \"redundant_experts\": %lld, \"bytes_per_rank\": %lld, "
        "\"dispatch_combine_ms\": %.4f, \"raw_alltoallv_ms\": %.4f, \"dispatch_combine_gbps\": %.4f, "
        "\"raw_alltoallv_gbps\": %.4f, \"ratio\": %.4f, \"ratio_p25\": %.4f, \"ratio_p75\": %.4f, "
        "\"ratio_min\": %.4f, \"ratio_max\": %.4f, \"rows_imbalance\": %.4f, \"pairs_imbalance\": %.4f, "
        "\"rows_imbalance_redundant\": %.4f, \"pairs_imbalance_redundant\": %.4f, \"cpu\": \"%s\"}\n",
        r.ranks, static_cast<long long>(cfg.hidden), static_cast<long long>(cfg.experts), cfg.experts_per_token,
        static_cast<long long>(cfg.tokens), cfg.hot_fraction, static_cast<long long>(cfg.redundant),
        static_cast<long long>(r.bytes_per_rank), r.dispatch_combine_s * 1e3, r.raw_alltoallv_s * 1e3,
        r.dispatch_combine_gbps, r.raw_alltoallv_gbps, r.ratio, r.ratio_p25, r.ratio_p75, r.ratio_min, r.ratio_max,
        r.rows_imbalance, r.pairs_imbalance, r.rows_imbalance_redundant, r.pairs_imbalance_redundant, cpu.c_str());
  } else {
    std::printf(
        "MoE dispatch+combine, %d ranks, hidden %lld, %lld experts, %d per token, %lld tokens/rank, hot fraction "
        "%.2f\n",
        r.ranks, static_cast<long long>(cfg.hidden), static_cast<long long>(cfg.experts), cfg.experts_per_token,
        static_cast<long long>(cfg.tokens), cfg.hot_fraction);
    std::printf("  cpu                     : %s\n", cpu.c_str());
    std::printf("  placement timed         : %s\n",
                cfg.redundant > 0 ? absl::StrCat("EPLB, ", cfg.redundant, " redundant slots").c_str() : "contiguous");
    std::printf("  bytes per rank per step : %lld\n", static_cast<long long>(r.bytes_per_rank));
    std::printf("  dispatch+combine        : %.3f ms  %.3f GB/s (median)\n", r.dispatch_combine_s * 1e3,
                r.dispatch_combine_gbps);
    std::printf("  raw MPI_Alltoallv x2    : %.3f ms  %.3f GB/s (median)\n", r.raw_alltoallv_s * 1e3,
                r.raw_alltoallv_gbps);
    std::printf("  ratio (raw / ours)      : %.3f median, %.3f-%.3f quartiles, %.3f-%.3f range over %d iterations\n",
                r.ratio, r.ratio_p25, r.ratio_p75, r.ratio_min, r.ratio_max, cfg.iters);
    std::printf("  max/mean rows per rank  : %.3f contiguous", r.rows_imbalance);
    if (cfg.redundant > 0) std::printf(", %.3f EPLB + %lld redundant", r.rows_imbalance_redundant,
                                       static_cast<long long>(cfg.redundant));
    std::printf("\n  max/mean pairs per rank : %.3f contiguous", r.pairs_imbalance);
    if (cfg.redundant > 0) std::printf(", %.3f EPLB + %lld redundant", r.pairs_imbalance_redundant,
                                       static_cast<long long>(cfg.redundant));
    std::printf("\n");
  }
  if (flags.Given("profile-out"))
    DSV4_RETURN_IF_ERROR(bench::MeasureAndWriteCpuProfile(flags.GetString("profile-out"), "dsv4 bench comm", {},
                                                          r.dispatch_combine_gbps));
  return absl::OkStatus();
}

}  // namespace bench
}  // namespace dsv4
