#include "parallel/moe_plan.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace dsv4 {

float MoeSendPlan::weight(int64_t row, int j) const {
  float w;
  std::memcpy(&w, &meta[row * 2 * K + K + j], sizeof(float));
  return w;
}

absl::StatusOr<MoeSendPlan> PlanMoeSend(const ExpertPlacement& placement, const int32_t* experts, const float* weights,
                                        int64_t n, int K, int sender) {
  MoeSendPlan p;
  p.ep = placement.ep(), p.K = K;
  const int P = p.ep;
  // dest[t * K + j]: the EP rank serving (t, j), or -1.
  std::vector<int32_t> dest(n * K, -1);
  std::vector<int64_t> seen(placement.num_experts(), 0);  // pairs routed to each expert so far
  p.pairs_per_rank.assign(P, 0);
  for (int64_t t = 0; t < n; ++t)
    for (int j = 0; j < K; ++j) {
      const int32_t e = experts[t * K + j];
      if (e < 0) continue;
      if (e >= placement.num_experts())
        return absl::InvalidArgumentError(absl::StrCat("MoE dispatch: token ", t, " routes to expert ", e, " of ",
                                                       placement.num_experts()));
      const std::vector<int>& reps = placement.replicas(e);
      const int r = reps.size() == 1 ? reps[0] : reps[(seen[e]++ + sender) % reps.size()];
      dest[t * K + j] = r;
      ++p.pairs_per_rank[r];
    }
  // Tokens per peer: a token goes to a peer once, however many of its slots that peer serves.
  std::vector<int64_t> count(P, 0);
  for (int64_t t = 0; t < n; ++t)
    for (int j = 0; j < K; ++j) {
      const int32_t r = dest[t * K + j];
      if (r < 0) continue;
      bool first = true;
      for (int i = 0; i < j; ++i) first &= dest[t * K + i] != r;
      count[r] += first;
    }
  p.send_count = count;
  p.send_offset.assign(P + 1, 0);
  for (int r = 0; r < P; ++r) p.send_offset[r + 1] = p.send_offset[r] + count[r];
  const int64_t total = p.send_offset[P];
  p.token.resize(total);
  p.meta.assign(total * 2 * K, 0);
  std::vector<int64_t> fill(p.send_offset.begin(), p.send_offset.end() - 1);
  std::vector<int32_t> row_of(n * K, -1);  // packed row of (t, j)'s destination
  for (int64_t t = 0; t < n; ++t)
    for (int j = 0; j < K; ++j) {
      const int32_t r = dest[t * K + j];
      if (r < 0) continue;
      int32_t row = -1;
      for (int i = 0; i < j && row < 0; ++i)
        if (dest[t * K + i] == r) row = row_of[t * K + i];
      if (row < 0) {
        row = static_cast<int32_t>(fill[r]++);
        p.token[row] = t;
        int32_t* m = &p.meta[row * 2 * K];
        for (int i = 0; i < K; ++i) m[i] = -1;
      }
      row_of[t * K + j] = row;
      int32_t* m = &p.meta[row * 2 * K];
      m[j] = experts[t * K + j];
      std::memcpy(&m[K + j], &weights[t * K + j], sizeof(float));
    }
  // Combine order: each token's rows in EP-rank order (packed rows are peer-major, so ascending).
  p.combine_offset.assign(n + 1, 0);
  p.combine_rows.reserve(total);
  std::vector<int32_t> rows;
  for (int64_t t = 0; t < n; ++t) {
    rows.clear();
    for (int j = 0; j < K; ++j)
      if (row_of[t * K + j] >= 0 && std::find(rows.begin(), rows.end(), row_of[t * K + j]) == rows.end())
        rows.push_back(row_of[t * K + j]);
    std::sort(rows.begin(), rows.end());
    p.combine_rows.insert(p.combine_rows.end(), rows.begin(), rows.end());
    p.combine_offset[t + 1] = static_cast<int32_t>(p.combine_rows.size());
  }
  return p;
}

absl::StatusOr<ExpertGroups> PlanExpertGroups(const ExpertPlacement& placement, int rank, const int32_t* meta,
                                              int64_t received, int K) {
  ExpertGroups g;
  for (int64_t e = 0; e < placement.num_experts(); ++e)
    if (placement.Holds(rank, e)) g.local_experts.push_back(e);
  std::vector<int32_t> slot(placement.num_experts(), -1);
  for (size_t i = 0; i < g.local_experts.size(); ++i) slot[g.local_experts[i]] = static_cast<int32_t>(i);
  std::vector<std::vector<std::pair<int64_t, float>>> by_expert(g.local_experts.size());
  for (int64_t r = 0; r < received; ++r)
    for (int j = 0; j < K; ++j) {
      const int32_t e = meta[r * 2 * K + j];
      if (e < 0) continue;
      if (e >= placement.num_experts() || slot[e] < 0)
        return absl::InvalidArgumentError(
            absl::StrCat("MoE: received token ", r, " for expert ", e, ", which EP rank ", rank, " does not hold"));
      float w;
      std::memcpy(&w, &meta[r * 2 * K + K + j], sizeof(float));
      by_expert[slot[e]].push_back({r, w});
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
