// The avx2 level's matrix paths (linear_internal.h has the canonical order).
//
// A 32-byte chunk of storage becomes 8-lane float vectors, all normal floats (a subnormal operand
// costs Intel cores a microcode assist per instruction, and under DAZ would read as 0):
//   FP8 E4M3: each byte, its sign moved to bit 15 of a 16-bit word and its magnitude to bits 13..7,
//     is the FP16 number value x 2^-8 (E4M3 subnormals are FP16 subnormals); vcvtph2ps widens
//     them exactly. 11 operations for 32 values.
//   FP4 E2M1: the nibbles index two 16-entry tables (vpshufb) holding the high and low bytes of
//     each code's BF16 value; interleaved, they are BF16 numbers. 19 operations for 64 values.
//   BF16: the upper / lower halves of each word. F32: as stored.
//
// Decode (m <= 24): each weight row is read once; 1-4 rows go together (from distant regions of a
// pass of up to 64 rows, the next ones prefetched) for enough independent FMA chains. Prefill
// (m > 24): panels of 12 rows x 2048 columns are decoded into a lane-major buffer and multiplied
// with 16-token blocks of the transposed input in a 6 x 16 FMA micro-kernel.
#include <immintrin.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

#include "kernels/cpu/avx2.h"
#include "kernels/cpu/linear_internal.h"
#include "kernels/cpu/scratch.h"

namespace dsv4::kernels::linear {
namespace {

constexpr int kVLanes = 16;    // lanes of the canonical sums: 8 lanes x the 2 alternating accumulators
constexpr int kPanel = 12;     // GEMM: weight rows decoded together (2 micro-kernel panels)
constexpr int kTaskRows = 48;  // GEMM: rows per task, whole 64-byte lines of float outputs
constexpr int kMr = 6;         // GEMM micro-kernel: 6 weight rows x 16 tokens, one lane at a time
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

// The column (within its chunk) of decoded position p = 8 * vector + lane (the decoders' comments
// list each vector's columns).
int64_t LaneColumn(WeightType t, int64_t p) {
  const int64_t v = p / 8, l = p % 8;
  switch (t) {
    case WeightType::kFP8:
      return (v >> 1) * 16 + 2 * l + (v & 1);
    case WeightType::kFP4: {
      constexpr int64_t kBase[8] = {0, 2, 1, 3, 16, 18, 17, 19};
      return 32 * (l / 4) + 4 * (l % 4) + kBase[v];
    }
    case WeightType::kBF16:
      return 2 * l + v;
    default:
      return p;
  }
}

// ---- decoders: one 32-byte chunk -> float vectors ------------------------------------------------

// FP8: values x 2^-8. Vector 0: columns 0, 2, .., 14; 1: 1, 3, .., 15; 2: 16, 18, .., 30; 3: 17, .., 31.
DSV4_AVX2_INLINE void DecodeFp8(const uint8_t* p, __m256* f) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i mask = _mm256_set1_epi16(static_cast<short>(0xBF80));  // sign, exponent 0eeee, 3 bits
  const __m256i odd = _mm256_and_si256(_mm256_srai_epi16(v, 1), mask);
  const __m256i even = _mm256_and_si256(_mm256_srai_epi16(_mm256_slli_epi16(v, 8), 1), mask);
  f[0] = _mm256_cvtph_ps(_mm256_castsi256_si128(even));
  f[1] = _mm256_cvtph_ps(_mm256_castsi256_si128(odd));
  f[2] = _mm256_cvtph_ps(_mm256_extracti128_si256(even, 1));
  f[3] = _mm256_cvtph_ps(_mm256_extracti128_si256(odd, 1));
}

// FP4: true values. Lanes 0-3 hold columns of the chunk's first 32 (one scale), lanes 4-7 the next
// 32, at 4 * lane + b for b = 0, 2, 1, 3, 16, 18, 17, 19 in vectors 0..7.
DSV4_AVX2_INLINE void DecodeFp4(const uint8_t* p, __m256* f) {
  const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  const __m256i hi_tab = _mm256_setr_epi8(DSV4_FP4_BF16_HI, DSV4_FP4_BF16_HI);
  const __m256i lo_tab = _mm256_setr_epi8(DSV4_FP4_BF16_LO, DSV4_FP4_BF16_LO);
  const __m256i nib = _mm256_set1_epi8(0x0F);
  const __m256i en = _mm256_and_si256(v, nib);                        // even columns
  const __m256i on = _mm256_and_si256(_mm256_srli_epi16(v, 4), nib);  // odd columns
  const __m256i el = _mm256_shuffle_epi8(lo_tab, en), eh = _mm256_shuffle_epi8(hi_tab, en);
  const __m256i ol = _mm256_shuffle_epi8(lo_tab, on), oh = _mm256_shuffle_epi8(hi_tab, on);
  // BF16 words: bytes 0-7 / 8-15 of each 128-bit lane.
  const __m256i e0 = _mm256_unpacklo_epi8(el, eh), e1 = _mm256_unpackhi_epi8(el, eh);
  const __m256i o0 = _mm256_unpacklo_epi8(ol, oh), o1 = _mm256_unpackhi_epi8(ol, oh);
  const __m256i high = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  f[0] = _mm256_castsi256_ps(_mm256_slli_epi32(e0, 16));
  f[1] = _mm256_castsi256_ps(_mm256_and_si256(e0, high));
  f[2] = _mm256_castsi256_ps(_mm256_slli_epi32(o0, 16));
  f[3] = _mm256_castsi256_ps(_mm256_and_si256(o0, high));
  f[4] = _mm256_castsi256_ps(_mm256_slli_epi32(e1, 16));
  f[5] = _mm256_castsi256_ps(_mm256_and_si256(e1, high));
  f[6] = _mm256_castsi256_ps(_mm256_slli_epi32(o1, 16));
  f[7] = _mm256_castsi256_ps(_mm256_and_si256(o1, high));
}

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

// ---- streaming kernels: R weight rows against M token rows ---------------------------------------

// Software prefetch of the rows read next (at `next`, R rows `rstride` apart), one cache line per
// two chunks: R streams far apart defeat the hardware prefetcher's page-local training.
template <int R>
DSV4_AVX2_INLINE void PrefetchStep(const uint8_t* next, int64_t rstride, int64_t c) {
  if (next != nullptr && (c & 1) == 0)
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) _mm_prefetch(reinterpret_cast<const char*>(next + r * rstride + 32 * c), _MM_HINT_T0);
}

