// Shared by the AVX-512 kernel files (linear_avx512.cc, attention.cc, ops.cc, amx.cc); not part of
// the kernels' API.
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "kernels/cpu/avx2.h"
#include "kernels/cpu/kernels.h"

// The avx512 level (F/BW/DQ/VL, with the avx2 level's instructions), and avx512_bf16 (+ VBMI, BF16).
#define DSV4_AVX512_TARGET "avx512f,avx512bw,avx512dq,avx512vl,avx2,fma,f16c"
#define DSV4_AVX512_BF16_TARGET DSV4_AVX512_TARGET ",avx512vbmi,avx512bf16"
#define DSV4_AVX512 __attribute__((target(DSV4_AVX512_TARGET)))
#define DSV4_AVX512_INLINE __attribute__((target(DSV4_AVX512_TARGET), always_inline)) inline

namespace dsv4::kernels {

// The sum of 16 lanes in the canonical tree: lane i + lane i + 8, then Hsum's tree over the 8.
DSV4_AVX512_INLINE float Hsum16(__m512 v) {
  return Hsum(_mm256_add_ps(_mm512_castps512_ps256(v), _mm512_extractf32x8_ps(v, 1)));
}

// The AVX-512 attention kernels (attention.cc), dispatched from ops.cc; contracts in kernels.h.
void SparseAttentionAvx512(const float* q, int64_t m, int64_t H, int64_t d, const KvSegments& kv, const int32_t* idx,
                           int64_t k, const float* sink, float scale, float* out);
void IndexerScoresAvx512(const float* q, const float* w, int64_t m, int64_t H, int64_t d, const float* keys,
                         int64_t n, const int64_t* nvis, float* score);
void SoftmaxPoolAvx512(const float* const* values, const float* const* scores, int64_t n, int64_t width, float* out);

}  // namespace dsv4::kernels
