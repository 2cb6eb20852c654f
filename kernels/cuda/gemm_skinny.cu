// The skinny tensor-core linear: y = x W^T for up to 64 tokens per block against a stream of BF16,
// FP8 or FP4 weights (decode, the MoE experts, and prefill in blocks of 64 tokens when activations
// are not rounded to FP8). The index model (registers, k order, shared-memory layout, conversions)
// is kernels/cuda/mma_model.h and is replayed on the host by tests/kernels/cuda_host_test.cc.
//
// Per block: `kWarps` warps, each owning 16 weight rows, and one chunk of 128 k at a time:
//   1. every lane issues the 16-byte loads of the next chunk's weights (its rows g and g + 8) and
//      their block scales into registers, so a chunk of loads is in flight while this one computes;
//   2. the warps turn this chunk's activations into half-precision terms in shared memory (a warp
//      per token: scaled by the token's chunk scale 2^e, split hi + lo, stored in register order);
//   3. each warp converts its weights to f16 (FP8 by cvt, FP4 via E4M3; blocks smaller than the
//      chunk are folded in exactly as powers of two relative to the row's largest) or uses the BF16
//      bits as they are, and runs 8 k16 steps of mma per n-tile of 8 tokens: once with the hi terms
//      and, unless every lo term of the chunk is zero (activations already rounded to FP8 need only
//      hi), once with the lo terms;
//   4. the chunk's sums are added to the f32 result times 2^R (row) 2^e (token).
// Each output element is one dot product over k in a fixed order: it does not depend on the other
// tokens of the call (nor on m), only on the K split, which depends on the weight's shape.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/mma_model.h"

