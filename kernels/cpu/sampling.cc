#include "kernels/cpu/sampling.h"

#include <immintrin.h>

#include <algorithm>
#include <array>
#include <bit>
#include <cmath>
#include <limits>

#include "kernels/cpu/isa.h"

namespace dsv4::kernels {
namespace {

constexpr float kLog2e = 1.44269504088896341f;
constexpr float kMinExponent = -126.0f;  // below: the result is 0 (no denormals)
// 2^f = e^(f ln 2) = sum_k (ln 2)^k / k! f^k, k = 0..6.
constexpr float kC[7] = {1.0f,
                         0.693147180559945309f,
                         0.240226506959100712f,
                         0.0555041086648215800f,
                         0.00961812910762847716f,
                         0.00133335581464284434f,
                         0.000154035303933816099f};

// One element, exactly as one lane of the vector path computes it.
inline float ExpOne(float x, float shift, float c) {
  const float t = (x - shift) * c;
  if (!(t >= kMinExponent)) return 0.f;  // also -inf and NaN
  const float k = std::nearbyint(t);
  const float f = t - k;
  float p = kC[6];
  for (int i = 5; i >= 0; --i) p = std::fma(p, f, kC[i]);
  const float pow2k = std::bit_cast<float>(static_cast<uint32_t>(static_cast<int32_t>(k) + 127) << 23);
  return p * pow2k;
}

// Sums over a vocabulary run in double over kLanes lanes: element i is added to lane i % kLanes,
// within whole groups of kLanes; the lanes are then added in a fixed tree, and the rest after them
// in order. Each lane is a chain of dependent adds: 32 lanes are four independent 8-double AVX-512
// registers (eight AVX2 ones), so no pass waits on one register's chain (on this project's
// machines the passes are bound by their other operations either way).
constexpr int kLanes = 32;

// Lane j + w added into lane j for w = 16, 8, 4, 2, 1: a fixed tree whatever the vector width.
inline double LaneTotal(double* s) {
  for (int w = kLanes / 2; w >= 1; w /= 2)
    for (int j = 0; j < w; ++j) s[j] += s[j + w];
  return s[0];
}

// SplitAtRange's elements [i, end) of a block after its whole groups of kLanes, in order, on every
// path: adds those at or above hi to `sum` (the lanes' total) and returns it, collects those in
// [lo, hi).
inline double SplitRest(const float* e, int64_t i, int64_t end, float lo, float hi, double sum, RangeSplit& r,
                        int32_t* ids, float* weights) {
  for (; i < end; ++i) {
    if (e[i] >= hi) {
      sum += e[i];
      ++r.above_count;
    } else if (e[i] >= lo) {
      ids[r.count] = static_cast<int32_t>(i);
      weights[r.count++] = e[i];
    }
  }
  return sum;
}

// 32 double lanes as eight 4-double registers: Add(q, v) puts 8 floats (element i at lane i % 32)
// into registers 2q and 2q + 1.
struct LanesAvx2 {
  __m256d a[8];
  __attribute__((target("avx2,fma"))) LanesAvx2() {
    for (__m256d& r : a) r = _mm256_setzero_pd();
  }
  __attribute__((target("avx2,fma"))) void Add(int q, __m256 v) {
    a[2 * q] = _mm256_add_pd(a[2 * q], _mm256_cvtps_pd(_mm256_castps256_ps128(v)));
    a[2 * q + 1] = _mm256_add_pd(a[2 * q + 1], _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1)));
  }
  __attribute__((target("avx2,fma"))) double Total() const {
    double lanes[kLanes];
    for (int r = 0; r < 8; ++r) _mm256_storeu_pd(lanes + 4 * r, a[r]);
    return LaneTotal(lanes);
  }
};

