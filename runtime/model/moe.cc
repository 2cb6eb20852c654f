// V4 / V4.1 MoE (MODEL.md 2.5): sqrt-softplus router (V4.1: logits over gate_temp) with a
// selection-only bias, or a fixed token-id -> experts table in the first num_hash_layers layers
// (V4); weights renormalized and scaled; clamped SwiGLU experts with the routing weight applied
// before w2; one shared expert.
//
// Everything runs on the model's backend: the router, the grouping of (token, slot) pairs by
// expert, the expert FFNs (the routed experts this rank holds and the shared expert, as tables the
// backend placed) and the ordered combine. Tokens are grouped by expert, so each expert's weights
// are read once per step however many tokens it serves. Under expert parallelism the TP ranks of a
// group split its tokens, dispatch them over the EP group (parallel/moe_dispatch.h in host memory,
// runtime/model/expert_exchange.h in a device's) and gather the results back.
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

ExpertFfnOptions Model::FfnOptions() const {
  ExpertFfnOptions o;
  o.swiglu_limit = static_cast<float>(config().swiglu_limit);
  o.qdq = opt_.qdq;
  o.qdq_group = static_cast<int>(config().act_quant_group());
  return o;
}

void Model::Route(int64_t layer, const float* x, int64_t n, const int32_t* tokens, int32_t* experts,
                  float* weights) const {
  const ModelConfig& c = config();
  const MoeLayer& ml = moe_[layer];
  const int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  Backend& be = *backend_;
  DeviceScratch<float> scores(be, n * E);
  be.Linear(x, n, D, ml.gate, scores.data(), E);
  const kernels::RouterScore score = c.scoring_func == ScoreFunc::kSqrtSoftplus ? kernels::RouterScore::kSqrtSoftplus
                                     : c.scoring_func == ScoreFunc::kSigmoid    ? kernels::RouterScore::kSigmoid
                                                                                : kernels::RouterScore::kSoftmax;
  // Hash layers route by token id (the step's, in the backend's memory).
  be.Route(scores.data(), n, E, K, static_cast<float>(c.gate_temp), score, ml.gate_bias, ml.tid2eid, tokens,
           c.route_normalizes(), static_cast<float>(c.route_norm_eps()), static_cast<float>(c.routed_scaling_factor),
           experts, weights);
}

void Model::RoutedLocal(int64_t layer, const float* x, int64_t m, int32_t* experts, float* weights, int64_t max_rows,
                        bool shared, float* out) const {
  const ModelConfig& c = config();
  const MoeLayer& ml = moe_[layer];
  const int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok, pairs = m * K;
  const int64_t row_bytes = D * static_cast<int64_t>(sizeof(float));
  DSV4_CHECK(max_rows == 0 || ml.routed != nullptr, "layer ", layer,
             "'s tokens are routed to a rank that holds none of its experts");
  Backend& be = *backend_;
  // Each token's slots in expert order, so that its rows below (grouped by expert) come in the
  // order the reference sums them; then the pairs grouped by expert (a counting sort).
  be.SortSlotsByExpert(experts, weights, m, K);
  DeviceScratch<int32_t> offsets(be, E + 1), position(be, pairs);
  DeviceScratch<int64_t> order(be, pairs), order_tokens(be, pairs);
  be.GroupByExpert(experts, pairs, K, E, offsets.data(), order.data(), order_tokens.data(), position.data(),
                   load_counts_ + layer * E);
  // Each routed expert once over all its rows, and the shared expert over all rows, in one pass.
  DeviceScratch<float> xs(be, max_rows * D), ws(be, max_rows), ys(be, max_rows * D);
  DeviceScratch<float> xsh(be, shared ? m * D : 0), ysh(be, shared ? m * D : 0);
  DeviceScratch<int32_t> shared_offsets(be, 2);
  be.GatherRows(x, row_bytes, order_tokens.data(), max_rows, row_bytes, xs.data(), row_bytes);
  be.GatherRows(weights, sizeof(float), order.data(), max_rows, sizeof(float), ws.data(), sizeof(float));
  ExpertFfnJob jobs[2];
  int num_jobs = 0;
  if (max_rows > 0)
    jobs[num_jobs++] = {ml.routed.get(), xs.data(), D, offsets.data(), max_rows, ws.data(), ys.data(), D};
  if (shared && m > 0) jobs[num_jobs++] = SharedExpertJob(layer, x, m, xsh.data(), shared_offsets.data(), ysh.data());
  be.ExpertFfnGroup(jobs, num_jobs, FfnOptions());
  // Each token's rows (its slots' positions, in expert order), then the shared expert's row.
  DeviceScratch<int32_t> slot_offsets(be, m + 1);
  be.Iota(slot_offsets.data(), m + 1, 0, static_cast<int32_t>(K));
  be.CombineRows(ys.data(), D, slot_offsets.data(), position.data(), nullptr, m, D, false, out, D);
  if (shared) AddRows(ysh.data(), m, out);
}

ExpertFfnJob Model::SharedExpertJob(int64_t layer, const float* x, int64_t m, float* xsh, int32_t* offsets,
                                    float* ysh) const {
  const int64_t D = config().hidden_size;
  backend_->CopyOnDevice(xsh, x, m * D * static_cast<int64_t>(sizeof(float)));  // the expert may round it in place
  backend_->Iota(offsets, 2, 0, static_cast<int32_t>(m));                          // one group: rows [0, m)
  return {moe_[layer].shared.get(), xsh, D, offsets, m, nullptr, ysh, D};
}

