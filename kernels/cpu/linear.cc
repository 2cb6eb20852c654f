// Matrix products with weights read in their checkpoint formats and decoded in registers.
//
// Decode (m <= 8 token rows): every weight row is streamed once, and 32 bytes at a time become float
// vectors by integer shifts and masks only (no tables, no gathers): an FP8 E4M3 byte placed at bits
// 20..26 of a float, its sign at bit 31, is the code's value times 2^-120; an FP4 E2M1 nibble placed
// at bits 22..24 (sign at 31) is its value times 2^-126; a BF16 value in the upper half of a float
// is that value. The token rows are permuted once per call into the order in which those lanes come
// out and pre-scaled by a power of two (FP8: times the block scale as well, per row block), so the
// products are normal floats; the sums are scaled back at the end. All sums are float32.
//
// Prefill (m > 8): a thread decodes a panel of 24 weight rows x 128 columns to true float values in
// an L1-resident buffer and multiplies it with 16-token blocks of the transposed input (packed once
// per call) in a 6 x 16 register-blocked FMA kernel, keeping partial sums across column blocks.
//
// The scalar path (DSV4_CPU_ISA=scalar, or a view the fast paths do not cover) dequantizes a row into
// a buffer and takes dot products. The AVX2 kernels also serve AVX-512 machines.
#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <cstring>
#include <vector>

#include "kernels/cpu/avx2.h"
#include "kernels/cpu/formats.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/scratch.h"
#include "kernels/cpu/thread_pool.h"

namespace dsv4::kernels {

void DequantRow(const WeightMatrix& w, int64_t r, float* out) {
  const int64_t row = w.row_begin + r;
  const int64_t n = w.cols();
  switch (w.type) {
    case WeightType::kF32: {
      const float* src = static_cast<const float*>(w.data) + row * w.ld + w.col_begin;
      std::memcpy(out, src, n * sizeof(float));
      return;
    }
    case WeightType::kBF16: {
      const uint16_t* src = static_cast<const uint16_t*>(w.data) + row * w.ld + w.col_begin;
      for (int64_t c = 0; c < n; ++c) out[c] = Bf16ToFloat(src[c]);
      return;
    }
    case WeightType::kFP8: {
      const uint8_t* src = static_cast<const uint8_t*>(w.data) + row * w.ld;
      const uint8_t* srow = w.scales + (row / w.block_rows) * w.scale_ld;
      for (int64_t c0 = w.col_begin; c0 < w.col_end;) {
        const int64_t blk = c0 / w.block_cols;
        const int64_t c1 = std::min<int64_t>(w.col_end, (blk + 1) * w.block_cols);
        const float s = E8m0ToFloat(srow[blk]);
        for (int64_t c = c0; c < c1; ++c) out[c - w.col_begin] = Fp8E4m3ToFloat(src[c]) * s;
        c0 = c1;
      }
      return;
    }
    case WeightType::kFP4: {
      const uint8_t* src = static_cast<const uint8_t*>(w.data) + row * w.ld;
      const uint8_t* srow = w.scales + row * w.scale_ld;
      for (int64_t c = w.col_begin; c < w.col_end; ++c) {
        const uint8_t byte = src[c >> 1];
        const uint8_t code = (c & 1) ? (byte >> 4) : (byte & 0xf);
        out[c - w.col_begin] = kFp4E2m1[code] * E8m0ToFloat(srow[c / w.block_cols]);
      }
      return;
    }
  }
}

namespace {

float DotScalar(const float* a, const float* b, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0.f;
  for (; i < n; ++i) s += a[i] * b[i];
  return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

DSV4_AVX2 float DotAvx2(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
         acc3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
    acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  float r = Hsum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

__attribute__((target("avx512f"))) float DotAvx512(const float* a, const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
  float r = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

using DotFn = float (*)(const float*, const float*, int64_t);

DotFn SelectDot() {
  switch (ActiveIsa()) {
    case Isa::kAvx512:
      return DotAvx512;
    case Isa::kAvx2:
      return DotAvx2;
    default:
      return DotScalar;
  }
}

// ---- geometry of the fast paths ----------------------------------------------------------------
//
// Every (weight row, token) result comes out of one canonical order, whichever path runs and however
// many token rows come together, so a token's output does not depend on its batch and prefill
// agrees with decode to the bit. The decoded vectors of a row, numbered g = 0, 1, ... along the
// row, go alternately to two 8-lane accumulators (g even / odd), each summing lane by lane in
// order; then the two are added lane-wise, the lanes in the fixed tree of Hsum, and the
// columns after the last full chunk one by one. The streaming path multiplies its operands by
// powers of two, which changes no rounding.

constexpr int kMaxGemvRows = 8;  // token rows taken by the streaming path (in passes of up to 4)
constexpr int kVLanes = 16;      // lanes of the canonical sums: 8 lanes x the 2 alternating accumulators
constexpr int64_t kKc = 2048;    // GEMM: columns per block (a multiple of 128 and of every chunk width)
constexpr int kPanel = 12;       // GEMM: weight rows decoded together (2 micro-kernel panels)
constexpr int kTaskRows = 48;    // GEMM: rows per task, whole 64-byte lines of float outputs
constexpr int kMr = 6;           // GEMM micro-kernel: 6 weight rows x 16 tokens, one lane at a time
constexpr int kNt = 16;

// Columns per 32-byte chunk of storage.
int64_t ChunkCols(WeightType t) {
  switch (t) {
    case WeightType::kFP8:
      return 32;
    case WeightType::kFP4:
      return 64;
    case WeightType::kBF16:
      return 16;
    default:
      return 8;
  }
}

// The column (within its chunk) of decoded position p = 8 * vector + lane: lane i of vector j is
// byte j of 32-bit word i (FP8), nibble j of word i (FP4), half j of word i (BF16).
int64_t LaneColumn(WeightType t, int64_t p) {
  switch (t) {
    case WeightType::kFP8:
      return (p % 8) * 4 + p / 8;
    case WeightType::kFP4:
      return (p % 8) * 8 + p / 8;
    case WeightType::kBF16:
      return (p % 8) * 2 + p / 8;
    default:
      return p;
  }
}

int64_t StorageBytes(const WeightMatrix& w) {
  const int64_t rows = w.rows(), cols = w.cols();
  switch (w.type) {
    case WeightType::kF32:
      return rows * cols * 4;
    case WeightType::kBF16:
      return rows * cols * 2;
    case WeightType::kFP8:
      return rows * cols + ((rows + w.block_rows - 1) / w.block_rows) * ((cols + w.block_cols - 1) / w.block_cols);
    case WeightType::kFP4:
      return rows * cols / 2 + rows * ((cols + w.block_cols - 1) / w.block_cols);
  }
  return 0;
}

// One weight element, dequantized (for tail columns).
inline float Element(const WeightMatrix& w, int64_t row, int64_t col) {
  switch (w.type) {
    case WeightType::kF32:
      return static_cast<const float*>(w.data)[row * w.ld + col];
    case WeightType::kBF16:
      return Bf16ToFloat(static_cast<const uint16_t*>(w.data)[row * w.ld + col]);
    case WeightType::kFP8:
      return Fp8E4m3ToFloat(static_cast<const uint8_t*>(w.data)[row * w.ld + col]) *
             E8m0ToFloat(w.scales[(row / w.block_rows) * w.scale_ld + col / w.block_cols]);
    case WeightType::kFP4: {
      const uint8_t byte = static_cast<const uint8_t*>(w.data)[row * w.ld + (col >> 1)];
      return kFp4E2m1[(col & 1) ? (byte >> 4) : (byte & 0xf)] * E8m0ToFloat(w.scales[row * w.scale_ld + col / 32]);
    }
  }
  return 0.f;
}

// v plus the columns of row `row` (absolute) from `from` on, one by one: the end of every canonical
// sum (the columns after the last full chunk).
inline float AddTail(float v, const WeightMatrix& w, int64_t row, const float* x, int64_t from) {
  for (int64_t c = from; c < w.cols(); ++c) v += x[c] * Element(w, row, w.col_begin + c);
  return v;
}

// Bytes of one stored element (FP4: 1, its `ld` counts bytes).
inline int64_t ElementBytes(WeightType t) { return t == WeightType::kF32 ? 4 : t == WeightType::kBF16 ? 2 : 1; }

inline int64_t RowStride(const WeightMatrix& w) { return w.ld * ElementBytes(w.type); }

inline const uint8_t* RowBytes(const WeightMatrix& w, int64_t row) {
  const int64_t col_bytes = w.type == WeightType::kFP4 ? w.col_begin / 2 : w.col_begin * ElementBytes(w.type);
  return static_cast<const uint8_t*>(w.data) + row * RowStride(w) + col_bytes;
}

// 2^e, from the bits when e is in the normal range.
inline float Pow2(int e) {
  if (e < -126 || e > 127) return std::ldexp(1.0f, e);
  return std::bit_cast<float>(static_cast<uint32_t>(e + 127) << 23);
}

// ---- AVX2 decoders: one 32-byte chunk -> float vectors ------------------------------------------

// FP8: vector j holds byte j of each 32-bit word, as value * 2^-120. A 16-bit arithmetic shift
// decodes the high byte of both halves of a word at once; the low half's result moves up by 16.
DSV4_AVX2_INLINE void DecodeFp8(const uint8_t* p, __m256* f) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i mask = _mm256_set1_epi32(static_cast<int>(0x87F00000u));
  const __m256i odd = _mm256_srai_epi16(v, 4);                             // bytes 1 and 3
  const __m256i even = _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 4);     // bytes 0 and 2
  f[0] = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(even, 16), mask));
  f[1] = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(odd, 16), mask));
  f[2] = _mm256_castsi256_ps(_mm256_and_si256(even, mask));
  f[3] = _mm256_castsi256_ps(_mm256_and_si256(odd, mask));
}

