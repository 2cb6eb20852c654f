// Expert-parallel MoE dispatch and combine over an EP group (host memory: the MPI path; with the
// rows in a device's memory, runtime/model/expert_exchange.h runs the same plan, parallel/moe_plan.h).
//
// Dispatch sends each token's hidden state ONCE to every EP rank that serves at least one of its
// top-k experts, with the (expert, weight) pairs that rank must apply. Replicas of an expert split
// its tokens evenly (PlanMoeSend). The receiver runs its experts grouped and returns one weighted
// sum row per received token; Combine adds the rows into the senders' outputs. Tokens a rank
// serves itself never leave it: they are read in place and their rows added in place.
//
// On the wire, per peer and in this order: the number of tokens (one int64, sent first so the
// receiver can make room while the rest is on its way), then their routing (2K words per token,
// MoeSendPlan::meta, then the tokens' row indices and the address of the hidden-state buffer),
// then their rows. Counts and routing of every peer are posted at once; a peer's payload is
// received as soon as its count is in, whatever the other peers do.
//
// Rows never get packed. Between ranks of one node that may read each other's memory
// (PeerMemory: Linux cross-memory attach), the receiver gathers a peer's rows straight out of its
// hidden-state buffer, one kernel copy per row as MPI's own single-copy transport makes for a
// contiguous message; and in Combine the sender reads each peer's returned rows in L2-sized
// chunks and adds them at once, so the returned rows cross memory once. Other peers get the rows
// as a message sent from the hidden-state buffer with an indexed datatype (PeerExchange::SendRows).
// Combine reduces in a fixed order (this rank's own rows, then rank - 1, rank - 2, ...: the order
// the peers send in), so the sums do not depend on timing.
//
// Buffers are kept across calls: no allocation in steady state. The first Dispatch probes which
// peers' memory can be read (collective, like every Dispatch). One thread at a time.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "parallel/communicator.h"
#include "parallel/moe_plan.h"
#include "parallel/placement.h"

namespace dsv4 {

class MoeDispatcher {
 public:
  // `ep` must outlive the dispatcher; the placement is given per Dispatch (it changes by layer and
  // when the job rebalances).
  explicit MoeDispatcher(Communicator* ep) : comm_(ep) {}

  // x [n, D] (must stay valid until Combine); experts / weights [n, K] (logical expert ids, -1 =
  // none). `placement` must be the same on every rank of the group.
  absl::Status Dispatch(const ExpertPlacement& placement, const float* x, int64_t n, int64_t D, const int32_t* experts,
                        const float* weights, int K);

  // What this rank serves: num_received() tokens, its own first, then each peer's in rank order.
  int64_t num_received() const { return static_cast<int64_t>(hidden_.size()); }
  const float* recv_hidden(int64_t i) const { return hidden_[i]; }
  // Row i's routing words: K expert ids (-1: not for this rank), then K weights (float bits).
  const int32_t* recv_meta(int64_t i) const { return meta_[i]; }
  int32_t recv_expert(int64_t i, int j) const { return meta_[i][j]; }
  float recv_weight(int64_t i, int j) const;

  // y_recv [num_received(), D]: this rank's weighted expert sum per served token. Sums each token's
  // rows from every serving rank into out [n, D]: added to out when `accumulate`, else out is the
  // sum (zero for a token no rank served), its first row copied rather than added to a cleared row.
  absl::Status Combine(const float* y_recv, float* out, bool accumulate);

  // The last Dispatch's plan ((expert, slot) pairs per EP rank, tokens per peer).
  const MoeSendPlan& plan() const { return plan_; }
  // Bytes of hidden state and routing (including the tokens a rank serves itself) moved by the
  // last Dispatch + Combine: the figure the raw-transport benchmark moves too.
  int64_t bytes_moved() const { return bytes_moved_; }

 private:
  // Grow-only storage, left uninitialized (every byte is received before it is read).
  template <typename T>
  struct Buffer {
    std::unique_ptr<T[]> data;
    int64_t capacity = 0;
    T* Reserve(int64_t n) {
      if (n > capacity) data.reset(new T[n]), capacity = n;
      return data.get();
    }
  };

  // Words of a peer's routing message for `count` tokens: meta, token indices, buffer address.
  int64_t RoutingWords(int64_t count) const { return count * (2 * K_ + 1) + 2; }

  Communicator* comm_;
  std::unique_ptr<PeerMemory> peers_;  // made by the first Dispatch
  int64_t D_ = 0;
  int K_ = 0;
  MoeSendPlan plan_;
  std::vector<int64_t> send_count_, recv_count_;  // tokens per peer (self: 0, served in place)
  std::vector<std::vector<int32_t>> send_routing_;  // per peer: its routing message
  std::vector<Buffer<int32_t>> recv_routing_;       // per peer: the routing message received
  std::vector<Buffer<float>> recv_rows_;            // per peer [recv_count, D]
  std::vector<Buffer<float>> back_;                 // per peer [send_count, D]: returned rows (messages)
  std::vector<int64_t> row_offsets_;                // byte offset in x of every packed row
  std::vector<uint64_t> remote_;                    // addresses of a peer's rows (direct reads)
  std::vector<uint64_t> y_address_, peer_y_;        // per peer: where its returned rows are
  std::vector<int64_t> acks_;                       // per peer: "done reading your rows"
  Buffer<float> stage_;                             // an L2-sized chunk of returned rows
  std::vector<uint8_t> written_;                    // Combine without accumulate: per token, a row is in
  std::vector<const float*> hidden_;                // [num_received] rows this rank serves
  std::vector<const int32_t*> meta_;                // [num_received] their routing words
  int64_t bytes_moved_ = 0;
};

}  // namespace dsv4
