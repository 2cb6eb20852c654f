#include "runtime/model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernels.h"
#include "runtime/model/engram.h"
#include "runtime/status.h"

namespace dsv4 {

Rope::Rope(int64_t rope_dim, double theta, int64_t original_len, double factor, double beta_fast, double beta_slow) {
  const int64_t half = rope_dim / 2;
  freqs_.resize(half);
  for (int64_t i = 0; i < half; ++i)
    freqs_[i] = 1.0f / std::pow(static_cast<float>(theta), static_cast<float>(2 * i) / static_cast<float>(rope_dim));
  if (original_len <= 0) return;
  // YaRN: interpolate low frequencies by `factor`, keep high ones, linear ramp in between.
  auto correction_dim = [&](double rotations) {
    return rope_dim * std::log(original_len / (rotations * 2 * M_PI)) / (2 * std::log(theta));
  };
  const double low = std::max(std::floor(correction_dim(beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(beta_slow)), static_cast<double>(rope_dim - 1));
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < half; ++i) {
    const float ramp = std::clamp((static_cast<float>(i) - static_cast<float>(low)) / static_cast<float>(high - low),
                                  0.0f, 1.0f);
    const float smooth = 1.0f - ramp;
    freqs_[i] = freqs_[i] / static_cast<float>(factor) * (1.0f - smooth) + freqs_[i] * smooth;
  }
}

void Rope::CosSin(int64_t pos, float* cos, float* sin) const {
  for (size_t i = 0; i < freqs_.size(); ++i) {
    const float angle = static_cast<float>(pos) * freqs_[i];
    cos[i] = std::cos(angle);
    sin[i] = std::sin(angle);
  }
}

void Rope::Apply(float* x, int64_t pos, bool inverse) const {
  float cos[512], sin[512];
  DSV4_CHECK(freqs_.size() <= 512, "rope dim too large");
  CosSin(pos, cos, sin);
  kernels::Rope(x, static_cast<int64_t>(freqs_.size()), cos, sin, inverse);
}

Model::Model(std::shared_ptr<const ModelWeights> weights, ForwardOptions options, const ParallelContext* parallel)
    : w_(std::move(weights)), opt_(options), par_(parallel) {
  const ModelConfig& c = config();
  rope_window_ = std::make_unique<Rope>(c.qk_rope_head_dim, c.rope_theta, 0, 1.0, c.beta_fast, c.beta_slow);
  rope_compressed_ = std::make_unique<Rope>(c.qk_rope_head_dim, c.compress_rope_theta,
                                            c.original_max_position_embeddings, c.rope_factor, c.beta_fast,
                                            c.beta_slow);
  InitEngram();
  expert_load_ = std::make_unique<std::atomic<int64_t>[]>(c.n_routed_experts);
}

std::vector<int64_t> Model::ExpertLoad() const {
  std::vector<int64_t> load(config().n_routed_experts);
  for (size_t e = 0; e < load.size(); ++e) load[e] = expert_load_[e].load(std::memory_order_relaxed);
  return load;
}

SequenceCache Model::NewCache() const {
  const ModelConfig& c = config();
  SequenceCache cache;
  cache.layers.resize(c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerCache& lc = cache.layers[l];
    lc.window.assign(c.sliding_window * c.head_dim, 0.f);
    const int64_t r = c.ratio(l);
    if (r > 0) lc.compressor.Init(r, (r == 4 ? 2 : 1) * c.head_dim);
    if (r == 4) lc.index_compressor.Init(r, 2 * c.index_head_dim);
  }
  if (w_->engram_hasher) cache.engram = w_->engram_hasher->NewHistory();
  return cache;
}

void Model::Project(const WeightMatrix& w, const float* x, int64_t n, int64_t ldx, float* y) const {
  if (opt_.qdq && IsQuantized(w)) {
    // The reference rounds the input of every FP8/FP4 linear to FP8 in blocks of fp8_block.
    std::vector<float> xq(n * w.cols());
    for (int64_t t = 0; t < n; ++t) std::memcpy(&xq[t * w.cols()], x + t * ldx, w.cols() * sizeof(float));
    kernels::QdqFp8(xq.data(), n, w.cols(), w.cols(), static_cast<int>(config().fp8_block));
    kernels::Linear(xq.data(), n, w.cols(), w, y, w.rows());
  } else {
    kernels::Linear(x, n, ldx, w, y, w.rows());
  }
}

void Model::Embed(std::span<const int32_t> tokens, float* x) const {
  const int64_t D = config().hidden_size, hc = config().hc_mult;
  for (size_t t = 0; t < tokens.size(); ++t) {
    float* row = x + t * hc * D;
    kernels::DequantRow(w_->embed, tokens[t], row);
    for (int64_t i = 1; i < hc; ++i) std::memcpy(row + i * D, row, D * sizeof(float));
  }
}

absl::Status Model::Block(int64_t layer, float* x, std::span<const int32_t> tokens, int64_t start,
                          LayerCache& cache, const ForwardTaps* taps) const {
  const ModelConfig& c = config();
  const LayerWeights& lw = w_->layers[layer];
  const int64_t n = static_cast<int64_t>(tokens.size()), D = c.hidden_size, hc = c.hc_mult;
  const float eps = static_cast<float>(c.rms_norm_eps);
  std::vector<float> u(n * D), y(n * D), post(n * hc), comb(n * hc * hc);

  HcPre(lw.hc_attn_fn, lw.hc_attn_scale, lw.hc_attn_base, x, n, u.data(), post.data(), comb.data());
  kernels::RmsNorm(u.data(), lw.attn_norm.data(), eps, n, D, D, u.data(), D);
  DSV4_RETURN_IF_ERROR(Attention(layer, u.data(), n, start, cache, y.data()));
  if (taps && taps->attn_out) (*taps->attn_out)[layer] = y;
  HcPost(y.data(), post.data(), comb.data(), n, x);

  HcPre(lw.hc_ffn_fn, lw.hc_ffn_scale, lw.hc_ffn_base, x, n, u.data(), post.data(), comb.data());
  kernels::RmsNorm(u.data(), lw.ffn_norm.data(), eps, n, D, D, u.data(), D);
  DSV4_RETURN_IF_ERROR(MoE(layer, u.data(), n, tokens, y.data()));
  if (taps && taps->ffn_out) (*taps->ffn_out)[layer] = y;
  HcPost(y.data(), post.data(), comb.data(), n, x);
  if (taps && taps->block_out) (*taps->block_out)[layer].assign(x, x + n * hc * D);
  return absl::OkStatus();
}

absl::Status Model::Head(const float* x_last, float* logits) const {
  const ModelConfig& c = config();
  const int64_t D = c.hidden_size, hc = c.hc_mult;
  // Collapse the streams with sigmoid weights (no Sinkhorn), then the final norm and vocab head.
  const float rs = 1.0f / std::sqrt(kernels::Dot(x_last, x_last, hc * D) / (hc * D) + static_cast<float>(c.rms_norm_eps));
  std::vector<float> u(D, 0.f);
  for (int64_t i = 0; i < hc; ++i) {
    const float m = kernels::Dot(x_last, &w_->hc_head_fn[i * hc * D], hc * D) * rs;
    const float pre = 1.0f / (1.0f + std::exp(-(m * w_->hc_head_scale[0] + w_->hc_head_base[i]))) +
                      static_cast<float>(c.hc_eps);
    for (int64_t d = 0; d < D; ++d) u[d] += pre * x_last[i * D + d];
  }
  kernels::RmsNorm(u.data(), w_->norm.data(), static_cast<float>(c.rms_norm_eps), 1, D, D, u.data(), D);
  const WeightMatrix& head = w_->head;
  if (head.rows() == c.vocab_size) {
    kernels::Linear(u.data(), 1, D, head, logits, c.vocab_size);
    return absl::OkStatus();
  }
  // Vocab-parallel head: each TP rank computes its rows, then gather.
  std::vector<float> part(head.rows());
  kernels::Linear(u.data(), 1, D, head, part.data(), head.rows());
  std::vector<int64_t> counts(par_->tp->size(), head.rows());
  return par_->tp->AllGatherV(part.data(), counts.data(), logits);
}

absl::Status Model::Forward(std::span<const int32_t> tokens, SequenceCache& cache, float* logits,
                            const ForwardTaps* taps) const {
  const ModelConfig& c = config();
  const int64_t n = static_cast<int64_t>(tokens.size()), D = c.hidden_size, hc = c.hc_mult;
  if (n == 0) return absl::OkStatus();
  std::vector<float> x(n * hc * D);
  Embed(tokens, x.data());
  EngramStep engram;  // every Engram layer's rows are requested before the first layer runs
  if (w_->engram_hasher) {
    DSV4_ASSIGN_OR_RETURN(engram, BeginEngram(tokens, cache));
  }
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    if (w_->layers[l].has_engram) DSV4_RETURN_IF_ERROR(ApplyEngram(l, engram, x.data()));
    DSV4_RETURN_IF_ERROR(Block(l, x.data(), tokens, cache.length, cache.layers[l], taps));
  }
  cache.length += n;
  if (logits) DSV4_RETURN_IF_ERROR(Head(&x[(n - 1) * hc * D], logits));
  return absl::OkStatus();
}

}  // namespace dsv4
