#include "parallel/nccl_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace dsv4 {

absl::StatusOr<GroupedExchange> PlanAllToAllV(int rank, int size, const int64_t* send_bytes,
                                              const int64_t* send_displs, const int64_t* recv_bytes,
                                              const int64_t* recv_displs) {
  for (int p = 0; p < size; ++p)
    if (send_bytes[p] < 0 || recv_bytes[p] < 0 || send_displs[p] < 0 || recv_displs[p] < 0)
      return absl::InvalidArgumentError(absl::StrCat("AllToAllV: negative count or displacement for peer ", p));
  if (send_bytes[rank] != recv_bytes[rank])
    return absl::InvalidArgumentError(absl::StrCat("AllToAllV: rank ", rank, " sends ", send_bytes[rank],
                                                   " bytes to itself but expects ", recv_bytes[rank]));
  GroupedExchange g;
  g.self_send_offset = send_displs[rank], g.self_recv_offset = recv_displs[rank], g.self_bytes = send_bytes[rank];
  for (int i = 1; i < size; ++i) {
    const int send_peer = (rank + i) % size, recv_peer = (rank - i + size) % size;
    if (send_bytes[send_peer] > 0)
      g.ops.push_back({P2pOp::kSend, send_peer, send_displs[send_peer], send_bytes[send_peer]});
    if (recv_bytes[recv_peer] > 0)
      g.ops.push_back({P2pOp::kRecv, recv_peer, recv_displs[recv_peer], recv_bytes[recv_peer]});
  }
  return g;
}

GroupedExchange PlanAllGatherV(int rank, int size, const int64_t* counts, int64_t elem_bytes) {
  GroupedExchange g;
  std::vector<int64_t> displ(size + 1, 0);
  for (int p = 0; p < size; ++p) displ[p + 1] = displ[p] + counts[p] * elem_bytes;
  g.self_send_offset = 0, g.self_recv_offset = displ[rank], g.self_bytes = counts[rank] * elem_bytes;
  for (int i = 1; i < size; ++i) {
    const int send_peer = (rank + i) % size, recv_peer = (rank - i + size) % size;
    if (counts[rank] > 0) g.ops.push_back({P2pOp::kSend, send_peer, 0, counts[rank] * elem_bytes});
    if (counts[recv_peer] > 0) g.ops.push_back({P2pOp::kRecv, recv_peer, displ[recv_peer], counts[recv_peer] * elem_bytes});
  }
  return g;
}

std::vector<TokenRange> MicroBatches(int64_t n, int64_t min_tokens_to_split) {
  if (n < std::max<int64_t>(2, min_tokens_to_split)) return {{0, n}};
  const int64_t half = (n + 1) / 2;
  return {{0, half}, {half, n}};
}

}  // namespace dsv4