// A streaming call's lane sums (two accumulators of 8 lanes) where its span starts: zero, or where
// the previous block left them.
template <int R, int M>
DSV4_AVX2_INLINE void StartLanes(const ChunkSpan& span, __m256 (&acc)[R][M][2]) {
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < M; ++t)
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h)
        acc[r][t][h] = span.begin > 0 ? _mm256_load_ps(span.lanes + ((r * M + t) * 2 + h) * 8) : _mm256_setzero_ps();
}

// Where the span ends: the lane sums kept for the next block, or each reduced into out.
template <int R, int M>
DSV4_AVX2_INLINE void EndLanes(const ChunkSpan& span, __m256 (&acc)[R][M][2], float* out) {
  if (span.end < span.nchunks) {
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
      for (int t = 0; t < M; ++t)
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) _mm256_store_ps(span.lanes + ((r * M + t) * 2 + h) * 8, acc[r][t][h]);
    return;
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 4
    for (int t = 0; t < M; ++t) out[r * M + t] = Hsum(_mm256_add_ps(acc[r][t][0], acc[r][t][1]));
}

// out[r * M + t] = the canonical sum (before the tail) of row r (at w + r * wstride) and token row
// t (xp + t * ldxp, in lane order) over the chunks of `span` (the lane sums go on to the next
// block where the span is not the row's last; a span of F32 rows starts on an even chunk).
// Several rows at once give independent FMA chains; the rows at `next` (same stride; null: none)
// are prefetched meanwhile.
template <WeightType T, int M, int R>
DSV4_AVX2 void RowsDot(const uint8_t* w, int64_t wstride, const ChunkSpan& span, const float* xp, int64_t ldxp,
                       float* out, const uint8_t* next) {
  constexpr int V = Dec<T>::kVecs;
  constexpr int U = V == 1 ? 2 : 1;  // chunks per step, so that a step holds an even number of vectors
  __m256 acc[R][M][2];
  StartLanes(span, acc);
  const int64_t end = span.end;
  int64_t c = span.begin;
  for (; c + U <= end; c += U) {
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
  for (; c < end; ++c) {  // V == 1 only: the row's last, even-numbered vector
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      __m256 f[V];
      Dec<T>::Run(w + r * wstride + 32 * c, f);
#pragma GCC unroll 4
      for (int t = 0; t < M; ++t)
        acc[r][t][0] = _mm256_fmadd_ps(f[0], _mm256_loadu_ps(xp + t * ldxp + c * 8 * V), acc[r][t][0]);
    }
  }
  EndLanes(span, acc, out);
}

