#include "parallel/nccl_plan.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "parallel/layout.h"

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

absl::StatusOr<MoeSendPlan> PlanMoeSend(const ExpertPlacement& placement, const int32_t* experts, const float* weights,
                                        int64_t n, int K, int64_t token_base) {
  MoeSendPlan p;
  p.ep = placement.ep(), p.K = K;
  // dest[t * K + j]: the EP rank serving (t, j), or -1.
  std::vector<int> dest(n * K, -1);
  for (int64_t t = 0; t < n; ++t)
    for (int j = 0; j < K; ++j) {
      const int32_t e = experts[t * K + j];
      if (e < 0) continue;
      if (e >= placement.num_experts())
        return absl::InvalidArgumentError(absl::StrCat("MoE dispatch: token ", t, " routes to expert ", e, " of ",
                                                       placement.num_experts()));
      dest[t * K + j] = placement.Route(e, token_base + t);
    }
  p.send_count.assign(p.ep, 0);
  p.send_offset.assign(p.ep + 1, 0);
  // Peer-major packing: for each peer, its tokens in token order, each once.
  std::vector<std::vector<int32_t>> rows_of_token(n);
  for (int r = 0; r < p.ep; ++r) {
    p.send_offset[r] = p.total();
    for (int64_t t = 0; t < n; ++t) {
      bool any = false;
      for (int j = 0; j < K; ++j) any |= dest[t * K + j] == r;
      if (!any) continue;
      rows_of_token[t].push_back(static_cast<int32_t>(p.total()));
      p.token.push_back(t);
      for (int j = 0; j < K; ++j) {
        const bool mine = dest[t * K + j] == r;
        p.expert.push_back(mine ? experts[t * K + j] : -1);
        p.weight.push_back(mine ? weights[t * K + j] : 0.f);
      }
    }
    p.send_count[r] = p.total() - p.send_offset[r];
  }
  p.send_offset[p.ep] = p.total();
  p.combine_offset.assign(n + 1, 0);
  for (int64_t t = 0; t < n; ++t) {
    p.combine_offset[t + 1] = p.combine_offset[t] + static_cast<int32_t>(rows_of_token[t].size());
    p.combine_rows.insert(p.combine_rows.end(), rows_of_token[t].begin(), rows_of_token[t].end());  // EP-rank order
  }
  return p;
}

absl::StatusOr<ExpertGroups> PlanExpertGroups(const ExpertPlacement& placement, int rank, const int32_t* recv_expert,
                                              const float* recv_weight, int64_t received, int K) {
  ExpertGroups g;
  for (int64_t e = 0; e < placement.num_experts(); ++e)
    if (placement.Holds(rank, e)) g.local_experts.push_back(e);
  std::vector<int32_t> slot(placement.num_experts(), -1);
  for (size_t i = 0; i < g.local_experts.size(); ++i) slot[g.local_experts[i]] = static_cast<int32_t>(i);
  std::vector<std::vector<std::pair<int64_t, float>>> by_expert(g.local_experts.size());
  for (int64_t r = 0; r < received; ++r)
    for (int j = 0; j < K; ++j) {
      const int32_t e = recv_expert[r * K + j];
      if (e < 0) continue;
      if (e >= placement.num_experts() || slot[e] < 0)
        return absl::InvalidArgumentError(
            absl::StrCat("MoE: received token ", r, " for expert ", e, ", which EP rank ", rank, " does not hold"));
      by_expert[slot[e]].push_back({r, recv_weight[r * K + j]});
    }
  g.offsets.assign(g.local_experts.size() + 1, 0);
  std::vector<std::vector<int32_t>> rows_of(received);
  for (size_t i = 0; i < by_expert.size(); ++i) {
    for (const auto& [r, w] : by_expert[i]) {
      rows_of[r].push_back(static_cast<int32_t>(g.rows()));
      g.row_token.push_back(r);
      g.row_weight.push_back(w);
    }
    g.offsets[i + 1] = static_cast<int32_t>(g.rows());
  }
  g.sum_offset.assign(received + 1, 0);
  for (int64_t r = 0; r < received; ++r) {
    g.sum_offset[r + 1] = g.sum_offset[r] + static_cast<int32_t>(rows_of[r].size());
    g.sum_rows.insert(g.sum_rows.end(), rows_of[r].begin(), rows_of[r].end());
  }
  return g;
}

}  // namespace dsv4
