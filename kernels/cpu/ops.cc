// Element-wise and small reduction kernels: QAT rounding, RMSNorm, RoPE, Hadamard, mHC Sinkhorn,
// sparse attention with sinks, indexer scoring and top-k, and the dispatch to their AVX2
// (attention.cc) and AVX-512 (attention_avx512.cc) versions.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "kernels/cpu/avx2.h"
#include "kernels/cpu/avx512.h"
#include "kernels/cpu/formats.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/scratch.h"
#include "kernels/cpu/thread_pool.h"

// GCC 12 reports the _mm512_undefined_* placeholders inside its own intrinsics as uninitialized
// wherever a 512-bit intrinsic is inlined into this file's functions.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace dsv4::kernels {
namespace {

template <float (*Round)(float)>
void QdqRows(float* x, int64_t m, int64_t n, int64_t ld, int group, float fmt_max_inv, float amax_floor) {
  for (int64_t t = 0; t < m; ++t) {
    float* row = x + t * ld;
    for (int64_t g = 0; g < n; g += group) {
      const int64_t len = std::min<int64_t>(group, n - g);  // a short last group is its own group
      float amax = 0.f;
      for (int64_t i = 0; i < len; ++i) amax = std::max(amax, std::fabs(row[g + i]));
      amax = std::max(amax, amax_floor);
      const float s = Pow2Ceil(amax * fmt_max_inv);
      for (int64_t i = 0; i < len; ++i) row[g + i] = Round(row[g + i] / s) * s;
    }
  }
}

// The same, 8 values at a time, bit for bit: |v| rounds on a grid of step 2^(max(floor(log2|v|),
// emin) - mbits) (E4M3: emin -6, 3 mantissa bits; E2M1: emin 0, 1 bit), ties to even, saturating.
// NaN stays NaN; a NaN does not count in the group's amax (as std::max leaves it out).
template <int kEmin, int kMbits>
__attribute__((target("avx2,fma"))) void QdqRowsAvx2(float* x, int64_t m, int64_t n, int64_t ld, int group,
                                                     float fmt_max, float amax_floor) {
  const float fmt_max_inv = 1.0f / fmt_max;
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  const __m256 vmax = _mm256_set1_ps(fmt_max);
  const __m256i emin = _mm256_set1_epi32(kEmin);
  for (int64_t t = 0; t < m; ++t) {
    float* row = x + t * ld;
    for (int64_t g = 0; g < n; g += group) {
      const int64_t len = std::min<int64_t>(group, n - g);
      __m256 vamax = _mm256_setzero_ps();
      int64_t i = 0;
      for (; i + 8 <= len; i += 8) vamax = _mm256_max_ps(_mm256_and_ps(_mm256_loadu_ps(row + g + i), abs_mask), vamax);
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, vamax);
      float amax = 0.f;
      for (float v : lanes) amax = std::max(amax, v);
      for (; i < len; ++i) amax = std::max(amax, std::fabs(row[g + i]));
      amax = std::max(amax, amax_floor);
      const float s = Pow2Ceil(amax * fmt_max_inv), inv = 1.0f / s;  // both powers of two
      const __m256 vs = _mm256_set1_ps(s), vinv = _mm256_set1_ps(inv);
      for (i = 0; i + 8 <= len; i += 8) {
        const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(row + g + i), vinv);
        const __m256 a = _mm256_and_ps(v, abs_mask);
        __m256i e = _mm256_sub_epi32(_mm256_srli_epi32(_mm256_castps_si256(a), 23), _mm256_set1_epi32(127));
        e = _mm256_max_epi32(e, emin);
        const __m256 up = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_sub_epi32(_mm256_set1_epi32(127 + kMbits), e), 23));
        const __m256 down = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(e, _mm256_set1_epi32(127 - kMbits)), 23));
        __m256 q = _mm256_mul_ps(_mm256_round_ps(_mm256_mul_ps(a, up), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), down);
        q = _mm256_min_ps(q, vmax);
        q = _mm256_or_ps(q, _mm256_andnot_ps(abs_mask, v));                    // the sign of v
        q = _mm256_blendv_ps(q, v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));          // NaN stays NaN
        _mm256_storeu_ps(row + g + i, _mm256_mul_ps(q, vs));
      }
      for (; i < len; ++i) {
        const float v = row[g + i] / s;
        row[g + i] = (kMbits == 3 ? RoundToFp8E4m3(v) : RoundToFp4E2m1(v)) * s;
      }
    }
  }
}

