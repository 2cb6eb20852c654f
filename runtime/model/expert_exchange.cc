#include "runtime/model/expert_exchange.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace dsv4 {
namespace {

// Per-peer byte counts and displacements of `count[p]` items of `item_bytes` each, packed in rank order.
void Layout(const std::vector<int64_t>& count, int64_t item_bytes, std::vector<int64_t>& bytes,
            std::vector<int64_t>& displs) {
  bytes.resize(count.size()), displs.resize(count.size());
  int64_t at = 0;
  for (size_t p = 0; p < count.size(); ++p) bytes[p] = count[p] * item_bytes, displs[p] = at, at += bytes[p];
}

}  // namespace

template <typename T>
T* ExpertExchange::Upload(const std::vector<T>& host) {
  const int64_t bytes = static_cast<int64_t>(host.size() * sizeof(T));
  T* dev = static_cast<T*>(be_.Workspace(bytes));
  if (bytes > 0) be_.CopyToDevice(dev, host.data(), bytes);
  return dev;
}

absl::Status ExpertExchange::Dispatch(const ExpertPlacement& placement, const float* x, int64_t n, int64_t D,
                                      const int32_t* experts, const float* weights, int K) {
  const int P = routing_.size(), me = routing_.rank();
  if (rows_.size() != P || rows_.rank() != me)
    return absl::InternalError("MoE exchange: the routing and row communicators are different groups");
  if (placement.ep() != P)
    return absl::InvalidArgumentError(
        absl::StrCat("MoE exchange: the placement spans ", placement.ep(), " EP ranks, the group ", P));
  n_ = n, D_ = D, K_ = K;
  const int64_t row_bytes = D * static_cast<int64_t>(sizeof(float)), words = 2 * static_cast<int64_t>(K);

  // The routing comes up (CopyToHost waits for the router) and is planned on the host.
  host_experts_.resize(n * K), host_weights_.resize(n * K);
  be_.CopyToHost(host_experts_.data(), experts, n * K * static_cast<int64_t>(sizeof(int32_t)));
  be_.CopyToHost(host_weights_.data(), weights, n * K * static_cast<int64_t>(sizeof(float)));
  DSV4_RETURN_IF_ERROR(be_.status(), "MoE exchange: the router");
  DSV4_RETURN_IF_ERROR(PlanMoeSend(placement, host_experts_.data(), host_weights_.data(), n, K, me, plan_));

  // Counts, then routing words, over the host communicator.
  send_count_ = plan_.send_count;
  recv_count_.assign(P, 0);
  const std::vector<int64_t> one(P, 1);
  Layout(one, sizeof(int64_t), bytes_, displs_);
  DSV4_RETURN_IF_ERROR(routing_.AllToAllV(send_count_.data(), bytes_.data(), displs_.data(), recv_count_.data(),
                                          bytes_.data(), displs_.data()),
                       "MoE dispatch counts");
  received_ = 0;
  for (int64_t c : recv_count_) {
    if (c < 0) return absl::DataLossError("MoE exchange: a peer sent a negative token count");
    received_ += c;
  }
  recv_meta_.resize(received_ * words);
  Layout(send_count_, words * 4, bytes_, displs_);
  Layout(recv_count_, words * 4, back_bytes_, back_displs_);
  DSV4_RETURN_IF_ERROR(routing_.AllToAllV(plan_.meta.data(), bytes_.data(), displs_.data(), recv_meta_.data(),
                                          back_bytes_.data(), back_displs_.data()),
                       "MoE dispatch routing");

  // The rows: packed on the device in the plan's order, exchanged over the device communicator.
  const int64_t total = plan_.total();
  float* packed = be_.WorkspaceF32(total * D);
  if (total > 0) be_.GatherRows(x, row_bytes, Upload(plan_.token), total, row_bytes, packed, row_bytes);
  hidden_ = be_.WorkspaceF32(received_ * D);
  Layout(send_count_, row_bytes, bytes_, displs_);
  Layout(recv_count_, row_bytes, back_bytes_, back_displs_);
  DSV4_RETURN_IF_ERROR(
      rows_.AllToAllV(packed, bytes_.data(), displs_.data(), hidden_, back_bytes_.data(), back_displs_.data()),
      "MoE dispatch rows");

  // The received routing, as the expert kernels take it.
  recv_experts_.resize(received_ * K), recv_weights_.resize(received_ * K);
  held_ = 0;
  for (int64_t i = 0; i < received_; ++i) {
    const int32_t* m = &recv_meta_[i * words];
    for (int j = 0; j < K; ++j) {
      const int32_t e = m[j];
      if (e >= 0 && (e >= placement.num_experts() || !placement.Holds(me, e)))
        return absl::DataLossError(absl::StrCat("MoE exchange: a peer routed a token to expert ", e, ", which EP rank ",
                                                me, " does not hold"));
      held_ += e >= 0;
      recv_experts_[i * K + j] = e;
      std::memcpy(&recv_weights_[i * K + j], &m[K + j], sizeof(float));
    }
  }
  experts_ = Upload(recv_experts_);
  weights_ = Upload(recv_weights_);
  return be_.status();
}

absl::Status ExpertExchange::Combine(const float* y, float* out) {
  const int P = routing_.size(), me = routing_.rank();
  const int64_t D = D_, row_bytes = D * static_cast<int64_t>(sizeof(float)), total = plan_.total();
  // What each rank served goes back to the rank it came from: the dispatch's layouts, reversed.
  float* returned = be_.WorkspaceF32(total * D);
  Layout(recv_count_, row_bytes, bytes_, displs_);
  Layout(send_count_, row_bytes, back_bytes_, back_displs_);
  DSV4_RETURN_IF_ERROR(
      rows_.AllToAllV(y, bytes_.data(), displs_.data(), returned, back_bytes_.data(), back_displs_.data()),
      "MoE combine rows");

  // Each token's returned rows in the MPI path's order: its own rank's first, then me - 1, me - 2, ...
  // The plan lists them in rank order, so the order is a rotation of each token's list.
  combine_rows_.resize(total);
  const std::vector<int32_t>& offset = plan_.combine_offset;
  auto rank_of = [&](int32_t row) {
    return static_cast<int>(std::upper_bound(plan_.send_offset.begin(), plan_.send_offset.end(), row) -
                            plan_.send_offset.begin() - 1);
  };
  for (int64_t t = 0; t < n_; ++t) {
    const int32_t* from = &plan_.combine_rows[offset[t]];
    int32_t* to = &combine_rows_[offset[t]];
    const int64_t c = offset[t + 1] - offset[t];
    std::copy(from, from + c, to);
    std::sort(to, to + c, [&](int32_t a, int32_t b) { return (me - rank_of(a) + P) % P < (me - rank_of(b) + P) % P; });
  }
  be_.CombineRows(returned, D, Upload(offset), Upload(combine_rows_), nullptr, n_, D, /*accumulate=*/false, out, D);
  return be_.status();
}

}  // namespace dsv4