// FP4: vector k holds nibble k of each 32-bit word, as value * 2^-126; 16-bit shifts decode
// nibbles k + 4 and k together.
DSV4_AVX2_INLINE void DecodeFp4(const uint8_t* p, __m256* f) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i mask = _mm256_set1_epi32(static_cast<int>(0x81C00000u));
  const __m256i n3 = _mm256_srai_epi16(v, 6);                           // nibbles 7 and 3
  const __m256i n2 = _mm256_srai_epi16(_mm256_slli_epi16(v, 4), 6);     // 6 and 2
  const __m256i n1 = _mm256_srai_epi16(_mm256_slli_epi16(v, 8), 6);     // 5 and 1
  const __m256i n0 = _mm256_srai_epi16(_mm256_slli_epi16(v, 12), 6);    // 4 and 0
  f[0] = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(n0, 16), mask));
  f[1] = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(n1, 16), mask));
  f[2] = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(n2, 16), mask));
  f[3] = _mm256_castsi256_ps(_mm256_and_si256(_mm256_slli_epi32(n3, 16), mask));
  f[4] = _mm256_castsi256_ps(_mm256_and_si256(n0, mask));
  f[5] = _mm256_castsi256_ps(_mm256_and_si256(n1, mask));
  f[6] = _mm256_castsi256_ps(_mm256_and_si256(n2, mask));
  f[7] = _mm256_castsi256_ps(_mm256_and_si256(n3, mask));
}

// E8M0 code e -> 2^(e - 27): an FP4 scale times 2^100, so that with a decoded nibble (value *
// 2^-126) the products are normal floats for scales in [2^-100, 2^20] (code 0, 2^-127, underflows to
// about 0 in the products).
struct Fp4ScaleTable {
  float v[256];
  constexpr Fp4ScaleTable() : v() {
    for (int e = 0; e < 256; ++e) v[e] = std::bit_cast<float>(e + 100 <= 254 ? static_cast<uint32_t>(e + 100) << 23 : 0x7f800000u);
  }
};
inline constexpr Fp4ScaleTable kFp4Scale;

// The two scales of an FP4 chunk (lanes 0-3: first 32 columns, 4-7: next 32), from the table.
DSV4_AVX2_INLINE __m256 Fp4ChunkScales(const uint8_t* s) {
  return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm_broadcast_ss(&kFp4Scale.v[s[0]])),
                              _mm_broadcast_ss(&kFp4Scale.v[s[1]]), 1);
}