// The same, 16 values at a time.
template <int kEmin, int kMbits>
DSV4_AVX512 void QdqRowsAvx512(float* x, int64_t m, int64_t n, int64_t ld, int group, float fmt_max, float amax_floor) {
  const float fmt_max_inv = 1.0f / fmt_max;
  const __m512 vmax = _mm512_set1_ps(fmt_max);
  const __m512i emin = _mm512_set1_epi32(kEmin);
  const __m512i sign = _mm512_set1_epi32(static_cast<int>(0x80000000u));
  for (int64_t t = 0; t < m; ++t) {
    float* row = x + t * ld;
    for (int64_t g = 0; g < n; g += group) {
      const int64_t len = std::min<int64_t>(group, n - g);
      __m512 vamax = _mm512_setzero_ps();
      int64_t i = 0;
      for (; i + 16 <= len; i += 16) vamax = _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(row + g + i)), vamax);
      float amax = _mm512_reduce_max_ps(vamax);
      for (; i < len; ++i) amax = std::max(amax, std::fabs(row[g + i]));
      amax = std::max(amax, amax_floor);
      const float s = Pow2Ceil(amax * fmt_max_inv), inv = 1.0f / s;  // both powers of two
      const __m512 vs = _mm512_set1_ps(s), vinv = _mm512_set1_ps(inv);
      for (i = 0; i + 16 <= len; i += 16) {
        const __m512 v = _mm512_mul_ps(_mm512_loadu_ps(row + g + i), vinv);
        const __m512 a = _mm512_abs_ps(v);
        __m512i e = _mm512_sub_epi32(_mm512_srli_epi32(_mm512_castps_si512(a), 23), _mm512_set1_epi32(127));
        e = _mm512_max_epi32(e, emin);
        const __m512 up = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_sub_epi32(_mm512_set1_epi32(127 + kMbits), e), 23));
        const __m512 down = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(e, _mm512_set1_epi32(127 - kMbits)), 23));
        __m512 q = _mm512_mul_ps(_mm512_roundscale_ps(_mm512_mul_ps(a, up), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC),
                                 down);
        q = _mm512_min_ps(q, vmax);
        q = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(q), _mm512_and_si512(_mm512_castps_si512(v), sign)));
        q = _mm512_mask_blend_ps(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), q, v);  // NaN stays NaN
        _mm512_storeu_ps(row + g + i, _mm512_mul_ps(q, vs));
      }
      for (; i < len; ++i) {
        const float v = row[g + i] / s;
        row[g + i] = (kMbits == 3 ? RoundToFp8E4m3(v) : RoundToFp4E2m1(v)) * s;
      }
    }
  }
}

}  // namespace

void QdqFp8(float* x, int64_t m, int64_t n, int64_t ld, int group) {
  EnsureFlushDenormals();
  if (ActiveIsa() >= Isa::kAvx512) return QdqRowsAvx512<-6, 3>(x, m, n, ld, group, 448.0f, 1e-4f);
  if (ActiveIsa() != Isa::kScalar) return QdqRowsAvx2<-6, 3>(x, m, n, ld, group, 448.0f, 1e-4f);
  QdqRows<RoundToFp8E4m3>(x, m, n, ld, group, 1.0f / 448.0f, 1e-4f);
}

void QdqFp4(float* x, int64_t m, int64_t n, int64_t ld, int group) {
  EnsureFlushDenormals();
  const float floor = 6.0f * std::ldexp(1.0f, -126);
  if (ActiveIsa() >= Isa::kAvx512) return QdqRowsAvx512<0, 1>(x, m, n, ld, group, 6.0f, floor);
  if (ActiveIsa() != Isa::kScalar) return QdqRowsAvx2<0, 1>(x, m, n, ld, group, 6.0f, floor);
  QdqRows<RoundToFp4E2m1>(x, m, n, ld, group, 1.0f / 6.0f, floor);
}

