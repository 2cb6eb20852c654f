// Expert-parallel dispatch and combine with the token rows in a backend's memory: the MoE exchange
// of a model that runs on a GPU. (Host memory keeps parallel/moe_dispatch.h, whose single-copy
// reads between ranks of a node have no device counterpart.) Both run the plan of
// parallel/moe_plan.h, so a token goes to the same ranks with the same (expert, weight) pairs and
// its rows come back summed in the same order: the results are the MPI path's, bit for bit.
//
//   Dispatch: the routing (n x K ids and weights, a few KB) comes to the host, where the plan is
//             made; counts and routing words go over the `routing` communicator (host memory);
//             the hidden rows are packed on the device by the plan's token order (GatherRows) and
//             exchanged over the `rows` communicator (device memory: NCCL, or staged through the
//             host). The received routing goes back up as expert ids and weights per token.
//   Combine:  each served token's weighted expert sum goes back the way it came (`rows`); every
//             token's returned rows are added in the MPI path's order (its own rank's first, then
//             rank - 1, rank - 2, ...) by one CombineRows.
//
// Buffers come from the backend's step workspace: the caller holds one WorkspaceScope from before
// Dispatch until after Combine. Host-side plans are kept across calls. One thread at a time.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "parallel/communicator.h"
#include "parallel/moe_plan.h"
#include "parallel/placement.h"
#include "runtime/backend/backend.h"

namespace dsv4 {

class ExpertExchange {
 public:
  // `routing` takes host memory, `rows` the backend's; both span the same EP group, and everything
  // must outlive the exchange.
  ExpertExchange(Backend& backend, Communicator& routing, Communicator& rows)
      : be_(backend), routing_(routing), rows_(rows) {}

  // x [n, D]; experts / weights [n, K] (logical expert ids, -1 = none), all backend memory.
  // `placement` must be the same on every rank of the group.
  absl::Status Dispatch(const ExpertPlacement& placement, const float* x, int64_t n, int64_t D, const int32_t* experts,
                        const float* weights, int K);

  // What this rank serves, in backend memory: received() tokens (each peer's in rank order, this
  // rank's among them), their rows [received, D], and their routing [received, K]: the expert ids
  // held here (-1 for those served elsewhere) and their weights.
  int64_t received() const { return received_; }
  const float* hidden() const { return hidden_; }
  int32_t* experts() const { return experts_; }
  float* weights() const { return weights_; }
  // The (token, expert) pairs among them that this rank serves.
  int64_t held_pairs() const { return held_; }

  // y [received(), D]: this rank's weighted expert sum per served token. out [n, D] becomes each
  // token's sum over its serving ranks (zero for a token no rank served).
  absl::Status Combine(const float* y, float* out);

  // The last Dispatch's plan.
  const MoeSendPlan& plan() const { return plan_; }

 private:
  template <typename T>
  T* Upload(const std::vector<T>& host);

  Backend& be_;
  Communicator& routing_;
  Communicator& rows_;
  int64_t n_ = 0, D_ = 0;
  int K_ = 0;
  MoeSendPlan plan_;
  std::vector<int32_t> host_experts_;
  std::vector<float> host_weights_;
  std::vector<int64_t> send_count_, recv_count_;  // tokens per EP rank, this one's included
  std::vector<int64_t> bytes_, displs_, back_bytes_, back_displs_;
  std::vector<int32_t> recv_meta_;     // [received, 2K] routing words
  std::vector<int32_t> recv_experts_;  // [received, K]
  std::vector<float> recv_weights_;    // [received, K]
  std::vector<int32_t> combine_rows_;  // [total] the plan's, in the MPI path's order
  int64_t received_ = 0, held_ = 0;
  float* hidden_ = nullptr;
  int32_t* experts_ = nullptr;
  float* weights_ = nullptr;
};

}  // namespace dsv4