// BF16: vector 0 holds the even elements, vector 1 the odd ones.
DSV4_AVX2_INLINE void DecodeBf16(const uint8_t* p, __m256* f) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  f[0] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  f[1] = _mm256_castsi256_ps(_mm256_and_si256(v, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

DSV4_AVX2_INLINE void DecodeF32(const uint8_t* p, __m256* f) { f[0] = _mm256_loadu_ps(reinterpret_cast<const float*>(p)); }

template <WeightType T>
struct Dec;
template <>
struct Dec<WeightType::kFP8> {
  static constexpr int kVecs = 4;
  DSV4_AVX2_INLINE static void Run(const uint8_t* p, __m256* f) { DecodeFp8(p, f); }
};
template <>
struct Dec<WeightType::kBF16> {
  static constexpr int kVecs = 2;
  DSV4_AVX2_INLINE static void Run(const uint8_t* p, __m256* f) { DecodeBf16(p, f); }
};
template <>
struct Dec<WeightType::kF32> {
  static constexpr int kVecs = 1;
  DSV4_AVX2_INLINE static void Run(const uint8_t* p, __m256* f) { DecodeF32(p, f); }
};

// ---- AVX2 streaming kernels: R weight rows against M token rows ----------------------------------

// Software prefetch of the rows read next (at `next`, R rows `rstride` apart), one cache line per
// two chunks: R streams far apart defeat the hardware prefetcher's page-local training.
template <int R>
DSV4_AVX2_INLINE void PrefetchStep(const uint8_t* next, int64_t rstride, int64_t c) {
  if (next != nullptr && (c & 1) == 0)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(next + r * rstride + 32 * c), _MM_HINT_T0);
}

// out[r * M + t] = the canonical sum (before the tail) of row r (at w + r * wstride) and token row
// t (xp + t * ldxp, in lane order). Several rows at once give independent FMA chains; the rows at
// `next` (same stride; null: none) are prefetched meanwhile.
template <WeightType T, int M, int R>
DSV4_AVX2 void RowsDot(const uint8_t* w, int64_t wstride, int64_t nchunks, const float* xp, int64_t ldxp, float* out, const uint8_t* next) {
  constexpr int V = Dec<T>::kVecs;
  constexpr int U = V == 1 ? 2 : 1;  // chunks per step, so that a step holds an even number of vectors
  __m256 acc[R][M][2];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < M; ++t) acc[r][t][0] = acc[r][t][1] = _mm256_setzero_ps();
  int64_t c = 0;
  for (; c + U <= nchunks; c += U) {
    PrefetchStep<R>(next, wstride, c);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      __m256 f[V * U];
#pragma GCC unroll 2
      for (int u = 0; u < U; ++u) Dec<T>::Run(w + r * wstride + 32 * (c + u), f + u * V);
#pragma GCC unroll 4
      for (int j = 0; j < V * U; ++j)
#pragma GCC unroll 4
        for (int t = 0; t < M; ++t)
          acc[r][t][j % 2] =
              _mm256_fmadd_ps(f[j], _mm256_loadu_ps(xp + t * ldxp + c * 8 * V + 8 * j), acc[r][t][j % 2]);
    }
  }
  for (; c < nchunks; ++c) {  // V == 1 only: the last, even-numbered vector
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      __m256 f[V];
      Dec<T>::Run(w + r * wstride + 32 * c, f);
#pragma GCC unroll 4
      for (int t = 0; t < M; ++t)
        acc[r][t][0] = _mm256_fmadd_ps(f[0], _mm256_loadu_ps(xp + t * ldxp + c * 8 * V), acc[r][t][0]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < M; ++t) out[r * M + t] = Hsum(_mm256_add_ps(acc[r][t][0], acc[r][t][1]));
}

// FP4: the chunk's scales multiply (exactly) the token row for one token, off the decode's
// dependency chain, or the decoded weights for several: f * (s * x) and (f * s) * x are the same
// product, so both round alike.
template <int M, int R>
DSV4_AVX2 void RowsDotFp4(const uint8_t* w, int64_t wstride, const uint8_t* s, int64_t sstride, int64_t nchunks,
                          const float* xp, int64_t ldxp, float* out, const uint8_t* next) {
  __m256 acc[R][M][2];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < M; ++t) acc[r][t][0] = acc[r][t][1] = _mm256_setzero_ps();
  for (int64_t c = 0; c < nchunks; ++c) {
    PrefetchStep<R>(next, wstride, c);
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      __m256 f[8];
      DecodeFp4(w + r * wstride + 32 * c, f);
      const __m256 sc = Fp4ChunkScales(s + r * sstride + 2 * c);
#pragma GCC unroll 8
      for (int j = 0; j < 8; ++j) {
        if constexpr (M == 1) {
          acc[r][0][j % 2] =
              _mm256_fmadd_ps(f[j], _mm256_mul_ps(sc, _mm256_loadu_ps(xp + c * 64 + 8 * j)), acc[r][0][j % 2]);
        } else {
          const __m256 wj = _mm256_mul_ps(f[j], sc);
#pragma GCC unroll 4
          for (int t = 0; t < M; ++t)
            acc[r][t][j % 2] = _mm256_fmadd_ps(wj, _mm256_loadu_ps(xp + t * ldxp + c * 64 + 8 * j), acc[r][t][j % 2]);
        }
      }
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < M; ++t) out[r * M + t] = Hsum(_mm256_add_ps(acc[r][t][0], acc[r][t][1]));
}

// ---- AVX2 GEMM pieces ----------------------------------------------------------------------------

