// The AVX-512 attention over gathered KV rows, lightning-indexer scores and compressor pooling
// (kernels.h has the contracts; ops.cc dispatches here on the avx512 levels). The structure is
// attention.cc's with 16-lane vectors: logits by 4-head x 3-row blocks of dot products, softmax with
// the sink per head, the weighted sum of rows for 6 heads x 32 channels at a time. Every (token,
// head) result is computed the same way whatever the batch and the task split.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "kernels/cpu/avx512.h"
#include "kernels/cpu/scratch.h"
#include "kernels/cpu/thread_pool.h"

// GCC 12 reports the _mm512_undefined_* placeholders inside its own intrinsics as uninitialized
// wherever a 512-bit intrinsic is inlined into a caller (here ExpNonPositive's).
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace dsv4::kernels {
namespace {

// e^x for x <= 0 (softmax arguments), about 1 ulp: x = n ln2 + r, |r| <= ln2 / 2, a degree-6
// polynomial for e^r, times 2^n. Arguments below -87 give 0 (never a subnormal).
DSV4_AVX512_INLINE __m512 ExpNonPositive(__m512 x) {
  const __m512 lo = _mm512_set1_ps(-87.0f);
  const __mmask16 under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
  x = _mm512_max_ps(lo, x);  // NaN stays NaN (MAXPS returns its second operand then)
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  const __m512i e = _mm512_slli_epi32(_mm512_add_epi32(_mm512_cvtps_epi32(n), _mm512_set1_epi32(127)), 23);
  return _mm512_maskz_mul_ps(static_cast<__mmask16>(~under), p, _mm512_castsi512_ps(e));
}

DSV4_AVX512 float ExpScalar(float x) { return _mm512_cvtss_f32(ExpNonPositive(_mm512_set1_ps(x))); }

// r[4 q + j] = Hsum16(v[q + 4 j]) for the 16 vectors v, bit for bit: the same halving tree (element
// i plus element i + 8, then i + 4, i + 2, i + 1), each level for every vector at once.
DSV4_AVX512_INLINE __m512 Hsum16x16(const __m512* v) {
  __m512 t[8], u[4], w[2];
  for (int p = 0; p < 8; ++p)  // t[p]: the 8 sums of v[2p] (lanes 0-7) and of v[2p + 1]
    t[p] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0x44),
                         _mm512_shuffle_f32x4(v[2 * p], v[2 * p + 1], 0xEE));
  for (int p = 0; p < 4; ++p)  // u[p]: the 4 sums of v[4p], ..., v[4p + 3], a quarter each
    u[p] = _mm512_add_ps(_mm512_shuffle_f32x4(t[2 * p], t[2 * p + 1], 0x88),
                         _mm512_shuffle_f32x4(t[2 * p], t[2 * p + 1], 0xDD));
  for (int p = 0; p < 2; ++p) {  // w[p] quarter q: the 2 sums of v[8p + q], then of v[8p + 4 + q]
    const __m512d a = _mm512_castps_pd(u[2 * p]), b = _mm512_castps_pd(u[2 * p + 1]);
    w[p] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  return _mm512_add_ps(_mm512_shuffle_ps(w[0], w[1], 0x88), _mm512_shuffle_ps(w[0], w[1], 0xDD));
}

// out[i * ldo + j] = dot(a_i, b_j) for i < RA rows of a (stride lda), j < RB rows (pointers b),
// length d (a multiple of 16): one accumulator per pair over d, then Hsum16 (a block of 16 reduces
// them together, Hsum16x16, the same bits).
template <int RA, int RB>
DSV4_AVX512 void DotBlock(const float* a, int64_t lda, const float* const* b, int64_t d, float* out, int64_t ldo) {
  __m512 acc[RA * RB];  // acc[i * RB + j]
#pragma GCC unroll 16
  for (int n = 0; n < RA * RB; ++n) acc[n] = _mm512_setzero_ps();
  for (int64_t c = 0; c < d; c += 16) {
    __m512 bv[RB];
#pragma GCC unroll 3
    for (int j = 0; j < RB; ++j) bv[j] = _mm512_loadu_ps(b[j] + c);
#pragma GCC unroll 8
    for (int i = 0; i < RA; ++i) {
      const __m512 av = _mm512_loadu_ps(a + i * lda + c);
#pragma GCC unroll 3
      for (int j = 0; j < RB; ++j) acc[i * RB + j] = _mm512_fmadd_ps(av, bv[j], acc[i * RB + j]);
    }
  }
  if constexpr (RA * RB == 16) {
    alignas(64) float r[16];  // r[4 q + k] sums acc[q + 4 k]
    _mm512_store_ps(r, Hsum16x16(acc));
#pragma GCC unroll 16
    for (int n = 0; n < 16; ++n) out[(n / RB) * ldo + n % RB] = r[4 * (n % 4) + n / 4];
  } else {
#pragma GCC unroll 16
    for (int n = 0; n < RA * RB; ++n) out[(n / RB) * ldo + n % RB] = Hsum16(acc[n]);
  }
}

// All dot products of `na` rows of a with `nb` rows b[]: out[i * ldo + j]. Every product is one
// accumulator over d, then Hsum16's tree, whichever block computes it.
DSV4_AVX512 void Dots(const float* a, int64_t lda, int64_t na, const float* const* b, int64_t nb, int64_t d,
                      float* out, int64_t ldo) {
  // Blocks of 8 rows of a, each pair of b rows taken by all of them in turn (from L1 after the first).
  const int64_t na8 = na / 8 * 8, nb2 = nb / 2 * 2;
  for (int64_t j = 0; j < nb2; j += 2)
    for (int64_t i = 0; i < na8; i += 8) DotBlock<8, 2>(a + i * lda, lda, b + j, d, out + i * ldo + j, ldo);
  if (nb2 < nb)
    for (int64_t i = 0; i < na8; i += 4) DotBlock<4, 1>(a + i * lda, lda, b + nb2, d, out + i * ldo + nb2, ldo);
  int64_t i = na8;
  for (; i + 4 <= na; i += 4) {
    int64_t j = 0;
    for (; j + 3 <= nb; j += 3) DotBlock<4, 3>(a + i * lda, lda, b + j, d, out + i * ldo + j, ldo);
    for (; j < nb; ++j) DotBlock<4, 1>(a + i * lda, lda, b + j, d, out + i * ldo + j, ldo);
  }
  for (; i < na; ++i) {
    int64_t j = 0;
    for (; j + 2 <= nb; j += 2) DotBlock<1, 2>(a + i * lda, lda, b + j, d, out + i * ldo + j, ldo);
    for (; j < nb; ++j) DotBlock<1, 1>(a + i * lda, lda, b + j, d, out + i * ldo + j, ldo);
  }
}

// out[h][c] = inv[h] * sum_j p[h * ldp + j] * rows[j][c] for RH heads, 32 channels from c0.
template <int RH>
DSV4_AVX512 void WeightedRows(const float* p, int64_t ldp, const float* const* rows, int64_t nv, int64_t c0,
                              const float* inv, float* out, int64_t ldo) {
  __m512 acc[RH][2];
#pragma GCC unroll 8
  for (int h = 0; h < RH; ++h) acc[h][0] = acc[h][1] = _mm512_setzero_ps();
  for (int64_t j = 0; j < nv; ++j) {
    const __m512 r0 = _mm512_loadu_ps(rows[j] + c0), r1 = _mm512_loadu_ps(rows[j] + c0 + 16);
#pragma GCC unroll 8
    for (int h = 0; h < RH; ++h) {
      const __m512 ph = _mm512_set1_ps(p[h * ldp + j]);
      acc[h][0] = _mm512_fmadd_ps(ph, r0, acc[h][0]);
      acc[h][1] = _mm512_fmadd_ps(ph, r1, acc[h][1]);
    }
  }
#pragma GCC unroll 8
  for (int h = 0; h < RH; ++h) {
    const __m512 s = _mm512_set1_ps(inv[h]);
    _mm512_storeu_ps(out + h * ldo + c0, _mm512_mul_ps(acc[h][0], s));
    _mm512_storeu_ps(out + h * ldo + c0 + 16, _mm512_mul_ps(acc[h][1], s));
  }
}

constexpr int64_t kHeadBlock = 16;

// Attention of token t's heads [h0, h0 + nh) (kernels.h: SparseAttention); d a multiple of 32.
DSV4_AVX512 void AttendHeads(const float* q, int64_t H, int64_t d, const KvSegments& kv, const int32_t* it, int64_t k,
                             const float* sink, float scale, int64_t t, int64_t h0, int64_t nh, const float** rows,
                             float* logits, float* out) {
  int64_t nv = 0;
  for (int64_t j = 0; j < k; ++j)
    if (it[j] >= 0) rows[nv++] = kv.Row(it[j], d);
  float* o = out + (t * H + h0) * d;
  if (nv == 0) {  // nothing visible: output 0
    std::fill(o, o + nh * d, 0.f);
    return;
  }
  // Logits, then the softmax with the sink per head (p overwrites the logits).
  Dots(q + (t * H + h0) * d, d, nh, rows, nv, d, logits, nv);
  float inv[kHeadBlock];
  for (int64_t h = 0; h < nh; ++h) {
    float* l = logits + h * nv;
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t j = 0; j < nv; ++j) mx = std::max(mx, l[j] *= scale);
    const float top = std::max(mx, sink[h0 + h]);  // the sink may exceed every logit
    const __m512 vtop = _mm512_set1_ps(top);
    int64_t j = 0;
    for (; j + 16 <= nv; j += 16) _mm512_storeu_ps(l + j, ExpNonPositive(_mm512_sub_ps(_mm512_loadu_ps(l + j), vtop)));
    for (; j < nv; ++j) l[j] = ExpScalar(l[j] - top);
    float denom = ExpScalar(sink[h0 + h] - top);
    for (j = 0; j < nv; ++j) denom += l[j];
    inv[h] = 1.0f / denom;
  }
  for (int64_t c = 0; c < d; c += 32) {
    int64_t h = 0;
    for (; h + 8 <= nh; h += 8) WeightedRows<8>(logits + h * nv, nv, rows, nv, c, inv + h, o + h * d, d);
    for (; h + 6 <= nh; h += 6) WeightedRows<6>(logits + h * nv, nv, rows, nv, c, inv + h, o + h * d, d);
    for (; h + 2 <= nh; h += 2) WeightedRows<2>(logits + h * nv, nv, rows, nv, c, inv + h, o + h * d, d);
    for (; h < nh; ++h) WeightedRows<1>(logits + h * nv, nv, rows, nv, c, inv + h, o + h * d, d);
  }
}

