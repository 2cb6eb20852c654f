// V4 / V4.1 MoE (MODEL.md 2.5): sqrt-softplus router (V4.1: logits over gate_temp) with a
// selection-only bias, or a fixed token-id -> experts table in the first num_hash_layers layers
// (V4); weights renormalized and scaled; clamped SwiGLU experts with the routing weight applied
// before w2; one shared expert.
//
// Tokens are grouped by expert, so each expert's weights are read once per step however many
// tokens it serves. Under expert parallelism the TP ranks of a group split its tokens, dispatch
// them over the EP group (parallel/moe_dispatch.h) and gather the results back.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "base/status.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/scratch.h"
#include "parallel/moe_dispatch.h"
#include "runtime/model/model.h"

namespace dsv4 {
void Model::Expert(const ExpertWeights& e, const float* x, int64_t n, const float* weights, float* out) const {
  const ExpertRun run{&e, x, n, weights, out};
  ExpertGroup(&run, 1);
}

void Model::ExpertGroup(const ExpertRun* runs, int64_t count) const {
  using kernels::NoInit;
  const ModelConfig& c = config();
  const int64_t D = c.hidden_size, I = c.moe_intermediate_size;
  const float limit = static_cast<float>(c.swiglu_limit);
  const int block = static_cast<int>(c.act_quant_group());
  int64_t total = 0;
  for (int64_t r = 0; r < count; ++r) total += runs[r].m;
  if (total == 0) return;
  // Inputs, rounded to FP8 as the reference does for quantized weights (once for w1 and w3).
  kernels::Scratch<float> xq(total * D, NoInit{}), g(total * I, NoInit{}), u(total * I, NoInit{});
  kernels::Scratch<kernels::LinearJob> jobs(2 * count);
  int64_t at = 0;
  for (int64_t r = 0; r < count; ++r) {
    const ExpertRun& run = runs[r];
    std::memcpy(&xq[at * D], run.x, run.m * D * sizeof(float));
    if (opt_.qdq && IsQuantized(run.e->w1)) kernels::QdqFp8(&xq[at * D], run.m, D, D, block);
    jobs[2 * r] = {&xq[at * D], run.m, D, &run.e->w1, &g[at * I], I};
    jobs[2 * r + 1] = {&xq[at * D], run.m, D, &run.e->w3, &u[at * I], I};
    at += run.m;
  }
  kernels::LinearGroup(jobs.data(), 2 * count);
  // Clamped SwiGLU, times the routing weight, into g; then w2.
  at = 0;
  for (int64_t r = 0; r < count; ++r) {
    const ExpertRun& run = runs[r];
    for (int64_t t = 0; t < run.m; ++t) {
      float* gt = &g[(at + t) * I];
      const float* ut = &u[(at + t) * I];
      for (int64_t i = 0; i < I; ++i) {
        float gv = gt[i], uv = ut[i];
        if (limit > 0) {
          uv = std::clamp(uv, -limit, limit);
          gv = std::min(gv, limit);  // the gate has no lower clamp
        }
        float h = gv / (1.0f + std::exp(-gv)) * uv;
        if (run.weights) h *= run.weights[t];
        gt[i] = h;
      }
    }
    if (opt_.qdq && IsQuantized(run.e->w2)) kernels::QdqFp8(&g[at * I], run.m, I, I, block);
    jobs[r] = {&g[at * I], run.m, I, &run.e->w2, run.out, D};
    at += run.m;
  }
  kernels::LinearGroup(jobs.data(), count);
}

void Model::Route(int64_t layer, const float* x, int64_t n, std::span<const int32_t> tokens, int32_t* experts,
                  float* weights) const {
  const ModelConfig& c = config();
  const LayerWeights& lw = w_->layers[layer];
  const int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  kernels::Scratch<float> scores(n * E, kernels::NoInit{});
  kernels::Linear(x, n, D, lw.gate, scores.data(), E);
  const kernels::RouterScore score = c.scoring_func == ScoreFunc::kSqrtSoftplus ? kernels::RouterScore::kSqrtSoftplus
                                     : c.scoring_func == ScoreFunc::kSigmoid    ? kernels::RouterScore::kSigmoid
                                                                                : kernels::RouterScore::kSoftmax;
  kernels::Route(scores.data(), n, E, K, static_cast<float>(c.gate_temp), score,
                 lw.gate_bias.empty() ? nullptr : lw.gate_bias.data(), lw.tid2eid.empty() ? nullptr : lw.tid2eid.data(),
                 tokens.data(), c.route_normalizes(), static_cast<float>(c.route_norm_eps()),
                 static_cast<float>(c.routed_scaling_factor), experts, weights);
}

void Model::RoutedLocal(int64_t layer, const float* const* rows, int64_t n, const int32_t* experts,
                        const float* weights, float* out, const float* shared_x, float* shared_out) const {
  using kernels::NoInit;
  using kernels::Scratch;
  const ModelConfig& c = config();
  const LayerWeights& lw = w_->layers[layer];
  const int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  // Slots (t * K + j) grouped by expert, in expert order (a counting sort).
  Scratch<int64_t> first(E + 1), slots(n * K, NoInit{});
  for (int64_t s = 0; s < n * K; ++s)
    if (experts[s] >= 0) ++first[experts[s] + 1];
  for (int64_t e = 0; e < E; ++e) first[e + 1] += first[e];
  const int64_t total = first[E];
  {
    Scratch<int64_t> fill(E, NoInit{});
    std::copy(first.begin(), first.begin() + E, fill.begin());
    for (int64_t s = 0; s < n * K; ++s)
      if (experts[s] >= 0) slots[fill[experts[s]]++] = s;
  }
  // Each routed expert once over all its rows, and the shared expert, in one grouped pass.
  Scratch<float> xs(total * D, NoInit{}), ws(total, NoInit{}), ys(total * D, NoInit{});
  Scratch<ExpertRun> runs(E + 1);
  int64_t num_runs = 0;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t b = first[e], m = first[e + 1] - b;
    if (m == 0) continue;
    const ExpertWeights* ew = routed_[layer][e];
    DSV4_CHECK(ew != nullptr, "expert ", e, " of layer ", layer, " routed to a rank that does not hold it");
    expert_load_[layer * E + e].fetch_add(m, std::memory_order_relaxed);
    for (int64_t i = 0; i < m; ++i) {
      std::memcpy(&xs[(b + i) * D], rows[slots[b + i] / K], D * sizeof(float));
      ws[b + i] = weights[slots[b + i]];
    }
    runs[num_runs++] = {ew, &xs[b * D], m, &ws[b], &ys[b * D]};
  }
  if (shared_out != nullptr && n > 0) runs[num_runs++] = {&lw.shared, shared_x, n, nullptr, shared_out};
  ExpertGroup(runs.data(), num_runs);
  // Sum into the tokens' rows, expert by expert.
  for (int64_t i = 0; i < total; ++i) {
    kernels::AddTo(out + (slots[i] / K) * D, &ys[i * D], D);
  }
}