// Decodes the full chunks of row `row` (absolute), columns [c0, c0 + kc) of the view (c0 a multiple
// of kKc, kc of the chunk width), into wd[kc] in lane order, as true values.
DSV4_AVX2 void DecodePanelRow(const WeightMatrix& w, int64_t row, int64_t c0, int64_t kc, float* wd) {
  const uint8_t* base = RowBytes(w, row);
  switch (w.type) {
    case WeightType::kFP8: {
      const __m256 k2_120 = _mm256_set1_ps(std::ldexp(1.0f, 120));
      const uint8_t* srow = w.scales + (row / w.block_rows) * w.scale_ld;
      for (int64_t c = 0; c < kc; c += 32) {
        __m256 f[4];
        DecodeFp8(base + c0 + c, f);
        const __m256 s = _mm256_set1_ps(E8m0ToFloat(srow[(w.col_begin + c0 + c) / w.block_cols]));
        for (int j = 0; j < 4; ++j) _mm256_storeu_ps(wd + c + 8 * j, _mm256_mul_ps(_mm256_mul_ps(f[j], k2_120), s));
      }
      break;
    }
    case WeightType::kFP4: {
      const __m256 k2_26 = _mm256_set1_ps(std::ldexp(1.0f, 26));
      const uint8_t* srow = w.scales + row * w.scale_ld + w.col_begin / 32;
      for (int64_t c = 0; c < kc; c += 64) {
        __m256 f[8];
        DecodeFp4(base + (c0 + c) / 2, f);
        const __m256 s = Fp4ChunkScales(srow + (c0 + c) / 32);
        for (int j = 0; j < 8; ++j) _mm256_storeu_ps(wd + c + 8 * j, _mm256_mul_ps(_mm256_mul_ps(f[j], s), k2_26));
      }
      break;
    }
    case WeightType::kBF16:
      for (int64_t c = 0; c < kc; c += 16) {
        __m256 f[2];
        DecodeBf16(base + (c0 + c) * 2, f);
        _mm256_storeu_ps(wd + c, f[0]);
        _mm256_storeu_ps(wd + c + 8, f[1]);
      }
      break;
    case WeightType::kF32:
      std::memcpy(wd, base + c0 * 4, kc * sizeof(float));
      break;
  }
}

// Moves a row decoded in lane order (positions p = 8 g + l: lane l of vector g) to the lane-major
// layout of the micro-kernel: canonical lane v = 8 (g % 2) + l, step g / 2, at wl[v * vstride + step].
// Sixteen vectors at a time go through two 8 x 8 transposes (even and odd vectors).
DSV4_AVX2 void ToLaneMajor(const float* row, int64_t kc, float* wl, int64_t vstride) {
  const int64_t nvec = kc / 8;
  int64_t g = 0;
  for (; g + 16 <= nvec; g += 16) {
    for (int parity = 0; parity < 2; ++parity) {
      __m256 r[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(row + (g + 2 * i + parity) * 8);
      const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
      const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
      const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
      const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
      const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
      const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
      const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
      const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
      const __m256 o[8] = {_mm256_permute2f128_ps(u0, u4, 0x20), _mm256_permute2f128_ps(u1, u5, 0x20),
                           _mm256_permute2f128_ps(u2, u6, 0x20), _mm256_permute2f128_ps(u3, u7, 0x20),
                           _mm256_permute2f128_ps(u0, u4, 0x31), _mm256_permute2f128_ps(u1, u5, 0x31),
                           _mm256_permute2f128_ps(u2, u6, 0x31), _mm256_permute2f128_ps(u3, u7, 0x31)};
      for (int l = 0; l < 8; ++l) _mm256_storeu_ps(wl + (8 * parity + l) * vstride + g / 2, o[l]);
    }
  }
  for (; g < nvec; ++g)
    for (int l = 0; l < 8; ++l) wl[(8 * (g % 2) + l) * vstride + g / 2] = row[g * 8 + l];
}

// One of the 16 canonical lane sums for R rows x 16 tokens: c[r][t] (+)= sum over k < steps of
// wd[r * ldw + k] * xt[k][t] (wd: the lane's slab; NV = 1: first 8 tokens).
template <int R, int NV>
DSV4_AVX2 void Micro(const float* wd, int64_t ldw, const float* xt, int64_t steps, float* c, bool accumulate) {
  __m256 acc[R][NV];
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) acc[r][v] = accumulate ? _mm256_loadu_ps(c + r * kNt + 8 * v) : _mm256_setzero_ps();
#pragma GCC unroll 2
  for (int64_t k = 0; k < steps; ++k) {
    __m256 b[NV];
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) b[v] = _mm256_loadu_ps(xt + k * kNt + 8 * v);
#pragma GCC unroll 6
    for (int r = 0; r < R; ++r) {
      const __m256 a = _mm256_broadcast_ss(wd + r * ldw + k);
#pragma GCC unroll 2
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm256_fmadd_ps(a, b[v], acc[r][v]);
    }
  }
#pragma GCC unroll 6
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(c + r * kNt + 8 * v, acc[r][v]);
}

using MicroFn = void (*)(const float*, int64_t, const float*, int64_t, float*, bool);
template <int NV>
constexpr MicroFn kMicro[kMr + 1] = {nullptr,          Micro<1, NV>, Micro<2, NV>, Micro<3, NV>,
                                     Micro<4, NV>,     Micro<5, NV>, Micro<6, NV>};

// ---- planning ------------------------------------------------------------------------------------

// How one job runs, decided before the parallel pass.
struct Plan {
  const LinearJob* job = nullptr;
  enum Path { kScalar, kGemv, kGemm } path = kScalar;
  int64_t cc = 0;       // columns per chunk
  int64_t nchunks = 0;  // full chunks of the view's columns; the rest are tail columns
  // Streaming path: the token rows in lane order [m][nchunks * cc], pre-scaled for FP4 (by 2^kx)
  // but not yet for FP8 (block scales differ per row block); kx and the amax exponent per token.
  float* xp = nullptr;
  int kx[kMaxGemvRows] = {};
  int amax_exp[kMaxGemvRows] = {};
  bool zero_row[kMaxGemvRows] = {};
  // GEMM path: the input in lane order, transposed per canonical lane: [nkb][ntb][16][kKc / 16][16].
  const float* xt = nullptr;
  int64_t ntb = 0, nkb = 0;
  // Tasks: GEMM, row panels x token-block splits; otherwise rows per task.
  int64_t panels = 0, splits = 0, rows_per_task = 0;
};

struct Task {
  int32_t plan;
  int64_t r0, r1;    // rows of the view
  int64_t tb0, tb1;  // GEMM token blocks
};

// Views the fast paths take (any other runs the scalar path, for every m).
bool FastPathCovers(const WeightMatrix& w) {
  if (w.type == WeightType::kFP4) return w.col_begin % 32 == 0 && w.block_cols == 32;
  if (w.type == WeightType::kFP8)
    return w.block_rows > 0 && w.block_cols > 0 && w.col_begin % 32 == 0 && w.block_cols % 32 == 0;
  return true;
}