// FP4: the chunk's scales multiply (exactly) the token row for one token, off the decode's
// dependency chain, or the decoded weights for several: f * (s * x) and (f * s) * x are the same
// product, so both round alike.
template <int M, int R>
DSV4_AVX2 void RowsDotFp4(const uint8_t* w, int64_t wstride, const uint8_t* s, int64_t sstride, const ChunkSpan& span,
                          const float* xp, int64_t ldxp, float* out, const uint8_t* next) {
  __m256 acc[R][M][2];
  StartLanes(span, acc);
  const int64_t end = span.end;
  for (int64_t c = span.begin; c < end; ++c) {
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
  EndLanes(span, acc, out);
}

// Rows taken together for M <= 4 tokens: enough independent FMA chains within 16 registers.
constexpr int GemvRowsAtOnce(WeightType t, int M) {
  if (t == WeightType::kFP4) return M == 1 ? 2 : 1;
  return M == 1 ? 4 : M == 2 ? 2 : 1;
}

// The canonical sums (before the tail) of rows [row0, row0 + rows) against M token rows, into
// sums[r * M + t] (StreamRowRange: R rows at once, in column blocks where the token rows do not fit
// in L1).
template <WeightType T, int M, int R>
DSV4_AVX2 void GemvRowRange(const WeightMatrix& w, int64_t row0, int64_t rows, int64_t nchunks, const float* xs,
                            int64_t lx, float* sums) {
  const int64_t stride = RowStride(w);
  auto fp4_scales = [&](int64_t r) { return w.scales + (row0 + r) * w.scale_ld + w.col_begin / 32; };
  // Vectors of 8 values per 32-byte chunk.
  constexpr int64_t kVecs = T == WeightType::kFP8 ? 4 : T == WeightType::kFP4 ? 8 : T == WeightType::kBF16 ? 2 : 1;
  constexpr int64_t kXChunkBytes = M * kVecs * 8 * 4;
  constexpr int64_t kEven = kVecs == 1 ? 2 : 1;  // F32: blocks of whole steps (two chunks)
  const int64_t block =
      M < kGemvBlockedRows ? std::max<int64_t>(1, nchunks) : StreamBlockChunks(nchunks, kXChunkBytes, kEven);
  auto call = [&](auto rows_at_once, int64_t first, int64_t rstride, const ChunkSpan& span, const uint8_t* next,
                  float* out) {
    constexpr int RR = decltype(rows_at_once)::value;
    if constexpr (T == WeightType::kFP4)
      RowsDotFp4<M, RR>(RowBytes(w, row0 + first), rstride, fp4_scales(first), (rstride / stride) * w.scale_ld, span,
                        xs, lx, out, next);
    else
      RowsDot<T, M, RR>(RowBytes(w, row0 + first), rstride, span, xs, lx, out, next);
  };
  StreamRowRange<R, M>(w, row0, rows, nchunks, block, 32, sums, call);
}

// Token rows t0 .. t0 + M - 1 of a streaming job against its rows [r0, r1).
template <int M>
DSV4_AVX2 void GemvRows(const Plan& p, int64_t r0, int64_t r1, int t0) {
  const LinearJob& job = *p.job;
  const WeightMatrix& w = *job.w;
  const int64_t main = p.nchunks * p.cc;
  const float* xin = job.x + t0 * job.ldx;
  // The sums come out times 2^-mult_exp[t] (zero rows: 0).
  int mult_exp[M];
  bool zero[M];
  const float* xs = p.xp + t0 * main;
  int64_t lx = main;
  for (int t = 0; t < M; ++t) zero[t] = p.zero_row[t0 + t], mult_exp[t] = 0;
  // FP8: scale the lane-ordered rows by this row block's column-block scales (and 2^kx).
  Scratch<float> xscaled(w.type == WeightType::kFP8 ? M * main : 0, NoInit{});
  if (w.type == WeightType::kFP8) {
    // The scale code of each 32-column group (a chunk: one block of scales), and the largest.
    Scratch<uint8_t> codes(main / 32, NoInit{});
    const int max_es = Fp8TaskCodes(w, w.row_begin + r0, main, codes.data());
    for (int t = 0; t < M; ++t) {
      // x * s * 2^kx is below 2 at the row block's largest scale; the decoded weights are value
      // x 2^-8, so the products are below 2^2 and the sums come out times 2^(kx - 8).
      const int kx = std::min(-p.amax_exp[t0 + t] - (max_es - 127), 127 - (max_es - 127));
      mult_exp[t] = 8 - kx;
      float* dst = xscaled.data() + t * lx;
      const float* src = p.xp + (t0 + t) * lx;
      for (int64_t c = 0; c < main; c += 32) {
        const __m256 f = _mm256_set1_ps(Pow2(codes[c / 32] - 127 + kx));
        for (int j = 0; j < 4; ++j) _mm256_storeu_ps(dst + c + 8 * j, _mm256_mul_ps(_mm256_loadu_ps(src + c + 8 * j), f));
      }
    }
    xs = xscaled.data();
  } else if (w.type == WeightType::kFP4) {
    for (int t = 0; t < M; ++t) mult_exp[t] = -kFp4ScaleBias - p.kx[t0 + t];
  } else if (w.type == WeightType::kF32) {
    xs = xin, lx = job.ldx;
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
    StoreGemvSums<M>(job, t0, rb, row0, rows, main, sums, mult_exp, zero);
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

// ---- the GEMM path (m > 24) ------------------------------------------------------------------

// Packs token block tb of column block kb of the job's input: xt[tb][lane][k][16] holds, for token
// t of block tb, the input column decoded into position 16 k + lane of the block (lane: canonical
// lane), times 2^p.xexp[t] where there are those. Only the positions below the block's full chunks
// are packed: the micro-kernel reads no others (zero-filling the rest of a 2048-column block wrote
// seven times the data at 256 columns).
void PackGemmBlock(const Plan& p, int64_t kb, int64_t tb, void* xt_block) {
  const LinearJob& job = *p.job;
  const WeightMatrix& w = *job.w;
  const int64_t main = p.nchunks * p.cc, c0 = kb * kKc, kc = std::min(kKc, main - c0), steps = kKc / kVLanes;
  const int64_t nt = std::min<int64_t>(kNt, job.m - tb * kNt);
  float f[kNt];
  for (int64_t t = 0; t < nt; ++t) f[t] = p.xexp != nullptr ? Pow2(p.xexp[tb * kNt + t]) : 1.f;
  for (int64_t l = 0; l < kVLanes; ++l) {
    float* dst = static_cast<float*>(xt_block) + l * steps * kNt;
    for (int64_t k = 0; kVLanes * k + l < kc; ++k) {
      float* d = dst + k * kNt;
      const int64_t pos = kVLanes * k + l;
      const int64_t col = c0 + (pos / p.cc) * p.cc + LaneColumn(w.type, pos % p.cc);
      const float* src = job.x + (tb * kNt) * job.ldx + col;
      int64_t t = 0;
      for (; t < nt; ++t) d[t] = src[t * job.ldx] * f[t];
      for (; t < kNt; ++t) d[t] = 0.f;
    }
  }
}

// Decodes the full chunks of row `row` (absolute), columns [c0, c0 + kc) of the view (c0 a multiple
// of kKc, kc of the chunk width), into wd[kc] in lane order, as true values.
DSV4_AVX2 void DecodePanelRow(const WeightMatrix& w, int64_t row, int64_t c0, int64_t kc, float* wd) {
  const uint8_t* base = RowBytes(w, row);
  switch (w.type) {
    case WeightType::kFP8: {
      alignas(32) float mult[kKc / 32];
      Fp8GroupFactors(w, row, c0, kc, mult);
      for (int64_t c = 0; c < kc; c += 32) {
        __m256 f[4];
        DecodeFp8(base + c0 + c, f);
        const __m256 s = _mm256_set1_ps(mult[c / 32]);
        for (int j = 0; j < 4; ++j) _mm256_storeu_ps(wd + c + 8 * j, _mm256_mul_ps(f[j], s));
      }
      break;
    }
    case WeightType::kFP4: {
      const __m256 unbias = _mm256_set1_ps(Pow2(-kFp4ScaleBias));
      const uint8_t* srow = w.scales + row * w.scale_ld + w.col_begin / 32;
      for (int64_t c = 0; c < kc; c += 64) {
        __m256 f[8];
        DecodeFp4(base + (c0 + c) / 2, f);
        const __m256 s = Fp4ChunkScales(srow + (c0 + c) / 32);
        for (int j = 0; j < 8; ++j) _mm256_storeu_ps(wd + c + 8 * j, _mm256_mul_ps(_mm256_mul_ps(f[j], s), unbias));
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

// An 8 x 8 block of floats transposed in registers: on return r[j] holds element j of every input
// r[i], at lane i.
DSV4_AVX2_INLINE void Transpose8Regs(__m256* r) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xEE);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xEE);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xEE);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xEE);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20), r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20), r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31), r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31), r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
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
      Transpose8Regs(r);
      for (int l = 0; l < 8; ++l) _mm256_storeu_ps(wl + (8 * parity + l) * vstride + g / 2, r[l]);
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
constexpr MicroFn kMicro[kMr + 1] = {nullptr,      Micro<1, NV>, Micro<2, NV>, Micro<3, NV>,
                                     Micro<4, NV>, Micro<5, NV>, Micro<6, NV>};

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
  const float* xt_kb = static_cast<const float*>(p.xt) + kb * p.ntb * kVLanes * steps * kNt;
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

