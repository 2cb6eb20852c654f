// Row and element-wise kernels: QDQ rounding, RMSNorm, RoPE, Hadamard, clamped SwiGLU.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace dsv4::kernels::cuda {
namespace {

// Block per row; warp w handles groups w, w + warps, ...: amax over the group, one scale, rounding.
// The groups' formats: FP8 or FP4 with a power-of-two scale, or FP4 with an E4M3 scale.
enum class QdqKind { kFp8, kFp4, kFp4E4m3 };

template <QdqKind kKind>
__global__ void QdqKernel(float* x, int64_t n, int64_t ld, int group) {
  constexpr bool kFp4 = kKind != QdqKind::kFp8;
  float* row = x + static_cast<int64_t>(blockIdx.x) * ld;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
  for (int64_t g = static_cast<int64_t>(warp) * group; g < n; g += static_cast<int64_t>(warps) * group) {
    const int64_t end = g + group < n ? g + group : n;  // a short last group is its own group
    float amax = 0.f;
    for (int64_t i = g + lane; i < end; i += kWarpSize) amax = fmaxf(amax, fabsf(row[i]));
    const float scale = kKind == QdqKind::kFp4E4m3 ? QdqScaleFp4E4m3(WarpMax(amax)) : QdqScale(WarpMax(amax), kFp4);
    for (int64_t i = g + lane; i < end; i += kWarpSize) row[i] = QdqValue(row[i], scale, kFp4);
  }
}

__global__ void RmsNormKernel(const float* x, const float* w, float eps, int64_t n, int64_t ldx, float* y,
                              int64_t ldy) {
  __shared__ float scratch[kWarpSize];
  const float* xr = x + static_cast<int64_t>(blockIdx.x) * ldx;
  float* yr = y + static_cast<int64_t>(blockIdx.x) * ldy;
  float ss = 0.f;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) ss += xr[i] * xr[i];
  const float r = 1.0f / sqrtf(BlockSum(ss, scratch) / static_cast<float>(n) + eps);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) yr[i] = (w ? w[i] : 1.0f) * (xr[i] * r);
}

__global__ void RopeKernel(float* x, int64_t rows, int64_t ldx, int64_t half, const float* cos, const float* sin,
                           int64_t rows_per_entry, bool inverse) {
  const int64_t total = rows * half;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t r = p / half, i = p % half, e = r / rows_per_entry;
    const float c = cos[e * half + i], s = inverse ? -sin[e * half + i] : sin[e * half + i];
    float* pair = x + r * ldx + 2 * i;
    const float a = pair[0], b = pair[1];
    pair[0] = a * c - b * s;
    pair[1] = a * s + b * c;
  }
}

// Block per row, the row in shared memory; stage h pairs (j, j+h) within blocks of 2h, the same
// pairing and order of operations as the CPU loop (bit-identical).
__global__ void HadamardKernel(float* x, int64_t n, int64_t ld, float scale) {
  extern __shared__ float buf[];
  float* row = x + static_cast<int64_t>(blockIdx.x) * ld;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) buf[i] = row[i];
  __syncthreads();
  for (int64_t h = 1; h < n; h *= 2) {
    for (int64_t b = threadIdx.x; b < n / 2; b += blockDim.x) {
      const int64_t j = (b / h) * 2 * h + (b % h);
      const float u = buf[j], v = buf[j + h];
      buf[j] = u + v;
      buf[j + h] = u - v;
    }
    __syncthreads();
  }
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) row[i] = buf[i] * scale;
}

__global__ void SwiGluKernel(const float* g, const float* u, int64_t m, int64_t I, int64_t ld, const float* row_weight,
                             float limit, float* h) {
  const int64_t total = m * I;
  for (int64_t p = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; p < total;
       p += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = p / I, off = t * ld + p % I;
    float gv = g[off], uv = u[off];
    if (limit > 0) {
      uv = fminf(fmaxf(uv, -limit), limit);
      gv = fminf(gv, limit);  // the gate has no lower clamp
    }
    float v = gv / (1.0f + expf(-gv)) * uv;
    if (row_weight) v *= row_weight[t];
    h[off] = v;
  }
}