// Largest |x| of a row; false when the row holds a NaN or Inf (std::max alone would step over a
// NaN, and an all-NaN row would pass for a zero row).
bool RowAmax(const float* x, int64_t n, float* amax) {
  float a = 0.f;
  bool finite = true;
  for (int64_t i = 0; i < n; ++i) {
    const float v = std::fabs(x[i]);
    finite &= v <= std::numeric_limits<float>::max();
    a = std::max(a, v);
  }
  *amax = a;
  return finite;
}

// ---- the streaming path (m <= 8) -----------------------------------------------------------------

// Rows taken together for M <= 4 tokens: enough independent FMA chains within 16 registers.
constexpr int GemvRowsAtOnce(WeightType t, int M) {
  if (t == WeightType::kFP4) return M == 1 ? 2 : 1;
  return M == 1 ? 4 : M == 2 ? 2 : 1;
}

template <WeightType T, int M, int R>
DSV4_AVX2 void GemvRowRange(const WeightMatrix& w, int64_t row0, int64_t rows, int64_t nchunks, const float* xs,
                            int64_t lx, float* sums) {
  const int64_t stride = RowStride(w);
  // R rows at once, one from each of R regions of the range: R streams far apart keep more of
  // memory busy than R neighbouring rows. The next row of each region is prefetched meanwhile.
  const int64_t q = rows / R;
  auto fp4_scales = [&](int64_t r) { return w.scales + (row0 + r) * w.scale_ld + w.col_begin / 32; };
  float part[R * M];
  for (int64_t i = 0; i < q; ++i) {
    const uint8_t* next = i + 1 < q ? RowBytes(w, row0 + i + 1) : nullptr;
    if constexpr (T == WeightType::kFP4)
      RowsDotFp4<M, R>(RowBytes(w, row0 + i), q * stride, fp4_scales(i), q * w.scale_ld, nchunks, xs, lx, part, next);
    else
      RowsDot<T, M, R>(RowBytes(w, row0 + i), q * stride, nchunks, xs, lx, part, next);
    for (int r = 0; r < R; ++r)
      for (int t = 0; t < M; ++t) sums[(i + r * q) * M + t] = part[r * M + t];
  }
  for (int64_t r = q * R; r < rows; ++r) {
    if constexpr (T == WeightType::kFP4)
      RowsDotFp4<M, 1>(RowBytes(w, row0 + r), stride, fp4_scales(r), w.scale_ld, nchunks, xs, lx, sums + r * M, nullptr);
    else
      RowsDot<T, M, 1>(RowBytes(w, row0 + r), stride, nchunks, xs, lx, sums + r * M, nullptr);
  }
}

// Token rows t0 .. t0 + M - 1 of a streaming job against its rows [r0, r1).
template <int M>
DSV4_AVX2 void GemvRows(const Plan& p, int64_t r0, int64_t r1, int t0) {
  const LinearJob& job = *p.job;
  const WeightMatrix& w = *job.w;
  const int64_t main = p.nchunks * p.cc;
  const float* xin = job.x + t0 * job.ldx;
  float* yout = job.y + t0 * job.ldy;
  const int* kxs = p.kx + t0;
  const int* amax_exps = p.amax_exp + t0;
  const bool* zero_rows = p.zero_row + t0;
  float mult[M];
  const float* xs = p.xp + t0 * main;
  int64_t lx = main;
  // FP8: scale the lane-ordered rows by this row block's column-block scales (and 2^kx).
  Scratch<float> xscaled(w.type == WeightType::kFP8 ? M * main : 0, NoInit{});
  if (w.type == WeightType::kFP8) {
    const uint8_t* srow = w.scales + ((w.row_begin + r0) / w.block_rows) * w.scale_ld;
    const int64_t cb0 = w.col_begin / w.block_cols, cb1 = (w.col_end - 1) / w.block_cols;
    int max_es = 0;
    for (int64_t cb = cb0; cb <= cb1; ++cb) max_es = std::max<int>(max_es, srow[cb]);
    for (int t = 0; t < M; ++t) {
      // Products x * s * 2^kx * code * 2^-120 stay near 2^-10: kx = 100 - log2(amax) - log2(max s),
      // limited so the factors s * 2^kx stay finite.
      int kx = 100 - amax_exps[t] - (max_es - 127);
      kx = std::min(kx, 126 - (max_es - 127));
      mult[t] = zero_rows[t] ? 0.f : Pow2(120 - kx);
      float* dst = xscaled.data() + t * lx;
      const float* src = p.xp + (t0 + t) * lx;
      for (int64_t c = 0; c < main; c += 32) {
        const __m256 f = _mm256_set1_ps(Pow2(srow[(w.col_begin + c) / w.block_cols] - 127 + kx));
        for (int j = 0; j < 4; ++j) _mm256_storeu_ps(dst + c + 8 * j, _mm256_mul_ps(_mm256_loadu_ps(src + c + 8 * j), f));
      }
    }
    xs = xscaled.data();
  } else if (w.type == WeightType::kFP4) {
    for (int t = 0; t < M; ++t) mult[t] = zero_rows[t] ? 0.f : Pow2(26 - kxs[t]);
  } else {
    for (int t = 0; t < M; ++t) mult[t] = 1.f;
    if (w.type == WeightType::kF32) xs = xin, lx = job.ldx;
  }
  constexpr int kRowsPerPass = 64;
  float sums[kRowsPerPass * M];
  for (int64_t rb = r0; rb < r1; rb += kRowsPerPass) {
    const int64_t rows = std::min<int64_t>(kRowsPerPass, r1 - rb), row0 = w.row_begin + rb;
    switch (w.type) {
      case WeightType::kFP8:
        GemvRowRange<WeightType::kFP8, M, GemvRowsAtOnce(WeightType::kFP8, M)>(w, row0, rows, p.nchunks, xs, lx, sums);
        break;
      case WeightType::kFP4:
        GemvRowRange<WeightType::kFP4, M, GemvRowsAtOnce(WeightType::kFP4, M)>(w, row0, rows, p.nchunks, xs, lx, sums);
        break;
      case WeightType::kBF16:
        GemvRowRange<WeightType::kBF16, M, GemvRowsAtOnce(WeightType::kBF16, M)>(w, row0, rows, p.nchunks, xs, lx,
                                                                                 sums);
        break;
      case WeightType::kF32:
        GemvRowRange<WeightType::kF32, M, GemvRowsAtOnce(WeightType::kF32, M)>(w, row0, rows, p.nchunks, xs, lx, sums);
        break;
    }
    for (int64_t r = 0; r < rows; ++r)
      for (int t = 0; t < M; ++t) {
        yout[t * job.ldy + rb + r] = AddTail(sums[r * M + t] * mult[t], w, row0 + r, xin + t * job.ldx, main);
      }
  }
}

