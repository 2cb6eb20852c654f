// Benchmark of MoE dispatch + combine against the raw transport moving the same bytes
// (`dsv4 bench comm`), and of how evenly an expert placement spreads the work.
//
// Each timed iteration runs our dispatch + combine and then two MPI_Alltoallv calls with the same
// per-peer byte counts (the dispatch's records, then the combine's rows), so the two see the same
// machine state; the figure is the median over iterations of raw time / our time (the slowest
// rank's time of each), with its quartiles and extremes as the spread.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace dsv4 {

struct CommBenchConfig {
  int64_t hidden = 4096;  // V4-Flash
  int64_t experts = 256;
  int experts_per_token = 6;
  int64_t tokens = 256;  // tokens per rank per step
  // 100: the median of 20 moved by 0.1 within minutes on a shared 2-core host (0.87 to 0.98 at
  // 2 ranks); 100 cost 0.3 s at 2 ranks and about 3 s at 4.
  int iters = 100, warmup = 3;
  uint64_t seed = 1;
  // Routing skew: this fraction of each rank's tokens has expert 0 among its top-k (0: uniform).
  double hot_fraction = 0;
  // Extra expert slots: when > 0 the timed placement is EPLB's with this many redundant slots,
  // planned from the routing's load (as a rebalance would), else contiguous blocks.
  int64_t redundant = 0;
};

struct CommBenchResult {
  int ranks = 1;
  int64_t bytes_per_rank = 0;     // dispatch + combine payload sent by one rank per step (mean)
  double dispatch_combine_s = 0;  // median over iterations of the slowest rank
  double raw_alltoallv_s = 0;     // MPI_Alltoallv with the same per-peer byte counts
  double dispatch_combine_gbps = 0, raw_alltoallv_gbps = 0;
  // raw / ours per iteration: median, quartiles, extremes.
  double ratio = 0, ratio_p25 = 0, ratio_p75 = 0, ratio_min = 0, ratio_max = 0;
  // max / mean over EP ranks of the token rows each receives (self included) and of the (token,
  // expert) pairs its experts compute, with contiguous blocks and with EPLB + redundant slots.
  double rows_imbalance = 0, pairs_imbalance = 0;
  double rows_imbalance_redundant = 0, pairs_imbalance_redundant = 0;
};

// Collective over `ep`: every rank must call it. Routing is seeded top-k per rank (distinct
// experts per token). Any number of experts over any number of ranks.
absl::StatusOr<CommBenchResult> RunMoeCommBench(Communicator& ep, const CommBenchConfig& config);

// "model name (family F model M)" of this machine's CPU, from /proc/cpuinfo ("" when unknown).
std::string CpuModel();

}  // namespace dsv4
