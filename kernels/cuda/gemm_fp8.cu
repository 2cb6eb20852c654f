// Prefill with FP8 weights and activations rounded to FP8 (LinearOptions::act_fp8_group): e4m3 x e4m3
// tensor cores (mma.sync m16n8k32, sm_89 / sm_90) with the checkpoint's block scales and the
// activations' group scales applied in f32 between K blocks. The index model (swizzle, ldmatrix,
// registers) is kernels/cuda/mma_model.h, replayed on the host by tests/kernels/cuda_host_test.cc.
//
//  1. Fp8QuantKernel rounds x to FP8 in its groups (exactly QdqFp8) and stores the E4M3 codes
//     [m, K] and the group scales [m, K / group] in the workspace: every product is then an exact
//     FP8 x FP8 product, the reference's own.
//  2. Fp8GemmKernel: block tile 128 weight rows x 128 tokens, K in stages of 128 through a 3-deep
//     cp.async pipeline into swizzled shared memory; 8 warps of 64 rows x 32 tokens read their
//     fragments with ldmatrix and run 4 x 4 mma per k-step of 32. Every kQ columns (the smaller of
//     the weight block width, the activation group and 128) the tile's sums are added to the f32
//     result times weight scale x activation scale, so the tensor cores only ever add products of
//     one scale block (their accumulation is narrower than f32 on sm_90: promoting every <= 128
//     columns bounds its error, as DeepSeek-V3's FP8 GEMMs do).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/mma.cuh"
#include "kernels/cuda/mma_model.h"

namespace dsv4::kernels::cuda {
namespace {

// A warp per (token, 128 columns): lane l rounds columns 4l..4l+3 in groups of `group` columns
// (group / 4 lanes), writes their E4M3 codes and, from the group's first lane, the group's scale.
__global__ void Fp8QuantKernel(const float* x, int64_t ldx, int64_t K, int group, uint8_t* codes, float* scales) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t chunk = static_cast<int64_t>(blockIdx.y) * kQuantWarps + warp, t = blockIdx.x;
  if (chunk * kFp8TileK >= K) return;
  const int64_t col = chunk * kFp8TileK + 4 * lane;
  const float* xr = x + t * ldx + col;
  float v[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) v[i] = xr[i];
  float amax = fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
  for (int o = 1; o < group / 4; o <<= 1) amax = fmaxf(amax, __shfl_xor_sync(0xffffffffu, amax, o));
  const float s = QdqScale(amax, false);
  // v / s is exact (s a power of two); the conversion rounds as RoundToFp8E4m3 does.
  const uint32_t q = Float2ToE4m3x2(v[0] / s, v[1] / s) | (Float2ToE4m3x2(v[2] / s, v[3] / s) << 16);
  *reinterpret_cast<uint32_t*>(codes + t * K + col) = q;
  if ((4 * lane) % group == 0) scales[t * (K / group) + col / group] = s;
}

struct Fp8GemmArgs {
  const uint8_t* codes;  // [m][K]
  const float* xscales;  // [m][K / group]
  int group;
  WeightMatrix w;
  int64_t m, N, K;
  float* y;
  int64_t ldy;
};

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
template <int kQ>
__device__ __forceinline__ void Fp8GemmBody(const Fp8GemmArgs& a) {
  extern __shared__ __align__(128) uint8_t smem[];  // kFp8Stages x {A [128][128], B [128][128]}
  constexpr int kKSteps = kFp8TileK / 32, kStepsPerPromote = kQ / 32, kMT = kFp8WarpRows / 16,
                kNT = kFp8WarpTokens / 8;
  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int wr = warp / 4, wc = warp % 4, g = lane / 4, t = lane % 4;
  const int64_t row0 = static_cast<int64_t>(blockIdx.x) * kFp8TileRows, tok0 = static_cast<int64_t>(blockIdx.y) * kFp8TileTokens;
  const int64_t chunks = a.K / kFp8TileK;
  const uint8_t* wbase = static_cast<const uint8_t*>(a.w.data) + a.w.row_begin * a.w.ld + a.w.col_begin;

  // Stage s holds chunk c: every thread copies 4 of A's and 4 of B's 1024 16-byte pieces; rows past
  // N (tokens past m) are zero-filled from a valid address.
  auto load_stage = [&](int64_t c, int s) {
    uint8_t* sa = smem + s * kFp8StageBytes;
    uint8_t* sb = sa + kFp8TileRows * kFp8TileK;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int piece = tid + i * kFp8Threads, row = piece / 8, ch = piece % 8;
      const bool ra = row0 + row < a.N, rb = tok0 + row < a.m;
      const uint8_t* src_a = wbase + (ra ? row0 + row : 0) * a.w.ld + c * kFp8TileK + ch * 16;
      const uint8_t* src_b = a.codes + (rb ? tok0 + row : 0) * a.K + c * kFp8TileK + ch * 16;
      CpAsync16(sa + Fp8SwizzledOffset(row, ch), src_a, ra);
      CpAsync16(sb + Fp8SwizzledOffset(row, ch), src_b, rb);
    }
  };