void QdqFp4E4m3(float* x, int64_t m, int64_t n, int64_t ld, int group) {
  const float amax_floor = 6.0f * std::ldexp(1.0f, -9);
  for (int64_t t = 0; t < m; ++t) {
    float* row = x + t * ld;
    for (int64_t g = 0; g < n; g += group) {
      const int64_t len = std::min<int64_t>(group, n - g);
      float amax = 0.f;
      for (int64_t i = 0; i < len; ++i) amax = std::max(amax, std::fabs(row[g + i]));
      const float s = RoundToFp8E4m3(std::max(amax, amax_floor) / 6.0f);
      for (int64_t i = 0; i < len; ++i) row[g + i] = RoundToFp4E2m1(row[g + i] / s) * s;
    }
  }
}

void RmsNorm(const float* x, const float* w, float eps, int64_t m, int64_t n, int64_t ldx, float* y, int64_t ldy) {
  EnsureFlushDenormals();
  for (int64_t t = 0; t < m; ++t) {
    const float* xr = x + t * ldx;
    float* yr = y + t * ldy;
    const float ms = Dot(xr, xr, n) / static_cast<float>(n);
    const float r = 1.0f / std::sqrt(ms + eps);
    for (int64_t i = 0; i < n; ++i) yr[i] = (w ? w[i] : 1.0f) * (xr[i] * r);
  }
}

void Rope(float* x, int64_t half, const float* cos, const float* sin, bool inverse) {
  EnsureFlushDenormals();
  for (int64_t i = 0; i < half; ++i) {
    const float c = cos[i], s = inverse ? -sin[i] : sin[i];
    const float a = x[2 * i], b = x[2 * i + 1];
    x[2 * i] = a * c - b * s;
    x[2 * i + 1] = a * s + b * c;
  }
}

void Hadamard(float* x, int64_t n, float scale) {
  EnsureFlushDenormals();
  for (int64_t h = 1; h < n; h *= 2)
    for (int64_t i = 0; i < n; i += 2 * h)
      for (int64_t j = i; j < i + h; ++j) {
        const float a = x[j], b = x[j + h];
        x[j] = a + b;
        x[j + h] = a - b;
      }
  for (int64_t i = 0; i < n; ++i) x[i] *= scale;
}

void HcSplitSinkhorn(const float* mixes, const float* scale3, const float* base, int hc, int iters, float eps,
                     float* pre, float* post, float* comb) {
  EnsureFlushDenormals();
  auto sigmoid = [](float v) { return 1.0f / (1.0f + std::exp(-v)); };
  for (int j = 0; j < hc; ++j) pre[j] = sigmoid(mixes[j] * scale3[0] + base[j]) + eps;
  for (int j = 0; j < hc; ++j) post[j] = 2.0f * sigmoid(mixes[hc + j] * scale3[1] + base[hc + j]);
  for (int i = 0; i < hc * hc; ++i) comb[i] = mixes[2 * hc + i] * scale3[2] + base[2 * hc + i];
  // Row softmax, + eps, then alternate column and row normalization (columns first and last).
  for (int i = 0; i < hc; ++i) {
    float* row = comb + i * hc;
    const float mx = *std::max_element(row, row + hc);
    float sum = 0.f;
    for (int j = 0; j < hc; ++j) sum += (row[j] = std::exp(row[j] - mx));
    for (int j = 0; j < hc; ++j) row[j] = row[j] / sum + eps;
  }
  auto normalize_cols = [&] {
    for (int j = 0; j < hc; ++j) {
      float s = 0.f;
      for (int i = 0; i < hc; ++i) s += comb[i * hc + j];
      for (int i = 0; i < hc; ++i) comb[i * hc + j] /= (s + eps);
    }
  };
  normalize_cols();
  for (int it = 0; it < iters - 1; ++it) {
    for (int i = 0; i < hc; ++i) {
      float s = 0.f;
      for (int j = 0; j < hc; ++j) s += comb[i * hc + j];
      for (int j = 0; j < hc; ++j) comb[i * hc + j] /= (s + eps);
    }
    normalize_cols();
  }
}

