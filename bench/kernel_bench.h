// Device helpers of `dsv4 bench kernels` (kernel_bench_device.cu), CUDA builds only.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace dsv4::bench {

// dst = src, `bytes` (a multiple of 16) with 16-byte loads and stores over `sms` x 8 blocks: the
// device copy bandwidth every kernel figure is compared with.
cudaError_t DeviceCopy(const void* src, void* dst, int64_t bytes, int sms, cudaStream_t stream);
// Reads `bytes` (a multiple of 16) of src the same way and writes nothing (but `sink` on an
// impossible sum): the read-only bandwidth.
cudaError_t DeviceRead(const void* src, int64_t bytes, uint32_t* sink, int sms, cudaStream_t stream);
// Fills `bytes` with hashed bytes of `seed`, each ANDed with and_mask and ORed with or_bits, with
// byte values v where (v & 0x7f) == 0x7f replaced by v ^ 1 when no_fp8_nan (no E4M3 NaN codes).
cudaError_t FillBytes(void* p, int64_t bytes, uint32_t seed, uint8_t and_mask, uint8_t or_bits, bool no_fp8_nan,
                      cudaStream_t stream);
// Fills n floats with hashed values in [-scale, scale].
cudaError_t FillFloats(float* p, int64_t n, uint32_t seed, float scale, cudaStream_t stream);

}  // namespace dsv4::bench