__attribute__((target("avx2,fma"))) double ExpShiftedSumAvx2(const float* x, int64_t n, float shift, float scale,
                                                              float* e) {
  const float c = scale * kLog2e;
  const __m256 vshift = _mm256_set1_ps(shift), vc = _mm256_set1_ps(c), vmin = _mm256_set1_ps(kMinExponent);
  __m256 coef[7];
  for (int i = 0; i < 7; ++i) coef[i] = _mm256_set1_ps(kC[i]);
  LanesAvx2 acc;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int q = 0; q < 4; ++q) {
      const __m256 t = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(x + i + 8 * q), vshift), vc);
      const __m256 keep = _mm256_cmp_ps(t, vmin, _CMP_GE_OQ);
      const __m256 k = _mm256_round_ps(_mm256_max_ps(t, vmin), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m256 f = _mm256_sub_ps(t, k);
      __m256 p = coef[6];
      for (int j = 5; j >= 0; --j) p = _mm256_fmadd_ps(p, f, coef[j]);
      const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(k), _mm256_set1_epi32(127)), 23);
      const __m256 v = _mm256_and_ps(_mm256_mul_ps(p, _mm256_castsi256_ps(bits)), keep);
      _mm256_storeu_ps(e + i + 8 * q, v);
      acc.Add(q, v);
    }
  double sum = acc.Total();
  for (; i < n; ++i) sum += (e[i] = ExpOne(x[i], shift, c));
  return sum;
}

__attribute__((target("avx2,fma"))) float MaxAndNaNAvx2(const float* x, int64_t n, bool* any_nan) {
  const float lowest = -std::numeric_limits<float>::infinity();
  __m256 mx = _mm256_set1_ps(lowest), nan = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_loadu_ps(x + i);
    nan = _mm256_or_ps(nan, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
    mx = _mm256_max_ps(mx, v);
  }
  float lanes[8];
  _mm256_storeu_ps(lanes, mx);
  float best = lowest;
  for (float v : lanes) best = std::max(best, v);
  bool found = _mm256_movemask_ps(nan) != 0;
  for (; i < n; ++i) {
    found |= std::isnan(x[i]);
    best = std::max(best, x[i]);
  }
  *any_nan = found;
  return best;
}

__attribute__((target("avx2,fma"))) void KeptBlockSumsAvx2(const float* e, int64_t n, const KeepRule& keep,
                                                           int64_t block, double* sums) {
  const __m256 zero = _mm256_setzero_ps(), floor = _mm256_set1_ps(keep.floor), cut = _mm256_set1_ps(keep.cut_value);
  // Ids compared as int32 (a vocabulary is far below 2^31); no cutoff: every id is at or before it.
  const __m256i after =
      _mm256_set1_epi32(keep.cut_id < 0 ? std::numeric_limits<int32_t>::max() : static_cast<int32_t>(keep.cut_id) + 1);
  const __m256 above = keep.cut_id < 0 ? _mm256_castsi256_ps(_mm256_set1_epi32(-1)) : zero;  // all kept by the cut
  for (int64_t b = 0; b * block < n; ++b) {
    const int64_t begin = b * block, end = std::min(n, begin + block);
    LanesAvx2 acc;
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes)
      for (int q = 0; q < 4; ++q) {
        const __m256 v = _mm256_loadu_ps(e + i + 8 * q);
        const __m256i id = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(i + 8 * q)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        const __m256 tie =
            _mm256_and_ps(_mm256_cmp_ps(v, cut, _CMP_EQ_OQ), _mm256_castsi256_ps(_mm256_cmpgt_epi32(after, id)));
        const __m256 by_cut = _mm256_or_ps(above, _mm256_or_ps(_mm256_cmp_ps(v, cut, _CMP_GT_OQ), tie));
        const __m256 m = _mm256_and_ps(
            _mm256_and_ps(_mm256_cmp_ps(v, zero, _CMP_GT_OQ), _mm256_cmp_ps(v, floor, _CMP_GE_OQ)), by_cut);
        acc.Add(q, _mm256_and_ps(v, m));
      }
    double sum = acc.Total();
    for (; i < end; ++i)
      if (keep(e[i], i)) sum += e[i];
    sums[b] = sum;
  }
}

// For each 8-bit mask, the positions of its set bits in order, a nibble each from the lowest: the
// permutation that packs a vector's selected lanes to its front.
constexpr std::array<uint32_t, 256> kCompress8 = [] {
  std::array<uint32_t, 256> t{};
  for (unsigned m = 0; m < 256; ++m)
    for (unsigned bit = 0, k = 0; bit < 8; ++bit)
      if (m & (1u << bit)) t[m] |= bit << (4 * k++);
  return t;
}();

