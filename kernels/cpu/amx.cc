// The amx level's matrix path for weights packed for the tiles (PackForTiles): every product of
// FP8, FP4 and BF16 weights in the tiles' own order, prefill on AMX tiles and decode on FMAs that
// add in the same order, with the tile instruction's plain C++ model for machines without AMX
// (testing) and the check that a CPU's tiles follow the model.
//
// What TDPBF16PS computes, measured (a Xeon with AMX, 2026-12; 51200 of 51200 random elements at
// two exponent ranges, and crafted cases): for each element c[m][n], the instruction sums the
// products of the even BF16 elements of its 16 pair steps in one FP32 chain from zero, those of
// the odd elements in another, and adds the two chains' sum to c:
//   e = 0; o = 0;  for k in 0..15: e += a[m].bf16[2k] * b[k].bf16[2n]; o += a[m].bf16[2k+1] * b[k].bf16[2n+1]
//   c[m][n] = c[m][n] + (e + o)
// each + rounded to nearest even, products exact, subnormal inputs and results flushed. This is not
// the Intel SDM's pseudo-code, which adds every product to c in turn (that order matched 37% of
// the elements at exponents within +-10).
//
// The tile order. For weight row r and token t, with x scaled by 2^e (the power of two that brings
// the token row's largest |x| into [1, 2)) and split exactly into BF16 parts x = hi + mid + lo (each
// the truncation of what the earlier parts leave; one part where the job's inputs are all exact in
// BF16), the columns go in steps of 32 (one instruction; the last step padded with zeros), and each
// step adds the instruction's two chains of each part, hi, then mid, then lo:
//   c = 0;  for each step s, for each part p: c = c + (e(s, p) + o(s, p));  y = c * 2^-e
// on weights times their power-of-two scales. A part of zeros adds +0, which changes no sum (c is
// never -0: every chain starts from +0), so a token's result does not depend on the tokens
// computed with it. Products of an exact split are exact and its sums FP32 sums, so inputs that are
// not exact in BF16 (--qdq off, wo_a's attention output) keep FP32 arithmetic at three times the
// tile work.
//
// Layout (kernels.h: WeightMatrix::tiled): per group of 16 rows and pair step, the even column's 16
// elements, then the odd column's. Up to 4 tokens (TileModeOf) take FMAs with a group's rows in the
// lanes, one chain for the even columns and one for the odd, and at the end of each step add
// fma(even + odd, s, c) with s the step's power-of-two scale: the tiles' bits on scaled weights.
// More take the tiles: weights decoded into B tiles (16 pair steps x 16 rows, scaled) multiplied
// against the tokens' parts (A tiles, 16 tokens x 32 columns) into C tiles of 16 tokens x 16 rows,
// the output's own layout; up to 32 tokens a tile at a time in L1, more a panel of groups at a
// time in L2.
#include "kernels/cpu/amx.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/avx512.h"
#include "kernels/cpu/linear_internal.h"
#include "kernels/cpu/scratch.h"
#include "kernels/cpu/thread_pool.h"

// GCC 12 reports the _mm512_undefined_* placeholders inside its own intrinsics as uninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace dsv4::kernels {

int64_t TiledBytes(const WeightMatrix& w) {
  if (w.tiled || w.type == WeightType::kF32) return 0;
  if (w.type == WeightType::kFP8 && (w.row_begin % w.block_rows != 0 || w.col_begin % w.block_cols != 0)) return 0;
  if (w.type == WeightType::kFP4 && (w.col_begin % 32 != 0 || w.block_cols != 32)) return 0;
  const int64_t groups = (w.rows() + 15) / 16, ld = (w.cols() + 31) / 32 * 32;
  return groups * (ld / 2) * linear::TiledStepBytes(w.type);
}