  float acc[kMT][kNT][4], part[kMT][kNT][4];
#pragma unroll
  for (int i = 0; i < kMT; ++i)
#pragma unroll
    for (int j = 0; j < kNT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  // This lane's rows (8: tiles i, rows g and g + 8) and tokens (8: tiles j, columns 2t and 2t + 1).
  int32_t srow[kMT][2];
#pragma unroll
  for (int i = 0; i < kMT; ++i)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      int64_t r = row0 + wr * kFp8WarpRows + i * 16 + g + 8 * h;
      r = r < a.N ? r : a.N - 1;
      srow[i][h] = static_cast<int32_t>((a.w.row_begin + r) / a.w.block_rows);
    }
  int32_t stok[kNT][2];
#pragma unroll
  for (int j = 0; j < kNT; ++j)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t tk = tok0 + wc * kFp8WarpTokens + j * 8 + 2 * t + h;
      stok[j][h] = static_cast<int32_t>(tk < a.m ? tk : a.m - 1);
    }

#pragma unroll
  for (int s = 0; s < kFp8Stages - 1; ++s) {
    if (s < chunks) load_stage(s, s);
    CpAsyncCommit();
  }
  for (int64_t c = 0; c < chunks; ++c) {
    CpAsyncWait<kFp8Stages - 2>();  // chunk c has landed (this thread's copies)
    __syncthreads();                // everyone's copies; and everyone is done with chunk c - 1's stage
    if (c + kFp8Stages - 1 < chunks) load_stage(c + kFp8Stages - 1, (c + kFp8Stages - 1) % kFp8Stages);
    CpAsyncCommit();
    const uint8_t* sa = smem + (c % kFp8Stages) * kFp8StageBytes;
    const uint8_t* sb = sa + kFp8TileRows * kFp8TileK;
#pragma unroll 1
    for (int pq = 0; pq < kKSteps / kStepsPerPromote; ++pq) {
#pragma unroll
      for (int i = 0; i < kMT; ++i)
#pragma unroll
        for (int j = 0; j < kNT; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) part[i][j][e] = 0.f;
#pragma unroll 1
      for (int kk = 0; kk < kStepsPerPromote; ++kk) {  // not unrolled: one step's fragments live at a time
        const int ks = pq * kStepsPerPromote + kk;
        uint32_t af[kMT][4], bf[kNT][2];
#pragma unroll
        for (int i = 0; i < kMT; ++i) {
          const int row = wr * kFp8WarpRows + i * 16 + Fp8LdmatrixARow(lane);
          LdmatrixX4(af[i], sa + Fp8SwizzledOffset(row, Fp8LdmatrixAChunk(lane, ks)));
        }
#pragma unroll
        for (int jp = 0; jp < kNT / 2; ++jp) {
          const int row = wc * kFp8WarpTokens + jp * 16 + Fp8LdmatrixBRow(lane);
          uint32_t r[4];
          LdmatrixX4(r, sb + Fp8SwizzledOffset(row, Fp8LdmatrixBChunk(lane, ks)));
          bf[2 * jp][0] = r[0], bf[2 * jp][1] = r[1], bf[2 * jp + 1][0] = r[2], bf[2 * jp + 1][1] = r[3];
        }
#pragma unroll
        for (int i = 0; i < kMT; ++i)
#pragma unroll
          for (int j = 0; j < kNT; ++j) MmaE4m3(part[i][j], af[i], bf[j][0], bf[j][1]);
      }
      // Promotion: the kQ columns starting at k0 share one weight block and one activation group.
      const int64_t k0 = c * kFp8TileK + pq * kQ;
      const int64_t wcol = (a.w.col_begin + k0) / a.w.block_cols, xcol = k0 / a.group;
      float ws[kMT][2], xs[kNT][2];
#pragma unroll
      for (int i = 0; i < kMT; ++i)
#pragma unroll
        for (int h = 0; h < 2; ++h) ws[i][h] = DecodeE8m0(a.w.scales[int64_t{srow[i][h]} * a.w.scale_ld + wcol]);
#pragma unroll
      for (int j = 0; j < kNT; ++j)
#pragma unroll
        for (int h = 0; h < 2; ++h) xs[j][h] = a.xscales[int64_t{stok[j][h]} * (a.K / a.group) + xcol];
#pragma unroll
      for (int i = 0; i < kMT; ++i)
#pragma unroll
        for (int j = 0; j < kNT; ++j)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[i][j][e] = fmaf(part[i][j][e], ws[i][e >> 1] * xs[j][e & 1], acc[i][j][e]);
    }
  }
  CpAsyncWait<0>();

