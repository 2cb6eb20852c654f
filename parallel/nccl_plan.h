// Host-side plans for communication over NCCL and for expert parallelism on GPUs. Plain C++ with no
// CUDA or NCCL header, always built, so the CPU tests check them (tests/parallel/nccl_plan_test.cc):
//
//  - GroupedExchange: an all-to-all-v as the ncclSend / ncclRecv calls of one ncclGroupStart/End,
//    zero-byte messages dropped, the self part a local copy.
//  - MicroBatches: the token ranges MoE splits a step into so one half's dispatch / combine overlaps
//    the other half's expert computation.
//  - MoeSendPlan: which of this rank's tokens go to which EP rank, packed peer by peer (each token
//    at most once per peer, with the (expert, weight) pairs that peer applies), and the ordered
//    combine of the returned rows (CSR per token, in EP-rank order: deterministic sums).
//  - ExpertGroups: on the receiving rank, the received tokens regrouped by local expert for the
//    grouped GEMM, and the per-received-token sum over its experts.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv4 {

class ExpertPlacement;

// ---- grouped point-to-point exchange --------------------------------------------------------------

struct P2pOp {
  enum Kind { kSend, kRecv };
  Kind kind = kSend;
  int peer = 0;
  int64_t offset = 0;  // byte offset into the send or receive buffer
  int64_t bytes = 0;
};

struct GroupedExchange {
  std::vector<P2pOp> ops;  // peers in the order rank+1, rank+2, ... (mod size); sends before receives per peer
  int64_t self_send_offset = 0, self_recv_offset = 0, self_bytes = 0;  // local copy
};

// The AllToAllV of Communicator (per-peer byte counts and displacements) for rank `rank` of `size`.
// InvalidArgument when the self send and receive sizes differ or a count / displacement is negative.
absl::StatusOr<GroupedExchange> PlanAllToAllV(int rank, int size, const int64_t* send_bytes,
                                              const int64_t* send_displs, const int64_t* recv_bytes,
                                              const int64_t* recv_displs);

// AllGatherV as an exchange: this rank's `counts[rank]` elements of `elem_bytes` go to every peer;
// peer p's land at the prefix sum of counts before p.
GroupedExchange PlanAllGatherV(int rank, int size, const int64_t* counts, int64_t elem_bytes);

// ---- micro-batches ---------------------------------------------------------------------------------

struct TokenRange {
  int64_t begin = 0, end = 0;
  int64_t size() const { return end - begin; }
};
// One range for n < min_tokens_to_split (too few tokens to hide communication), else two halves
// (the first gets the extra token).
std::vector<TokenRange> MicroBatches(int64_t n, int64_t min_tokens_to_split);

// ---- MoE dispatch / combine plans ------------------------------------------------------------------

struct MoeSendPlan {
  int ep = 0;
  int K = 0;
  std::vector<int64_t> send_count;   // [ep] tokens sent to each EP rank (self included)
  std::vector<int64_t> send_offset;  // [ep + 1] first packed row of each EP rank
  std::vector<int64_t> token;        // [total] token index of each packed row (GatherRows ids)
  std::vector<int32_t> expert;       // [total, K] expert ids that rank applies; -1 = not for it
  std::vector<float> weight;         // [total, K] their routing weights; 0 where expert is -1
  // Combine: token t's returned rows are packed rows combine_rows[combine_offset[t] ..
  // combine_offset[t+1]), in EP-rank order.
  std::vector<int32_t> combine_offset;  // [n + 1]
  std::vector<int32_t> combine_rows;    // [total]
  int64_t total() const { return static_cast<int64_t>(token.size()); }
};

// experts [n, K] (logical ids, -1 = none); weights [n, K]. Replicas are chosen by token index +
// token_base (ExpertPlacement::Route). InvalidArgument on an expert id outside the placement.
absl::StatusOr<MoeSendPlan> PlanMoeSend(const ExpertPlacement& placement, const int32_t* experts, const float* weights,
                                        int64_t n, int K, int64_t token_base = 0);

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

// recv_expert / recv_weight [received, K]: what arrived with the received tokens. Rows are grouped
// by expert in ascending id order, tokens in receive order within an expert. InvalidArgument when
// a received expert id is not held by `rank`.
absl::StatusOr<ExpertGroups> PlanExpertGroups(const ExpertPlacement& placement, int rank, const int32_t* recv_expert,
                                              const float* recv_weight, int64_t received, int K);

}  // namespace dsv4
