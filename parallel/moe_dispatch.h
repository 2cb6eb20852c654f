// Expert-parallel MoE dispatch and combine over an EP group.
//
// Dispatch sends each token's hidden state ONCE to every EP rank that serves at least one of its
// top-k experts, together with the (expert, weight) pairs that rank must apply; the receiver runs
// its experts grouped and returns one weighted-sum row per received token; Combine adds the rows
// back into the senders' outputs, in EP-rank order (deterministic).
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

  // x [n, D]; experts / weights [n, K] (logical expert ids). `token_base` offsets token indices for
  // replica choice so TP ranks sharing a batch spread over replicas like one rank would.
  absl::Status Dispatch(const float* x, int64_t n, int64_t D, const int32_t* experts, const float* weights, int K,
                        int64_t token_base = 0);

  // What this rank received: num_received() records.
  int64_t num_received() const { return num_recv_; }
  const float* recv_hidden(int64_t i) const { return &recv_[i * record_]; }
  int32_t recv_expert(int64_t i, int j) const;
  float recv_weight(int64_t i, int j) const;

  // y_recv [num_received(), D]: this rank's weighted expert sum per received record. Adds each
  // token's rows from every serving rank into out [n, D] (out is not cleared).
  absl::Status Combine(const float* y_recv, float* out);

  // Bytes this rank sent in the last Dispatch + Combine (for benchmarks).
  int64_t bytes_moved() const { return bytes_moved_; }

 private:
  Communicator* comm_;
  const ExpertPlacement* placement_;
  int64_t D_ = 0, n_ = 0, record_ = 0;
  int K_ = 0;
  std::vector<float> send_, recv_, back_;  // reused across steps: no allocation in steady state
  std::vector<int64_t> send_count_, recv_count_;  // records per peer
  std::vector<int64_t> send_token_;                 // token index of each sent record, in send order
  int64_t num_recv_ = 0;
  int64_t bytes_moved_ = 0;
};

}  // namespace dsv4