WeightMatrix PackForTiles(const WeightMatrix& w, void* storage) {
  if (TiledBytes(w) == 0) return w;
  const int64_t rows = w.rows(), cols = w.cols(), groups = (rows + 15) / 16, ld = (cols + 31) / 32 * 32;
  const int64_t sb = linear::TiledStepBytes(w.type);
  // Every byte is written (padding with zeros), group by group in the order it is stored: each
  // step reads one element of 16 rows, whose lines stay in L1 across the steps.
  auto* out = static_cast<uint8_t*>(storage);
  ParallelFor(groups, 1, [&](int64_t g0, int64_t g1) {
    for (int64_t g = g0; g < g1; ++g) {
      const uint8_t* row[16];
      for (int i = 0; i < 16; ++i) {
        const int64_t r = std::min(rows - 1, g * 16 + i);  // past the end: read row rows - 1, write 0
        row[i] = linear::RowBytes(w, w.row_begin + r);
      }
      const int live = static_cast<int>(std::min<int64_t>(16, rows - g * 16));
      uint8_t* dst = out + g * (ld / 2) * sb;
      int64_t s = 0;
      if (live == 16 && w.type != WeightType::kBF16) {
        // Whole groups, 8 bytes of each row at a time (4 FP8 steps, 8 FP4 steps) where every
        // column is in range: byte k of row i goes to dst[16 k + i] in both formats.
        const int64_t per = w.type == WeightType::kFP8 ? 4 : 8;  // steps per 8 bytes of a row
        const int64_t whole = w.type == WeightType::kFP8 ? cols / 8 * 4 : cols / 16 * 8;
        for (; s < whole; s += per, dst += per * sb) {
          const int64_t at = w.type == WeightType::kFP8 ? 2 * s : s;
          for (int i = 0; i < 16; ++i) {
            uint64_t v;
            std::memcpy(&v, row[i] + at, 8);
            for (int k = 0; k < 8; ++k) dst[16 * k + i] = static_cast<uint8_t>(v >> (8 * k));
          }
        }
      }
      for (; s < ld / 2; ++s, dst += sb) {
        const int64_t c = 2 * s;
        const bool in0 = c < cols, in1 = c + 1 < cols;
        for (int i = 0; i < 16; ++i) {
          const bool live_row = i < live;
          if (w.type == WeightType::kBF16) {
            uint16_t v0 = 0, v1 = 0;
            if (live_row && in0) std::memcpy(&v0, row[i] + 2 * c, 2);
            if (live_row && in1) std::memcpy(&v1, row[i] + 2 * c + 2, 2);
            std::memcpy(dst + 2 * i, &v0, 2);
            std::memcpy(dst + 32 + 2 * i, &v1, 2);
          } else if (w.type == WeightType::kFP8) {
            dst[i] = live_row && in0 ? row[i][c] : 0;
            dst[16 + i] = live_row && in1 ? row[i][c + 1] : 0;
          } else {
            // The column pair (c, c + 1) is one byte of the row (cols and col_begin even).
            dst[i] = live_row && in0 ? static_cast<uint8_t>(row[i][s] & (in1 ? 0xff : 0x0f)) : 0;
          }
        }
      }
    }
  });
  WeightMatrix t = w;
  t.tiled = true, t.data = out, t.ld = ld;
  t.row_begin = 0, t.row_end = rows, t.col_begin = 0, t.col_end = cols;
  if (w.type == WeightType::kFP8)
    t.scales = w.scales + (w.row_begin / w.block_rows) * w.scale_ld + w.col_begin / w.block_cols;
  if (w.type == WeightType::kFP4) t.scales = w.scales + w.row_begin * w.scale_ld + w.col_begin / 32;
  return t;
}

int64_t StoredBytes(const WeightMatrix& w) { return linear::AmxTiles() && IsQuantized(w) ? TiledBytes(w) : 0; }

WeightMatrix StoreForThisCpu(const WeightMatrix& w, void* out) { return StoredBytes(w) > 0 ? PackForTiles(w, out) : w; }