// Up to 4 token rows per pass over the weights (more would not fit the registers).
void RunGemv(const Plan& p, int64_t r0, int64_t r1) {
  for (int t0 = 0; t0 < p.job->m; t0 += 4) {
    switch (std::min<int64_t>(4, p.job->m - t0)) {
      case 1:
        GemvRows<1>(p, r0, r1, t0);
        break;
      case 2:
        GemvRows<2>(p, r0, r1, t0);
        break;
      case 3:
        GemvRows<3>(p, r0, r1, t0);
        break;
      default:
        GemvRows<4>(p, r0, r1, t0);
        break;
    }
  }
}

// Prepares the lane-ordered token rows of a streaming job (in the caller's scratch).
void PrepareGemv(Plan& p, float* xp) {
  const LinearJob& job = *p.job;
  const WeightMatrix& w = *job.w;
  const int64_t main = p.nchunks * p.cc;
  p.xp = xp;
  for (int64_t t = 0; t < job.m; ++t) {
    const float* x = job.x + t * job.ldx;
    float amax = 0.f;
    // A row with a NaN or Inf is computed as it is (the products carry the NaN or Inf into y),
    // never skipped as a zero row.
    const bool finite = RowAmax(x, w.cols(), &amax);
    p.zero_row[t] = finite && amax == 0.f;
    p.amax_exp[t] = finite && amax > 0.f ? std::ilogb(amax) : 0;
    // FP4: x * 2^kx is about 1, times a scale (2^(e - 27) from the table) at most 2^121 for scales
    // up to 2^20, and the products stay normal for scales down to 2^-100.
    p.kx[t] = std::clamp(w.type == WeightType::kFP4 ? -p.amax_exp[t] : 100 - p.amax_exp[t], -126, 126);
    if (w.type == WeightType::kF32) continue;  // read in place
    const float f = w.type == WeightType::kFP4 ? Pow2(p.kx[t]) : 1.0f;
    float* dst = xp + t * main;
    int64_t lane_col[64];
    for (int64_t l = 0; l < p.cc; ++l) lane_col[l] = LaneColumn(w.type, l);
    for (int64_t c = 0; c < main; c += p.cc)
      for (int64_t l = 0; l < p.cc; ++l) dst[c + l] = x[c + lane_col[l]] * f;
  }
}

// ---- the GEMM path (m > 8) -----------------------------------------------------------------------

// Packs column block kb of the job's input: xt[tb][lane][k][16] holds, for token t of block tb,
// the input column decoded into position 16 k + lane of the block (lane: canonical lane).
void PackGemmBlock(const Plan& p, int64_t kb, float* xt_kb) {
  const LinearJob& job = *p.job;
  const WeightMatrix& w = *job.w;
  const int64_t main = p.nchunks * p.cc, c0 = kb * kKc, kc = std::min(kKc, main - c0), steps = kKc / kVLanes;
  for (int64_t tb = 0; tb < p.ntb; ++tb) {
    const int64_t nt = std::min<int64_t>(kNt, job.m - tb * kNt);
    for (int64_t l = 0; l < kVLanes; ++l) {
      float* dst = xt_kb + (tb * kVLanes + l) * steps * kNt;
      for (int64_t k = 0; k < steps; ++k) {
        float* d = dst + k * kNt;
        const int64_t pos = kVLanes * k + l;
        if (pos >= kc) {
          std::fill(d, d + kNt, 0.f);
          continue;
        }
        const int64_t col = c0 + (pos / p.cc) * p.cc + LaneColumn(w.type, pos % p.cc);
        const float* src = job.x + (tb * kNt) * job.ldx + col;
        int64_t t = 0;
        for (; t < nt; ++t) d[t] = src[t * job.ldx];
        for (; t < kNt; ++t) d[t] = 0.f;
      }
    }
  }
}

// Column block kb of one panel of up to kPanel rows [r0, r1), for token blocks [tb0, tb1): decodes
// the panel (lane-major, into wd) and adds its products to the lane sums in ctile.
DSV4_AVX2 void AccumulatePanel(const Plan& p, int64_t r0, int64_t r1, int64_t kb, int64_t tb0, int64_t tb1, float* wd,
                               float* row_buf, float* ctile) {
  const LinearJob& job = *p.job;
  const WeightMatrix& w = *job.w;
  const int64_t main = p.nchunks * p.cc, nrows = r1 - r0;
  const int64_t steps = kKc / kVLanes;  // the lane-major panel: wd[(lane * kPanel + row) * steps + step]
  const int64_t c0 = kb * kKc, kc = std::min(kKc, main - c0);
  for (int64_t r = 0; r < nrows; ++r) {
    DecodePanelRow(w, w.row_begin + r0 + r, c0, kc, row_buf);
    ToLaneMajor(row_buf, kc, wd + r * steps, kPanel * steps);
  }
  const float* xt_kb = p.xt + kb * p.ntb * kVLanes * steps * kNt;
  for (int64_t tb = tb0; tb < tb1; ++tb) {
    const int64_t nt = std::min<int64_t>(kNt, job.m - tb * kNt);
    for (int64_t l = 0; l < kVLanes; ++l) {
      const int64_t ksteps = (kc - l + kVLanes - 1) / kVLanes;  // positions l, l + 16, ... below kc
      const float* xt = xt_kb + (tb * kVLanes + l) * steps * kNt;
      float* ct = ctile + ((tb - tb0) * kVLanes + l) * kPanel * kNt;
      for (int64_t sp = 0; sp < nrows; sp += kMr) {
        const int rr = static_cast<int>(std::min<int64_t>(kMr, nrows - sp));
        const MicroFn fn = nt > 8 ? kMicro<2>[rr] : kMicro<1>[rr];
        fn(wd + (l * kPanel + sp) * steps, steps, xt, ksteps, ct + sp * kNt, kb > 0);
      }
    }
  }
}

