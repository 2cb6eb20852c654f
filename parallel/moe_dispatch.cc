#include "parallel/moe_dispatch.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/kernels.h"

namespace dsv4 {
namespace {

// Byte counts and displacements for an AllToAllV of `rows` rows of `row_bytes` each per peer.
void Layout(const std::vector<int64_t>& rows, int64_t row_bytes, std::vector<int64_t>& bytes,
            std::vector<int64_t>& displs) {
  bytes.resize(rows.size());
  displs.resize(rows.size());
  int64_t off = 0;
  for (size_t p = 0; p < rows.size(); ++p) {
    bytes[p] = rows[p] * row_bytes;
    displs[p] = off;
    off += bytes[p];
  }
}

}  // namespace

const float* MoeDispatcher::recv_hidden(int64_t i) const {
  return i < num_self_ ? x_ + self_token_[i] * D_ : &recv_[(i - num_self_) * record_];
}

const float* MoeDispatcher::Meta(int64_t i) const {
  return i < num_self_ ? &self_meta_[i * 2 * K_] : &recv_[(i - num_self_) * record_ + D_];
}

int32_t MoeDispatcher::recv_expert(int64_t i, int j) const {
  int32_t e;
  std::memcpy(&e, Meta(i) + j, 4);
  return e;
}

float MoeDispatcher::recv_weight(int64_t i, int j) const { return Meta(i)[K_ + j]; }

absl::Status MoeDispatcher::Dispatch(const float* x, int64_t n, int64_t D, const int32_t* experts,
                                     const float* weights, int K, int64_t token_base) {
  const int P = comm_->size(), me = comm_->rank();
  x_ = x, D_ = D, n_ = n, K_ = K, record_ = D + 2 * K;
  // Destination of every (token, slot).
  std::vector<int> dest(n * K);
  for (int64_t t = 0; t < n; ++t)
    for (int j = 0; j < K; ++j) {
      const int32_t e = experts[t * K + j];
      if (e < 0 || e >= placement_->num_experts())
        return absl::InvalidArgumentError(absl::StrCat("MoE dispatch: token ", t, " routed to expert ", e,
                                                       " outside [0, ", placement_->num_experts(), ")"));
      dest[t * K + j] = placement_->Route(e, token_base + t);
    }
  std::vector<uint8_t> hits(n * P, 0);
  for (int64_t t = 0; t < n; ++t)
    for (int j = 0; j < K; ++j) hits[t * P + dest[t * K + j]] = 1;
  send_count_.assign(P, 0);
  for (int64_t t = 0; t < n; ++t)
    for (int p = 0; p < P; ++p) send_count_[p] += hits[t * P + p];
  num_self_ = send_count_[me];
  send_count_[me] = 0;  // served in place
  int64_t remote = 0;
  for (int p = 0; p < P; ++p) remote += send_count_[p];

  // The (expert, weight) pairs a destination applies, as record words.
  auto write_meta = [&](float* meta, int64_t t, int p) {
    for (int j = 0; j < K; ++j) {
      const bool here = dest[t * K + j] == p;
      const int32_t e = here ? experts[t * K + j] : -1;
      std::memcpy(&meta[j], &e, 4);
      meta[K + j] = here ? weights[t * K + j] : 0.f;
    }
  };
  self_token_.resize(num_self_);
  self_meta_.resize(num_self_ * 2 * K);
  send_.resize(remote * record_);
  send_token_.resize(remote);
  int64_t at = 0, self_at = 0;
  for (int p = 0; p < P; ++p)
    for (int64_t t = 0; t < n; ++t) {
      if (!hits[t * P + p]) continue;
      if (p == me) {
        self_token_[self_at] = t;
        write_meta(&self_meta_[self_at++ * 2 * K], t, p);
        continue;
      }
      float* rec = &send_[at * record_];
      std::memcpy(rec, x + t * D, D * sizeof(float));
      write_meta(rec + D, t, p);
      send_token_[at++] = t;
    }

  // Counts, then records.
  recv_count_.assign(P, 0);
  std::vector<int64_t> one(P, sizeof(int64_t)), displs(P);
  for (int p = 0; p < P; ++p) displs[p] = p * static_cast<int64_t>(sizeof(int64_t));
  if (auto st = comm_->AllToAllV(send_count_.data(), one.data(), displs.data(), recv_count_.data(), one.data(),
                                 displs.data());
      !st.ok())
    return st;
  num_remote_ = 0;
  for (int64_t c : recv_count_) num_remote_ += c;
  recv_.resize(num_remote_ * record_);
  std::vector<int64_t> sb, sd, rb, rd;
  Layout(send_count_, record_ * 4, sb, sd);
  Layout(recv_count_, record_ * 4, rb, rd);
  bytes_moved_ = (remote + num_self_) * record_ * 4;
  return comm_->AllToAllV(send_.data(), sb.data(), sd.data(), recv_.data(), rb.data(), rd.data());
}

absl::Status MoeDispatcher::Combine(const float* y_recv, float* out) {
  // Results travel back along the same routes: what p sent us returns to p, in the same order.
  const int P = comm_->size(), me = comm_->rank();
  back_.resize(send_token_.size() * D_);
  std::vector<int64_t> sb, sd, rb, rd;
  Layout(recv_count_, D_ * 4, sb, sd);
  Layout(send_count_, D_ * 4, rb, rd);
  bytes_moved_ += (static_cast<int64_t>(send_token_.size()) + num_self_) * D_ * 4;
  if (auto st = comm_->AllToAllV(y_recv + num_self_ * D_, sb.data(), sd.data(), back_.data(), rb.data(), rd.data());
      !st.ok())
    return st;
  // Add every serving rank's rows in rank order, this rank's own at its place in that order.
  auto add = [&](int64_t t, const float* y) { kernels::AddTo(out + t * D_, y, D_); };
  int64_t at = 0;
  for (int p = 0; p < P; ++p) {
    if (p == me) {
      for (int64_t i = 0; i < num_self_; ++i) add(self_token_[i], y_recv + i * D_);
      continue;
    }
    for (int64_t i = 0; i < send_count_[p]; ++i, ++at) add(send_token_[at], &back_[at * D_]);
  }
  return absl::OkStatus();
}

}  // namespace dsv4