void Model::AddRows(const float* y, int64_t m, float* out) const {
  const int64_t D = config().hidden_size;
  DeviceScratch<int32_t> rows(*backend_, m + 1);
  backend_->Iota(rows.data(), m + 1, 0, 1);
  backend_->CombineRows(y, D, rows.data(), rows.data(), nullptr, m, D, true, out, D);
}

void Model::AddSharedExpert(int64_t layer, const float* x, int64_t m, float* out) const {
  if (m == 0) return;
  const int64_t D = config().hidden_size;
  Backend& be = *backend_;
  DeviceScratch<float> xsh(be, m * D), ysh(be, m * D);
  DeviceScratch<int32_t> offsets(be, 2);
  const ExpertFfnJob job = SharedExpertJob(layer, x, m, xsh.data(), offsets.data(), ysh.data());
  backend_->ExpertFfnGroup(&job, 1, FfnOptions());
  AddRows(ysh.data(), m, out);
}

absl::Status Model::RoutedExpertParallel(int64_t layer, const float* x, int64_t n, const int32_t* experts,
                                         const float* weights, float* out) const {
  const ModelConfig& c = config();
  const int64_t D = c.hidden_size;
  const int K = static_cast<int>(c.num_experts_per_tok);
  // The placement only changes between steps (SwitchPlacement), on this thread.
  const std::shared_ptr<const ModelPlacement> placement = this->placement();
  if (exchange_ != nullptr) {
    // Device memory: the exchange's buffers are the workspace's until the combine is done.
    const WorkspaceScope scope(*backend_);
    ExpertExchange& ex = *exchange_;
    DSV4_RETURN_IF_ERROR(ex.Dispatch(placement->layer(layer), x, n, D, experts, weights, K));
    const int64_t m = ex.received();
    DeviceScratch<float> yr(*backend_, m * D);
    RoutedLocal(layer, ex.hidden(), m, ex.experts(), ex.weights(), ex.held_pairs(), /*shared=*/false, yr.data());
    return ex.Combine(yr.data(), out);
  }
  MoeDispatcher& dispatcher = *dispatcher_;
  DSV4_RETURN_IF_ERROR(dispatcher.Dispatch(placement->layer(layer), x, n, D, experts, weights, K));
  // The tokens this rank serves (its own, the others' as received: host memory) run as one batch.
  const int64_t m = dispatcher.num_received();
  kernels::Scratch<float> xr(m * D, kernels::NoInit{}), yr(m * D, kernels::NoInit{});
  kernels::Scratch<int32_t> er(m * K, kernels::NoInit{});
  kernels::Scratch<float> wr(m * K, kernels::NoInit{});
  int64_t held = 0;
  for (int64_t i = 0; i < m; ++i) {
    std::memcpy(&xr[i * D], dispatcher.recv_hidden(i), D * sizeof(float));
    const int32_t* meta = dispatcher.recv_meta(i);
    std::memcpy(&er[i * K], meta, K * sizeof(int32_t));
    std::memcpy(&wr[i * K], meta + K, K * sizeof(float));
    for (int j = 0; j < K; ++j) held += meta[j] >= 0;
  }
  RoutedLocal(layer, xr.data(), m, er.data(), wr.data(), held, /*shared=*/false, yr.data());
  return dispatcher.Combine(yr.data(), out, /*accumulate=*/false);
}

absl::Status Model::MoE(int64_t layer, const float* x, int64_t n, const int32_t* tokens, float* out) const {
  const ModelConfig& c = config();
  const int64_t D = c.hidden_size, K = c.num_experts_per_tok;
  // Under TP the ranks of a group hold the same tokens: each takes a contiguous share so no token
  // is dispatched twice, and the shares are gathered at the end.
  const int tp = distributed() ? par_->layout.tp : 1, tp_rank = distributed() ? par_->layout.tp_rank : 0;
  const int64_t t0 = n * tp_rank / tp, t1 = n * (tp_rank + 1) / tp, mine = t1 - t0;
  float* part = out + t0 * D;
  DeviceScratch<int32_t> experts(*backend_, mine * K);
  DeviceScratch<float> weights(*backend_, mine * K);
  Route(layer, x + t0 * D, mine, tokens + t0, experts.data(), weights.data());
  if (distributed() && par_->layout.ep > 1) {
    DSV4_RETURN_IF_ERROR(RoutedExpertParallel(layer, x + t0 * D, mine, experts.data(), weights.data(), part));
    AddSharedExpert(layer, x + t0 * D, mine, part);
  } else {
    RoutedLocal(layer, x + t0 * D, mine, experts.data(), weights.data(), mine * K, /*shared=*/true, part);
  }
  if (tp == 1) return absl::OkStatus();
  std::vector<int64_t> counts(tp);
  for (int r = 0; r < tp; ++r) counts[r] = (n * (r + 1) / tp - n * r / tp) * D;
  // The gather writes over `part`, so this rank's share goes from a copy.
  DeviceScratch<float> mine_copy(*backend_, mine * D);
  backend_->CopyOnDevice(mine_copy.data(), part, mine_copy.bytes());
  return tp_rows_->AllGatherV(mine_copy.data(), counts.data(), out);
}

}  // namespace dsv4