absl::Status Model::RoutedExpertParallel(int64_t layer, const float* x, int64_t n, const int32_t* experts,
                                         const float* weights, float* out) const {
  const ModelConfig& c = config();
  const int64_t D = c.hidden_size;
  const int K = static_cast<int>(c.num_experts_per_tok);
  // The placement only changes between steps (SwitchPlacement), on this thread.
  const std::shared_ptr<const ModelPlacement> placement = this->placement();
  MoeDispatcher& dispatcher = *dispatcher_;
  DSV4_RETURN_IF_ERROR(dispatcher.Dispatch(placement->layer(layer), x, n, D, experts, weights, K));
  // The tokens this rank serves (its own in place, the others' as received) run as one batch.
  const int64_t m = dispatcher.num_received();
  kernels::Scratch<const float*> rows(m, kernels::NoInit{});
  kernels::Scratch<int32_t> er(m * K, kernels::NoInit{});
  kernels::Scratch<float> wr(m * K, kernels::NoInit{}), yr(m * D);
  for (int64_t i = 0; i < m; ++i) {
    rows[i] = dispatcher.recv_hidden(i);
    const int32_t* meta = dispatcher.recv_meta(i);
    std::memcpy(&er[i * K], meta, K * sizeof(int32_t));
    std::memcpy(&wr[i * K], meta + K, K * sizeof(float));
  }
  RoutedLocal(layer, rows.data(), m, er.data(), wr.data(), yr.data());
  return dispatcher.Combine(yr.data(), out);
}

absl::Status Model::MoE(int64_t layer, const float* x, int64_t n, std::span<const int32_t> tokens, float* out) const {
  const ModelConfig& c = config();
  const int64_t D = c.hidden_size, K = c.num_experts_per_tok;
  // Under TP the ranks of a group hold the same tokens: each takes a contiguous share so no token
  // is dispatched twice, and the shares are gathered at the end.
  const int tp = distributed() ? par_->layout.tp : 1, tp_rank = distributed() ? par_->layout.tp_rank : 0;
  const int64_t t0 = n * tp_rank / tp, t1 = n * (tp_rank + 1) / tp, mine = t1 - t0;
  float* part = out + t0 * D;
  std::fill(part, part + mine * D, 0.f);
  kernels::Scratch<int32_t> experts(mine * K, kernels::NoInit{});
  kernels::Scratch<float> weights(mine * K, kernels::NoInit{}), shared(mine * D, kernels::NoInit{});
  Route(layer, x + t0 * D, mine, tokens.subspan(t0, mine), experts.data(), weights.data());
  if (distributed() && par_->layout.ep > 1) {
    DSV4_RETURN_IF_ERROR(RoutedExpertParallel(layer, x + t0 * D, mine, experts.data(), weights.data(), part));
    Expert(w_->layers[layer].shared, x + t0 * D, mine, nullptr, shared.data());
  } else {
    kernels::Scratch<const float*> rows(mine, kernels::NoInit{});
    for (int64_t i = 0; i < mine; ++i) rows[i] = x + (t0 + i) * D;
    RoutedLocal(layer, rows.data(), mine, experts.data(), weights.data(), part, x + t0 * D, shared.data());
  }
  for (int64_t i = 0; i < mine * D; ++i) part[i] += shared[i];
  if (tp == 1) return absl::OkStatus();
  std::vector<int64_t> counts(tp);
  for (int r = 0; r < tp; ++r) counts[r] = (n * (r + 1) / tp - n * r / tp) * D;
  std::vector<float> mine_copy(part, part + mine * D);
  return par_->tp->AllGatherV(mine_copy.data(), counts.data(), out);
}

}  // namespace dsv4