namespace {

// One (query, head): gather logits, softmax with sink, weighted sum of rows.
template <float (*DotFn)(const float*, const float*, int64_t)>
void AttendOne(const float* q, int64_t d, const KvSegments& kv, const int32_t* idx, int64_t k, float sink, float scale,
               float* out, float* logits) {
  float mx = -std::numeric_limits<float>::infinity();
  for (int64_t j = 0; j < k; ++j) {
    if (idx[j] < 0) continue;
    logits[j] = scale * DotFn(q, kv.Row(idx[j], d), d);
    mx = std::max(mx, logits[j]);
  }
  std::fill(out, out + d, 0.f);
  if (mx == -std::numeric_limits<float>::infinity()) return;  // nothing visible: output 0
  // The sink may exceed every logit; keep the max over both for stability.
  const float m = std::max(mx, sink);
  float denom = std::exp(sink - m);
  for (int64_t j = 0; j < k; ++j) {
    if (idx[j] < 0) continue;
    const float p = std::exp(logits[j] - m);
    denom += p;
    const float* v = kv.Row(idx[j], d);
    for (int64_t c = 0; c < d; ++c) out[c] += p * v[c];
  }
  const float inv = 1.0f / denom;
  for (int64_t c = 0; c < d; ++c) out[c] *= inv;
}

float DotPlain(const float* a, const float* b, int64_t n) {
  float s = 0.f;
  for (int64_t i = 0; i < n; ++i) s += a[i] * b[i];
  return s;
}

DSV4_AVX512 void AddToAvx512(float* __restrict y, const float* __restrict x, int64_t n) {
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    _mm512_storeu_ps(y + i, _mm512_add_ps(_mm512_loadu_ps(y + i), _mm512_loadu_ps(x + i)));
    _mm512_storeu_ps(y + i + 16, _mm512_add_ps(_mm512_loadu_ps(y + i + 16), _mm512_loadu_ps(x + i + 16)));
  }
  for (; i < n; ++i) y[i] += x[i];
}

DSV4_AVX2 void AddToAvx2(float* __restrict y, const float* __restrict x, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    _mm256_storeu_ps(y + i, _mm256_add_ps(_mm256_loadu_ps(y + i), _mm256_loadu_ps(x + i)));
    _mm256_storeu_ps(y + i + 8, _mm256_add_ps(_mm256_loadu_ps(y + i + 8), _mm256_loadu_ps(x + i + 8)));
  }
  for (; i < n; ++i) y[i] += x[i];
}

}  // namespace

