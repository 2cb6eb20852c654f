// Expert-parallel MoE dispatch and combine over an EP group.
//
// Dispatch sends each token's hidden state ONCE to every EP rank that serves at least one of its
// top-k experts, together with the (expert, weight) pairs that rank must apply; the receiver runs
// its experts grouped and returns one weighted-sum row per received token; Combine adds the rows
// back into the senders' outputs, in EP-rank order (deterministic). Tokens served by the sending
// rank itself never leave it: they are read in place and their rows added in place.
//
// Wire format of one dispatched token (a "record", all 4-byte words): D floats of hidden state,
// then K int32 expert ids (-1 = not for this rank), then K float weights.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "parallel/communicator.h"
#include "parallel/layout.h"

namespace dsv4 {

class MoeDispatcher {
 public:
  MoeDispatcher(Communicator* ep, const ExpertPlacement* placement) : comm_(ep), placement_(placement) {}

  // x [n, D] (must stay valid until Combine); experts / weights [n, K] (logical expert ids).
  // `token_base` offsets token indices for replica choice so TP ranks sharing a batch spread over
  // replicas like one rank would.
  absl::Status Dispatch(const float* x, int64_t n, int64_t D, const int32_t* experts, const float* weights, int K,
                        int64_t token_base = 0);

  // What this rank serves: num_received() tokens (its own first, then other ranks').
  int64_t num_received() const { return num_self_ + num_remote_; }
  const float* recv_hidden(int64_t i) const;
  int32_t recv_expert(int64_t i, int j) const;
  float recv_weight(int64_t i, int j) const;

  // y_recv [num_received(), D]: this rank's weighted expert sum per served token. Adds each
  // token's rows from every serving rank into out [n, D] in EP-rank order (out is not cleared).
  absl::Status Combine(const float* y_recv, float* out);

  // Bytes of hidden state and routing (including the tokens a rank serves itself) moved by the
  // last Dispatch + Combine: the figure the raw-transport benchmark moves too.
  int64_t bytes_moved() const { return bytes_moved_; }

 private:
  const float* Meta(int64_t i) const;  // the K ids + K weights of served token i

  Communicator* comm_;
  const ExpertPlacement* placement_;
  const float* x_ = nullptr;
  int64_t D_ = 0, n_ = 0, record_ = 0;
  int K_ = 0;
  std::vector<float> send_, recv_, back_;  // reused across steps: no allocation in steady state
  std::vector<int64_t> send_count_, recv_count_;  // records per peer (self: 0, handled in place)
  std::vector<int64_t> send_token_;                 // token of each remote record, in send order
  std::vector<int64_t> self_token_;                 // tokens this rank serves itself
  std::vector<float> self_meta_;                    // [num_self, 2K] ids (bit patterns) + weights
  int64_t num_self_ = 0, num_remote_ = 0;
  int64_t bytes_moved_ = 0;
};

}  // namespace dsv4
