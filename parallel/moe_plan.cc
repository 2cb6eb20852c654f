#include "parallel/moe_plan.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace dsv4 {

float MoeSendPlan::weight(int64_t row, int j) const {
  float w;
  std::memcpy(&w, &meta[row * 2 * K + K + j], sizeof(float));
  return w;
}

absl::Status PlanMoeSend(const ExpertPlacement& placement, const int32_t* experts, const float* weights, int64_t n,
                         int K, int sender, MoeSendPlan& p) {
  p.ep = placement.ep(), p.K = K;
  const int P = p.ep;
  const int64_t E = placement.num_experts();
  // Pass 1: each pair's EP rank (replicas taken in token, then slot order), the pairs per rank,
  // and the tokens per rank: a token goes to a rank once, however many of its slots it serves.
  p.dest.resize(n * K);
  p.pairs_per_rank.assign(P, 0);
  p.send_count.assign(P, 0);
  p.work.seen.assign(E, 0);
  p.work.stamp.assign(P, -1);  // the last token counted for each rank
  for (int64_t t = 0; t < n; ++t)
    for (int j = 0; j < K; ++j) {
      const int32_t e = experts[t * K + j];
      int32_t r = -1;
      if (e >= E)
        return absl::InvalidArgumentError(absl::StrCat("MoE dispatch: token ", t, " routes to expert ", e, " of ", E));
      if (e >= 0) {
        const std::vector<int>& reps = placement.replicas(e);
        r = reps.size() == 1 ? reps[0] : reps[(p.work.seen[e]++ + sender) % reps.size()];
        ++p.pairs_per_rank[r];
        if (p.work.stamp[r] != t) p.work.stamp[r] = t, ++p.send_count[r];
      }
      p.dest[t * K + j] = r;
    }
  p.send_offset.resize(P + 1);
  p.send_offset[0] = 0;
  for (int r = 0; r < P; ++r) p.send_offset[r + 1] = p.send_offset[r] + p.send_count[r];
  const int64_t total = p.send_offset[P];
  // Pass 2: packed rows, peer-major and in token order within a peer; each token's rows in
  // ascending order (EP-rank order) for the combine.
  p.token.resize(total);
  p.meta.resize(total * 2 * K);
  p.combine_offset.resize(n + 1);
  p.combine_rows.resize(total);
  p.work.fill.assign(p.send_offset.begin(), p.send_offset.end() - 1);
  p.work.stamp.assign(P, -1);
  p.work.row.resize(P);  // the row token t has for rank r, valid while work.stamp[r] == t
  int32_t next = 0;
  p.combine_offset[0] = 0;
  for (int64_t t = 0; t < n; ++t) {
    const int32_t first = next;
    for (int j = 0; j < K; ++j) {
      const int32_t r = p.dest[t * K + j];
      if (r < 0) continue;
      if (p.work.stamp[r] != t) {
        const int32_t row = static_cast<int32_t>(p.work.fill[r]++);
        p.work.stamp[r] = t, p.work.row[r] = row;
        p.token[row] = t;
        int32_t* m = &p.meta[row * 2 * K];
        std::fill(m, m + K, -1);
        std::fill(m + K, m + 2 * K, 0);
        // Insertion into this token's rows, kept ascending.
        int32_t c = next++;
        for (; c > first && p.combine_rows[c - 1] > row; --c) p.combine_rows[c] = p.combine_rows[c - 1];
        p.combine_rows[c] = row;
      }
      int32_t* m = &p.meta[p.work.row[r] * 2 * K];
      m[j] = experts[t * K + j];
      std::memcpy(&m[K + j], &weights[t * K + j], sizeof(float));
    }
    p.combine_offset[t + 1] = next;
  }
  return absl::OkStatus();
}

absl::StatusOr<MoeSendPlan> PlanMoeSend(const ExpertPlacement& placement, const int32_t* experts, const float* weights,
                                        int64_t n, int K, int sender) {
  MoeSendPlan p;
  DSV4_RETURN_IF_ERROR(PlanMoeSend(placement, experts, weights, n, K, sender, p));
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
