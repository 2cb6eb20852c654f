// Engram in the forward pass: the gate math (engram.h) and the model's per-step row gather.
#include "runtime/model/engram.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "kernels/cpu/formats.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/thread_pool.h"
#include "runtime/model/model.h"

namespace dsv4 {
namespace {

constexpr int64_t kGroup = 32;          // FP8 scale group of table rows and of W_kv's activations
constexpr float kGateClamp = 1e-6f;     // |dot| floor before the square root

// y[m, N] = x[m, K] W^T with each 32-wide block of K summed in fp32 and the block sums added in K
// order (the reference's blockwise FP8 GEMM; exact whenever the block sums are).
void BlockwiseLinear(const float* x, int64_t m, const WeightMatrix& w, float* y) {
  const int64_t K = w.cols(), N = w.rows();
  kernels::ParallelFor(N, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> row(K);
    for (int64_t r = begin; r < end; ++r) {
      kernels::DequantRow(w, r, row.data());
      for (int64_t t = 0; t < m; ++t) {
        float acc = 0.f;
        for (int64_t k0 = 0; k0 < K; k0 += kGroup)
          acc += kernels::Dot(x + t * K + k0, row.data() + k0, std::min(kGroup, K - k0));
        y[t * N + r] = acc;
      }
    }
  });
}

float RoundBf16(float v) { return kernels::Bf16ToFloat(kernels::FloatToBf16(v)); }

// The gate of one stream: x, key [D], w [D] = q_weight * k_weight.
float StreamDot(const float* x, const float* key, const float* w, int64_t D, float eps) {
  double xx = 0, kk = 0, xwk = 0;
  // Elementwise products in fp32 as the reference forms them; sums accumulated in double.
  for (int64_t d = 0; d < D; ++d) {
    xx += x[d] * x[d];
    kk += key[d] * key[d];
    xwk += x[d] * w[d] * key[d];
  }
  const float mean_x = static_cast<float>(xx) / static_cast<float>(D);
  const float mean_k = static_cast<float>(kk) / static_cast<float>(D);
  const float rstd = (1.0f / std::sqrt(mean_x + eps)) * (1.0f / std::sqrt(mean_k + eps));
  return static_cast<float>(xwk) * rstd * static_cast<float>(1.0 / std::sqrt(static_cast<double>(D)));
}

float Gate(float dot) {
  const float z = std::copysign(std::sqrt(std::max(std::fabs(dot), kGateClamp)), dot);
  return 1.0f / (1.0f + std::exp(-z));
}

}  // namespace

void EngramDequantRows(const uint8_t* codes, const uint8_t* scales, int64_t count, int64_t head_dim, float* emb) {
  const int64_t groups = head_dim / kGroup;
  for (int64_t r = 0; r < count; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      const float s = kernels::E8m0ToFloat(scales[r * groups + g]);
      const uint8_t* c = codes + r * head_dim + g * kGroup;
      float* out = emb + r * head_dim + g * kGroup;
      for (int64_t j = 0; j < kGroup; ++j) out[j] = kernels::Fp8E4m3ToFloat(c[j]) * s;
    }
}

void EngramGate(const EngramWeights& w, float* emb, int64_t n, int64_t hc, int64_t D, float eps, const uint8_t* mask,
                const EngramGateOptions& options, float* x, const EngramGateTaps* taps) {
  const int64_t K = w.wkv.cols(), N = w.wkv.rows();
  DSV4_CHECK(N == (hc + 1) * D, "W_kv has ", N, " rows for hc ", hc, " x D ", D);
  if (options.act_qdq && IsQuantized(w.wkv)) kernels::QdqFp8(emb, n, K, K, kGroup);
  std::vector<float> kv(n * N);
  BlockwiseLinear(emb, n, w.wkv, kv.data());
  if (taps && taps->kv_f32) *taps->kv_f32 = kv;
  if (options.bf16_kv)
    for (float& v : kv) v = RoundBf16(v);
  if (taps && taps->dot) taps->dot->assign(n * hc, 0.f);
  if (taps && taps->gate) taps->gate->assign(n * hc, 0.f);
  kernels::ParallelFor(n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* value = &kv[t * N + hc * D];
      for (int64_t i = 0; i < hc; ++i) {
        float* xi = x + (t * hc + i) * D;
        const float dot = StreamDot(xi, &kv[t * N + i * D], w.gate_weight.data() + i * D, D, eps);
        const float gate = (mask != nullptr && mask[t] == 0) ? 0.f : Gate(dot);
        if (taps && taps->dot) (*taps->dot)[t * hc + i] = dot;
        if (taps && taps->gate) (*taps->gate)[t * hc + i] = gate;
        for (int64_t d = 0; d < D; ++d) {
          const float out = xi[d] + gate * value[d];
          xi[d] = options.bf16_out ? RoundBf16(out) : out;
        }
      }
    }
  });
}

