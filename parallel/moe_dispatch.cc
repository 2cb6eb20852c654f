#include "parallel/moe_dispatch.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "kernels/cpu/kernels.h"

namespace dsv4 {
namespace {

// Returned rows are read in chunks of about this many bytes and added while they sit in L2.
constexpr int64_t kCombineChunkBytes = 256 << 10;

}  // namespace

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
  if (peers_ == nullptr) {
    DSV4_ASSIGN_OR_RETURN(peers_, comm_->NewPeerMemory(), "MoE dispatch");
  }
  D_ = D, K_ = K;
  DSV4_RETURN_IF_ERROR(PlanMoeSend(placement, experts, weights, n, K, me, plan_));
  const int64_t words = 2 * static_cast<int64_t>(K), row_bytes = D * static_cast<int64_t>(sizeof(float));
  send_count_ = plan_.send_count;
  const int64_t num_self = send_count_[me];
  send_count_[me] = 0;  // served in place
  recv_count_.assign(P, 0);
  send_routing_.resize(P), recv_routing_.resize(P), recv_rows_.resize(P), back_.resize(P);
  row_offsets_.resize(plan_.total());
  for (int64_t i = 0; i < plan_.total(); ++i) row_offsets_[i] = plan_.token[i] * row_bytes;

  std::unique_ptr<PeerExchange> ex = comm_->NewExchange("MoE dispatch");
  // Counts first on both sides; each peer's routing (and rows, unless it reads them) follow at once.
  enum Kind { kCount, kRouting };
  std::vector<PeerExchange::Handle> waits;
  std::vector<std::pair<Kind, int>> what;  // parallel to waits
  for (int i = 1; i < P; ++i) {
    const int q = (me - i + P) % P;
    waits.push_back(ex->Recv(q, &recv_count_[q], sizeof(int64_t)));
    what.push_back({kCount, q});
  }
  const uint64_t x_address = reinterpret_cast<uint64_t>(x);
  for (int i = 1; i < P; ++i) {
    const int q = (me + i) % P;
    const int64_t c = send_count_[q], first = plan_.send_offset[q];
    ex->Send(q, &send_count_[q], sizeof(int64_t));
    if (c == 0) continue;
    std::vector<int32_t>& r = send_routing_[q];
    r.resize(RoutingWords(c));
    std::memcpy(r.data(), &plan_.meta[first * words], c * words * sizeof(int32_t));
    for (int64_t k = 0; k < c; ++k) r[c * words + k] = static_cast<int32_t>(plan_.token[first + k]);
    std::memcpy(&r[c * (words + 1)], &x_address, sizeof(x_address));
    ex->Send(q, r.data(), static_cast<int64_t>(r.size() * sizeof(int32_t)));
    if (!peers_->CanRead(q, me)) ex->SendRows(q, x, row_bytes, &row_offsets_[first], c);
  }
  // Make room for a peer's payload as soon as its count is in; gather its rows as soon as its
  // routing is in (or let its row message arrive).
  const int64_t max_tokens = (int64_t{1} << 31) / std::max<int64_t>(row_bytes, (words + 1) * 4);
  for (size_t done = 0; done < waits.size(); ++done) {
    DSV4_ASSIGN_OR_RETURN(const size_t i, ex->WaitAny(waits));
    const auto [kind, q] = what[i];
    const int64_t c = recv_count_[q];
    if (kind == kCount) {
      if (c < 0 || c >= max_tokens)
        return absl::InternalError(absl::StrCat("MoE dispatch on ", comm_->name(), ": EP rank ", q, " announced ", c,
                                                " tokens (ranks out of step?)"));
      if (c == 0) continue;
      const PeerExchange::Handle h =
          ex->Recv(q, recv_routing_[q].Reserve(RoutingWords(c)), RoutingWords(c) * static_cast<int64_t>(sizeof(int32_t)));
      float* rows = recv_rows_[q].Reserve(c * D);
      if (peers_->CanRead(me, q)) {
        waits.push_back(h);
        what.push_back({kRouting, q});
      } else {
        ex->Recv(q, rows, c * row_bytes);
      }
      continue;
    }
    // Routing from a peer whose memory we read: gather its rows where it keeps them.
    const int32_t* r = recv_routing_[q].data.get();
    uint64_t base;
    std::memcpy(&base, &r[c * (words + 1)], sizeof(base));
    remote_.resize(c);
    for (int64_t k = 0; k < c; ++k) remote_[k] = base + static_cast<uint64_t>(r[c * words + k]) * row_bytes;
    DSV4_RETURN_IF_ERROR(peers_->Gather(q, remote_.data(), row_bytes, c, recv_rows_[q].data.get()), "MoE dispatch");
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
      meta_.push_back(recv_routing_[q].data.get() + i * words);
    }
  }
  bytes_moved_ = (remote_sent + num_self) * (row_bytes + words * 4);
  return absl::OkStatus();
}

