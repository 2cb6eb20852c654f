// Benchmark of MoE dispatch + combine against the raw transport moving the same bytes
// (`dsv4 bench comm`). Figures are ratios taken in one run.
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace dsv4 {

struct CommBenchConfig {
  int64_t hidden = 4096;  // V4-Flash
  int64_t experts = 256;
  int topk = 6;
  int64_t tokens = 256;  // tokens per rank per step
  int iters = 20, warmup = 3;
  uint64_t seed = 1;
};

struct CommBenchResult {
  int ranks = 1;
  int64_t bytes_per_rank = 0;     // dispatch + combine payload sent by one rank per step (mean)
  double dispatch_combine_s = 0;  // median over iterations of the slowest rank
  double raw_alltoallv_s = 0;     // MPI_Alltoallv with the same per-peer byte counts
  double dispatch_combine_gbps = 0, raw_alltoallv_gbps = 0, ratio = 0;
};

// Collective over `ep`: every rank must call it. Routing is uniform random top-k (seeded).
absl::StatusOr<CommBenchResult> RunMoeCommBench(Communicator& ep, const CommBenchConfig& config);

}  // namespace dsv4
