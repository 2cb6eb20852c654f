// mHC pre (mix + Sinkhorn + collapse) and post (expand + residual mixing), one block per token.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace dsv4::kernels::cuda {
namespace {

// The token's sum of squares and its kDots dots with fn [kDots, width] over its stream xt [width]:
// each thread accumulates a strided slice, warps reduce by shuffles, then thread 0 adds the warps
// in order into sums [1 + kDots] (valid on thread 0 only). `partial` is shared, [warps][1 + kDots].
template <int kDots>
__device__ void NormAndDots(const float* xt, int64_t width, const float* fn, float* partial, float* sums) {
  constexpr int values = 1 + kDots;
  float acc[values];
  for (int v = 0; v < values; ++v) acc[v] = 0.f;
  for (int64_t i = threadIdx.x; i < width; i += blockDim.x) {
    const float xv = xt[i];
    acc[0] += xv * xv;
    for (int k = 0; k < kDots; ++k) acc[1 + k] += xv * fn[k * width + i];
  }
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
  for (int v = 0; v < values; ++v) {
    const float s = WarpSum(acc[v]);
    if (lane == 0) partial[warp * values + v] = s;
  }
  __syncthreads();
  if (threadIdx.x == 0)
    for (int v = 0; v < values; ++v) {
      float s = 0.f;
      for (int w = 0; w < warps; ++w) s += partial[w * values + v];
      sums[v] = s;
    }
}

// out[d] = sum_i pre[i] * xt[i * D + d], every thread a strided slice of D.
template <int kHc>
__device__ void Collapse(const float* pre, const float* xt, int64_t D, float* out) {
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    float u = 0.f;
    for (int i = 0; i < kHc; ++i) u += pre[i] * xt[i * D + d];
    out[d] = u;
  }
}

// One block per token: its sum of squares and hc*(hc+2) mixes (NormAndDots); thread 0 runs Sinkhorn
// and publishes pre; every thread then collapses its slice of D.
template <int kHc>
__global__ void HcPreKernel(const float* x, int64_t D, int64_t ldx, const float* fn, const float* scale3,
                            const float* base, int iters, float norm_eps, float hc_eps, float* collapsed, float* post,
                            float* comb, float* pre_out) {
  extern __shared__ float partial[];  // [warps][1 + mix]
  __shared__ float pre_s[kMaxHc];
  constexpr int hc = kHc, mix = kHc * (kHc + 2), values = 1 + mix;
  const int64_t t = blockIdx.x, width = hc * D;
  const float* xt = x + t * ldx;
  float sums[values];
  NormAndDots<mix>(xt, width, fn, partial, sums);
  if (threadIdx.x == 0) {
    float mixes[mix];
    const float rs = 1.0f / sqrtf(sums[0] / static_cast<float>(width) + norm_eps);
    for (int k = 0; k < mix; ++k) mixes[k] = sums[1 + k] * rs;
    float pre[hc], post_t[hc], comb_t[hc * hc];
    SplitSinkhorn(mixes, scale3, base, hc, iters, hc_eps, pre, post_t, comb_t);
    for (int i = 0; i < hc; ++i) {
      pre_s[i] = pre[i];
      post[t * hc + i] = post_t[i];
      if (pre_out != nullptr) pre_out[t * hc + i] = pre[i];
    }
    for (int i = 0; i < hc * hc; ++i) comb[t * hc * hc + i] = comb_t[i];
  }
  __syncthreads();
  if (collapsed != nullptr) Collapse<kHc>(pre_s, xt, D, collapsed + t * D);
}

// Thread per (token, d): reads the token's hc stream values at d, writes hc mixed values back.
__global__ void HcPostKernel(const float* y, int64_t ldy, const float* post, const float* comb, int hc, int64_t D,
                             float* x, int64_t ldx) {
  const int64_t t = blockIdx.x, d = blockIdx.y * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (d >= D) return;
  float* xt = x + t * ldx;
  const float* ct = comb + t * hc * hc;
  float in[kMaxHc];
  for (int i = 0; i < hc; ++i) in[i] = xt[i * D + d];
  const float yv = y[t * ldy + d];
  for (int j = 0; j < hc; ++j) {
    float out = post[t * hc + j] * yv;
    for (int i = 0; i < hc; ++i) out += ct[i * hc + j] * in[i];
    xt[j * D + d] = out;
  }
}

}  // namespace

cudaError_t HcPre(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale3,
                  const float* base, int iters, float norm_eps, float hc_eps, float* collapsed, float* post,
                  float* comb, float* pre, cudaStream_t stream) {
  DSV4_CUDA_SUPPORTED(CheckHc(hc));
  if (D < 1 || ldx < hc * D) return cudaErrorInvalidValue;
  if (m == 0) return cudaSuccess;
  const LaunchConfig cfg = HcPreLaunch(m, hc);
  DSV4_DISPATCH_HC(hc, kHc,
                   DSV4_LAUNCH(HcPreKernel<kHc>, cfg, stream, x, D, ldx, fn, scale3, base, iters, norm_eps, hc_eps,
                               collapsed, post, comb, pre));
  return cudaGetLastError();
}

cudaError_t HcPost(const float* y, int64_t ldy, const float* post, const float* comb, int64_t m, int hc, int64_t D,
                   float* x, int64_t ldx, cudaStream_t stream) {
  DSV4_CUDA_SUPPORTED(CheckHc(hc));
  if (D < 1 || ldx < hc * D || ldy < D) return cudaErrorInvalidValue;
  if (m == 0) return cudaSuccess;
  const LaunchConfig cfg = HcPostLaunch(m, D);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_LAUNCH(HcPostKernel, cfg, stream, y, ldy, post, comb, hc, D, x, ldx);
  return cudaGetLastError();
}

namespace {

// One block per token: its sum of squares and hc dots with fn (NormAndDots); thread 0 computes the
// hc sigmoid weights; every thread then collapses its slice of D.
template <int kHc>
__global__ void HcHeadKernel(const float* x, int64_t D, int64_t ldx, const float* fn, const float* scale,
                             const float* base, float norm_eps, float hc_eps, float* out, int64_t ldo) {
  extern __shared__ float partial[];  // [warps][1 + hc]
  __shared__ float pre_s[kHc];
  constexpr int values = 1 + kHc;
  const int64_t t = blockIdx.x, width = kHc * D;
  const float* xt = x + t * ldx;
  float sums[values];
  NormAndDots<kHc>(xt, width, fn, partial, sums);
  if (threadIdx.x == 0) {
    const float rs = 1.0f / sqrtf(sums[0] / static_cast<float>(width) + norm_eps);
    for (int k = 0; k < kHc; ++k) pre_s[k] = 1.0f / (1.0f + expf(-(sums[1 + k] * rs * scale[0] + base[k]))) + hc_eps;
  }
  __syncthreads();
  Collapse<kHc>(pre_s, xt, D, out + t * ldo);
}

}  // namespace

cudaError_t HcHead(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale,
                   const float* base, float norm_eps, float hc_eps, float* out, int64_t ldo, cudaStream_t stream) {
  DSV4_CUDA_SUPPORTED(CheckHc(hc));
  if (D < 1 || ldx < hc * D || ldo < D) return cudaErrorInvalidValue;
  if (m == 0) return cudaSuccess;
  const LaunchConfig cfg = HcHeadLaunch(m, hc);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_DISPATCH_HC(hc, kHc,
                   DSV4_LAUNCH(HcHeadKernel<kHc>, cfg, stream, x, D, ldx, fn, scale, base, norm_eps, hc_eps, out, ldo));
  return cudaGetLastError();
}

}  // namespace dsv4::kernels::cuda
