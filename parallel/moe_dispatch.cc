#include "parallel/moe_dispatch.h"

#include <cstring>

#include "absl/strings/str_cat.h"

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

int32_t MoeDispatcher::recv_expert(int64_t i, int j) const {
  int32_t e;
  std::memcpy(&e, &recv_[i * record_ + D_ + j], 4);
  return e;
}

float MoeDispatcher::recv_weight(int64_t i, int j) const { return recv_[i * record_ + D_ + K_ + j]; }

absl::Status MoeDispatcher::Dispatch(const float* x, int64_t n, int64_t D, const int32_t* experts,
                                     const float* weights, int K, int64_t token_base) {
  const int P = comm_->size();
  D_ = D, n_ = n, K_ = K, record_ = D + 2 * K;
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
  // Records grouped by destination rank, tokens in order within each: count, then write in place.
  send_count_.assign(P, 0);
  std::vector<uint8_t> hits(n * P, 0);
  for (int64_t t = 0; t < n; ++t)
    for (int j = 0; j < K; ++j) hits[t * P + dest[t * K + j]] = 1;
  int64_t total = 0;
  for (int64_t t = 0; t < n; ++t)
    for (int p = 0; p < P; ++p) send_count_[p] += hits[t * P + p];
  for (int p = 0; p < P; ++p) total += send_count_[p];
  send_.resize(total * record_);
  send_token_.resize(total);
  int64_t at = 0;
  for (int p = 0; p < P; ++p)
    for (int64_t t = 0; t < n; ++t) {
      if (!hits[t * P + p]) continue;
      float* rec = &send_[at * record_];
      std::memcpy(rec, x + t * D, D * sizeof(float));
      for (int j = 0; j < K; ++j) {
        const bool here = dest[t * K + j] == p;
        const int32_t e = here ? experts[t * K + j] : -1;
        std::memcpy(&rec[D + j], &e, 4);
        rec[D + K + j] = here ? weights[t * K + j] : 0.f;
      }
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
  num_recv_ = 0;
  for (int64_t c : recv_count_) num_recv_ += c;
  recv_.resize(num_recv_ * record_);
  std::vector<int64_t> sb, sd, rb, rd;
  Layout(send_count_, record_ * 4, sb, sd);
  Layout(recv_count_, record_ * 4, rb, rd);
  bytes_moved_ = static_cast<int64_t>(send_.size()) * 4;
  return comm_->AllToAllV(send_.data(), sb.data(), sd.data(), recv_.data(), rb.data(), rd.data());
}

absl::Status MoeDispatcher::Combine(const float* y_recv, float* out) {
  // Results travel back along the same routes: what p sent us returns to p, in the same order.
  back_.resize(send_token_.size() * D_);
  std::vector<float>& back = back_;
  std::vector<int64_t> sb, sd, rb, rd;
  Layout(recv_count_, D_ * 4, sb, sd);
  Layout(send_count_, D_ * 4, rb, rd);
  bytes_moved_ += num_recv_ * D_ * 4;
  if (auto st = comm_->AllToAllV(y_recv, sb.data(), sd.data(), back.data(), rb.data(), rd.data()); !st.ok()) return st;
  // Records are grouped by rank in increasing order, so each token sums its ranks' rows in order.
  for (size_t i = 0; i < send_token_.size(); ++i) {
    float* o = out + send_token_[i] * D_;
    const float* y = &back[i * D_];
    for (int64_t d = 0; d < D_; ++d) o[d] += y[d];
  }
  return absl::OkStatus();
}

}  // namespace dsv4
