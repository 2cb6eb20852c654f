// Device helpers shared by the .cu files: warp/block reductions, weight element loads, and the
// launcher boilerplate. Included only by nvcc.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/cpu/kernels.h"
#include "kernels/cuda/device_math.h"
#include "kernels/cuda/dispatch.h"
#include "kernels/cuda/launch.h"

namespace dsv4::kernels::cuda {

inline dim3 ToDim3(const Dim3& d) {
  return dim3(static_cast<unsigned>(d.x), static_cast<unsigned>(d.y), static_cast<unsigned>(d.z));
}

// A launch with a LaunchConfig from launch.h.
#define DSV4_LAUNCH(kernel, cfg, stream, ...)                                                                \
  kernel<<<::dsv4::kernels::cuda::ToDim3((cfg).grid), ::dsv4::kernels::cuda::ToDim3((cfg).block),          \
           static_cast<size_t>((cfg).smem_bytes), (stream)>>>(__VA_ARGS__)

// Returns cudaErrorInvalidValue from the enclosing launcher when `check` (a dispatch.h Check*) fails.
#define DSV4_CUDA_SUPPORTED(check)                 \
  do {                                             \
    if ((check) != nullptr) return cudaErrorInvalidValue; \
  } while (0)

// Sum over the warp (float or double); every lane gets the result.
template <typename T>
__device__ __forceinline__ T WarpSum(T v) {
  for (int o = kWarpSize / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ __forceinline__ float WarpMax(float v) {
  for (int o = kWarpSize / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// Sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `scratch` holds 32 values of shared memory; the call synchronizes the block twice.
template <typename T>
__device__ __forceinline__ T BlockSum(T v, T* scratch) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
  v = WarpSum(v);
  if (lane == 0) scratch[warp] = v;
  __syncthreads();
  T total = 0;
  for (int w = 0; w < warps; ++w) total += scratch[w];  // same order in every thread
  __syncthreads();
  return total;
}

// Element (r, c) of a weight view, relative to (row_begin, col_begin), as float.
template <WeightType kType>
__device__ __forceinline__ float LoadWeight(const WeightMatrix& w, int64_t r, int64_t c) {
  const int64_t row = w.row_begin + r, col = w.col_begin + c;
  if constexpr (kType == WeightType::kF32) {
    return static_cast<const float*>(w.data)[row * w.ld + col];
  } else if constexpr (kType == WeightType::kBF16) {
    return DecodeBf16(static_cast<const uint16_t*>(w.data)[row * w.ld + col]);
  } else if constexpr (kType == WeightType::kFP8) {
    const uint8_t q = static_cast<const uint8_t*>(w.data)[row * w.ld + col];
    return DecodeFp8E4m3(q) * DecodeE8m0(w.scales[(row / w.block_rows) * w.scale_ld + col / w.block_cols]);
  } else {
    const uint8_t byte = static_cast<const uint8_t*>(w.data)[row * w.ld + (col >> 1)];
    const uint8_t code = (col & 1) ? static_cast<uint8_t>(byte >> 4) : static_cast<uint8_t>(byte & 0xf);
    return DecodeFp4E2m1(code) * DecodeE8m0(w.scales[row * w.scale_ld + col / w.block_cols]);
  }
}

}  // namespace dsv4::kernels::cuda
