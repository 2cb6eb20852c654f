// V4 MoE (MODEL.md 2.5): sqrt-softplus router with a selection-only bias, or a fixed token-id ->
// experts table in the first num_hash_layers layers; weights renormalized and scaled; clamped
// SwiGLU experts with the routing weight applied before w2; one shared expert.
//
// Tokens are grouped by expert, so each expert's weights are read once per step however many
// tokens it serves.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/kernels.h"
#include "runtime/model/model.h"

namespace dsv4 {
namespace {

// torch.nn.functional.softplus with its default threshold of 20.
float Softplus(float z) { return z > 20.0f ? z : std::log1p(std::exp(z)); }

}  // namespace

void Model::Expert(const ExpertWeights& e, const float* x, int64_t n, const float* weights, float* out) const {
  const ModelConfig& c = config();
  const int64_t I = c.moe_intermediate_size;
  const float limit = static_cast<float>(c.swiglu_limit);
  std::vector<float> g(n * I), u(n * I);
  Project(e.w1, x, n, c.hidden_size, g.data());
  Project(e.w3, x, n, c.hidden_size, u.data());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t i = 0; i < I; ++i) {
      float gv = g[t * I + i], uv = u[t * I + i];
      if (limit > 0) {
        uv = std::clamp(uv, -limit, limit);
        gv = std::min(gv, limit);  // the gate has no lower clamp
      }
      float h = gv / (1.0f + std::exp(-gv)) * uv;
      if (weights) h *= weights[t];
      g[t * I + i] = h;
    }
  Project(e.w2, g.data(), n, I, out);
}

void Model::MoE(int64_t layer, const float* x, int64_t n, std::span<const int32_t> tokens, float* out) const {
  const ModelConfig& c = config();
  const LayerWeights& lw = w_->layers[layer];
  const int64_t D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;

  // Router.
  std::vector<float> scores(n * E);
  kernels::Linear(x, n, D, lw.gate, scores.data(), E);
  std::vector<int32_t> experts(n * K);
  std::vector<float> weights(n * K);
  std::vector<float> biased(E);
  for (int64_t t = 0; t < n; ++t) {
    float* s = &scores[t * E];
    switch (c.scoring_func) {
      case ScoreFunc::kSqrtSoftplus:
        for (int64_t e = 0; e < E; ++e) s[e] = std::sqrt(Softplus(s[e]));
        break;
      case ScoreFunc::kSigmoid:
        for (int64_t e = 0; e < E; ++e) s[e] = 1.0f / (1.0f + std::exp(-s[e]));
        break;
      case ScoreFunc::kSoftmax: {
        const float mx = *std::max_element(s, s + E);
        float sum = 0.f;
        for (int64_t e = 0; e < E; ++e) sum += (s[e] = std::exp(s[e] - mx));
        for (int64_t e = 0; e < E; ++e) s[e] /= sum;
        break;
      }
    }
    int32_t* idx = &experts[t * K];
    if (!lw.tid2eid.empty()) {
      std::memcpy(idx, &lw.tid2eid[static_cast<int64_t>(tokens[t]) * K], K * sizeof(int32_t));
    } else {
      for (int64_t e = 0; e < E; ++e) biased[e] = s[e] + (lw.gate_bias.empty() ? 0.f : lw.gate_bias[e]);
      kernels::TopK(biased.data(), E, K, idx);
    }
    float sum = 0.f;
    for (int64_t j = 0; j < K; ++j) sum += (weights[t * K + j] = s[idx[j]]);
    for (int64_t j = 0; j < K; ++j) {
      if (c.scoring_func != ScoreFunc::kSoftmax) weights[t * K + j] /= sum;
      weights[t * K + j] *= static_cast<float>(c.routed_scaling_factor);
    }
  }

  // Routed experts, one grouped call per expert that received tokens.
  std::vector<std::vector<int64_t>> slots(E);  // per expert: t * K + j
  for (int64_t s = 0; s < n * K; ++s) slots[experts[s]].push_back(s);
  std::fill(out, out + n * D, 0.f);
  std::vector<float> xs, ws, ys;
  for (int64_t e = 0; e < E; ++e) {
    const auto& sl = slots[e];
    if (sl.empty() || !lw.expert_loaded[e]) continue;
    const int64_t m = static_cast<int64_t>(sl.size());
    xs.resize(m * D), ws.resize(m), ys.resize(m * D);
    for (int64_t i = 0; i < m; ++i) {
      std::memcpy(&xs[i * D], x + (sl[i] / K) * D, D * sizeof(float));
      ws[i] = weights[sl[i]];
    }
    Expert(lw.experts[e], xs.data(), m, ws.data(), ys.data());
    for (int64_t i = 0; i < m; ++i) {
      float* o = out + (sl[i] / K) * D;
      for (int64_t d = 0; d < D; ++d) o[d] += ys[i * D + d];
    }
  }
  ys.resize(n * D);
  Expert(lw.shared, x, n, nullptr, ys.data());
  for (int64_t i = 0; i < n * D; ++i) out[i] += ys[i];
}

}  // namespace dsv4
