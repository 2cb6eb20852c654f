// y = x W^T with W dequantized on the fly from F32 / BF16 / FP8 (block scales) / FP4 (per-32
// scales): a warp-per-row GEMV for decode, a 32x64 shared-memory tile for prefill, and the same tile
// over groups for MoE experts. FP32 accumulation throughout (the CPU kernel's precision).
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace dsv4::kernels::cuda {
namespace {

static_assert(kTileThreads == (kTileM / kThreadM) * (kTileN / kThreadN), "tile shape and thread count disagree");

__device__ __forceinline__ int64_t ViewRows(const WeightMatrix& w) { return w.row_end - w.row_begin; }
__device__ __forceinline__ int64_t ViewCols(const WeightMatrix& w) { return w.col_end - w.col_begin; }

// Warp per output row r; lanes stride over K; m <= kGemvMaxTokens tokens accumulate at once so the
// row's weights are read once.
template <WeightType kType>
__global__ void GemvKernel(const float* x, int64_t m, int64_t ldx, WeightMatrix w, float* y, int64_t ldy) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize;
  const int64_t r = static_cast<int64_t>(blockIdx.x) * kGemvWarps + warp;
  if (r >= ViewRows(w)) return;  // the whole warp leaves together
  const int64_t K = ViewCols(w);
  float acc[kGemvMaxTokens] = {};
  for (int64_t c = lane; c < K; c += kWarpSize) {
    const float wv = LoadWeight<kType>(w, r, c);
#pragma unroll
    for (int t = 0; t < kGemvMaxTokens; ++t)
      if (t < m) acc[t] += wv * x[t * ldx + c];
  }
#pragma unroll
  for (int t = 0; t < kGemvMaxTokens; ++t) {
    if (t >= m) break;
    const float s = WarpSum(acc[t]);
    if (lane == 0) y[t * ldy + r] = s;
  }
}

// Output tile [kTileM tokens, kTileN rows of W] per block, K in slices of kTileK staged in shared
// memory (x as is, W dequantized; both stored k-major, padded by one against bank conflicts).
// Thread (ty, tx) owns tokens ty*kThreadM.. and rows tx*kThreadN... Grouped: blockIdx.z is the
// group, whose tokens are rows [offsets[z], offsets[z+1]) of x and y.
template <WeightType kType, bool kGrouped>
__global__ void TiledKernel(const float* x, int64_t ldx, WeightMatrix w_single, const WeightMatrix* w_groups,
                            const int32_t* offsets, int64_t m_single, float* y, int64_t ldy) {
  __shared__ float xs[kTileK][kTileM + 1];
  __shared__ float ws[kTileK][kTileN + 1];
  int64_t row0 = 0, m = m_single;
  WeightMatrix w = w_single;
  if constexpr (kGrouped) {
    row0 = offsets[blockIdx.z];
    m = offsets[blockIdx.z + 1] - row0;
    w = w_groups[blockIdx.z];
  }
  const int64_t m0 = static_cast<int64_t>(blockIdx.y) * kTileM, n0 = static_cast<int64_t>(blockIdx.x) * kTileN;
  if (m0 >= m) return;  // uniform over the block
  const int64_t N = ViewRows(w), K = ViewCols(w);
  constexpr int kThreadsN = kTileN / kThreadN;
  const int tx = threadIdx.x % kThreadsN, ty = threadIdx.x / kThreadsN;
  float acc[kThreadM][kThreadN] = {};
  for (int64_t k0 = 0; k0 < K; k0 += kTileK) {
    for (int e = threadIdx.x; e < kTileM * kTileK; e += kTileThreads) {
      const int mm = e / kTileK, kk = e % kTileK;
      const int64_t gm = m0 + mm, gk = k0 + kk;
      xs[kk][mm] = (gm < m && gk < K) ? x[(row0 + gm) * ldx + gk] : 0.f;
    }
    for (int e = threadIdx.x; e < kTileN * kTileK; e += kTileThreads) {
      const int nn = e / kTileK, kk = e % kTileK;
      const int64_t gn = n0 + nn, gk = k0 + kk;
      ws[kk][nn] = (gn < N && gk < K) ? LoadWeight<kType>(w, gn, gk) : 0.f;
    }
    __syncthreads();
#pragma unroll 8
    for (int kk = 0; kk < kTileK; ++kk) {
      float a[kThreadM], b[kThreadN];
#pragma unroll
      for (int i = 0; i < kThreadM; ++i) a[i] = xs[kk][ty * kThreadM + i];
#pragma unroll
      for (int j = 0; j < kThreadN; ++j) b[j] = ws[kk][tx * kThreadN + j];
#pragma unroll
      for (int i = 0; i < kThreadM; ++i)
#pragma unroll
        for (int j = 0; j < kThreadN; ++j) acc[i][j] += a[i] * b[j];
    }
    __syncthreads();
  }
#pragma unroll
  for (int i = 0; i < kThreadM; ++i) {
    const int64_t gm = m0 + ty * kThreadM + i;
    if (gm >= m) continue;
#pragma unroll
    for (int j = 0; j < kThreadN; ++j) {
      const int64_t gn = n0 + tx * kThreadN + j;
      if (gn < N) y[(row0 + gm) * ldy + gn] = acc[i][j];
    }
  }
}

}  // namespace

cudaError_t Linear(const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, float* y, int64_t ldy,
                   cudaStream_t stream) {
  DSV4_CUDA_SUPPORTED(CheckLinear(m, w, ldx, ldy));
  if (m == 0) return cudaSuccess;
  const LaunchConfig cfg = LinearLaunch(m, w.rows());
  const bool gemv = ChooseGemm(m) == GemmKind::kGemv;
  DSV4_DISPATCH_WEIGHT_TYPE(w.type, kType, {
    if (gemv) {
      DSV4_LAUNCH(GemvKernel<kType>, cfg, stream, x, m, ldx, w, y, ldy);
    } else {
      auto kernel = TiledKernel<kType, false>;
      DSV4_LAUNCH(kernel, cfg, stream, x, ldx, w, nullptr, nullptr, m, y, ldy);
    }
  });
  return cudaGetLastError();
}

cudaError_t GroupedLinear(const float* x, int64_t ldx, const WeightMatrix* weights, const WeightMatrix& like,
                          const int32_t* offsets, int64_t groups, int64_t max_rows, float* y, int64_t ldy,
                          cudaStream_t stream) {
  DSV4_CUDA_SUPPORTED(CheckLinear(max_rows, like, ldx, ldy));
  if (groups == 0 || max_rows == 0) return cudaSuccess;
  const LaunchConfig cfg = GroupedLinearLaunch(max_rows, like.rows(), groups);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_DISPATCH_WEIGHT_TYPE(like.type, kType, {
    auto kernel = TiledKernel<kType, true>;
    DSV4_LAUNCH(kernel, cfg, stream, x, ldx, like, weights, offsets, max_rows, y, ldy);
  });
  return cudaGetLastError();
}

}  // namespace dsv4::kernels::cuda