namespace dsv4::kernels::cuda {
namespace {

template <WeightType kType>
struct SkinnyTraits;
template <>
struct SkinnyTraits<WeightType::kFP8> {
  static constexpr int kBits = 8;
  static constexpr bool kBf16 = false;
};
template <>
struct SkinnyTraits<WeightType::kFP4> {
  static constexpr int kBits = 4;
  static constexpr bool kBf16 = false;
};
template <>
struct SkinnyTraits<WeightType::kBF16> {
  static constexpr int kBits = 16;
  static constexpr bool kBf16 = true;
};

struct SkinnyArgs {
  const float* x;
  int64_t ldx;
  int64_t m;                        // tokens (single); unused when grouped
  WeightMatrix w;                   // the weight (single) or any of the groups' (grouped)
  const WeightMatrix* group_w;      // grouped: [groups]
  const int32_t* offsets;           // grouped: [groups + 1] rows of x / y per group
  float* y;
  int64_t ldy;
  float* partial;                   // splits > 1: [splits][m][rows]
  int64_t splits, chunks, chunks_per_split;
  int act_group;                    // 0, or round x to FP8 in groups of 32 / 64 / 128 first
  bool x_vec4;                      // every x row 16-byte aligned: float4 loads
};

// One chunk of one lane's weights: rows g and g + 8, kLoads 16-byte loads each, and the block
// scale exponent of each load (E8M0 byte; 127 = 2^0 for BF16).
template <int kLoads>
struct WeightRegs {
  uint4 v[2][kLoads];
  int e[2][kLoads];
};

// The two f16x2 (or bf16x2) registers of mma step q of one 16-byte load: pair 0 = elements 4q, 4q+1
// and pair 1 = 4q+2, 4q+3 of the load (SkinnyStepK), times the fold factor `mult` (f16x2 bits).
template <WeightType kType>
__device__ __forceinline__ void StepPairs(const uint4& v, int q, uint32_t mult, bool fold, uint32_t* p0, uint32_t* p1) {
  if constexpr (kType == WeightType::kBF16) {
    *p0 = Word(v, 2 * q);
    *p1 = Word(v, 2 * q + 1);
  } else if constexpr (kType == WeightType::kFP8) {
    const uint32_t w = Word(v, q);
    *p0 = E4m3x2ToHalf2(w);
    *p1 = E4m3x2ToHalf2(w >> 16);
    if (fold) *p0 = Half2Mul(*p0, mult), *p1 = Half2Mul(*p1, mult);
  } else {  // FP4: elements 4q..4q+3 are nibbles 4q..4q+3 of the load: half of word q / 2
    const uint32_t e4 = Fp4x4ToE4m3x4((Word(v, q / 2) >> (16 * (q % 2))) & 0xffffu);
    *p0 = Half2Mul(E4m3x2ToHalf2(e4), mult);
    *p1 = Half2Mul(E4m3x2ToHalf2(e4 >> 16), mult);
  }
}

template <WeightType kType, int kNT, int kWarps, bool kGrouped>
__global__ void __launch_bounds__(kWarps * kWarpSize, kWarps == 8 ? 2 : 4) SkinnyKernel(SkinnyArgs a) {
  using Traits = SkinnyTraits<kType>;
  constexpr int kE = 128 / Traits::kBits;               // weight elements per 16-byte load
  constexpr int kLoads = kSkinnyChunk / (4 * kE);       // loads per row per chunk (a quad covers 4 kE)
  constexpr int kStepsPerLoad = kE / 4;
  constexpr int kChunkBytes = kSkinnyChunk * Traits::kBits / 8;
  static_assert(kLoads * kStepsPerLoad == kSkinnySteps, "a chunk is 8 k16 steps");

  extern __shared__ uint4 act[];  // [kSkinnySteps][kNT][32] entries (SkinnyActEntry)
  float* xscale = reinterpret_cast<float*>(act + kSkinnySteps * kNT * kWarpSize);  // [kNT * 8]
  int* lo_flag = reinterpret_cast<int*>(xscale + kNT * 8);                        // [2]

  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, g = lane / 4, t = lane % 4;
  const int64_t split = blockIdx.x % a.splits, row_block = blockIdx.x / a.splits;
  const int64_t tok0 = static_cast<int64_t>(blockIdx.y) * kSkinnyMaxTokens;
  int64_t m = a.m, xrow0 = 0;
  WeightMatrix w = a.w;
  if constexpr (kGrouped) {
    xrow0 = a.offsets[blockIdx.z];
    m = a.offsets[blockIdx.z + 1] - xrow0;
    w = a.group_w[blockIdx.z];
  }
  if (tok0 >= m) return;  // uniform over the block
  const int mt = static_cast<int>(m - tok0 < kNT * 8 ? m - tok0 : kNT * 8);  // tokens of this block
  const int nt_active = (mt + 7) / 8;
  const int64_t N = w.row_end - w.row_begin;
  const int64_t c_begin = split * a.chunks_per_split;
  const int64_t c_end = c_begin + a.chunks_per_split < a.chunks ? c_begin + a.chunks_per_split : a.chunks;

  // This lane's weight rows (view-relative), clamped to a real row: rows past N compute garbage that
  // is never stored (mma rows are independent).
  const int64_t row_first = row_block * (kWarps * kSkinnyRowsPerWarp) + warp * kSkinnyRowsPerWarp;
  int64_t rows[2] = {row_first + g, row_first + g + 8};
  const uint8_t* wrow[2];
  const int64_t pitch = Traits::kBits == 16 ? w.ld * 2 : w.ld;  // bytes per stored row
  const int64_t col0_bytes = w.col_begin * Traits::kBits / 8;
  for (int i = 0; i < 2; ++i) {
    const int64_t r = w.row_begin + (rows[i] < N ? rows[i] : N - 1);
    wrow[i] = static_cast<const uint8_t*>(w.data) + r * pitch + col0_bytes + t * 16;
  }
  const bool fold = kType == WeightType::kFP4 || w.block_cols < kSkinnyChunk;

  // Loads chunk c's weights and scale exponents into `regs`.
  auto load = [&](int64_t c, WeightRegs<kLoads>& regs) {
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      const int64_t r = w.row_begin + (rows[i] < N ? rows[i] : N - 1);
#pragma unroll
      for (int l = 0; l < kLoads; ++l) {
        regs.v[i][l] = __ldg(reinterpret_cast<const uint4*>(wrow[i] + c * kChunkBytes + l * 64));
        if constexpr (Traits::kBf16) {
          regs.e[i][l] = 127;
        } else {
          const int64_t col = w.col_begin + c * kSkinnyChunk + l * 4 * kE + t * kE;  // the load's first column
          const int64_t srow = kType == WeightType::kFP8 ? r / w.block_rows : r;
          regs.e[i][l] = w.scales[srow * w.scale_ld + col / w.block_cols];
        }
      }
    }
  };

