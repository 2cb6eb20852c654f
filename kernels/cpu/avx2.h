// Shared by the AVX2 kernel files (linear.cc, attention.cc, ops.cc); not part of the kernels' API.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/kernels.h"

// The avx2 level: AVX2, FMA and F16C (every CPU with AVX2 has the other two).
#define DSV4_AVX2 __attribute__((target("avx2,fma,f16c")))
#define DSV4_AVX2_INLINE __attribute__((target("avx2,fma,f16c"), always_inline)) inline

namespace dsv4::kernels {

// The sum of the 8 lanes in the fixed tree every canonical sum ends with:
// ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)).
DSV4_AVX2_INLINE float Hsum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// The AVX2 attention kernels (attention.cc), dispatched from ops.cc; contracts in kernels.h.
void SparseAttentionAvx2(const float* q, int64_t m, int64_t H, int64_t d, const KvSegments& kv, const int32_t* idx,
                         int64_t k, const float* sink, float scale, float* out);
void IndexerScoresAvx2(const float* q, const float* w, int64_t m, int64_t H, int64_t d, const float* keys, int64_t n,
                       const int64_t* nvis, float* score);
void SoftmaxPoolAvx2(const float* const* values, const float* const* scores, int64_t n, int64_t width, float* out);

}  // namespace dsv4::kernels