// The panel's lane sums combined in the canonical order (odd onto even lane, then Hsum's tree), 8
// tokens at a time, then the tail columns: results into y. Without tail columns 8 rows' sums are
// transposed in registers and each token's 8 outputs stored at once (a store per output, strided
// by the token, and a copy of the task's outputs into y afterwards took a third as long as the
// products at 256 columns).
DSV4_AVX2 void FinishPanel(const Plan& p, int64_t r0, int64_t r1, int64_t tb0, int64_t tb1, const float* ctile) {
  const LinearJob& job = *p.job;
  const WeightMatrix& w = *job.w;
  const int64_t main = p.nchunks * p.cc, nrows = r1 - r0;
  const bool tail = main < w.cols();
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  for (int64_t tb = tb0; tb < tb1; ++tb) {
    const int64_t nt = std::min<int64_t>(kNt, job.m - tb * kNt);
    const float* ct = ctile + (tb - tb0) * kVLanes * kPanel * kNt;
    // The tokens' factors 2^-xexp (xexp is in [-126, 126]: normal powers of two, MulPow2's one
    // step).
    alignas(32) float scale[kNt];
    for (int64_t t = 0; t < kNt; ++t) scale[t] = p.xexp != nullptr && t < nt ? Pow2(-p.xexp[tb * kNt + t]) : 1.f;
    for (int64_t rb = 0; rb < nrows; rb += 8) {
      const int64_t nr = std::min<int64_t>(8, nrows - rb);
      for (int v = 0; v < kNt / 8 && 8 * v < nt; ++v) {
        const int64_t n = std::min<int64_t>(8, nt - 8 * v);
        __m256 s[8];  // s[i]: row rb + i, the block's tokens 8 v ..
        for (int i = 0; i < 8; ++i) {
          if (i >= nr) {
            s[i] = _mm256_setzero_ps();
            continue;
          }
          const float* c = ct + (rb + i) * kNt + 8 * v;
          __m256 s8[8];
          for (int l = 0; l < 8; ++l)
            s8[l] = _mm256_add_ps(_mm256_loadu_ps(c + l * kPanel * kNt), _mm256_loadu_ps(c + (8 + l) * kPanel * kNt));
          const __m256 t = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(s8[0], s8[4]), _mm256_add_ps(s8[2], s8[6])),
                                         _mm256_add_ps(_mm256_add_ps(s8[1], s8[5]), _mm256_add_ps(s8[3], s8[7])));
          s[i] = _mm256_mul_ps(t, _mm256_load_ps(scale + 8 * v));
        }
        float* y = job.y + (tb * kNt + 8 * v) * job.ldy + r0 + rb;
        if (tail) {
          alignas(32) float sum[8][8];
          for (int i = 0; i < nr; ++i) _mm256_store_ps(sum[i], s[i]);
          for (int64_t t = 0; t < n; ++t) {
            const float* x = job.x + (tb * kNt + 8 * v + t) * job.ldx;
            for (int64_t i = 0; i < nr; ++i)
              y[t * job.ldy + i] = AddTail(sum[i][t], w, w.row_begin + r0 + rb + i, x, main);
          }
        } else {
          Transpose8Regs(s);  // s[t]: token 8 v + t, rows rb ..
          const __m256i rows = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(nr)), lane);
          for (int64_t t = 0; t < n; ++t) _mm256_maskstore_ps(y + t * job.ldy, rows, s[t]);
        }
      }
    }
  }
}