// The panel's lane sums combined in the canonical order (odd onto even lane, then Hsum's tree), 8 tokens at a time, then the tail columns:
// results into out[(token - 16 tb0) * ldo + (row - r0)].
DSV4_AVX2 void FinishPanel(const Plan& p, int64_t r0, int64_t r1, int64_t tb0, int64_t tb1, const float* ctile,
                           float* out, int64_t ldo) {
  const LinearJob& job = *p.job;
  const WeightMatrix& w = *job.w;
  const int64_t main = p.nchunks * p.cc, nrows = r1 - r0;
  for (int64_t tb = tb0; tb < tb1; ++tb) {
    const int64_t nt = std::min<int64_t>(kNt, job.m - tb * kNt);
    const float* ct = ctile + (tb - tb0) * kVLanes * kPanel * kNt;
    for (int64_t r = 0; r < nrows; ++r) {
      const int64_t row = w.row_begin + r0 + r;
      alignas(32) float sum[kNt];
      for (int v = 0; v < kNt / 8; ++v) {
        __m256 s8[8];
        for (int l = 0; l < 8; ++l)
          s8[l] = _mm256_add_ps(_mm256_loadu_ps(ct + (l * kPanel + r) * kNt + 8 * v),
                                _mm256_loadu_ps(ct + ((8 + l) * kPanel + r) * kNt + 8 * v));
        const __m256 t = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s8[0], s8[4]), _mm256_add_ps(s8[2], s8[6])),
                                       _mm256_add_ps(_mm256_add_ps(s8[1], s8[5]), _mm256_add_ps(s8[3], s8[7])));
        _mm256_store_ps(sum + 8 * v, t);
      }
      for (int64_t t = 0; t < nt; ++t)
        out[((tb - tb0) * kNt + t) * ldo + r] = AddTail(sum[t], w, row, job.x + (tb * kNt + t) * job.ldx, main);
    }
  }
}

// Rows [r0, r1) (at most kTaskRows, starting at a multiple of it) for token blocks [tb0, tb1).
// Column blocks outermost, so the transposed input of one block serves every panel of the task
// while it is in cache; each token's row segment is written whole at the end, so no two tasks
// write the same cache line of y.
DSV4_AVX2 void GemmTask(const Plan& p, int64_t r0, int64_t r1, int64_t tb0, int64_t tb1) {
  const LinearJob& job = *p.job;
  const int64_t ntok = std::min(job.m, tb1 * kNt) - tb0 * kNt, nrows = r1 - r0;
  const int64_t npanels = (nrows + kPanel - 1) / kPanel, tile = (tb1 - tb0) * kVLanes * kPanel * kNt;
  Scratch<float> wd(kPanel * kKc, NoInit{}), row_buf(kKc, NoInit{});
  Scratch<float> ctile(npanels * tile, NoInit{});
  if (p.nkb == 0) std::fill(ctile.begin(), ctile.end(), 0.f);  // no full chunk: only tail columns
  for (int64_t kb = 0; kb < p.nkb; ++kb)
    for (int64_t i = 0; i < npanels; ++i)
      AccumulatePanel(p, r0 + i * kPanel, std::min(r1, r0 + (i + 1) * kPanel), kb, tb0, tb1, wd.data(),
                      row_buf.data(), ctile.data() + i * tile);
  Scratch<float> out(ntok * kTaskRows, NoInit{});
  for (int64_t i = 0; i < npanels; ++i)
    FinishPanel(p, r0 + i * kPanel, std::min(r1, r0 + (i + 1) * kPanel), tb0, tb1, ctile.data() + i * tile,
                out.data() + i * kPanel, kTaskRows);
  for (int64_t t = 0; t < ntok; ++t)
    std::memcpy(job.y + (tb0 * kNt + t) * job.ldy + r0, out.data() + t * kTaskRows, nrows * sizeof(float));
}

// ---- the scalar path -----------------------------------------------------------------------------

void ScalarRows(const LinearJob& job, int64_t r0, int64_t r1) {
  const WeightMatrix& w = *job.w;
  const int64_t cols = w.cols();
  Scratch<float> buf(cols, NoInit{});
  static const DotFn dot = SelectDot();
  for (int64_t r = r0; r < r1; ++r) {
    const float* wr;
    if (w.type == WeightType::kF32) {
      wr = static_cast<const float*>(w.data) + (w.row_begin + r) * w.ld + w.col_begin;
    } else {
      DequantRow(w, r, buf.data());
      wr = buf.data();
    }
    for (int64_t t = 0; t < job.m; ++t) job.y[t * job.ldy + r] = dot(job.x + t * job.ldx, wr, cols);
  }
}

// Rows per streaming task: about 128 KB of weights, at least 4 tasks per thread, and (FP8) never
// across a block of rows that shares scales.
int64_t RowsPerTask(const WeightMatrix& w) {
  const int64_t row_bytes = std::max<int64_t>(1, StorageBytes(w) / std::max<int64_t>(1, w.rows()));
  int64_t rows = std::max<int64_t>(1, (128 << 10) / row_bytes);
  rows = std::min(rows, std::max<int64_t>(1, w.rows() / (4 * NumThreads())));
  return rows;
}

}  // namespace

float Dot(const float* a, const float* b, int64_t n) {
  static const DotFn fn = SelectDot();
  return fn(a, b, n);
}