  float acc[kNT][4];
#pragma unroll
  for (int n = 0; n < kNT; ++n)
#pragma unroll
    for (int i = 0; i < 4; ++i) acc[n][i] = 0.f;

  WeightRegs<kLoads> cur, next;
  if (c_begin < c_end) load(c_begin, cur);
  if (threadIdx.x == 0) lo_flag[c_begin & 1] = 0;
  for (int64_t c = c_begin; c < c_end; ++c) {
    if (c + 1 < c_end) load(c + 1, next);
    __syncthreads();  // every warp is done with the previous chunk's activations

    // ---- 2. this chunk's activations -> shared memory, a warp per token ---------------------------
    for (int tk = warp; tk < nt_active * 8; tk += kWarps) {
      float v[4] = {0.f, 0.f, 0.f, 0.f};
      if (tk < mt) {
        const float* xr = a.x + (xrow0 + tok0 + tk) * a.ldx + c * kSkinnyChunk + 4 * lane;
        if (a.x_vec4) {
          const float4 f = *reinterpret_cast<const float4*>(xr);
          v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
        } else {
#pragma unroll
          for (int i = 0; i < 4; ++i) v[i] = xr[i];
        }
      }
      if (a.act_group > 0) {  // QdqFp8 in groups of act_group = 4 * (lanes per group) columns
        float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
        for (int o = 1; o < a.act_group / 4; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
        const float s = QdqScale(amax, false);
#pragma unroll
        for (int i = 0; i < 4; ++i) v[i] = QdqValue(v[i], s, false);
      }
      HalfTerms terms[4];
      if constexpr (Traits::kBf16) {
#pragma unroll
        for (int i = 0; i < 4; ++i) terms[i] = SplitBf16(v[i]);
      } else {
        const float amax = WarpMax(fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3]))));
        const int e = ChunkScaleExp(amax);
        const float inv = Pow2Float(-e);
#pragma unroll
        for (int i = 0; i < 4; ++i) terms[i] = SplitHalf(v[i], inv);
        if (lane == 0) xscale[tk] = tk < mt ? Pow2Float(e) : 0.f;
      }
      const bool lo = (terms[0].lo | terms[1].lo | terms[2].lo | terms[3].lo) != 0;
      if (__any_sync(0xffffffffu, lo) && lane == 0) lo_flag[c & 1] = 1;
      const SkinnySlot slot = SkinnyKSlot(kE, 4 * lane);  // this lane's 4 columns: one entry, pairs 0 and 1
      act[SkinnyActEntry(slot.s, tk / 8, (tk % 8) * 4 + slot.t, kNT)] =
          make_uint4(terms[0].hi | (static_cast<uint32_t>(terms[1].hi) << 16),
                     terms[2].hi | (static_cast<uint32_t>(terms[3].hi) << 16),
                     terms[0].lo | (static_cast<uint32_t>(terms[1].lo) << 16),
                     terms[2].lo | (static_cast<uint32_t>(terms[3].lo) << 16));
    }
    __syncthreads();
    if (threadIdx.x == 0) lo_flag[(c + 1) & 1] = 0;  // for the next chunk (nobody reads it now)
    const bool with_lo = lo_flag[c & 1] != 0;

    // ---- 3. the chunk's products --------------------------------------------------------------------
    // Fold factors: 2^(e - R) per load and row (R: the row's largest exponent in the chunk, over the
    // quad), times 2^6 for FP4's E4M3 detour; the chunk's promotion factor per row is 2^(R - 127).
    uint32_t mult[2][kLoads];
    float wscale[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) {
      int rmax = cur.e[i][0];
#pragma unroll
      for (int l = 1; l < kLoads; ++l) rmax = max(rmax, cur.e[i][l]);
      rmax = max(rmax, __shfl_xor_sync(0xffffffffu, rmax, 1));
      rmax = max(rmax, __shfl_xor_sync(0xffffffffu, rmax, 2));
      wscale[i] = DecodeE8m0(static_cast<uint8_t>(rmax));
#pragma unroll
      for (int l = 0; l < kLoads; ++l) {
        const int d = cur.e[i][l] - rmax + (kType == WeightType::kFP4 ? kFp4AsE4m3Exp : 0);
        mult[i][l] = static_cast<uint32_t>(Pow2HalfBits(d)) * 0x10001u;
      }
    }
    // BF16 has no scales: its products go straight into the result; the others sum a chunk first.
    float part[kNT][4];
    float(&sum)[kNT][4] = Traits::kBf16 ? acc : part;
    if constexpr (!Traits::kBf16) {
#pragma unroll
      for (int n = 0; n < kNT; ++n)
#pragma unroll
        for (int i = 0; i < 4; ++i) part[n][i] = 0.f;
    }