namespace linear {
namespace {

#define DSV4_TILE_TARGET DSV4_AVX512_BF16_TARGET ",amx-tile,amx-bf16"
#define DSV4_TILE __attribute__((target(DSV4_TILE_TARGET)))
#define DSV4_TILE_INLINE __attribute__((target(DSV4_TILE_TARGET), always_inline)) inline

constexpr int64_t kGroup = 16;  // rows of a group, pair steps of a tile instruction, tokens of a block

// ---- the tiles: the hardware, and the model ------------------------------------------------------

// GCC's tile intrinsics spell their tile numbers into the instruction's text, so each one a
// template takes is written out.
#define DSV4_TILE_PICK(T, OP, ...) \
  do {                             \
    if constexpr ((T) == 0)        \
      OP(0, ##__VA_ARGS__);        \
    else if constexpr ((T) == 1)   \
      OP(1, ##__VA_ARGS__);        \
    else if constexpr ((T) == 2)   \
      OP(2, ##__VA_ARGS__);        \
    else if constexpr ((T) == 3)   \
      OP(3, ##__VA_ARGS__);        \
    else if constexpr ((T) == 4)   \
      OP(4, ##__VA_ARGS__);        \
    else if constexpr ((T) == 5)   \
      OP(5, ##__VA_ARGS__);        \
    else if constexpr ((T) == 6)   \
      OP(6, ##__VA_ARGS__);        \
    else                           \
      OP(7, ##__VA_ARGS__);        \
  } while (0)

// Tiles 0-3 C (16 tokens x 16 floats), 4-5 A (16 tokens x 32 BF16), 6-7 B (16 pair steps x 16 rows
// of BF16 pairs): eight full tiles.
struct HwTiles {
  DSV4_TILE_INLINE void Config() { LoadTileConfig(FullTiles(8)); }
  DSV4_TILE_INLINE void Release() { _tile_release(); }
  template <int T>
  DSV4_TILE_INLINE void Zero() {
    DSV4_TILE_PICK(T, _tile_zero);
  }
  template <int T>
  DSV4_TILE_INLINE void Load(const void* p, int64_t stride) {
    asm volatile("" ::: "memory");  // GCC's tile loads do not name the memory they read
    DSV4_TILE_PICK(T, _tile_loadd, p, stride);
  }
  template <int T>
  DSV4_TILE_INLINE void Store(void* p, int64_t stride) {
    DSV4_TILE_PICK(T, _tile_stored, p, stride);
    asm volatile("" ::: "memory");
  }
  // C tiles 0-3 take A 4 or 5 and B 6 or 7: C = 2 (A - 4) + (B - 6).
  template <int C, int A, int B>
  DSV4_TILE_INLINE void Dot() {
    static_assert(C == 2 * (A - 4) + (B - 6));
    if constexpr (C == 0)
      _tile_dpbf16ps(0, 4, 6);
    else if constexpr (C == 1)
      _tile_dpbf16ps(1, 4, 7);
    else if constexpr (C == 2)
      _tile_dpbf16ps(2, 5, 6);
    else
      _tile_dpbf16ps(3, 5, 7);
  }
};
#undef DSV4_TILE_PICK

float Bf16Half(uint32_t pair, int half) { return Bf16ToFloat(static_cast<uint16_t>(half ? pair >> 16 : pair)); }

// The model above on eight tiles in memory (a machine without AMX runs the path with these).
struct EmuTiles {
  alignas(64) uint32_t t[8][16][16] = {};
  void Config() {}
  void Release() {}
  template <int T>
  void Zero() {
    std::memset(t[T], 0, sizeof(t[T]));
  }
  template <int T>
  void Load(const void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r) std::memcpy(t[T][r], static_cast<const char*>(p) + r * stride, 64);
  }
  template <int T>
  void Store(void* p, int64_t stride) {
    for (int r = 0; r < 16; ++r) std::memcpy(static_cast<char*>(p) + r * stride, t[T][r], 64);
  }
  template <int C, int A, int B>
  void Dot() {
    for (int m = 0; m < 16; ++m)
      for (int n = 0; n < 16; ++n) {
        float even = 0.f, odd = 0.f;
        for (int k = 0; k < 16; ++k) {
          even = std::fma(Bf16Half(t[A][m][k], 0), Bf16Half(t[B][k][n], 0), even);
          odd = std::fma(Bf16Half(t[A][m][k], 1), Bf16Half(t[B][k][n], 1), odd);
        }
        const float c = std::bit_cast<float>(t[C][m][n]) + (even + odd);
        t[C][m][n] = std::bit_cast<uint32_t>(c);
      }
  }
};

// ---- weights ---------------------------------------------------------------------------------

// One pair step of a group: the even column's 16 values (lanes = rows) and the odd column's, as
// floats. FP8: the value x 2^-8 (each byte, sign-extended and shifted, is the FP16 of that), FP4 and
// BF16: the value. Scales are not applied.
template <WeightType T>
DSV4_TILE_INLINE void StepFloats(const uint8_t* p, __m512* e, __m512* o) {
  if constexpr (T == WeightType::kFP8) {
    const __m512i w = _mm512_cvtepi8_epi16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
    const __m512i h = _mm512_and_si512(_mm512_slli_epi16(w, 7), _mm512_set1_epi16(static_cast<short>(0xBF80)));
    *e = _mm512_cvtph_ps(_mm512_castsi512_si256(h));
    *o = _mm512_cvtph_ps(_mm512_extracti64x4_epi64(h, 1));
  } else if constexpr (T == WeightType::kBF16) {
    *e = _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
    *o = _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32))), 16));
  } else {
    const __m512i b = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
    const __m512 table =
        _mm512_setr_ps(0.f, .5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f, -0.f, -.5f, -1.f, -1.5f, -2.f, -3.f, -4.f, -6.f);
    *e = _mm512_permutexvar_ps(b, table);  // the low 4 bits index
    *o = _mm512_permutexvar_ps(_mm512_srli_epi32(b, 4), table);
  }
}

// The factor of one tile step (32 columns from view column c) of the group at view row r: FP8 its
// block's scale times 2^8 (StepFloats' 2^-8), FP4 each row's scale, BF16 1. Zero for scale code 0
// (2^-127 reads as 0, as in Element), NaN for code 255.
template <WeightType T>
DSV4_TILE_INLINE __m512 StepScale(const WeightMatrix& w, int64_t r, int64_t c) {
  const int64_t row = w.row_begin + r, col = w.col_begin + c;
  if constexpr (T == WeightType::kFP8) {
    const int code = w.scales[(row / w.block_rows) * w.scale_ld + col / w.block_cols];
    return _mm512_set1_ps(code == 0 ? 0.f : code == 255 ? NAN : Pow2(code - 127 + 8));
  } else if constexpr (T == WeightType::kFP4) {
    const __m512i idx = _mm512_mullo_epi32(_mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
                                           _mm512_set1_epi32(static_cast<int>(w.scale_ld)));
    const __m512i code = _mm512_and_si512(_mm512_i32gather_epi32(idx, w.scales + row * w.scale_ld + col / 32, 1),
                                          _mm512_set1_epi32(0xff));
    const __m512 f = _mm512_castsi512_ps(_mm512_slli_epi32(code, 23));
    return _mm512_mask_blend_ps(_mm512_cmpeq_epi32_mask(code, _mm512_set1_epi32(255)), f, _mm512_set1_ps(NAN));
  } else {
    return _mm512_set1_ps(1.f);
  }
}

// The lanes of a group at view row rb that hold rows of the view (all 16 but in a last group).
DSV4_TILE_INLINE __mmask16 LiveRows(const WeightMatrix& w, int64_t rb) {
  return _cvtu32_mask16(w.rows() - rb >= 16 ? 0xFFFFu : (1u << (w.rows() - rb)) - 1);
}

// The group at view row r (a multiple of 16), pair step s of the view.
inline const uint8_t* GroupStep(const WeightMatrix& w, int64_t r, int64_t s) {
  return static_cast<const uint8_t*>(w.data) +
         (((w.row_begin + r) / kGroup) * (w.ld / 2) + w.col_begin / 2 + s) * TiledStepBytes(w.type);
}

// ---- the input -------------------------------------------------------------------------------------

// Part `part` (0 hi, 1 mid, 2 lo) of 16 scaled values: the exact split, NaN and infinities whole
// in the first part.
DSV4_TILE_INLINE __m512 Part(__m512 xs, int part) {
  const __m512 keep = _mm512_castsi512_ps(_mm512_set1_epi32(static_cast<int>(0xFFFF0000u)));
  const __mmask16 special = _mm512_fpclass_ps_mask(xs, 0x99);  // QNaN, +-Inf, SNaN
  const __m512 hi = _mm512_mask_blend_ps(special, _mm512_and_ps(xs, keep), xs);
  if (part == 0) return hi;
  const __m512 rest = _mm512_maskz_sub_ps(static_cast<__mmask16>(~special), xs, hi);
  const __m512 mid = _mm512_and_ps(rest, keep);
  return part == 1 ? mid : _mm512_sub_ps(rest, mid);
}

// ---- decode: FMAs in the tiles' order ----------------------------------------------------------

// NG groups from view row r x TP tokens from t0 (PARTS parts each): y = the tile order's sums.
template <WeightType T, int NG, int TP, int PARTS>
DSV4_TILE void GemvGroups(const Plan& p, int64_t r, int64_t t0) {
  const LinearJob& job = *p.job;
  const WeightMatrix& w = *job.w;
  constexpr int64_t kSb = TiledStepBytes(T);
  const int64_t ksteps = p.k32 / 2, m = job.m;
  const float* xs = static_cast<const float*>(p.xt);  // [part][m][k32]
  const uint8_t* wg[NG];
  for (int g = 0; g < NG; ++g) wg[g] = GroupStep(w, r + kGroup * g, 0);
  __m512 c[NG][TP];
  for (int g = 0; g < NG; ++g)
    for (int t = 0; t < TP; ++t) c[g][t] = _mm512_setzero_ps();
  for (int64_t s0 = 0; s0 < ksteps; s0 += kGroup) {
    __m512 e[NG][TP][PARTS], o[NG][TP][PARTS];
    for (int g = 0; g < NG; ++g)
      for (int t = 0; t < TP; ++t)
        for (int q = 0; q < PARTS; ++q) e[g][t][q] = o[g][t][q] = _mm512_setzero_ps();
    for (int64_t s = s0; s < s0 + kGroup; ++s) {
      if ((s * kSb) % 64 == 0)
        for (int g = 0; g < NG; ++g) _mm_prefetch(reinterpret_cast<const char*>(wg[g] + s * kSb + 2048), _MM_HINT_T0);
      __m512 we[NG], wo[NG];
      for (int g = 0; g < NG; ++g) StepFloats<T>(wg[g] + s * kSb, &we[g], &wo[g]);
      for (int t = 0; t < TP; ++t)
        for (int q = 0; q < PARTS; ++q) {
          const float* xr = xs + (q * m + t0 + t) * p.k32 + 2 * s;
          const __m512 xe = _mm512_set1_ps(xr[0]), xo = _mm512_set1_ps(xr[1]);
          for (int g = 0; g < NG; ++g) {
            e[g][t][q] = _mm512_fmadd_ps(we[g], xe, e[g][t][q]);
            o[g][t][q] = _mm512_fmadd_ps(wo[g], xo, o[g][t][q]);
          }
        }
    }
    for (int g = 0; g < NG; ++g) {
      const __m512 sc = StepScale<T>(w, r + kGroup * g, 2 * s0);
      for (int t = 0; t < TP; ++t)
        for (int q = 0; q < PARTS; ++q) c[g][t] = _mm512_fmadd_ps(_mm512_add_ps(e[g][t][q], o[g][t][q]), sc, c[g][t]);
    }
  }
  for (int g = 0; g < NG; ++g) {
    const int64_t rb = r + kGroup * g;
    if (rb >= w.rows()) break;
    for (int t = 0; t < TP; ++t)
      _mm512_mask_storeu_ps(job.y + (t0 + t) * job.ldy + rb, LiveRows(w, rb),
                            _mm512_mul_ps(c[g][t], _mm512_set1_ps(Pow2(-p.xexp[t0 + t]))));
  }
}

// The tokens in passes of up to TP (the registers of NG groups' chains allow it).
template <WeightType T, int NG, int TP, int PARTS>
DSV4_TILE void GemvTokens(const Plan& p, int64_t r) {
  const int64_t m = p.job->m;
  int64_t t = 0;
  for (; t + TP <= m; t += TP) GemvGroups<T, NG, TP, PARTS>(p, r, t);
  if constexpr (TP > 1) {
    if (t < m) {
      if (m - t >= TP / 2) {
        GemvGroups<T, NG, TP / 2, PARTS>(p, r, t);
        t += TP / 2;
      }
      for (; t < m; ++t) GemvGroups<T, NG, 1, PARTS>(p, r, t);
    }
  }
}

// Rows [r0, r1) for every token. One token: four groups at a time (three for three parts; four
// streams from DRAM, each broadcast of x serving 64 rows); more: two groups of up to 4 tokens (one
// group of 2 for three parts), or where fewer rows are left, one group of up to 8.
template <WeightType T, int PARTS>
DSV4_TILE void GemvRows(const Plan& p, int64_t r0, int64_t r1) {
  const int64_t m = p.job->m;
  const int max_groups = m == 1 ? (PARTS == 1 ? 4 : 3) : m <= 4 && PARTS == 1 ? 2 : 1;
  for (int64_t r = r0; r < r1;) {
    const int64_t groups = std::min<int64_t>(max_groups, (r1 - r + kGroup - 1) / kGroup);
    if constexpr (PARTS == 1) {
      if (groups == 4)
        GemvTokens<T, 4, 1, 1>(p, r);
      else if (groups == 3)
        GemvTokens<T, 3, 1, 1>(p, r);
      else if (groups == 2)
        GemvTokens<T, 2, 4, 1>(p, r);
      else
        GemvTokens<T, 1, 8, 1>(p, r);
    } else {
      if (groups == 3)
        GemvTokens<T, 3, 1, 3>(p, r);
      else if (groups == 2)
        GemvTokens<T, 2, 1, 3>(p, r);
      else
        GemvTokens<T, 1, 2, 3>(p, r);
    }
    r += groups * kGroup;
  }
}

template <WeightType T>
DSV4_TILE void GemvTask(const Plan& p, int64_t r0, int64_t r1) {
  p.parts == 1 ? GemvRows<T, 1>(p, r0, r1) : GemvRows<T, 3>(p, r0, r1);
}

// ---- prefill: the tiles ----------------------------------------------------------------------------

// The group at view row r, pair steps [s0, s0 + 16), decoded into one B tile: each step's 16 rows
// as (even, odd) BF16 pairs of scaled weights.
template <WeightType T>
DSV4_TILE_INLINE void DecodeTile(const WeightMatrix& w, int64_t r, int64_t s0, uint32_t* out) {
  constexpr int64_t kSb = TiledStepBytes(T);
  // (e0..e15, o0..o15) -> (e0, o0, e1, o1, ...)
  const __m512i interleave = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8, 23, 7, 22,
                                              6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  const uint8_t* src = GroupStep(w, r, s0);
  const __m512 sc = StepScale<T>(w, r, 2 * s0);
  for (int64_t s = 0; s < kGroup; ++s) {
    __m512 e, o;
    StepFloats<T>(src + s * kSb, &e, &o);
    const __m512i words = (__m512i)_mm512_cvtne2ps_pbh(_mm512_mul_ps(o, sc), _mm512_mul_ps(e, sc));
    _mm512_store_si512(out + s * 16, _mm512_permutexvar_epi16(interleave, words));
  }
}

// Groups of view rows [r0, r1) decoded into B tiles: b + (group * ksteps + step) * 16 words; groups
// past r1 up to an even count zero.
template <WeightType T>
DSV4_TILE void DecodeGroups(const Plan& p, int64_t r0, int64_t r1, int64_t ngroups, uint32_t* b) {
  const int64_t ksteps = p.k32 / 2;
  for (int64_t g = 0; g < ngroups; ++g) {
    uint32_t* out = b + g * ksteps * 16;
    const int64_t r = r0 + kGroup * g;
    if (r >= r1) {
      std::fill(out, out + ksteps * 16, 0u);
      continue;
    }
    for (int64_t s0 = 0; s0 < ksteps; s0 += kGroup) DecodeTile<T>(*p.job->w, r, s0, out + s0 * 16);
  }
}

// C tile c (16 tokens from t0 x 16 rows from view row rb, in memory) into y, times each token's
// 2^-xexp.
DSV4_TILE_INLINE void StoreRows(const Plan& p, const float* c, int64_t t0, int64_t rb) {
  const LinearJob& job = *p.job;
  if (rb >= job.w->rows()) return;
  const __mmask16 live = LiveRows(*job.w, rb);
  for (int64_t t = t0; t < std::min(job.m, t0 + kGroup); ++t)
    _mm512_mask_storeu_ps(job.y + t * job.ldy + rb, live,
                          _mm512_mul_ps(_mm512_load_ps(c + (t - t0) * 16), _mm512_set1_ps(Pow2(-p.xexp[t]))));
}

// Token blocks [tb0, tb1) (pairs) against the task's groups (pairs), in C tiles of 16 tokens x 16 rows.
template <class Tiles>
DSV4_TILE void MultiplyGroups(Tiles& tiles, const Plan& p, const uint32_t* b, int64_t r0, int64_t ngroups, int64_t tb0,
                              int64_t tb1) {
  const int64_t ksteps = p.k32 / 2, tpad = p.ntb * kGroup;
  const uint16_t* xa = static_cast<const uint16_t*>(p.xt);  // [part][tpad][k32] BF16
  const int64_t astride = p.k32 * 2;
  alignas(64) float cbuf[4][256];
  for (int64_t tb = tb0; tb < tb1; tb += 2)
    for (int64_t g = 0; g < ngroups; g += 2) {
      tiles.template Zero<0>();
      tiles.template Zero<1>();
      tiles.template Zero<2>();
      tiles.template Zero<3>();
      for (int64_t k = 0; k < ksteps; k += kGroup) {
        tiles.template Load<6>(b + (g * ksteps + k) * 16, 64);
        tiles.template Load<7>(b + ((g + 1) * ksteps + k) * 16, 64);
        for (int64_t q = 0; q < p.parts; ++q) {
          const uint16_t* a = xa + (q * tpad + tb * kGroup) * p.k32 + 2 * k;
          tiles.template Load<4>(a, astride);
          tiles.template Load<5>(a + kGroup * p.k32, astride);
          tiles.template Dot<0, 4, 6>();
          tiles.template Dot<1, 4, 7>();
          tiles.template Dot<2, 5, 6>();
          tiles.template Dot<3, 5, 7>();
        }
      }
      tiles.template Store<0>(cbuf[0], 64);
      tiles.template Store<1>(cbuf[1], 64);
      tiles.template Store<2>(cbuf[2], 64);
      tiles.template Store<3>(cbuf[3], 64);
      for (int i = 0; i < 4; ++i)  // C tile i: token block tb + i / 2, group g + i % 2
        StoreRows(p, cbuf[i], (tb + i / 2) * kGroup, r0 + (g + i % 2) * kGroup);
    }
}

// Rows [r0, r1) (r0 a multiple of 32) for the one or two blocks of tokens, two groups at a time:
// each tile of weights (16 pair steps of a group) decoded into L1 and multiplied against every part
// of the blocks. The tiles of the next steps are decoded, into the other of two buffers, before these
// are loaded: a tile load waits for the stores it reads to leave the core (FP8, m = 1: 15 against
// 12 GB/s).
template <WeightType T, class Tiles>
DSV4_TILE void StreamGroups(Tiles& tiles, const Plan& p, int64_t r0, int64_t r1) {
  const WeightMatrix& w = *p.job->w;
  const int64_t ksteps = p.k32 / 2, tpad = p.ntb * kGroup;
  const bool two = p.ntb == 2;
  const uint16_t* xa = static_cast<const uint16_t*>(p.xt);  // [part][tpad][k32] BF16
  alignas(64) uint32_t b[2][2][kGroup * 16];                // [buffer][group][step x row]
  alignas(64) float cbuf[4][256];
  for (int64_t r = r0; r < r1; r += 2 * kGroup) {
    const bool second = r + kGroup < r1;
    tiles.template Zero<0>();
    tiles.template Zero<1>();
    tiles.template Zero<2>();
    tiles.template Zero<3>();
    for (int64_t k = 0; k < ksteps; k += kGroup) {
      for (int64_t kd = k == 0 ? 0 : k + kGroup; kd <= k + kGroup && kd < ksteps; kd += kGroup) {
        uint32_t(*const out)[kGroup * 16] = b[(kd / kGroup) & 1];
        DecodeTile<T>(w, r, kd, out[0]);
        if (second) DecodeTile<T>(w, r + kGroup, kd, out[1]);
      }
      uint32_t(*const in)[kGroup * 16] = b[(k / kGroup) & 1];
      tiles.template Load<6>(in[0], 64);
      if (second) tiles.template Load<7>(in[1], 64);
      for (int64_t q = 0; q < p.parts; ++q) {
        const uint16_t* a = xa + q * tpad * p.k32 + 2 * k;
        tiles.template Load<4>(a, p.k32 * 2);
        tiles.template Dot<0, 4, 6>();
        if (second) tiles.template Dot<1, 4, 7>();
        if (two) {
          tiles.template Load<5>(a + kGroup * p.k32, p.k32 * 2);
          tiles.template Dot<2, 5, 6>();
          if (second) tiles.template Dot<3, 5, 7>();
        }
      }
    }
    tiles.template Store<0>(cbuf[0], 64);
    tiles.template Store<1>(cbuf[1], 64);
    if (two) {
      tiles.template Store<2>(cbuf[2], 64);
      tiles.template Store<3>(cbuf[3], 64);
    }
    for (int i = 0; i < (two ? 4 : 2); ++i)  // C tile i: token block i / 2, group i % 2
      if (i % 2 == 0 || second) StoreRows(p, cbuf[i], (i / 2) * kGroup, r + (i % 2) * kGroup);
  }
}

// Runs f(tiles) on the hardware's tiles, or on their model where the CPU has none (or testing asks).
// On the hardware, C tiles 0-1 and A tile 4 have the rows of the first block of `tokens`, C tiles
// 2-3 and A tile 5 those of the second (a tile product costs less with fewer rows; the model's rows
// past them are zeros and never read).
template <class F>
DSV4_TILE void OnTiles(F&& f, int64_t tokens = 2 * kGroup) {
  if (AmxEmulated() || ActiveIsa() != Isa::kAmx) {
    EmuTiles tiles;
    f(tiles);
  } else {
    HwTiles tiles;
    TileConfig cfg = FullTiles(8);
    const auto first = static_cast<uint8_t>(std::min(tokens, kGroup));
    const auto rest = static_cast<uint8_t>(std::clamp<int64_t>(tokens - kGroup, 1, kGroup));
    cfg.rows[0] = cfg.rows[1] = cfg.rows[4] = first;
    cfg.rows[2] = cfg.rows[3] = cfg.rows[5] = rest;
    LoadTileConfig(cfg);
    f(tiles);
    tiles.Release();
  }
}

template <WeightType T>
DSV4_TILE void StreamTask(const Plan& p, int64_t r0, int64_t r1) {
  OnTiles([&](auto& tiles) { StreamGroups<T>(tiles, p, r0, r1); }, p.job->m);
}

template <WeightType T>
DSV4_TILE void PrefillTask(const Plan& p, int64_t r0, int64_t r1, int64_t tb0, int64_t tb1) {
  const int64_t ngroups = ((r1 - r0 + kGroup - 1) / kGroup + 1) / 2 * 2;
  Scratch<uint32_t> b(ngroups * (p.k32 / 2) * 16, NoInit{});
  DecodeGroups<T>(p, r0, r1, ngroups, b.data());
  OnTiles([&](auto& tiles) { MultiplyGroups(tiles, p, b.data(), r0, ngroups, tb0, tb1); });
}

}  // namespace

bool TiledCovers(const WeightMatrix& w) {
  return w.tiled && w.row_begin % kGroup == 0 && w.col_begin % 32 == 0 && w.type != WeightType::kF32;
}

int64_t TileInputWords(const Plan& p) {
  // FMAs: floats [part][m][k32]; tiles: BF16 [part][ntb x 16][k32].
  return TileModeOf(p.job->m) == TileMode::kFmas ? p.parts * p.job->m * p.k32 : p.parts * p.ntb * kGroup * p.k32 / 2;
}

DSV4_TILE void TilePackBlock(const Plan& p, int64_t tb) {
  const LinearJob& job = *p.job;
  const int64_t cols = job.w->cols();
  const bool decode = TileModeOf(job.m) == TileMode::kFmas;
  const int64_t t0 = decode ? 0 : tb * kGroup, t1 = decode ? job.m : std::min(job.m, t0 + kGroup);
  const int64_t tpad = p.ntb * kGroup;
  for (int64_t t = t0; t < (decode ? t1 : t0 + kGroup); ++t) {
    for (int64_t q = 0; q < p.parts; ++q) {
      if (decode) {
        float* dst = static_cast<float*>(p.xt) + (q * job.m + t) * p.k32;
        const float* x = job.x + t * job.ldx;
        if (q == 0) p.xexp[t] = TokenExp(x, cols);
        const __m512 f = _mm512_set1_ps(Pow2(p.xexp[t]));
        for (int64_t c = 0; c < p.k32; c += 16) {
          const __mmask16 m = _cvtu32_mask16(cols - c >= 16 ? 0xFFFFu : cols > c ? (1u << (cols - c)) - 1 : 0u);
          _mm512_storeu_ps(dst + c, Part(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + c), f), static_cast<int>(q)));
        }
      } else {
        uint16_t* dst = static_cast<uint16_t*>(p.xt) + (q * tpad + t) * p.k32;
        if (t >= t1) {
          std::fill(dst, dst + p.k32, uint16_t{0});
          continue;
        }
        const float* x = job.x + t * job.ldx;
        if (q == 0) p.xexp[t] = TokenExp(x, cols);
        const __m512 f = _mm512_set1_ps(Pow2(p.xexp[t]));
        for (int64_t c = 0; c < p.k32; c += 32) {
          const int64_t left = std::clamp<int64_t>(cols - c, 0, 32);
          const __mmask16 m0 = _cvtu32_mask16((1u << std::min<int64_t>(left, 16)) - 1);
          const __mmask16 m1 = _cvtu32_mask16(left > 16 ? (1u << (left - 16)) - 1 : 0u);
          const __m512 x0 = _mm512_mul_ps(_mm512_maskz_loadu_ps(m0, x + c), f);
          const __m512 x1 = _mm512_mul_ps(_mm512_maskz_loadu_ps(m1, x + c + 16), f);
          _mm512_storeu_si512(
              dst + c, (__m512i)_mm512_cvtne2ps_pbh(Part(x1, static_cast<int>(q)), Part(x0, static_cast<int>(q))));
        }
      }
    }
  }
}

DSV4_TILE void TileTask(const Plan& p, int64_t r0, int64_t r1, int64_t tb0, int64_t tb1) {
  const WeightType t = p.job->w->type;
  switch (TileModeOf(p.job->m)) {
    case TileMode::kFmas:
      return t == WeightType::kFP8   ? GemvTask<WeightType::kFP8>(p, r0, r1)
             : t == WeightType::kFP4 ? GemvTask<WeightType::kFP4>(p, r0, r1)
                                     : GemvTask<WeightType::kBF16>(p, r0, r1);
    case TileMode::kStream:
      return t == WeightType::kFP8   ? StreamTask<WeightType::kFP8>(p, r0, r1)
             : t == WeightType::kFP4 ? StreamTask<WeightType::kFP4>(p, r0, r1)
                                     : StreamTask<WeightType::kBF16>(p, r0, r1);
    case TileMode::kPanels:
      break;
  }
  t == WeightType::kFP8   ? PrefillTask<WeightType::kFP8>(p, r0, r1, tb0, tb1)
  : t == WeightType::kFP4 ? PrefillTask<WeightType::kFP4>(p, r0, r1, tb0, tb1)
                          : PrefillTask<WeightType::kBF16>(p, r0, r1, tb0, tb1);
}

namespace {

// One C tile on the hardware and in the model: c (16 x 16 floats) + a (16 x 16 pairs) x b (16 x 16).
template <class Tiles>
DSV4_TILE void OneDot(Tiles& tiles, const uint32_t* a, const uint32_t* b, float* c) {
  tiles.Config();
  tiles.template Load<0>(c, 64);
  tiles.template Load<4>(a, 64);
  tiles.template Load<6>(b, 64);
  tiles.template Dot<0, 4, 6>();
  tiles.template Store<0>(c, 64);
  tiles.Release();
}

}  // namespace

bool AmxTilesFollowTheModel(std::string* why) {
  // Random BF16 pairs of exponents within +-12 (sums that round at every step) against C of both
  // signs; then C = 1 against sixteen products of 2^-24 in the even halves, which the model adds
  // exactly (1 + 2^-20) and the SDM's order loses.
  std::mt19937 rng(20261206);
  auto bf16 = [&] {
    const uint32_t sign = rng() & 1, exp = 127 - 12 + rng() % 25, mant = rng() & 127;
    return (sign << 15) | (exp << 7) | mant;
  };
  auto check = [&](const std::vector<uint32_t>& a, const std::vector<uint32_t>& b, const std::vector<float>& c,
                   const char* what) {
    std::vector<float> hw = c, model = c;
    HwTiles h;
    OneDot(h, a.data(), b.data(), hw.data());
    EmuTiles e;
    OneDot(e, a.data(), b.data(), model.data());
    for (size_t i = 0; i < hw.size(); ++i)
      if (std::memcmp(&hw[i], &model[i], sizeof(float)) != 0) {
        *why = std::string(what) + ": element " + std::to_string(i) + " is " + std::to_string(hw[i]) +
               " on the tiles, " + std::to_string(model[i]) + " in the model";
        return false;
      }
    return true;
  };
  std::vector<uint32_t> a(256), b(256);
  std::vector<float> c(256);
  for (int rep = 0; rep < 4; ++rep) {
    for (auto* v : {&a, &b})
      for (uint32_t& w : *v) w = bf16() | (bf16() << 16);
    for (float& v : c) v = std::ldexp(static_cast<float>(static_cast<int32_t>(rng() % 2000001) - 1000000), -20);
    if (!check(a, b, c, "random pairs")) return false;
  }
  std::fill(a.begin(), a.end(), 0u);
  std::fill(b.begin(), b.end(), 0u);
  for (int64_t k = 0; k < 16; ++k) a[k] = 0x3380u, b[k * 16] = 0x3F80u;  // 2^-24 x 1, even halves
  return check(a, b, std::vector<float>(256, 1.f), "sixteen products of 2^-24 added to 1");
}

}  // namespace linear
}  // namespace dsv4::kernels
