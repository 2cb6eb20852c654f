// One mma.sync of each flavour the kernels use, on register values given per lane: the gpu test
// MmaRegisterModel checks the hardware against the register model the kernels are written for
// (mma_model.h) and the host replays assume.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/mma.cuh"

namespace dsv4::kernels::cuda {
namespace {

// One warp: lane l loads its A registers a[l][0..3], B registers b[l][0..1], runs one mma from zero
// accumulators and stores d[l][0..3].
__global__ void MmaProbeKernel(int flavor, const uint32_t* a, const uint32_t* b, float* d) {
  const int lane = threadIdx.x;
  const uint32_t ar[4] = {a[4 * lane], a[4 * lane + 1], a[4 * lane + 2], a[4 * lane + 3]};
  float acc[4] = {0.f, 0.f, 0.f, 0.f};
  if (flavor == 0) MmaF16(acc, ar, b[2 * lane], b[2 * lane + 1]);
  if (flavor == 1) MmaBf16(acc, ar, b[2 * lane], b[2 * lane + 1]);
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
  if (flavor == 2) MmaE4m3(acc, ar, b[2 * lane], b[2 * lane + 1]);
#endif
  for (int i = 0; i < 4; ++i) d[4 * lane + i] = acc[i];
}

}  // namespace

cudaError_t MmaProbe(int flavor, const uint32_t* a, const uint32_t* b, float* d, cudaStream_t stream) {
  if (flavor < 0 || flavor > 2) return cudaErrorInvalidValue;
  if (flavor == 2 && CurrentDeviceCaps().arch < 89) return cudaErrorNotSupported;
  MmaProbeKernel<<<1, kWarpSize, 0, stream>>>(flavor, a, b, d);
  return cudaGetLastError();
}

}  // namespace dsv4::kernels::cuda