// Indexer scores of token t for keys [j0, j1) (kernels.h: IndexerScores); d a multiple of 16.
DSV4_AVX512 void ScoreKeys(const float* q, const float* w, int64_t H, int64_t d, const float* keys, int64_t n,
                           int64_t nvis, int64_t t, int64_t j0, int64_t j1, float* dots, int64_t ldd, float* score) {
  const int64_t jv = std::min(j1, std::max(j0, nvis));  // keys [j0, jv) are visible
  float* s = score + t * n;
  for (int64_t j = jv; j < j1; ++j) s[j] = -std::numeric_limits<float>::infinity();
  if (jv == j0) return;
  const float* krows[64] = {};
  for (int64_t j = j0; j < jv; ++j) krows[j - j0] = keys + j * d;
  Dots(q + t * H * d, d, H, krows, jv - j0, d, dots, ldd);
  const float* wt = w + t * H;
  for (int64_t j = j0; j < jv; ++j) {
    float acc = 0.f;
    for (int64_t h = 0; h < H; ++h) acc += wt[h] * std::max(0.f, dots[h * ldd + (j - j0)]);
    s[j] = acc;
  }
}

// Softmax pooling of 16 channels from c0 over n rows (kernels.h: SoftmaxPool).
DSV4_AVX512 void Pool16(const float* const* values, const float* const* scores, int64_t n, int64_t c0, float* out) {
  __m512 mx = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t i = 0; i < n; ++i) mx = _mm512_max_ps(_mm512_loadu_ps(scores[i] + c0), mx);
  __m512 num = _mm512_setzero_ps(), den = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; ++i) {
    const __m512 p = ExpNonPositive(_mm512_sub_ps(_mm512_loadu_ps(scores[i] + c0), mx));
    den = _mm512_add_ps(den, p);
    num = _mm512_fmadd_ps(p, _mm512_loadu_ps(values[i] + c0), num);
  }
  _mm512_storeu_ps(out + c0, _mm512_div_ps(num, den));
}

}  // namespace