#pragma unroll
  for (int i = 0; i < kMT; ++i)
#pragma unroll
    for (int j = 0; j < kNT; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int64_t row = row0 + wr * kFp8WarpRows + i * 16 + MmaRowD(lane, e);
        const int64_t tk = tok0 + wc * kFp8WarpTokens + j * 8 + MmaColD(lane, e);
        if (row < a.N && tk < a.m) a.y[tk * a.ldy + row] = acc[i][j][e];
      }
}
#endif

template <int kQ>
__global__ void __launch_bounds__(kFp8Threads, 1) Fp8GemmKernel(Fp8GemmArgs a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  Fp8GemmBody<kQ>(a);
#else
  (void)a;  // never launched below sm_89 (Fp8GemmUnsupported)
#endif
}

template <int kQ>
cudaError_t LaunchFp8Gemm(const LaunchConfig& cfg, const Fp8GemmArgs& a, cudaStream_t stream) {
  // Above the 48 KiB default: allowed once per device and kernel (cheap, idempotent, not a stream op).
  if (cudaError_t e = cudaFuncSetAttribute(Fp8GemmKernel<kQ>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                           static_cast<int>(cfg.smem_bytes));
      e != cudaSuccess)
    return e;
  DSV4_LAUNCH(Fp8GemmKernel<kQ>, cfg, stream, a);
  return cudaGetLastError();
}

}  // namespace

cudaError_t Fp8TiledLinear(const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, float* y, int64_t ldy,
                           int act_group, void* workspace, cudaStream_t stream) {
  const int64_t K = w.cols();
  uint8_t* codes = static_cast<uint8_t*>(workspace);
  float* xscales = reinterpret_cast<float*>(codes + Fp8ActCodesBytes(m, K));
  DSV4_LAUNCH(Fp8QuantKernel, Fp8QuantLaunch(m, K), stream, x, ldx, K, act_group, codes, xscales);
  if (cudaError_t e = cudaGetLastError(); e != cudaSuccess) return e;
  Fp8GemmArgs a{codes, xscales, act_group, w, m, w.rows(), K, y, ldy};
  const LaunchConfig cfg = Fp8GemmLaunch(m, w.rows());
  const int64_t bc = w.block_cols % kFp8TileK == 0 ? kFp8TileK : w.block_cols;
  const int64_t q = bc < act_group ? bc : act_group;
  switch (q) {
    case 32:
      return LaunchFp8Gemm<32>(cfg, a, stream);
    case 64:
      return LaunchFp8Gemm<64>(cfg, a, stream);
    case 128:
      return LaunchFp8Gemm<128>(cfg, a, stream);
    default:
      return cudaErrorInvalidValue;  // Fp8GemmUnsupported rules these out
  }
}

}  // namespace dsv4::kernels::cuda
