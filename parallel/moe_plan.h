// Host-side plans of an expert-parallel MoE step, shared by every transport (host memory:
// moe_dispatch.h; device memory: runtime/model/expert_exchange.h). Plain C++, always built and
// tested on CPU (tests/parallel/nccl_plan_test.cc).
//
//  - MoeSendPlan: which of this rank's tokens go to which EP rank, peer by peer, each token at most
//    once per peer with the (expert, weight) pairs that peer applies, and the order in which the
//    returned rows are added (EP-rank order: deterministic sums).
//  - ExpertGroups: on the receiving rank, the received tokens regrouped by local expert for the
//    grouped GEMM, and the per-received-token sum over its experts.
//
// Replicas: a sender routes the i-th (token, slot) pair it has for logical expert e (counting in
// token order, then slot order) to replica (i + sender) mod R of e's R replicas, in the order
// ExpertPlacement::replicas lists them. Each sender thus splits a hot expert's tokens evenly over
// its replicas, senders start on different replicas, and the result depends only on the routing,
// never on timing.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/placement.h"

namespace dsv4 {

struct MoeSendPlan {
  int ep = 0;
  int K = 0;
  std::vector<int64_t> send_count;   // [ep] tokens sent to each EP rank (self included)
  std::vector<int64_t> send_offset;  // [ep + 1] first packed row of each EP rank
  std::vector<int64_t> token;        // [total] token index of each packed row
  // [total, 2K] 4-byte words per packed row: K expert ids (int32, -1 = not for that rank), then K
  // routing weights (float bits, 0 where the id is -1). The wire format of the routing.
  std::vector<int32_t> meta;
  // Combine: token t's returned rows are packed rows combine_rows[combine_offset[t] ..
  // combine_offset[t+1]), in EP-rank order.
  std::vector<int32_t> combine_offset;  // [n + 1]
  std::vector<int32_t> combine_rows;    // [total]
  // (expert, slot) pairs served by each EP rank, self included: the load the placement balances.
  std::vector<int64_t> pairs_per_rank;  // [ep]
  std::vector<int32_t> dest;            // [n, K] the EP rank serving each pair (-1: none)
  // Working memory of PlanMoeSend, kept so that planning into the same plan allocates nothing.
  struct Work {
    std::vector<int64_t> seen, fill, stamp;
    std::vector<int32_t> row;
  } work;

  int64_t total() const { return static_cast<int64_t>(token.size()); }
  int32_t expert(int64_t row, int j) const { return meta[row * 2 * K + j]; }
  float weight(int64_t row, int j) const;
};

// experts [n, K] (logical ids, -1 = none); weights [n, K]; `sender` is this rank's EP rank (it
// picks the first replica, see above). InvalidArgument on an expert id outside the placement.
absl::StatusOr<MoeSendPlan> PlanMoeSend(const ExpertPlacement& placement, const int32_t* experts, const float* weights,
                                        int64_t n, int K, int sender);
// The same into `plan`, reusing its memory (a dispatcher plans every step).
absl::Status PlanMoeSend(const ExpertPlacement& placement, const int32_t* experts, const float* weights, int64_t n,
                         int K, int sender, MoeSendPlan& plan);

struct ExpertGroups {
  std::vector<int64_t> local_experts;  // the logical experts this rank holds, ascending
  std::vector<int32_t> offsets;        // [local_experts + 1] rows of each expert in the grouped buffer
  std::vector<int64_t> row_token;      // [rows] received token (row of the receive buffer) per row
  std::vector<float> row_weight;       // [rows] its routing weight (applied before w2)
  // Sum per received token over its experts: rows sum_rows[sum_offset[r] .. sum_offset[r+1]).
  std::vector<int32_t> sum_offset;  // [received + 1]
  std::vector<int32_t> sum_rows;    // [rows]
  int64_t rows() const { return static_cast<int64_t>(row_token.size()); }
};

// meta [received, 2K]: the routing words that arrived with the received tokens (MoeSendPlan::meta
// rows). Rows are grouped by expert in ascending id order, tokens in receive order within an
// expert. InvalidArgument when a received expert id is not held by `rank`.
absl::StatusOr<ExpertGroups> PlanExpertGroups(const ExpertPlacement& placement, int rank, const int32_t* meta,
                                              int64_t received, int K);

}  // namespace dsv4