__attribute__((target("avx2,fma"))) RangeSplit SplitAtRangeAvx2(const float* e, int64_t n, float lo, float hi,
                                                                int64_t block, double* sums, int32_t* ids,
                                                                float* weights) {
  const __m256 vlo = _mm256_set1_ps(lo), vhi = _mm256_set1_ps(hi);
  RangeSplit r;
  for (int64_t b = 0; b * block < n; ++b) {
    const int64_t begin = b * block, end = std::min(n, begin + block);
    LanesAvx2 acc;
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes)
      for (int q = 0; q < 4; ++q) {
        const __m256 v = _mm256_loadu_ps(e + i + 8 * q);
        const __m256 above = _mm256_cmp_ps(v, vhi, _CMP_GE_OQ);
        acc.Add(q, _mm256_and_ps(v, above));
        r.above_count += std::popcount(static_cast<unsigned>(_mm256_movemask_ps(above)));
        const unsigned in =
            static_cast<unsigned>(_mm256_movemask_ps(_mm256_andnot_ps(above, _mm256_cmp_ps(v, vlo, _CMP_GE_OQ))));
        // Compressed by a permutation and stored whole, without a branch (as the AVX-512 path): 8
        // values written from count <= i + 8 q end at or before n.
        const __m256i perm = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(static_cast<int32_t>(kCompress8[in])),
                                                                _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28)),
                                              _mm256_set1_epi32(7));
        const __m256i id = _mm256_add_epi32(_mm256_set1_epi32(static_cast<int32_t>(i + 8 * q)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(ids + r.count), _mm256_permutevar8x32_epi32(id, perm));
        _mm256_storeu_ps(weights + r.count, _mm256_permutevar8x32_ps(v, perm));
        r.count += std::popcount(in);
      }
    sums[b] = SplitRest(e, i, end, lo, hi, acc.Total(), r, ids, weights);
    r.above += sums[b];
  }
  return r;
}

// The 512-bit paths compute each element exactly as the 256-bit ones (the same operations in the
// same order) and add element i to double lane i % 32 in increasing i, so every path gives the same
// bits.
#define DSV4_AVX512 __attribute__((target("avx512f")))
// GCC 12 reports the _mm512_undefined_* placeholders inside its own intrinsics as uninitialized.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

// 32 double lanes as four 8-double registers: Add(h, v) puts 16 floats (element i at lane i % 32)
// into registers 2h and 2h + 1.
struct LanesAvx512 {
  __m512d a[4];
  DSV4_AVX512 LanesAvx512() {
    for (__m512d& r : a) r = _mm512_setzero_pd();
  }
  DSV4_AVX512 void Add(int h, __m512 v) {
    a[2 * h] = _mm512_add_pd(a[2 * h], _mm512_cvtps_pd(_mm512_castps512_ps256(v)));
    a[2 * h + 1] =
        _mm512_add_pd(a[2 * h + 1], _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(v), 1))));
  }
  DSV4_AVX512 double Total() const {
    double lanes[kLanes];
    for (int r = 0; r < 4; ++r) _mm512_storeu_pd(lanes + 8 * r, a[r]);
    return LaneTotal(lanes);
  }
};

DSV4_AVX512 double ExpShiftedSumAvx512(const float* x, int64_t n, float shift, float scale, float* e) {
  const float c = scale * kLog2e;
  const __m512 vshift = _mm512_set1_ps(shift), vc = _mm512_set1_ps(c), vmin = _mm512_set1_ps(kMinExponent);
  __m512 coef[7];
  for (int i = 0; i < 7; ++i) coef[i] = _mm512_set1_ps(kC[i]);
  LanesAvx512 acc;
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int h = 0; h < 2; ++h) {
      const __m512 t = _mm512_mul_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i + 16 * h), vshift), vc);
      const __mmask16 keep = _mm512_cmp_ps_mask(t, vmin, _CMP_GE_OQ);
      const __m512 k = _mm512_roundscale_ps(_mm512_max_ps(t, vmin), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      const __m512 f = _mm512_sub_ps(t, k);
      __m512 p = coef[6];
      for (int j = 5; j >= 0; --j) p = _mm512_fmadd_ps(p, f, coef[j]);
      // p 2^k in one instruction, exactly the product the other paths form from 2^k's bits: where
      // k = -126, f >= 0 and p >= 1, so the result is never subnormal.
      const __m512 v = _mm512_maskz_scalef_ps(keep, p, k);
      _mm512_storeu_ps(e + i + 16 * h, v);
      acc.Add(h, v);
    }
  double sum = acc.Total();
  for (; i < n; ++i) sum += (e[i] = ExpOne(x[i], shift, c));
  return sum;
}

