// The index model of the tensor-core linear kernels (gemm_skinny.cu, gemm_fp8.cu): which element of
// which matrix each lane's registers hold, the order the kernels read weights and activations in,
// the shared-memory layouts and their swizzle, and the number conversions on the way.
//
// Plain C++ compiled for host and device (DSV4_HD, as device_math.h): the kernels index with exactly
// these functions, and tests/kernels/cuda_host_test.cc replays them on the CPU (building every lane's
// registers, multiplying them with the register model of mma.sync below, comparing with a plain
// loop), so the index math is checked bit for bit on machines without a GPU. The one thing the host
// cannot check is that the register model is the hardware's: the gpu test MmaRegisterModel runs
// each mma flavour on fragments built from it and compares with the host product.
#pragma once

#include <cstdint>

#include "kernels/cuda/device_math.h"

#if defined(__CUDACC__)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#endif

namespace dsv4::kernels::cuda {

// ---- the register model of mma.sync.aligned.m16n8kK.row.col.f32 (PTX ISA, "matrix fragments") ----
//
// A warp computes D[16 x 8] = A[16 x K] B[K x 8] + C. Lane = 4 g + t (g = lane / 4, t = lane % 4).
// Registers are 32 bits wide and hold `per_reg` elements: 2 for f16 / bf16 (K = 16), 4 for e4m3
// (K = 32).
//   A: 4 registers; register r holds row g + 8 (r & 1), element slot pair p = r >> 1.
//   B: 2 registers; register p holds column g, slot pair p.
//   C, D: 4 floats; float i is row g + 8 (i >> 1), column 2 t + (i & 1).
// Element e of slot pair p in lane t stands for k = per_reg t + e + 4 per_reg p, in A and in B
// alike, so the product pairs A's element (t, p, e) with B's element (t, p, e). (Only this pairing
// is observable: any relabelling of k applied to both A and B gives the same D. The kernels use
// that freedom to read weights 16 bytes at a time.)
DSV4_HD int MmaRowA(int lane, int reg) { return lane / 4 + 8 * (reg & 1); }
DSV4_HD int MmaColB(int lane) { return lane / 4; }
DSV4_HD int MmaK(int lane, int pair, int e, int per_reg) { return per_reg * (lane % 4) + e + 4 * per_reg * pair; }
DSV4_HD int MmaRowD(int lane, int i) { return lane / 4 + 8 * (i >> 1); }
DSV4_HD int MmaColD(int lane, int i) { return 2 * (lane % 4) + (i & 1); }

// ---- number conversions --------------------------------------------------------------------------

// IEEE binary16 <-> float. On the device the kernels use the hardware conversions (round to
// nearest even, subnormals kept), which these reproduce bit for bit on the host.
DSV4_HD float HalfBitsToFloat(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16, e = (h >> 10) & 0x1fu, m = h & 0x3ffu;
  if (e == 0) {
    const float mag = static_cast<float>(m) * (1.0f / 16777216.0f);  // m 2^-24
    return BitsFloat(FloatBits(mag) | sign);
  }
  if (e == 31) return BitsFloat(sign | 0x7f800000u | (m << 13));
  return BitsFloat(sign | ((e + 112) << 23) | (m << 13));
}
DSV4_HD uint16_t FloatToHalfBits(float f) {
  const uint32_t u = FloatBits(f), a = u & 0x7fffffffu;
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  if (a > 0x7f800000u) return sign | 0x7e00u;   // NaN
  if (a >= 0x477ff000u) return sign | 0x7c00u;  // >= 65520: rounds to infinity (ties to even)
  if (a >= 0x38800000u) {                         // >= 2^-14: a normal half
    const uint32_t r = a + 0xfffu + ((a >> 13) & 1u) - (112u << 23);  // round the low 13 bits, rebias
    return static_cast<uint16_t>(sign | (r >> 13));
  }
  return static_cast<uint16_t>(sign | static_cast<uint32_t>(rintf(BitsFloat(a) * 16777216.0f)));  // n 2^-24
}
// bfloat16 from float, round to nearest even (NaN stays NaN).
DSV4_HD uint16_t FloatToBf16Bits(float f) {
  const uint32_t u = FloatBits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x40u);
  return static_cast<uint16_t>((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

// 2^d as binary16 bits: normal for d in [-14, 15], subnormal for d in [-24, -15], 0 below.
DSV4_HD uint16_t Pow2HalfBits(int d) {
  if (d >= -14) return static_cast<uint16_t>((d + 15) << 10);
  if (d >= -24) return static_cast<uint16_t>(1u << (d + 24));
  return 0;
}

// Four FP4 E2M1 codes (code i in bits 4i..4i+3 of `codes`) -> four E4M3 bytes (byte i from code i)
// of the same values times 2^-6: the E2M1 code's exponent-mantissa bits em become E4M3 bits em << 2
// (e = 0, m = 1, i.e. 0.5, lands on the E4M3 subnormal 2^-7), the sign moves from bit 3 to bit 7.
// Exact for all 16 codes; the kernels multiply the 2^6 back into the scale.
DSV4_HD uint32_t Fp4x4ToE4m3x4(uint32_t codes) {
  uint32_t x = (codes | (codes << 8)) & 0x00ff00ffu;  // bytes: c1c0, 0, c3c2, 0
  x = (x | (x << 4)) & 0x0f0f0f0fu;                    // bytes: c0, c1, c2, c3
  return ((x & 0x07070707u) << 2) | ((x & 0x08080808u) << 4);
}
inline constexpr int kFp4AsE4m3Exp = 6;  // Fp4x4ToE4m3x4's values are the codes' times 2^-6

// ---- the skinny kernel (gemm_skinny.cu): m <= 64 tokens against a weight stream -------------------
//
// Weights are mma operand A (16 rows per warp), tokens operand B (8 per n-tile), both as f16
// (FP8 / FP4 weights) or bf16 (BF16 weights), m16n8k16 with f32 accumulators. K runs in chunks of
// 128: per chunk, per weight row, one power-of-two reference scale 2^R (the largest of the row's
// block scales in the chunk; smaller blocks are folded into the f16 weights exactly), per token one
// power-of-two activation scale, and the chunk's product is added to the f32 result times both.
inline constexpr int kSkinnyChunk = 128;           // K per chunk
inline constexpr int kSkinnySteps = 8;             // mma k16 steps per chunk
inline constexpr int kSkinnyMaxTokens = 64;        // tokens per block of tokens (8 n-tiles)
inline constexpr int kSkinnyRowsPerWarp = 16;

// Weight elements in one 16-byte load: 16 FP8, 32 FP4, 8 BF16.
DSV4_HD int SkinnyLoadElems(int bits_per_weight) { return 128 / bits_per_weight; }

// Each lane reads its weight rows 16 bytes at a time: load c of the chunk (c < 128 / (4E)), in
// lane t (of its quad), holds the chunk's elements [c 4E + t E, + E), E = SkinnyLoadElems. Those are
// E / 4 consecutive mma steps of this lane: element j is step c (E / 4) + j / 4, pair (j % 4) / 2,
// half j % 2. So the k-relabelling is: chunk-local k of (step s, lane quad position t, pair p,
// half h) =
DSV4_HD int SkinnyStepK(int elems_per_load, int s, int t, int p, int h) {
  const int steps_per_load = elems_per_load / 4;
  return (s / steps_per_load) * 4 * elems_per_load + t * elems_per_load + (s % steps_per_load) * 4 + 2 * p + h;
}
// The inverse for the activations: chunk-local k -> (step, quad position, pair, half).
struct SkinnySlot {
  int s, t, p, h;
};
DSV4_HD SkinnySlot SkinnyKSlot(int elems_per_load, int k) {
  const int c = k / (4 * elems_per_load), r = k % (4 * elems_per_load);
  const int t = r / elems_per_load, j = r % elems_per_load;
  return {c * (elems_per_load / 4) + j / 4, t, (j % 4) / 2, j % 2};
}
// Shared memory holds a chunk's activations in register order: one 16-byte entry per (step, n-tile,
// lane) = {hi pair 0, hi pair 1, lo pair 0, lo pair 1} of token 8 n-tile + g, so a warp reads each
// step's B registers for one n-tile as 512 consecutive bytes (no bank conflicts). Index in entries:
DSV4_HD int SkinnyActEntry(int s, int ntile, int lane, int ntiles) { return (s * ntiles + ntile) * 32 + lane; }

// The chunk scale of the activations: 2^e with 2^e >= max |x| over the chunk (so the scaled values
// are at most 1 and their two half-precision terms keep 22 bits), e clamped to [-100, 126] so 2^-e
// is a normal float (smaller chunks lose nothing that matters: their terms stay below 2^-100).
DSV4_HD int ChunkScaleExp(float amax) {
  if (!(amax > 7.888609052210118e-31f)) return -100;  // 2^-100; also NaN
  const uint32_t bits = FloatBits(amax);
  if (bits >= 0x7e800000u) return 126;  // >= 2^126 (and infinity)
  return static_cast<int>((bits >> 23) & 0xff) - 127 + ((bits & 0x7fffffu) != 0 ? 1 : 0);
}
DSV4_HD float Pow2Float(int e) { return BitsFloat(static_cast<uint32_t>(e + 127) << 23); }  // e in [-126, 127]

// One activation as two half-precision terms: v = x 2^-e (exact), hi = half(v), lo = half(v - hi)
// (v - hi is exact). |v - hi - lo| <= max(2^-22 |v|, 2^-25): about FP32 precision relative to the
// chunk's largest value. Activations already rounded to FP8 per 128-group fit in hi alone (lo = 0,
// and the kernel skips the lo products for the chunk).
struct HalfTerms {
  uint16_t hi, lo;
};
DSV4_HD HalfTerms SplitHalf(float x, float inv_scale) {
  const float v = x * inv_scale;
#if defined(__CUDA_ARCH__)
  const __half hi = __float2half_rn(v);
  const __half lo = __float2half_rn(v - __half2float(hi));
  return {__half_as_ushort(hi), __half_as_ushort(lo)};
#else
  const uint16_t hi = FloatToHalfBits(v);
  return {hi, FloatToHalfBits(v - HalfBitsToFloat(hi))};
#endif
}
// BF16 weights: the terms are bfloat16, unscaled (same range as float): |x - hi - lo| <= 2^-17 |x|.
DSV4_HD HalfTerms SplitBf16(float x) {
#if defined(__CUDA_ARCH__)
  const __nv_bfloat16 hi = __float2bfloat16_rn(x);
  const __nv_bfloat16 lo = __float2bfloat16_rn(x - __bfloat162float(hi));
  return {__bfloat16_as_ushort(hi), __bfloat16_as_ushort(lo)};
#else
  const uint16_t hi = FloatToBf16Bits(x);
  return {hi, FloatToBf16Bits(x - BitsFloat(static_cast<uint32_t>(hi) << 16))};
#endif
}

// ---- the FP8 tiled kernel (gemm_fp8.cu): prefill, e4m3 x e4m3 -> f32 on sm_89 / sm_90 -------------
//
// Block tile: 128 weight rows (A) x 128 tokens (B) x 128 k per pipeline stage, 8 warps as 2 (rows)
// x 4 (tokens), each warp 64 rows x 32 tokens (4 x 4 mma tiles of m16n8k32). Both operands sit in
// shared memory as [128 rows][128 bytes], the 16-byte chunks of row r XOR-swizzled by r % 8, so the
// eight rows an ldmatrix phase reads (same logical chunk) hit eight different bank groups.
inline constexpr int kFp8TileRows = 128, kFp8TileTokens = 128, kFp8TileK = 128, kFp8Threads = 256;
inline constexpr int kFp8Stages = 3;
inline constexpr int kFp8WarpRows = 64, kFp8WarpTokens = 32;
inline constexpr int64_t kFp8StageBytes = (kFp8TileRows + kFp8TileTokens) * kFp8TileK;
inline constexpr int64_t kFp8SmemBytes = kFp8Stages * kFp8StageBytes;

DSV4_HD int Fp8SwizzledOffset(int row, int chunk) { return row * kFp8TileK + ((chunk ^ (row & 7)) << 4); }
// ldmatrix.x4 (four 8x8 matrices of b16 = 8 rows of 16 bytes): lanes 8i..8i+7 give the row addresses
// of matrix i, and lane l receives in register i the bytes 4 (l % 4) .. +3 of row l / 4 of matrix i.
// For A (an m16 tile at row r0, mma k-step ks of 32 bytes) the four matrices are rows 0-7 / 8-15 at
// chunk 2 ks, then rows 0-7 / 8-15 at chunk 2 ks + 1: registers 0..3 are exactly A's registers.
DSV4_HD int Fp8LdmatrixARow(int lane) { return (lane & 7) + 8 * ((lane >> 3) & 1); }
DSV4_HD int Fp8LdmatrixAChunk(int lane, int ks) { return 2 * ks + (lane >> 4); }
// For B (two n8 tiles at token c0, k-step ks): tile 0 chunk 2 ks, tile 0 chunk 2 ks + 1, tile 1 ...:
// registers 0, 1 are tile 0's B registers, 2, 3 tile 1's.
DSV4_HD int Fp8LdmatrixBRow(int lane) { return (lane & 7) + 8 * (lane >> 4); }
DSV4_HD int Fp8LdmatrixBChunk(int lane, int ks) { return 2 * ks + ((lane >> 3) & 1); }

}  // namespace dsv4::kernels::cuda
