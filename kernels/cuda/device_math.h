// Scalar math shared by the CUDA kernels and the host: number-format decoding and rounding, the
// mHC Sinkhorn projection of one token, and the ordering keys used by top-k.
//
// Every function here is `__host__ __device__` under nvcc and plain inline C++ under the host
// compiler, so the CPU-side test (tests/kernels/cuda_host_test.cc) checks the exact code the GPU
// runs against kernels/cpu/formats.h and the golden data, on machines without a GPU. No state, no
// tables in memory (a device cannot read a host constexpr table), nothing but <cstdint> and libm.
#pragma once

#include <math.h>

#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define DSV4_HD __host__ __device__ __forceinline__
#else
#define DSV4_HD inline
#endif

namespace dsv4::kernels::cuda {

DSV4_HD uint32_t FloatBits(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  std::memcpy(&u, &f, sizeof(u));
  return u;
#endif
}

DSV4_HD float BitsFloat(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float f;
  std::memcpy(&f, &u, sizeof(f));
  return f;
#endif
}

DSV4_HD float QuietNan() { return BitsFloat(0x7fc00000u); }

DSV4_HD float DecodeBf16(uint16_t v) { return BitsFloat(static_cast<uint32_t>(v) << 16); }

// E8M0: 2^(e - 127); 0xFF is NaN; 0 is 2^-127 (a float subnormal).
DSV4_HD float DecodeE8m0(uint8_t e) {
  if (e == 0xff) return QuietNan();
  if (e == 0) return BitsFloat(0x00400000u);
  return BitsFloat(static_cast<uint32_t>(e) << 23);
}

// FP8 E4M3 ("FN": no infinities, S.1111.111 is NaN, max 448).
DSV4_HD float DecodeFp8E4m3(uint8_t b) {
  const uint32_t sign = static_cast<uint32_t>(b & 0x80) << 24;
  const uint32_t e = (b >> 3) & 0xf, m = b & 7;
  if (e == 0xf && m == 7) return QuietNan();
  if (e == 0) {  // subnormal: m * 2^-9
    const float mag = static_cast<float>(m) * (1.0f / 512.0f);
    return BitsFloat(FloatBits(mag) | sign);
  }
  return BitsFloat(sign | ((e + 120) << 23) | (m << 20));  // (1 + m/8) * 2^(e-7)
}

// FP4 E2M1 code (low 4 bits): {0, .5, 1, 1.5, 2, 3, 4, 6} and their negatives.
DSV4_HD float DecodeFp4E2m1(uint8_t code) {
  const uint32_t e = (code >> 1) & 3, m = code & 1;
  const float mag = e == 0 ? 0.5f * static_cast<float>(m)
                           : (1.0f + 0.5f * static_cast<float>(m)) * static_cast<float>(1u << (e - 1));
  return (code & 8) ? -mag : mag;
}

// 2^ceil(log2(v)) for a positive normal float, from the bits.
DSV4_HD float Pow2Ceil(float v) {
  const uint32_t bits = FloatBits(v);
  const int exp = static_cast<int>((bits >> 23) & 0xff) - 127 + ((bits & 0x7fffffu) != 0 ? 1 : 0);
  return BitsFloat(static_cast<uint32_t>(exp + 127) << 23);
}

// Nearest E4M3 value, ties to even, saturating at +-448; NaN stays NaN. The spacing is a power of
// two taken from the exponent bits, so the scaling is exact and one rintf does the rounding.
DSV4_HD float RoundToFp8E4m3(float x) {
  if (x != x) return x;
  const float a = fabsf(x);
  float q;
  if (a >= 448.0f) {
    q = 448.0f;
  } else {
    int e = static_cast<int>((FloatBits(a) >> 23) & 0xff) - 127;  // floor(log2 a) for normal a
    if (e < -6) e = -6;                                           // subnormal E4M3 range: step 2^-9
    const float inv_step = BitsFloat(static_cast<uint32_t>(127 + 3 - e) << 23);
    const float step = BitsFloat(static_cast<uint32_t>(127 - 3 + e) << 23);
    q = rintf(a * inv_step) * step;
    if (q > 448.0f) q = 448.0f;
  }
  return copysignf(q, x);
}

// Nearest E2M1 value {0, .5, 1, 1.5, 2, 3, 4, 6}, ties to the even code, saturating at 6.
DSV4_HD float RoundToFp4E2m1(float x) {
  if (x != x) return x;
  const float a = fabsf(x);
  float q;
  if (a >= 6.0f) {
    q = 6.0f;
  } else if (a >= 4.0f) {
    q = 2.0f * rintf(a * 0.5f);  // {4, 6}: 5 -> 4
  } else if (a >= 2.0f) {
    q = rintf(a);  // {2, 3, 4}
  } else {
    q = 0.5f * rintf(a * 2.0f);
  }
  return copysignf(q, x);
}

// The quantize-dequantize scale of one group (kernels/cpu/kernels.h QdqFp8 / QdqFp4).
inline constexpr float kFp8Max = 448.0f;
inline constexpr float kFp4Max = 6.0f;
inline constexpr float kFp8AmaxFloor = 1e-4f;
inline constexpr float kFp4AmaxFloor = 6.0f * 1.1754943508222875e-38f;  // 6 * 2^-126
DSV4_HD float QdqScale(float amax, bool fp4) {
  const float floor_v = fp4 ? kFp4AmaxFloor : kFp8AmaxFloor;
  return Pow2Ceil((amax > floor_v ? amax : floor_v) * (fp4 ? 1.0f / kFp4Max : 1.0f / kFp8Max));
}
// The E4M3 scale of one FP4 group (kernels::QdqFp4E4m3): amax / 6, floored at 2^-9, rounded to E4M3.
inline constexpr float kFp4E4m3AmaxFloor = 6.0f * 0.001953125f;  // 6 * 2^-9
DSV4_HD float QdqScaleFp4E4m3(float amax) {
  return RoundToFp8E4m3((amax < kFp4E4m3AmaxFloor ? kFp4E4m3AmaxFloor : amax) / kFp4Max);
}
DSV4_HD float QdqValue(float v, float scale, bool fp4) {
  const float r = v / scale;
  return (fp4 ? RoundToFp4E2m1(r) : RoundToFp8E4m3(r)) * scale;
}

// mHC split + Sinkhorn of one token (kernels/cpu/kernels.h HcSplitSinkhorn): mixes [hc*(hc+2)] ->
// pre [hc], post [hc], comb [hc, hc] (comb[i*hc + j]: weight of source stream i in destination j).
inline constexpr int kMaxHc = 4;
DSV4_HD void SplitSinkhorn(const float* mixes, const float* scale3, const float* base, int hc, int iters, float eps,
                           float* pre, float* post, float* comb) {
  for (int j = 0; j < hc; ++j) pre[j] = 1.0f / (1.0f + expf(-(mixes[j] * scale3[0] + base[j]))) + eps;
  for (int j = 0; j < hc; ++j) post[j] = 2.0f * (1.0f / (1.0f + expf(-(mixes[hc + j] * scale3[1] + base[hc + j]))));
  for (int i = 0; i < hc * hc; ++i) comb[i] = mixes[2 * hc + i] * scale3[2] + base[2 * hc + i];
  for (int i = 0; i < hc; ++i) {  // row softmax, then + eps
    float* row = comb + i * hc;
    float mx = row[0];
    for (int j = 1; j < hc; ++j) mx = row[j] > mx ? row[j] : mx;
    float sum = 0.f;
    for (int j = 0; j < hc; ++j) sum += (row[j] = expf(row[j] - mx));
    for (int j = 0; j < hc; ++j) row[j] = row[j] / sum + eps;
  }
  // Column normalization first and last, `iters - 1` row+column rounds in between.
  const int rounds = iters > 1 ? iters : 1;
  for (int it = 0; it < rounds; ++it) {
    if (it > 0) {
      for (int i = 0; i < hc; ++i) {
        float s = 0.f;
        for (int j = 0; j < hc; ++j) s += comb[i * hc + j];
        for (int j = 0; j < hc; ++j) comb[i * hc + j] /= (s + eps);
      }
    }
    for (int j = 0; j < hc; ++j) {
      float s = 0.f;
      for (int i = 0; i < hc; ++i) s += comb[i * hc + j];
      for (int i = 0; i < hc; ++i) comb[i * hc + j] /= (s + eps);
    }
  }
}

// Top-k ordering: a 64-bit key whose unsigned order is (value descending, index ascending), the
// order of kernels/cpu TopK. -0 sorts as +0 (the CPU compares them equal); NaN is not supported.
DSV4_HD uint32_t OrderedKey(float v) {
  const uint32_t u = FloatBits(v == 0.0f ? 0.0f : v);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}
DSV4_HD uint64_t TopKKey(float v, uint32_t index) {
  return (static_cast<uint64_t>(OrderedKey(v)) << 32) | static_cast<uint64_t>(0xffffffffu - index);
}
DSV4_HD uint32_t TopKKeyIndex(uint64_t key) { return 0xffffffffu - static_cast<uint32_t>(key & 0xffffffffu); }

// The bitonic sort's size for k keys: the smallest power of two >= k.
DSV4_HD int64_t TopKSortSize(int64_t k) {
  int64_t p = 1;
  while (p < k) p *= 2;
  return p;
}

// The fast top-k's bins (indexer.cu, launch.h kTopKBins): level 0 is the top 11 bits of the ordered
// key, level 1 the next 11; the prefix of a level is every bit down to that level's bin.
inline constexpr int kTopKLevelBits = 11;
DSV4_HD uint32_t TopKPrefix(uint32_t key, int level) { return key >> (32 - kTopKLevelBits * (level + 1)); }
DSV4_HD uint32_t TopKBin(uint32_t key, int level) { return TopKPrefix(key, level) & ((1u << kTopKLevelBits) - 1u); }
// Given a histogram of `bins` bins over the keys still in play and `need` >= 1 of them to take from
// the top, the bin that holds the need-th largest, and in `above` how many keys lie in higher bins
// (above < need <= above + hist[bin]). Precondition: the histogram holds at least `need` keys. The
// kernel computes the same with a parallel suffix sum; this sequential form is its host twin.
DSV4_HD int TopKThresholdBin(const int* hist, int bins, int need, int* above) {
  int acc = 0;
  for (int b = bins - 1; b >= 0; --b) {
    if (acc + hist[b] >= need) {
      *above = acc;
      return b;
    }
    acc += hist[b];
  }
  *above = acc;
  return -1;
}

// The attention's reduce-scatter over a warp: each of 32 lanes holds n values (n a multiple of 32);
// at offsets 16, 8, 4, 2, 1 a lane keeps the lower half of its values when (lane & offset) == 0, else
// the upper half, adding its partner's copy of the half it keeps. Afterwards lane l holds the sums
// over all lanes of values [l n/32, (l+1) n/32): slot j of lane l is value index
DSV4_HD int ReduceScatterIndex(int lane, int slot, int n) { return lane * (n / 32) + slot; }

// The fused attention's dims (attention.cu, d = 512, launch.h PlanAttention). Logits: lane l holds
// dims 128 j + 4 l + c (j, c < 4) of q and of every KV row, as float4 j.
DSV4_HD int FusedQDim(int lane, int j, int c) { return 128 * j + 4 * lane + c; }
// P.V: warp w of `warps` (1, 2, 4, 8) owns dims [w 512 / warps, +512 / warps); lane l's accumulator
// e (< 16 / warps) of each head is dim FusedPvDim, read as float2 (warps = 8) or float4 (e % 4 = 0).
DSV4_HD int FusedPvDim(int warps, int warp, int lane, int e) {
  const int slice = 512 / warps;
  return warps == 8 ? warp * slice + 2 * lane + e : warp * slice + 128 * (e / 4) + 4 * lane + e % 4;
}

// The fast top-k's threshold search in parallel (indexer.cu): the thread owning bins b0, b0 + 1 of
// counts h0, h1, with `suffix` keys in bins >= b0, finds whether the need-th largest key lies in its
// pair; if so it returns true with that bin and the keys in higher bins (TopKThresholdBin's answers).
// Exactly one thread of a histogram holding >= need keys returns true.
DSV4_HD bool TopKPickInPair(int b0, int h0, int h1, int suffix, int need, int* bin, int* above) {
  if (!(suffix >= need && suffix - h0 - h1 < need)) return false;
  const int a = suffix - h0 - h1;
  if (a + h1 >= need) {
    *bin = b0 + 1, *above = a;
  } else {
    *bin = b0, *above = a + h1;
  }
  return true;
}

}  // namespace dsv4::kernels::cuda
