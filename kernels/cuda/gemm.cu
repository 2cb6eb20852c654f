// y = x W^T: the launchers (ChooseLinear in launch.h picks the kernel) and the simple kernels, which
// dequantize F32 / BF16 / FP8 (block scales) / FP4 (per-32 scales) weights on the fly on CUDA cores:
// a warp-per-row GEMV for a few tokens, a 32x64 shared-memory tile beyond, and the same tile over
// groups for MoE experts, FP32 accumulation throughout (the CPU kernel's precision). They take every
// shape and format; the tensor-core kernels (gemm_skinny.cu, gemm_fp8.cu) take the common ones.
#include <atomic>

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

// gemm_skinny.cu and gemm_fp8.cu.
cudaError_t SkinnyLinear(const SkinnyPlan& p, const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, float* y,
                         int64_t ldy, int act_group, void* workspace, cudaStream_t stream);
cudaError_t SkinnyGroupedLinear(const SkinnyPlan& p, const float* x, int64_t ldx, const WeightMatrix* weights,
                                const WeightMatrix& like, const int32_t* offsets, float* y, int64_t ldy, int act_group,
                                cudaStream_t stream);
cudaError_t Fp8TiledLinear(const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, float* y, int64_t ldy,
                           int act_group, void* workspace, cudaStream_t stream);

namespace {

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

cudaError_t LegacyLinear(const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, float* y, int64_t ldy,
                         cudaStream_t stream) {
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

const char* CheckWorkspace(const void* workspace, int64_t bytes) {
  if (bytes < 0) return "workspace_bytes must be >= 0";
  if (workspace != nullptr && !Aligned16(workspace)) return "the workspace must be 16-byte aligned";
  return nullptr;
}

const char* CheckActGroup(int act_fp8_group) {
  if (act_fp8_group != 0 && act_fp8_group != 32 && act_fp8_group != 64 && act_fp8_group != 128)
    return "act_fp8_group must be 0, 32, 64 or 128";
  return nullptr;
}

}  // namespace

DeviceCaps CurrentDeviceCaps() {
  // One entry per device, filled on first use: (arch << 32) | sms, 0 until known.
  static std::atomic<int64_t> cache[64];
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess || device < 0) return {};
  if (device < 64) {
    if (const int64_t v = cache[device].load(std::memory_order_relaxed); v != 0)
      return {static_cast<int>(v >> 32), static_cast<int>(v & 0xffffffff)};
  }
  int major = 0, minor = 0, sms = 0;
  if (cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) != cudaSuccess ||
      cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device) != cudaSuccess)
    return {};
  const DeviceCaps caps{major * 10 + minor, sms};
  if (device < 64) cache[device].store((int64_t{caps.arch} << 32) | caps.sms, std::memory_order_relaxed);
  return caps;
}

int64_t LinearWorkspaceBytes(int64_t m, const WeightMatrix& w, int act_fp8_group) {
  if (CheckLinear(m, w, w.cols(), w.rows()) != nullptr || CheckActGroup(act_fp8_group) != nullptr) return 0;
  return LinearWorkspaceBytesFor(m, w, act_fp8_group, CurrentDeviceCaps());
}

cudaError_t Linear(const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, float* y, int64_t ldy,
                   const LinearOptions& o, cudaStream_t stream) {
  DSV4_CUDA_SUPPORTED(CheckLinear(m, w, ldx, ldy));
  DSV4_CUDA_SUPPORTED(CheckActGroup(o.act_fp8_group));
  DSV4_CUDA_SUPPORTED(CheckWorkspace(o.workspace, o.workspace_bytes));
  if (m == 0) return cudaSuccess;
  const int64_t ws_bytes = o.workspace != nullptr ? o.workspace_bytes : 0;
  const LinearChoice c = ChooseLinear(m, w, o.act_fp8_group, ws_bytes, CurrentDeviceCaps(), Aligned16(w.data));
  switch (c.path) {
    case LinearPath::kFp8Tiled:
      return Fp8TiledLinear(x, m, ldx, w, y, ldy, o.act_fp8_group, o.workspace, stream);
    case LinearPath::kSkinny:
      return SkinnyLinear(c.skinny, x, m, ldx, w, y, ldy, o.act_fp8_group, o.workspace, stream);
    case LinearPath::kLegacyGemv:
    case LinearPath::kLegacyTiled:
      break;
  }
  if (o.act_fp8_group == 0) return LegacyLinear(x, m, ldx, w, y, ldy, stream);
  // The simple kernels multiply x as it is: round a copy of it in the workspace first.
  if (ws_bytes < c.workspace_bytes) return cudaErrorInvalidValue;
  float* xr = static_cast<float*>(o.workspace);
  const int64_t K = w.cols();
  if (cudaError_t e = cudaMemcpy2DAsync(xr, K * sizeof(float), x, ldx * sizeof(float), K * sizeof(float), m,
                                        cudaMemcpyDeviceToDevice, stream);
      e != cudaSuccess)
    return e;
  if (cudaError_t e = QdqFp8(xr, m, K, K, o.act_fp8_group, stream); e != cudaSuccess) return e;
  return LegacyLinear(xr, m, K, w, y, ldy, stream);
}

cudaError_t Linear(const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, float* y, int64_t ldy,
                   cudaStream_t stream) {
  return Linear(x, m, ldx, w, y, ldy, LinearOptions{}, stream);
}

cudaError_t GroupedLinear(const float* x, int64_t ldx, const WeightMatrix* weights, const WeightMatrix& like,
                          const int32_t* offsets, int64_t groups, int64_t max_rows, float* y, int64_t ldy,
                          const LinearOptions& o, cudaStream_t stream) {
  DSV4_CUDA_SUPPORTED(CheckLinear(max_rows, like, ldx, ldy));
  DSV4_CUDA_SUPPORTED(CheckActGroup(o.act_fp8_group));
  if (groups == 0 || max_rows == 0) return cudaSuccess;
  // Every group's view has `like`'s type, shape and strides; its data is an upload (256-byte aligned).
  const DeviceCaps dev = CurrentDeviceCaps();
  if (SkinnyUnsupported(like, dev.arch, Aligned16(like.data)) == nullptr) {
    const SkinnyPlan p = PlanSkinny(max_rows, like.rows(), like.cols(), groups, dev, false);
    return SkinnyGroupedLinear(p, x, ldx, weights, like, offsets, y, ldy, o.act_fp8_group, stream);
  }
  if (o.act_fp8_group != 0) return cudaErrorInvalidValue;
  const LaunchConfig cfg = GroupedLinearLaunch(max_rows, like.rows(), groups);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_DISPATCH_WEIGHT_TYPE(like.type, kType, {
    auto kernel = TiledKernel<kType, true>;
    DSV4_LAUNCH(kernel, cfg, stream, x, ldx, like, weights, offsets, max_rows, y, ldy);
  });
  return cudaGetLastError();
}

cudaError_t GroupedLinear(const float* x, int64_t ldx, const WeightMatrix* weights, const WeightMatrix& like,
                          const int32_t* offsets, int64_t groups, int64_t max_rows, float* y, int64_t ldy,
                          cudaStream_t stream) {
  return GroupedLinear(x, ldx, weights, like, offsets, groups, max_rows, y, ldy, LinearOptions{}, stream);
}

}  // namespace dsv4::kernels::cuda