DSV4_AVX512 float MaxAndNaNAvx512(const float* x, int64_t n, bool* any_nan) {
  const float lowest = -std::numeric_limits<float>::infinity();
  __m512 mx = _mm512_set1_ps(lowest);
  __mmask16 nan = 0;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    const __m512 v = _mm512_loadu_ps(x + i);
    nan |= _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
    mx = _mm512_max_ps(mx, v);
  }
  float best = _mm512_reduce_max_ps(mx);
  bool found = nan != 0;
  for (; i < n; ++i) {
    found |= std::isnan(x[i]);
    best = std::max(best, x[i]);
  }
  *any_nan = found;
  return best;
}

DSV4_AVX512 void KeptBlockSumsAvx512(const float* e, int64_t n, const KeepRule& keep, int64_t block, double* sums) {
  const __m512 zero = _mm512_setzero_ps(), floor = _mm512_set1_ps(keep.floor), cut = _mm512_set1_ps(keep.cut_value);
  const __m512i last = _mm512_set1_epi32(keep.cut_id < 0 ? 0 : static_cast<int32_t>(keep.cut_id));
  const __m512i step = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  const __mmask16 above = keep.cut_id < 0 ? 0xffff : 0;  // no cutoff: every weight is kept by it
  for (int64_t b = 0; b * block < n; ++b) {
    const int64_t begin = b * block, end = std::min(n, begin + block);
    LanesAvx512 acc;
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes)
      for (int h = 0; h < 2; ++h) {
        const __m512 v = _mm512_loadu_ps(e + i + 16 * h);
        const __m512i id = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(i + 16 * h)), step);
        const __mmask16 tie = _mm512_cmp_ps_mask(v, cut, _CMP_EQ_OQ) & _mm512_cmple_epi32_mask(id, last);
        const __mmask16 by_cut = above | _mm512_cmp_ps_mask(v, cut, _CMP_GT_OQ) | tie;
        const __mmask16 m = _mm512_cmp_ps_mask(v, zero, _CMP_GT_OQ) & _mm512_cmp_ps_mask(v, floor, _CMP_GE_OQ) & by_cut;
        acc.Add(h, _mm512_maskz_mov_ps(m, v));
      }
    double sum = acc.Total();
    for (; i < end; ++i)
      if (keep(e[i], i)) sum += e[i];
    sums[b] = sum;
  }
}

DSV4_AVX512 RangeSplit SplitAtRangeAvx512(const float* e, int64_t n, float lo, float hi, int64_t block, double* sums,
                                          int32_t* ids, float* weights) {
  const __m512 vlo = _mm512_set1_ps(lo), vhi = _mm512_set1_ps(hi);
  const __m512i step = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  RangeSplit r;
  for (int64_t b = 0; b * block < n; ++b) {
    const int64_t begin = b * block, end = std::min(n, begin + block);
    LanesAvx512 acc;
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes)
      for (int h = 0; h < 2; ++h) {
        const __m512 v = _mm512_loadu_ps(e + i + 16 * h);
        const __mmask16 above = _mm512_cmp_ps_mask(v, vhi, _CMP_GE_OQ);
        acc.Add(h, _mm512_maskz_mov_ps(above, v));
        r.above_count += std::popcount(static_cast<unsigned>(above));
        const __mmask16 in = _mm512_cmp_ps_mask(v, vlo, _CMP_GE_OQ) & static_cast<__mmask16>(~above);
        // Compressed in registers, then stored whole (the compressing store to memory is
        // microcoded): 16 values written from count <= i + 16 h end at or before n. No branch on
        // an empty mask: about half the vectors hold a weight of the window, in no pattern a
        // branch predictor learns.
        const __m512i id = _mm512_add_epi32(_mm512_set1_epi32(static_cast<int32_t>(i + 16 * h)), step);
        _mm512_storeu_si512(ids + r.count, _mm512_maskz_compress_epi32(in, id));
        _mm512_storeu_ps(weights + r.count, _mm512_maskz_compress_ps(in, v));
        r.count += std::popcount(static_cast<unsigned>(in));
      }
    sums[b] = SplitRest(e, i, end, lo, hi, acc.Total(), r, ids, weights);
    r.above += sums[b];
  }
  return r;
}