// ---- the model's Engram step ------------------------------------------------------------------

std::vector<EngramTableView> Model::EngramTables() const {
  std::vector<EngramTableView> tables;
  if (!w_->engram_hasher) return tables;
  for (int64_t l : config().engram_layer_ids) {
    const WeightMatrix& t = w_->layers[l].engram.table;
    tables.push_back({static_cast<const uint8_t*>(t.data), t.scales, t.rows()});
  }
  return tables;
}

void Model::InitEngram() {
  if (!w_->engram_hasher) return;
  engram_rows_ = std::make_shared<LocalEngramRowSource>(EngramTables(), config().engram_head_dim);
}

void Model::SetEngramRowSource(std::shared_ptr<EngramRowSource> source) {
  DSV4_CHECK(w_->engram_hasher != nullptr, "the model has no Engram layers");
  DSV4_CHECK(source && source->head_dim() == config().engram_head_dim, "row source of the wrong head_dim");
  engram_rows_ = std::move(source);
}

absl::Status Model::CheckTokens(std::span<const int32_t> tokens) const {
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= config().vocab_size)
      return absl::OutOfRangeError(
          absl::StrCat("token id ", tokens[i], " at index ", i, " is outside [0, ", config().vocab_size, ")"));
  if (w_->engram_hasher) return w_->engram_hasher->CheckTokens(tokens);
  return absl::OkStatus();
}

absl::StatusOr<EngramStep> Model::BeginEngram(std::span<const int32_t> tokens, SequenceCache& cache) const {
  const EngramHasher& hasher = *w_->engram_hasher;
  DSV4_RETURN_IF_ERROR(hasher.CheckTokens(tokens));
  const int64_t n = static_cast<int64_t>(tokens.size()), layers = hasher.num_layers(), cols = hasher.num_cols();
  const int64_t hd = config().engram_head_dim;
  std::vector<int64_t> all(n * layers * cols);  // [n, layers, cols]
  hasher.Hash(tokens, /*mask=*/nullptr, cache.engram, all.data());
  EngramStep step;
  step.n = n;
  step.rows.resize(layers);
  step.codes.resize(layers);
  step.scales.resize(layers);
  step.fetches.resize(layers);
  // The fetches write into these buffers; moving `step` keeps them where they are.
  for (int64_t e = 0; e < layers; ++e) {
    step.rows[e].resize(n * cols);
    for (int64_t t = 0; t < n; ++t)
      std::copy_n(&all[(t * layers + e) * cols], cols, &step.rows[e][t * cols]);
    step.codes[e].resize(n * cols * hd);
    step.scales[e].resize(n * cols * hd / kGroup);
    DSV4_ASSIGN_OR_RETURN(step.fetches[e],
                          engram_rows_->Start(e, step.rows[e], step.codes[e].data(), step.scales[e].data()));
  }
  return step;
}

absl::Status Model::ApplyEngram(int64_t layer, EngramStep& step, float* x) const {
  const ModelConfig& c = config();
  const int64_t e = c.engram_index(layer);
  DSV4_CHECK(e >= 0 && step.fetches[e] != nullptr, "no Engram fetch for layer ", layer);
  if (absl::Status st = step.fetches[e]->Wait(); !st.ok())
    return absl::Status(st.code(), absl::StrCat("Engram rows of layer ", layer, ": ", st.message()));
  step.fetches[e].reset();
  const int64_t count = static_cast<int64_t>(step.rows[e].size());
  std::vector<float> emb(count * c.engram_head_dim);
  EngramDequantRows(step.codes[e].data(), step.scales[e].data(), count, c.engram_head_dim, emb.data());
  EngramGateOptions options;
  options.act_qdq = opt_.qdq;
  // The gate runs on the host: where host memory is not the device's, the streams come over and go
  // back (until the gate is an operation of the backend).
  Backend& be = *backend_;
  const int64_t bytes = step.n * c.hc_mult * c.hidden_size * static_cast<int64_t>(sizeof(float));
  std::vector<float> host(be.HostIsDevice() ? 0 : bytes / sizeof(float));
  float* streams = be.HostIsDevice() ? x : host.data();
  if (!be.HostIsDevice()) be.CopyToHost(streams, x, bytes);
  EngramGate(w_->layers[layer].engram, emb.data(), step.n, c.hc_mult, c.hidden_size,
             static_cast<float>(c.rms_norm_eps), /*mask=*/nullptr, options, streams);
  if (!be.HostIsDevice()) be.CopyToDevice(x, streams, bytes);
  return absl::OkStatus();
}

}  // namespace dsv4
