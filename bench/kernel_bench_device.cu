// The device-side helpers of `dsv4 bench kernels` (kernel_bench.cc): the copy kernel whose
// bandwidth is the limit the kernels' figures are a ratio to, and the L2 flush between timed runs.
#include <cuda_runtime.h>

#include <cstdint>

#include "bench/kernel_bench.h"

namespace dsv4::bench {
namespace {

// Grid-stride 16-byte copy: every thread keeps 4 loads in flight before its stores.
__global__ void CopyKernel(const uint4* __restrict__ src, uint4* __restrict__ dst, int64_t n) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = src[i], b = src[i + stride], c = src[i + 2 * stride], d = src[i + 3 * stride];
    dst[i] = a, dst[i + stride] = b, dst[i + 2 * stride] = c, dst[i + 3 * stride] = d;
  }
  for (; i < n; i += stride) dst[i] = src[i];
}

// Reads every 16 bytes of `buf` and writes a word when the sum is impossible: the read traffic of a
// weight stream without the math (the other half of the limit).
__global__ void ReadKernel(const uint4* __restrict__ src, int64_t n, uint32_t* sink) {
  const int64_t stride = static_cast<int64_t>(gridDim.x) * blockDim.x;
  uint32_t acc = 0;
  int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + 3 * stride < n; i += 4 * stride) {
    const uint4 a = src[i], b = src[i + stride], c = src[i + 2 * stride], d = src[i + 3 * stride];
    acc ^= a.x ^ a.w ^ b.y ^ b.z ^ c.x ^ c.y ^ d.z ^ d.w;
  }
  for (; i < n; i += stride) acc ^= src[i].x;
  if (acc == 0x9e3779b9u) *sink = acc;
}

__device__ __forceinline__ uint32_t Hash(uint64_t i, uint32_t seed) {
  uint64_t z = i * 0x9e3779b97f4a7c15ull + seed;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return static_cast<uint32_t>(z ^ (z >> 31));
}

__global__ void FillBytesKernel(uint8_t* p, int64_t bytes, uint32_t seed, uint8_t and_mask, uint8_t or_bits,
                                bool no_fp8_nan) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < bytes;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint8_t v = static_cast<uint8_t>((Hash(static_cast<uint64_t>(i), seed) & and_mask) | or_bits);
    if (no_fp8_nan && (v & 0x7f) == 0x7f) v ^= 1;
    p[i] = v;
  }
}

__global__ void FillFloatsKernel(float* p, int64_t n, uint32_t seed, float scale) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    p[i] = scale * (static_cast<float>(Hash(static_cast<uint64_t>(i), seed) % 2000001u) / 1000000.0f - 1.0f);
}

}  // namespace

cudaError_t DeviceCopy(const void* src, void* dst, int64_t bytes, int sms, cudaStream_t stream) {
  CopyKernel<<<sms * 8, 256, 0, stream>>>(static_cast<const uint4*>(src), static_cast<uint4*>(dst), bytes / 16);
  return cudaGetLastError();
}

cudaError_t DeviceRead(const void* src, int64_t bytes, uint32_t* sink, int sms, cudaStream_t stream) {
  ReadKernel<<<sms * 8, 256, 0, stream>>>(static_cast<const uint4*>(src), bytes / 16, sink);
  return cudaGetLastError();
}

}  // namespace dsv4::bench

namespace dsv4::bench {

cudaError_t FillBytes(void* p, int64_t bytes, uint32_t seed, uint8_t and_mask, uint8_t or_bits, bool no_fp8_nan,
                      cudaStream_t stream) {
  FillBytesKernel<<<1024, 256, 0, stream>>>(static_cast<uint8_t*>(p), bytes, seed, and_mask, or_bits, no_fp8_nan);
  return cudaGetLastError();
}

cudaError_t FillFloats(float* p, int64_t n, uint32_t seed, float scale, cudaStream_t stream) {
  FillFloatsKernel<<<1024, 256, 0, stream>>>(p, n, seed, scale);
  return cudaGetLastError();
}

}  // namespace dsv4::bench