#pragma unroll
    for (int s = 0; s < kSkinnySteps; ++s) {
      const int l = s / kStepsPerLoad, q = s % kStepsPerLoad;
      uint32_t afrag[4];  // registers 0, 2: row g pairs 0, 1; registers 1, 3: row g + 8
      StepPairs<kType>(cur.v[0][l], q, mult[0][l], fold, &afrag[0], &afrag[2]);
      StepPairs<kType>(cur.v[1][l], q, mult[1][l], fold, &afrag[1], &afrag[3]);
#pragma unroll
      for (int n = 0; n < kNT; ++n) {
        if (n >= nt_active) break;
        const uint4 b = act[SkinnyActEntry(s, n, lane, kNT)];
        if constexpr (Traits::kBf16) {
          MmaBf16(sum[n], afrag, b.x, b.y);
          if (with_lo) MmaBf16(sum[n], afrag, b.z, b.w);
        } else {
          MmaF16(sum[n], afrag, b.x, b.y);
          if (with_lo) MmaF16(sum[n], afrag, b.z, b.w);
        }
      }
    }
    // ---- 4. promotion: result += chunk sum 2^R 2^e --------------------------------------------------
    if constexpr (!Traits::kBf16) {
#pragma unroll
      for (int n = 0; n < kNT; ++n) {
        if (n >= nt_active) break;
        const float x0 = xscale[n * 8 + 2 * t], x1 = xscale[n * 8 + 2 * t + 1];
#pragma unroll
        for (int i = 0; i < 4; ++i) acc[n][i] = fmaf(part[n][i], wscale[i >> 1] * ((i & 1) ? x1 : x0), acc[n][i]);
      }
    }
    if (c + 1 < c_end) cur = next;
  }

  // ---- the block's results: y, or this split's partial sums ----------------------------------------
#pragma unroll
  for (int n = 0; n < kNT; ++n) {
    if (n >= nt_active) break;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t row = row_first + MmaRowD(lane, i);
      const int tok = n * 8 + MmaColD(lane, i);
      if (row >= N || tok >= mt) continue;
      if (a.splits > 1) {
        a.partial[(split * a.m + tok0 + tok) * N + row] = acc[n][i];
      } else {
        a.y[(xrow0 + tok0 + tok) * a.ldy + row] = acc[n][i];
      }
    }
  }
}