absl::Status MoeDispatcher::Combine(const float* y_recv, float* out, bool accumulate) {
  // Results travel back along the same routes: what q sent us returns to q, in the same order.
  const int P = comm_->size(), me = comm_->rank();
  const int64_t D = D_, row_bytes = D * static_cast<int64_t>(sizeof(float));
  const int64_t num_self = plan_.send_offset[me + 1] - plan_.send_offset[me];
  y_address_.assign(P, 0), peer_y_.assign(P, 0), acks_.assign(P, 0);
  std::unique_ptr<PeerExchange> ex = comm_->NewExchange("MoE combine");
  // Our tokens' rows: where a peer keeps them (we read them), or as a message.
  std::vector<PeerExchange::Handle> back(P, -1);
  for (int i = 1; i < P; ++i) {
    const int q = (me - i + P) % P;
    if (send_count_[q] == 0) continue;
    back[q] = peers_->CanRead(me, q) ? ex->Recv(q, &peer_y_[q], sizeof(uint64_t))
                                     : ex->Recv(q, back_[q].Reserve(send_count_[q] * D), send_count_[q] * row_bytes);
  }
  // The rows of the tokens we served: their address (the peer reads them and says when it is done;
  // y_recv stays valid until then), or the rows themselves.
  int64_t first = num_self;  // y_recv rows of peer q: after our own, peers in rank order
  for (int q = 0; q < P; ++q) {
    if (recv_count_[q] > 0) {
      if (peers_->CanRead(q, me)) {
        y_address_[q] = reinterpret_cast<uint64_t>(y_recv + first * D);
        ex->Send(q, &y_address_[q], sizeof(uint64_t));
        ex->Recv(q, &acks_[q], sizeof(int64_t));
      } else {
        ex->Send(q, y_recv + first * D, recv_count_[q] * row_bytes);
      }
    }
    first += recv_count_[q];
  }
  // Reduce in a fixed order: our own rows (ready now), then each peer as it arrives, in the order
  // the peers send to us (rank - 1 first). Without `accumulate`, a token's first row is copied:
  // the same sum as adding it to a cleared row, one read of the output fewer.
  const int64_t* token = plan_.token.data();
  const int64_t n = static_cast<int64_t>(plan_.combine_offset.size()) - 1;
  if (!accumulate) written_.assign(n, 0);
  auto add = [&](int64_t t, const float* row) {
    if (accumulate || written_[t]) {
      kernels::AddTo(out + t * D, row, D);
    } else {
      std::memcpy(out + t * D, row, row_bytes);
      written_[t] = 1;
    }
  };
  for (int64_t i = 0; i < num_self; ++i) add(token[plan_.send_offset[me] + i], y_recv + i * D);
  const int64_t chunk = std::max<int64_t>(1, kCombineChunkBytes / row_bytes);
  for (int i = 1; i < P; ++i) {
    const int q = (me - i + P) % P;
    if (back[q] < 0) continue;
    DSV4_RETURN_IF_ERROR(ex->Wait(back[q]));
    const int64_t* tq = token + plan_.send_offset[q];
    const int64_t c = send_count_[q];
    if (!peers_->CanRead(me, q)) {
      const float* rows = back_[q].data.get();
      for (int64_t k = 0; k < c; ++k) add(tq[k], rows + k * D);
      continue;
    }
    float* stage = stage_.Reserve(chunk * D);
    for (int64_t k0 = 0; k0 < c; k0 += chunk) {
      const int64_t m = std::min(chunk, c - k0);
      const uint64_t from = peer_y_[q] + static_cast<uint64_t>(k0 * row_bytes);
      DSV4_RETURN_IF_ERROR(peers_->Gather(q, &from, m * row_bytes, 1, stage), "MoE combine");
      for (int64_t k = 0; k < m; ++k) add(tq[k0 + k], stage + k * D);
    }
    ex->Send(q, &acks_[me], sizeof(int64_t));  // done reading q's rows (the value is not used)
  }
  if (!accumulate)
    for (int64_t t = 0; t < n; ++t)
      if (!written_[t]) std::memset(out + t * D, 0, row_bytes);  // routed nowhere (all its experts -1)
  bytes_moved_ += plan_.total() * row_bytes;
  return ex->WaitAll();
}

}  // namespace dsv4