// Rows [r0, r1) (at most kTaskRows, starting at a multiple of it) for token blocks [tb0, tb1).
// Column blocks outermost, so the transposed input of one block serves every panel of the task
// while it is in cache; the outputs go to y as each panel is finished.
DSV4_AVX2 void GemmTask(const Plan& p, int64_t r0, int64_t r1, int64_t tb0, int64_t tb1) {
  const int64_t nrows = r1 - r0;
  const int64_t npanels = (nrows + kPanel - 1) / kPanel, tile = (tb1 - tb0) * kVLanes * kPanel * kNt;
  Scratch<float> wd(kPanel * kKc, NoInit{}), row_buf(kKc, NoInit{});
  Scratch<float> ctile(npanels * tile, NoInit{});
  if (p.nkb == 0) std::fill(ctile.begin(), ctile.end(), 0.f);  // no full chunk: only tail columns
  for (int64_t kb = 0; kb < p.nkb; ++kb)
    for (int64_t i = 0; i < npanels; ++i)
      AccumulatePanel(p, r0 + i * kPanel, std::min(r1, r0 + (i + 1) * kPanel), kb, tb0, tb1, wd.data(), row_buf.data(),
                      ctile.data() + i * tile);
  for (int64_t i = 0; i < npanels; ++i)
    FinishPanel(p, r0 + i * kPanel, std::min(r1, r0 + (i + 1) * kPanel), tb0, tb1, ctile.data() + i * tile);
}

int64_t XtBlockWords(bool) { return kKc * kNt; }

// Token rows streamed at most (Paths::max_gemv_rows; linear_internal.h says why 24).
constexpr int64_t kGemvMaxRows = 24;
static_assert(kGemvMaxRows <= kMaxGemvRows, "Plan's per-token arrays hold kMaxGemvRows");

}  // namespace

const Paths& Avx2Paths() {
  static const Paths paths = {ChunkCols,     LaneColumn, 32,      kNt,     kTaskRows, 0,           XtBlockWords,
                              PackGemmBlock, GemmTask,   RunGemv, nullptr, nullptr,   kGemvMaxRows};
  return paths;
}

}  // namespace dsv4::kernels::linear
