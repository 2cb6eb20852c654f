// Host-side plans for communication over NCCL and for expert parallelism on GPUs. Plain C++ with no
// CUDA or NCCL header, always built, so the CPU tests check them (tests/parallel/nccl_plan_test.cc):
//
//  - GroupedExchange: an all-to-all-v as the ncclSend / ncclRecv calls of one ncclGroupStart/End,
//    zero-byte messages dropped, the self part a local copy.
//  - MicroBatches: the token ranges MoE splits a step into so one half's dispatch / combine overlaps
//    the other half's expert computation.
//
// The MoE plans themselves (which token goes to which EP rank, the expert grouping on the receiver,
// the order of the combine) are shared with the MPI path: parallel/moe_plan.h.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/moe_plan.h"

namespace dsv4 {

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

}  // namespace dsv4