// Engram's gate, a block per (token, stream): the stream's and its key's mean squares and their
// weighted dot product (float products, double sums, as kernels::EngramGate), then
// x_i += gate * value. kv [n, ldkv] holds the hc keys and the value of each token.
__global__ void EngramGateKernel(const float* kv, int64_t ldkv, const float* gate_weight, int hc, int64_t D, float eps,
                                 float* x) {
  __shared__ double scratch[kWarpSize];
  const int64_t row = blockIdx.x, t = row / hc;
  const int i = static_cast<int>(row % hc);
  float* xi = x + (t * hc + i) * D;
  const float* key = kv + t * ldkv + static_cast<int64_t>(i) * D;
  const float* value = kv + t * ldkv + static_cast<int64_t>(hc) * D;
  const float* w = gate_weight + static_cast<int64_t>(i) * D;
  double xx = 0, kk = 0, xwk = 0;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    xx += static_cast<double>(__fmul_rn(xi[d], xi[d]));
    kk += static_cast<double>(__fmul_rn(key[d], key[d]));
    xwk += static_cast<double>(__fmul_rn(__fmul_rn(xi[d], w[d]), key[d]));
  }
  xx = BlockSum(xx, scratch);
  kk = BlockSum(kk, scratch);
  xwk = BlockSum(xwk, scratch);
  const float fd = static_cast<float>(D);
  const float rstd =
      (1.0f / sqrtf(static_cast<float>(xx) / fd + eps)) * (1.0f / sqrtf(static_cast<float>(kk) / fd + eps));
  const float dot = static_cast<float>(xwk) * rstd * static_cast<float>(1.0 / sqrt(static_cast<double>(D)));
  const float z = copysignf(sqrtf(fmaxf(fabsf(dot), 1e-6f)), dot);
  const float gate = 1.0f / (1.0f + expf(-z));
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) xi[d] = __fadd_rn(xi[d], __fmul_rn(gate, value[d]));
}

template <QdqKind kKind>
cudaError_t LaunchQdq(float* x, int64_t m, int64_t n, int64_t ld, int group, cudaStream_t stream) {
  DSV4_CUDA_SUPPORTED(CheckQdq(n, ld, group));
  if (m == 0 || n == 0) return cudaSuccess;
  const LaunchConfig cfg = QdqLaunch(m);
  DSV4_LAUNCH(QdqKernel<kKind>, cfg, stream, x, n, ld, group);
  return cudaGetLastError();
}

}  // namespace

cudaError_t QdqFp8(float* x, int64_t m, int64_t n, int64_t ld, int group, cudaStream_t stream) {
  return LaunchQdq<QdqKind::kFp8>(x, m, n, ld, group, stream);
}

cudaError_t QdqFp4(float* x, int64_t m, int64_t n, int64_t ld, int group, cudaStream_t stream) {
  return LaunchQdq<QdqKind::kFp4>(x, m, n, ld, group, stream);
}

cudaError_t QdqFp4E4m3(float* x, int64_t m, int64_t n, int64_t ld, int group, cudaStream_t stream) {
  return LaunchQdq<QdqKind::kFp4E4m3>(x, m, n, ld, group, stream);
}

cudaError_t EngramGateRows(const float* kv, int64_t ldkv, const float* gate_weight, int64_t n, int hc, int64_t D,
                           float eps, float* x, cudaStream_t stream) {
  if (n < 0 || hc < 1 || D < 1 || ldkv < (hc + 1) * D) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const LaunchConfig cfg = RmsNormLaunch(n * hc, D);  // a block per stream row, as the norms
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_LAUNCH(EngramGateKernel, cfg, stream, kv, ldkv, gate_weight, hc, D, eps, x);
  return cudaGetLastError();
}

cudaError_t RmsNorm(const float* x, const float* w, float eps, int64_t m, int64_t n, int64_t ldx, float* y,
                    int64_t ldy, cudaStream_t stream) {
  if (n < 1 || ldx < n || ldy < n) return cudaErrorInvalidValue;
  if (m == 0) return cudaSuccess;
  const LaunchConfig cfg = RmsNormLaunch(m, n);
  DSV4_LAUNCH(RmsNormKernel, cfg, stream, x, w, eps, n, ldx, y, ldy);
  return cudaGetLastError();
}

cudaError_t Rope(float* x, int64_t rows, int64_t ldx, int64_t half, const float* cos, const float* sin,
                 int64_t rows_per_entry, bool inverse, cudaStream_t stream) {
  if (half < 0 || rows_per_entry < 1 || ldx < 2 * half) return cudaErrorInvalidValue;
  if (rows == 0 || half == 0) return cudaSuccess;
  const LaunchConfig cfg = ElementwiseLaunch(rows * half);
  DSV4_LAUNCH(RopeKernel, cfg, stream, x, rows, ldx, half, cos, sin, rows_per_entry, inverse);
  return cudaGetLastError();
}

cudaError_t Hadamard(float* x, int64_t m, int64_t n, int64_t ld, float scale, cudaStream_t stream) {
  DSV4_CUDA_SUPPORTED(CheckHadamard(n));
  if (ld < n) return cudaErrorInvalidValue;
  if (m == 0) return cudaSuccess;
  const LaunchConfig cfg = HadamardLaunch(m, n);
  DSV4_LAUNCH(HadamardKernel, cfg, stream, x, n, ld, scale);
  return cudaGetLastError();
}

cudaError_t SwiGlu(const float* g, const float* u, int64_t m, int64_t I, int64_t ld, const float* row_weight,
                   float limit, float* h, cudaStream_t stream) {
  if (I < 0 || ld < I) return cudaErrorInvalidValue;
  if (m == 0 || I == 0) return cudaSuccess;
  const LaunchConfig cfg = ElementwiseLaunch(m * I);
  DSV4_LAUNCH(SwiGluKernel, cfg, stream, g, u, m, I, ld, row_weight, limit, h);
  return cudaGetLastError();
}

}  // namespace dsv4::kernels::cuda