void SoftmaxPoolAvx512(const float* const* values, const float* const* scores, int64_t n, int64_t width, float* out) {
  int64_t c = 0;
  for (; c + 16 <= width; c += 16) Pool16(values, scores, n, c, out);
  for (; c < width; ++c) {
    float mx = -std::numeric_limits<float>::infinity();
    for (int64_t i = 0; i < n; ++i) mx = std::max(mx, scores[i][c]);
    float num = 0.f, den = 0.f;
    for (int64_t i = 0; i < n; ++i) {
      const float p = ExpScalar(scores[i][c] - mx);
      den += p, num += p * values[i][c];
    }
    out[c] = num / den;
  }
}

void SparseAttentionAvx512(const float* q, int64_t m, int64_t H, int64_t d, const KvSegments& kv, const int32_t* idx,
                           int64_t k, const float* sink, float scale, float* out) {
  const int64_t hblocks = (H + kHeadBlock - 1) / kHeadBlock;
  ParallelForDynamic(m * hblocks, 1, [&](int64_t b, int64_t e) {
    Scratch<const float*> rows(k, NoInit{});
    Scratch<float> logits(kHeadBlock * std::max<int64_t>(k, 1), NoInit{});
    for (int64_t task = b; task < e; ++task) {
      const int64_t t = task / hblocks, h0 = (task % hblocks) * kHeadBlock;
      AttendHeads(q, H, d, kv, idx + t * k, k, sink, scale, t, h0, std::min(kHeadBlock, H - h0), rows.data(),
                  logits.data(), out);
    }
  });
}

void IndexerScoresAvx512(const float* q, const float* w, int64_t m, int64_t H, int64_t d, const float* keys,
                         int64_t n, const int64_t* nvis, float* score) {
  constexpr int64_t kKeys = 32;  // keys per task
  const int64_t kblocks = (n + kKeys - 1) / kKeys;
  ParallelForDynamic(m * kblocks, 4, [&](int64_t b, int64_t e) {
    Scratch<float> dots(H * kKeys, NoInit{});
    for (int64_t task = b; task < e; ++task) {
      const int64_t t = task / kblocks, j0 = (task % kblocks) * kKeys;
      ScoreKeys(q, w, H, d, keys, n, nvis[t], t, j0, std::min(n, j0 + kKeys), dots.data(), kKeys, score);
    }
  });
}

}  // namespace dsv4::kernels

#pragma GCC diagnostic pop