void LinearGroup(const LinearJob* jobs, int64_t num_jobs) {
  const bool vector = ActiveIsa() != Isa::kScalar;
  Scratch<Plan> plans(num_jobs);
  // Buffers of the caller: streaming inputs in lane order, GEMM inputs transposed.
  int64_t xp_floats = 0, xt_floats = 0, num_tasks = 0;
  for (int64_t j = 0; j < num_jobs; ++j) {
    const LinearJob& job = jobs[j];
    const WeightMatrix& w = *job.w;
    Plan& p = plans[j];
    p.job = &job;
    if (job.m <= 0 || w.rows() <= 0) continue;
    CountWork(StorageBytes(w), 0, 2 * job.m * w.rows() * w.cols());
    bool finite = true;
    if (vector && FastPathCovers(w) && job.m <= kMaxGemvRows) {
      for (int64_t t = 0; t < job.m && finite; ++t) {
        float amax;
        finite = RowAmax(job.x + t * job.ldx, w.cols(), &amax);
      }
    }
    p.cc = ChunkCols(w.type);
    p.nchunks = w.cols() / p.cc;
    if (!vector || !FastPathCovers(w) || !finite) {
      p.path = Plan::kScalar;
    } else if (job.m <= kMaxGemvRows) {
      p.path = Plan::kGemv;
      if (w.type != WeightType::kF32) xp_floats += job.m * p.nchunks * p.cc;
    } else {
      p.path = Plan::kGemm;
      p.ntb = (job.m + kNt - 1) / kNt;
      p.nkb = (p.nchunks * p.cc + kKc - 1) / kKc;
      xt_floats += p.nkb * p.ntb * kKc * kNt;
    }
    if (p.path == Plan::kGemm) {
      p.panels = (w.rows() + kTaskRows - 1) / kTaskRows;
      p.splits = std::min(p.ntb, std::max<int64_t>(1, (4 * NumThreads() + p.panels - 1) / p.panels));
      num_tasks += p.panels * p.splits;
    } else {
      p.rows_per_task = RowsPerTask(w);
      num_tasks += (w.rows() + p.rows_per_task - 1) / p.rows_per_task +
                   (w.type == WeightType::kFP8 ? w.rows() / w.block_rows + 1 : 0);
    }
  }
  Scratch<float> xp(xp_floats, NoInit{});
  Scratch<float> xt(xt_floats, NoInit{});
  Scratch<Task> tasks(num_tasks);
  int64_t xp_used = 0, xt_used = 0, nt = 0;
  // Pack work for the GEMM inputs: (plan, column block) pairs.
  Scratch<int64_t> packs(xt_floats > 0 ? num_jobs * 2 : 0);
  int64_t num_packs = 0;
  for (int64_t j = 0; j < num_jobs; ++j) {
    Plan& p = plans[j];
    const LinearJob& job = jobs[j];
    const WeightMatrix& w = *job.w;
    if (job.m <= 0 || w.rows() <= 0) continue;
    if (p.path == Plan::kGemv && w.type != WeightType::kF32) {
      PrepareGemv(p, xp.data() + xp_used);
      xp_used += job.m * p.nchunks * p.cc;
    }
    if (p.path == Plan::kGemm) {
      // Jobs reading the same input the same way share one packed copy (w1 and w3 of an expert).
      for (int64_t i = 0; i < j; ++i) {
        const Plan& q = plans[i];
        const LinearJob& o = jobs[i];
        if (q.path == Plan::kGemm && o.x == job.x && o.m == job.m && o.ldx == job.ldx && o.w->type == w.type &&
            o.w->cols() == w.cols()) {
          p.xt = q.xt;
          break;
        }
      }
      if (p.xt == nullptr) {
        p.xt = xt.data() + xt_used;
        xt_used += p.nkb * p.ntb * kKc * kNt;
        packs[num_packs++] = j;
      }
    }
    // Tasks.
    if (p.path == Plan::kGemm) {
      for (int64_t s = 0; s < p.splits; ++s)
        for (int64_t pi = 0; pi < p.panels; ++pi)
          tasks[nt++] = {static_cast<int32_t>(j), pi * kTaskRows, std::min(w.rows(), (pi + 1) * kTaskRows),
                         p.ntb * s / p.splits, p.ntb * (s + 1) / p.splits};
    } else {
      for (int64_t r = 0; r < w.rows();) {
        int64_t e = std::min(w.rows(), r + p.rows_per_task);
        if (p.path == Plan::kGemv && w.type == WeightType::kFP8) {
          const int64_t block_end = ((w.row_begin + r) / w.block_rows + 1) * w.block_rows - w.row_begin;
          e = std::min(e, block_end);
        }
        tasks[nt++] = {static_cast<int32_t>(j), r, e, 0, 0};
        r = e;
      }
    }
  }
  if (num_packs > 0) {
    int64_t units = 0;
    for (int64_t i = 0; i < num_packs; ++i) units += plans[packs[i]].nkb;
    ParallelForDynamic(units, 1, [&](int64_t b, int64_t e) {
      for (int64_t u = b; u < e; ++u) {
        int64_t rest = u, i = 0;
        while (rest >= plans[packs[i]].nkb) rest -= plans[packs[i++]].nkb;
        const Plan& p = plans[packs[i]];
        PackGemmBlock(p, rest, const_cast<float*>(p.xt) + rest * p.ntb * kKc * kNt);
      }
    });
  }
  ParallelForDynamic(nt, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const Task& t = tasks[i];
      const Plan& p = plans[t.plan];
      switch (p.path) {
        case Plan::kScalar:
          ScalarRows(*p.job, t.r0, t.r1);
          break;
        case Plan::kGemv:
          RunGemv(p, t.r0, t.r1);
          break;
        case Plan::kGemm:
          GemmTask(p, t.r0, t.r1, t.tb0, t.tb1);
          break;
      }
    }
  });
}

void Linear(const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, float* y, int64_t ldy) {
  LinearJob job;
  job.x = x, job.m = m, job.ldx = ldx, job.w = &w, job.y = y, job.ldy = ldy;
  LinearGroup(&job, 1);
}

namespace ref {

void Linear(const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, float* y, int64_t ldy) {
  std::vector<float> wr(w.cols());
  for (int64_t r = 0; r < w.rows(); ++r) {
    DequantRow(w, r, wr.data());
    for (int64_t t = 0; t < m; ++t) {
      double s = 0;
      for (int64_t c = 0; c < w.cols(); ++c) s += static_cast<double>(x[t * ldx + c]) * wr[c];
      y[t * ldy + r] = static_cast<float>(s);
    }
  }
}

}  // namespace ref
}  // namespace dsv4::kernels