void AddTo(float* y, const float* x, int64_t n) {
  EnsureFlushDenormals();
  if (ActiveIsa() >= Isa::kAvx512) return AddToAvx512(y, x, n);
  if (ActiveIsa() != Isa::kScalar) return AddToAvx2(y, x, n);
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

void SparseAttention(const float* q, int64_t m, int64_t H, int64_t d, const KvSegments& kv, const int32_t* idx,
                     int64_t k, const float* sink, float scale, float* out) {
  EnsureFlushDenormals();
  int64_t rows_read = 0;
  for (int64_t i = 0; i < m * k; ++i) rows_read += idx[i] >= 0;
  CountWork(0, rows_read * d * 4, 4 * H * d * rows_read);
  if (ActiveIsa() >= Isa::kAvx512 && d % 32 == 0) return SparseAttentionAvx512(q, m, H, d, kv, idx, k, sink, scale, out);
  if (ActiveIsa() != Isa::kScalar && d % 16 == 0) return SparseAttentionAvx2(q, m, H, d, kv, idx, k, sink, scale, out);
  ParallelFor(m * H, 1, [&](int64_t b, int64_t e) {
    Scratch<float> logits(k, NoInit{});
    for (int64_t th = b; th < e; ++th) {
      const int64_t t = th / H, h = th % H;
      AttendOne<Dot>(q + th * d, d, kv, idx + t * k, k, sink[h], scale, out + th * d, logits.data());
    }
  });
}

void IndexerScores(const float* q, const float* w, int64_t m, int64_t H, int64_t d, const float* keys, int64_t n,
                   const int64_t* nvis, float* score) {
  EnsureFlushDenormals();
  int64_t keys_read = 0;
  for (int64_t t = 0; t < m; ++t) keys_read += std::min(nvis[t], n);
  CountWork(0, keys_read * d * 4, 2 * H * d * keys_read + 2 * H * keys_read);
  if (ActiveIsa() >= Isa::kAvx512 && d % 16 == 0) return IndexerScoresAvx512(q, w, m, H, d, keys, n, nvis, score);
  if (ActiveIsa() != Isa::kScalar && d % 8 == 0) return IndexerScoresAvx2(q, w, m, H, d, keys, n, nvis, score);
  ParallelFor(m, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      for (int64_t j = 0; j < n; ++j) {
        if (j >= nvis[t]) {
          score[t * n + j] = -std::numeric_limits<float>::infinity();
          continue;
        }
        float s = 0.f;
        for (int64_t h = 0; h < H; ++h) s += w[t * H + h] * std::max(0.f, Dot(q + (t * H + h) * d, keys + j * d, d));
        score[t * n + j] = s;
      }
    }
  });
}

void SoftmaxPool(const float* const* values, const float* const* scores, int64_t n, int64_t width, float* out) {
  EnsureFlushDenormals();
  if (ActiveIsa() >= Isa::kAvx512) return SoftmaxPoolAvx512(values, scores, n, width, out);
  if (ActiveIsa() != Isa::kScalar) return SoftmaxPoolAvx2(values, scores, n, width, out);
  ref::SoftmaxPool(values, scores, n, width, out);
}

void TopK(const float* x, int64_t n, int64_t k, int32_t* idx) {
  EnsureFlushDenormals();
  Scratch<int32_t> order(n, NoInit{});
  std::iota(order.begin(), order.end(), 0);
  auto better = [&](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); };
  std::partial_sort(order.begin(), order.begin() + k, order.end(), better);
  std::copy(order.begin(), order.begin() + k, idx);
}

namespace ref {

void SparseAttention(const float* q, int64_t m, int64_t H, int64_t d, const KvSegments& kv, const int32_t* idx,
                     int64_t k, const float* sink, float scale, float* out) {
  std::vector<float> logits(k);
  for (int64_t t = 0; t < m; ++t)
    for (int64_t h = 0; h < H; ++h)
      AttendOne<DotPlain>(q + (t * H + h) * d, d, kv, idx + t * k, k, sink[h], scale, out + (t * H + h) * d,
                          logits.data());
}

void IndexerScores(const float* q, const float* w, int64_t m, int64_t H, int64_t d, const float* keys, int64_t n,
                   const int64_t* nvis, float* score) {
  for (int64_t t = 0; t < m; ++t)
    for (int64_t j = 0; j < n; ++j) {
      double s = 0;
      for (int64_t h = 0; h < H; ++h) s += w[t * H + h] * std::max(0.f, DotPlain(q + (t * H + h) * d, keys + j * d, d));
      score[t * n + j] = j < nvis[t] ? static_cast<float>(s) : -std::numeric_limits<float>::infinity();
    }
}

void SoftmaxPool(const float* const* values, const float* const* scores, int64_t n, int64_t width, float* out) {
  for (int64_t c = 0; c < width; ++c) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; ++i) mx = std::max(mx, scores[i][c]);
    float num = 0.f, den = 0.f;
    for (int64_t i = 0; i < n; ++i) {
      const float p = std::exp(scores[i][c] - mx);
      den += p, num += p * values[i][c];
    }
    out[c] = num / den;
  }
}

}  // namespace ref
}  // namespace dsv4::kernels

#pragma GCC diagnostic pop
