// Engram's gate (runtime/model/engram.h has the math): W_kv blockwise, one gate per stream, the
// streams updated in place.
#include <algorithm>
#include <cmath>
#include <vector>

#include "base/status.h"
#include "kernels/cpu/formats.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/thread_pool.h"

namespace dsv4::kernels {
namespace {

constexpr int64_t kGroup = 32;       // FP8 scale group of table rows and of W_kv's activations
constexpr float kGateClamp = 1e-6f;  // |dot| floor before the square root

// y[m, N] = x[m, K] W^T with each 32-wide block of K summed in fp32 and the block sums added in K
// order (the reference's blockwise FP8 GEMM; exact whenever the block sums are).
void BlockwiseLinear(const float* x, int64_t m, const WeightMatrix& w, float* y) {
  const int64_t K = w.cols(), N = w.rows();
  ParallelFor(N, 8, [&](int64_t begin, int64_t end) {
    std::vector<float> row(K);
    for (int64_t r = begin; r < end; ++r) {
      DequantRow(w, r, row.data());
      for (int64_t t = 0; t < m; ++t) {
        float acc = 0.f;
        for (int64_t k0 = 0; k0 < K; k0 += kGroup)
          acc += Dot(x + t * K + k0, row.data() + k0, std::min(kGroup, K - k0));
        y[t * N + r] = acc;
      }
    }
  });
}

float RoundBf16(float v) { return Bf16ToFloat(FloatToBf16(v)); }

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

void EngramGate(const WeightMatrix& wkv, const float* gate_weight, float* emb, int64_t n, int64_t hc, int64_t D,
                float eps, const uint8_t* mask, const EngramGateOptions& options, float* x,
                const EngramGateTaps* taps) {
  EnsureFlushDenormals();
  const int64_t K = wkv.cols(), N = wkv.rows();
  DSV4_CHECK(N == (hc + 1) * D, "W_kv has ", N, " rows for hc ", hc, " x D ", D);
  if (options.act_qdq && IsQuantized(wkv)) QdqFp8(emb, n, K, K, kGroup);
  std::vector<float> kv(n * N);
  BlockwiseLinear(emb, n, wkv, kv.data());
  if (taps && taps->kv_f32) *taps->kv_f32 = kv;
  if (options.bf16_kv)
    for (float& v : kv) v = RoundBf16(v);
  if (taps && taps->dot) taps->dot->assign(n * hc, 0.f);
  if (taps && taps->gate) taps->gate->assign(n * hc, 0.f);
  ParallelFor(n, 1, [&](int64_t begin, int64_t end) {
    for (int64_t t = begin; t < end; ++t) {
      const float* value = &kv[t * N + hc * D];
      for (int64_t i = 0; i < hc; ++i) {
        float* xi = x + (t * hc + i) * D;
        const float dot = StreamDot(xi, &kv[t * N + i * D], gate_weight + i * D, D, eps);
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

}  // namespace dsv4::kernels
