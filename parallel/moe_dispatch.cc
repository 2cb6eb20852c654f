#include "parallel/moe_dispatch.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "kernels/cpu/kernels.h"

namespace dsv4 {

float MoeDispatcher::recv_weight(int64_t i, int j) const {
  float w;
  std::memcpy(&w, &meta_[i][K_ + j], sizeof(float));
  return w;
}

absl::Status MoeDispatcher::Dispatch(const ExpertPlacement& placement, const float* x, int64_t n, int64_t D,
                                     const int32_t* experts, const float* weights, int K) {
  const int P = comm_->size(), me = comm_->rank();
  if (placement.ep() != P)
    return absl::InvalidArgumentError(
        absl::StrCat("MoE dispatch: the placement spans ", placement.ep(), " EP ranks, the group ", P));
  D_ = D, K_ = K;
  DSV4_ASSIGN_OR_RETURN(plan_, PlanMoeSend(placement, experts, weights, n, K, me));
  const int64_t words = 2 * static_cast<int64_t>(K), row_bytes = D * static_cast<int64_t>(sizeof(float));
  send_count_ = plan_.send_count;
  const int64_t num_self = send_count_[me];
  send_count_[me] = 0;  // served in place
  recv_count_.assign(P, 0);
  recv_rows_.resize(P), recv_meta_.resize(P), back_.resize(P);
  row_offsets_.resize(plan_.total());
  for (int64_t i = 0; i < plan_.total(); ++i) row_offsets_[i] = plan_.token[i] * row_bytes;

  std::unique_ptr<PeerExchange> ex = comm_->NewExchange("MoE dispatch");
  // Counts first on both sides; each peer's routing and rows follow its count at once.
  std::vector<int> peers;  // in the order they are expected to send to us
  std::vector<PeerExchange::Handle> count_msgs;
  for (int i = 1; i < P; ++i) {
    const int q = (me - i + P) % P;
    peers.push_back(q);
    count_msgs.push_back(ex->Recv(q, &recv_count_[q], sizeof(int64_t)));
  }
  for (int i = 1; i < P; ++i) {
    const int q = (me + i) % P;
    ex->Send(q, &send_count_[q], sizeof(int64_t));
    if (send_count_[q] == 0) continue;
    const int64_t first = plan_.send_offset[q];
    ex->Send(q, &plan_.meta[first * words], send_count_[q] * words * 4);
    ex->SendRows(q, x, row_bytes, &row_offsets_[first], send_count_[q]);
  }
  // A peer's payload is received as soon as its count is in, whatever the others do.
  const int64_t max_tokens = (int64_t{1} << 31) / std::max<int64_t>(row_bytes, words * 4);
  for (size_t k = 0; k < peers.size(); ++k) {
    DSV4_ASSIGN_OR_RETURN(const size_t i, ex->WaitAny(count_msgs));
    const int q = peers[i];
    const int64_t c = recv_count_[q];
    if (c < 0 || c >= max_tokens)
      return absl::InternalError(absl::StrCat("MoE dispatch on ", comm_->name(), ": EP rank ", q, " announced ", c,
                                              " tokens (ranks out of step?)"));
    if (c == 0) continue;
    ex->Recv(q, recv_meta_[q].Reserve(c * words), c * words * 4);
    ex->Recv(q, recv_rows_[q].Reserve(c * D), c * row_bytes);
  }
  DSV4_RETURN_IF_ERROR(ex->WaitAll());

  // What this rank serves: its own tokens in place, then each peer's in rank order.
  hidden_.clear(), meta_.clear();
  for (int64_t i = plan_.send_offset[me]; i < plan_.send_offset[me + 1]; ++i) {
    hidden_.push_back(x + plan_.token[i] * D);
    meta_.push_back(&plan_.meta[i * words]);
  }
  int64_t remote_sent = 0;
  for (int q = 0; q < P; ++q) {
    remote_sent += send_count_[q];
    for (int64_t i = 0; i < recv_count_[q]; ++i) {
      hidden_.push_back(recv_rows_[q].data.get() + i * D);
      meta_.push_back(recv_meta_[q].data.get() + i * words);
    }
  }
  bytes_moved_ = (remote_sent + num_self) * (row_bytes + words * 4);
  return absl::OkStatus();
}

absl::Status MoeDispatcher::Combine(const float* y_recv, float* out) {
  // Results travel back along the same routes: what q sent us returns to q, in the same order.
  const int P = comm_->size(), me = comm_->rank();
  const int64_t D = D_, row_bytes = D * static_cast<int64_t>(sizeof(float));
  const int64_t num_self = plan_.send_offset[me + 1] - plan_.send_offset[me];
  std::unique_ptr<PeerExchange> ex = comm_->NewExchange("MoE combine");
  std::vector<PeerExchange::Handle> back(P, -1);
  for (int i = 1; i < P; ++i) {
    const int q = (me - i + P) % P;
    if (send_count_[q] > 0) back[q] = ex->Recv(q, back_[q].Reserve(send_count_[q] * D), send_count_[q] * row_bytes);
  }
  int64_t first = num_self;  // y_recv rows of peer q: after our own, peers in rank order
  for (int q = 0; q < P; ++q) {
    if (recv_count_[q] > 0) ex->Send(q, y_recv + first * D, recv_count_[q] * row_bytes);
    first += recv_count_[q];
  }
  // Reduce in a fixed order: our own rows (ready now), then each peer as it arrives, in the order
  // the peers send to us (rank - 1 first).
  const int64_t* token = plan_.token.data();
  for (int64_t i = 0; i < num_self; ++i) kernels::AddTo(out + token[plan_.send_offset[me] + i] * D, y_recv + i * D, D);
  for (int i = 1; i < P; ++i) {
    const int q = (me - i + P) % P;
    if (back[q] < 0) continue;
    DSV4_RETURN_IF_ERROR(ex->Wait(back[q]));
    const float* rows = back_[q].data.get();
    for (int64_t k = 0; k < send_count_[q]; ++k)
      kernels::AddTo(out + token[plan_.send_offset[q] + k] * D, rows + k * D, D);
  }
  bytes_moved_ += plan_.total() * row_bytes;
  return ex->WaitAll();
}

}  // namespace dsv4