// y[t][r] = sum over splits, in split order, of partial[s][t][r].
__global__ void SplitReduceKernel(const float* partial, int64_t splits, int64_t m, int64_t N, float* y, int64_t ldy) {
  const int64_t r = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x, t = blockIdx.x;
  if (r >= N) return;
  float s = 0.f;
  for (int64_t sp = 0; sp < splits; ++sp) s += partial[(sp * m + t) * N + r];
  y[t * ldy + r] = s;
}

template <WeightType kType, bool kGrouped>
cudaError_t LaunchSkinnyTyped(const SkinnyPlan& p, const SkinnyArgs& a, cudaStream_t stream) {
#define DSV4_SKINNY_CASE(NT, WARPS)                                                \
  if (p.ntiles == NT && p.warps == WARPS) {                                        \
    DSV4_LAUNCH((SkinnyKernel<kType, NT, WARPS, kGrouped>), p.launch, stream, a); \
    return cudaGetLastError();                                                     \
  }
  DSV4_SKINNY_CASE(1, 4)
  DSV4_SKINNY_CASE(2, 4)
  DSV4_SKINNY_CASE(4, 8)
  DSV4_SKINNY_CASE(8, 8)
#undef DSV4_SKINNY_CASE
  return cudaErrorInvalidValue;  // a plan PlanSkinny never makes
}

template <bool kGrouped>
cudaError_t LaunchSkinny(const SkinnyPlan& p, const SkinnyArgs& a, cudaStream_t stream) {
  if (!Launchable(p.launch)) return cudaErrorInvalidValue;
  switch (a.w.type) {
    case WeightType::kBF16:
      return LaunchSkinnyTyped<WeightType::kBF16, kGrouped>(p, a, stream);
    case WeightType::kFP8:
      return LaunchSkinnyTyped<WeightType::kFP8, kGrouped>(p, a, stream);
    case WeightType::kFP4:
      return LaunchSkinnyTyped<WeightType::kFP4, kGrouped>(p, a, stream);
    default:
      return cudaErrorInvalidValue;
  }
}

bool RowsVec4(const float* x, int64_t ld) { return reinterpret_cast<uintptr_t>(x) % 16 == 0 && ld % 4 == 0; }

}  // namespace

// Entry points for gemm.cu (declared there).
cudaError_t SkinnyLinear(const SkinnyPlan& p, const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, float* y,
                         int64_t ldy, int act_group, void* workspace, cudaStream_t stream) {
  SkinnyArgs a{};
  a.x = x, a.ldx = ldx, a.m = m, a.w = w, a.y = y, a.ldy = ldy;
  a.splits = p.splits, a.chunks = p.chunks, a.chunks_per_split = p.chunks_per_split;
  a.act_group = act_group, a.x_vec4 = RowsVec4(x, ldx);
  a.partial = static_cast<float*>(workspace);
  if (cudaError_t e = LaunchSkinny<false>(p, a, stream); e != cudaSuccess) return e;
  if (p.splits > 1) {
    DSV4_LAUNCH(SplitReduceKernel, SplitReduceLaunch(m, w.rows()), stream, a.partial, p.splits, m, w.rows(), y, ldy);
    return cudaGetLastError();
  }
  return cudaSuccess;
}

cudaError_t SkinnyGroupedLinear(const SkinnyPlan& p, const float* x, int64_t ldx, const WeightMatrix* weights,
                                const WeightMatrix& like, const int32_t* offsets, float* y, int64_t ldy, int act_group,
                                cudaStream_t stream) {
  SkinnyArgs a{};
  a.x = x, a.ldx = ldx, a.m = 0, a.w = like, a.group_w = weights, a.offsets = offsets, a.y = y, a.ldy = ldy;
  a.splits = 1, a.chunks = p.chunks, a.chunks_per_split = p.chunks;
  a.act_group = act_group, a.x_vec4 = RowsVec4(x, ldx);
  return LaunchSkinny<true>(p, a, stream);
}

}  // namespace dsv4::kernels::cuda