#pragma GCC diagnostic pop
#undef DSV4_AVX512

}  // namespace

double ExpShiftedSum(const float* x, int64_t n, float shift, float scale, float* e) {
  EnsureFlushDenormals();
  if (ActiveIsa() >= Isa::kAvx512) return ExpShiftedSumAvx512(x, n, shift, scale, e);
  if (ActiveIsa() != Isa::kScalar) return ExpShiftedSumAvx2(x, n, shift, scale, e);
  return ref::ExpShiftedSum(x, n, shift, scale, e);
}

float MaxAndNaN(const float* x, int64_t n, bool* any_nan) {
  EnsureFlushDenormals();
  if (ActiveIsa() >= Isa::kAvx512) return MaxAndNaNAvx512(x, n, any_nan);
  if (ActiveIsa() != Isa::kScalar) return MaxAndNaNAvx2(x, n, any_nan);
  return ref::MaxAndNaN(x, n, any_nan);
}

RangeSplit SplitAtRange(const float* e, int64_t n, float lo, float hi, int64_t block, double* sums, int32_t* ids,
                        float* weights) {
  EnsureFlushDenormals();
  if (ActiveIsa() >= Isa::kAvx512) return SplitAtRangeAvx512(e, n, lo, hi, block, sums, ids, weights);
  if (ActiveIsa() != Isa::kScalar) return SplitAtRangeAvx2(e, n, lo, hi, block, sums, ids, weights);
  return ref::SplitAtRange(e, n, lo, hi, block, sums, ids, weights);
}

void KeptBlockSums(const float* e, int64_t n, const KeepRule& keep, int64_t block, double* sums) {
  EnsureFlushDenormals();
  if (ActiveIsa() >= Isa::kAvx512) return KeptBlockSumsAvx512(e, n, keep, block, sums);
  if (ActiveIsa() != Isa::kScalar) return KeptBlockSumsAvx2(e, n, keep, block, sums);
  ref::KeptBlockSums(e, n, keep, block, sums);
}

namespace ref {

double ExpShiftedSum(const float* x, int64_t n, float shift, float scale, float* e) {
  const float c = scale * kLog2e;
  double lanes[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (int j = 0; j < kLanes; ++j) lanes[j] += (e[i + j] = ExpOne(x[i + j], shift, c));
  double sum = LaneTotal(lanes);
  for (; i < n; ++i) sum += (e[i] = ExpOne(x[i], shift, c));
  return sum;
}

float MaxAndNaN(const float* x, int64_t n, bool* any_nan) {
  float best = -std::numeric_limits<float>::infinity();
  bool found = false;
  for (int64_t i = 0; i < n; ++i) {
    found |= std::isnan(x[i]);
    if (x[i] > best) best = x[i];
  }
  *any_nan = found;
  return best;
}

void KeptBlockSums(const float* e, int64_t n, const KeepRule& keep, int64_t block, double* sums) {
  for (int64_t b = 0; b * block < n; ++b) {
    const int64_t begin = b * block, end = std::min(n, begin + block);
    double lanes[kLanes] = {};
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes)
      for (int j = 0; j < kLanes; ++j)
        if (keep(e[i + j], i + j)) lanes[j] += e[i + j];
    double sum = LaneTotal(lanes);
    for (; i < end; ++i)
      if (keep(e[i], i)) sum += e[i];
    sums[b] = sum;
  }
}

RangeSplit SplitAtRange(const float* e, int64_t n, float lo, float hi, int64_t block, double* sums, int32_t* ids,
                        float* weights) {
  RangeSplit r;
  for (int64_t b = 0; b * block < n; ++b) {
    const int64_t begin = b * block, end = std::min(n, begin + block);
    double lanes[kLanes] = {};
    int64_t i = begin;
    for (; i + kLanes <= end; i += kLanes)
      for (int j = 0; j < kLanes; ++j) {
        if (e[i + j] >= hi) {
          lanes[j] += e[i + j];
          ++r.above_count;
        } else if (e[i + j] >= lo) {
          ids[r.count] = static_cast<int32_t>(i + j);
          weights[r.count++] = e[i + j];
        }
      }
    sums[b] = SplitRest(e, i, end, lo, hi, LaneTotal(lanes), r, ids, weights);
    r.above += sums[b];
  }
  return r;
}

}  // namespace ref
}  // namespace dsv4::kernels
