// Row gather (Engram rows from pinned host memory, MoE dispatch packing) and scatter (window keys
// into the KV pool), and the ordered weighted combine of MoE results.
#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace dsv4::kernels::cuda {
namespace {

// Block per listed row r (gather: destination row r from source row ids[r], zeros for ids[r] < 0;
// scatter: source row r to destination row ids[r], skipped for ids[r] < 0); kVec-byte copies (16
// when every address and pitch is 16-aligned).
template <typename Vec, bool kScatter>
__global__ void MoveRowsKernel(const char* src, int64_t src_pitch, const int64_t* ids, int64_t row_bytes, char* dst,
                               int64_t dst_pitch) {
  const int64_t r = blockIdx.x, id = ids[r], n = row_bytes / static_cast<int64_t>(sizeof(Vec));
  if (kScatter && id < 0) return;
  Vec* d = reinterpret_cast<Vec*>(dst + (kScatter ? id : r) * dst_pitch);
  if (id < 0) {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) d[i] = Vec{};
    return;
  }
  const Vec* s = reinterpret_cast<const Vec*>(src + (kScatter ? r : id) * src_pitch);
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) d[i] = s[i];
}

// Block per row: row r to the address dst[r], 4 bytes per thread step (rows of floats or ints).
__global__ void ScatterRowsToKernel(const char* src, int64_t src_pitch, const uint64_t* dst, int64_t words) {
  const int64_t r = blockIdx.x;
  if (dst[r] == 0) return;
  const uint32_t* s = reinterpret_cast<const uint32_t*>(src + r * src_pitch);
  uint32_t* d = reinterpret_cast<uint32_t*>(dst[r]);
  for (int64_t i = threadIdx.x; i < words; i += blockDim.x) d[i] = s[i];
}

// Thread per (row t, column c): the row's contributions in CSR order. Each product is rounded
// before it is added (__fmul_rn / __fadd_rn are never contracted into an FMA), as the CPU's plain
// loop does, so the two agree bit for bit.
__global__ void CombineRowsKernel(const float* src, int64_t lds, const int32_t* offsets, const int32_t* src_rows,
                                  const float* weights, int64_t D, bool accumulate, float* out, int64_t ldo) {
  const int64_t t = blockIdx.x, c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= D) return;
  float acc = accumulate ? out[t * ldo + c] : 0.f;
  for (int32_t e = offsets[t]; e < offsets[t + 1]; ++e) {
    if (src_rows[e] < 0) continue;
    const float v = src[static_cast<int64_t>(src_rows[e]) * lds + c];
    acc = __fadd_rn(acc, weights ? __fmul_rn(weights[e], v) : v);
  }
  out[t * ldo + c] = acc;
}

// Grid-stride: x[i] = start + i * step (two's-complement wrap as on the host).
__global__ void IotaKernel(int32_t* x, int64_t n, int32_t start, int32_t step) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] = static_cast<int32_t>(static_cast<uint32_t>(start) + static_cast<uint32_t>(i) * static_cast<uint32_t>(step));
}

__global__ void ScaleKernel(float* x, int64_t n, float s) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    x[i] *= s;
}

__global__ void PickRowsKernel(const int32_t* picks, int64_t m, int64_t k, const int32_t* block_base, int64_t per_block,
                               int32_t offset, int32_t* rows, int64_t ldrows) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < m * k;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / k, i = e % k;
    const int32_t p = picks[e];
    rows[t * ldrows + i] = p < 0 ? -1 : offset + block_base[p / per_block] + static_cast<int32_t>(p % per_block);
  }
}

// Block per row: any thread's non-finite value flags the row.
__global__ void FlagNonFiniteKernel(const float* x, int64_t ldx, int64_t n, const int32_t* rows, int32_t* flags) {
  const float* row = x + static_cast<int64_t>(rows[blockIdx.x]) * ldx;
  int bad = 0;
  for (int64_t j = threadIdx.x; j < n; j += blockDim.x) bad |= !isfinite(row[j]);
  bad = __syncthreads_or(bad);
  if (threadIdx.x == 0) flags[blockIdx.x] = bad != 0;
}

bool Aligned16(const void* p, int64_t a, int64_t b, int64_t c) {
  return (reinterpret_cast<uintptr_t>(p) % 16 == 0) && a % 16 == 0 && b % 16 == 0 && c % 16 == 0;
}

template <bool kScatter>
cudaError_t MoveRows(const void* src, int64_t src_pitch, const int64_t* ids, int64_t rows, int64_t row_bytes, void* dst,
                     int64_t dst_pitch, cudaStream_t stream) {
  if (row_bytes < 0 || src_pitch < row_bytes || dst_pitch < row_bytes) return cudaErrorInvalidValue;
  if (rows == 0 || row_bytes == 0) return cudaSuccess;
  const LaunchConfig cfg = GatherLaunch(rows);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  const char* s = static_cast<const char*>(src);
  char* d = static_cast<char*>(dst);
  const auto wide = MoveRowsKernel<uint4, kScatter>;
  const auto narrow = MoveRowsKernel<unsigned char, kScatter>;
  if (Aligned16(src, src_pitch, row_bytes, dst_pitch) && reinterpret_cast<uintptr_t>(dst) % 16 == 0) {
    DSV4_LAUNCH(wide, cfg, stream, s, src_pitch, ids, row_bytes, d, dst_pitch);
  } else {
    DSV4_LAUNCH(narrow, cfg, stream, s, src_pitch, ids, row_bytes, d, dst_pitch);
  }
  return cudaGetLastError();
}

}  // namespace

cudaError_t GatherRows(const void* src, int64_t src_pitch, const int64_t* ids, int64_t rows, int64_t row_bytes,
                       void* dst, int64_t dst_pitch, cudaStream_t stream) {
  return MoveRows<false>(src, src_pitch, ids, rows, row_bytes, dst, dst_pitch, stream);
}

cudaError_t ScatterRows(const void* src, int64_t src_pitch, const int64_t* ids, int64_t rows, int64_t row_bytes,
                        void* dst, int64_t dst_pitch, cudaStream_t stream) {
  return MoveRows<true>(src, src_pitch, ids, rows, row_bytes, dst, dst_pitch, stream);
}

cudaError_t ScatterRowsTo(const void* src, int64_t src_pitch, const uint64_t* dst, int64_t rows, int64_t row_bytes,
                          cudaStream_t stream) {
  if (row_bytes < 0 || row_bytes % 4 != 0 || src_pitch < row_bytes || src_pitch % 4 != 0) return cudaErrorInvalidValue;
  if (rows == 0 || row_bytes == 0) return cudaSuccess;
  const LaunchConfig cfg = GatherLaunch(rows);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_LAUNCH(ScatterRowsToKernel, cfg, stream, static_cast<const char*>(src), src_pitch, dst, row_bytes / 4);
  return cudaGetLastError();
}

cudaError_t Iota(int32_t* x, int64_t n, int32_t start, int32_t step, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const LaunchConfig cfg = ElementwiseLaunch(n);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_LAUNCH(IotaKernel, cfg, stream, x, n, start, step);
  return cudaGetLastError();
}

cudaError_t Scale(float* x, int64_t n, float s, cudaStream_t stream) {
  if (n < 0) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const LaunchConfig cfg = ElementwiseLaunch(n);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_LAUNCH(ScaleKernel, cfg, stream, x, n, s);
  return cudaGetLastError();
}

cudaError_t PickRows(const int32_t* picks, int64_t m, int64_t k, const int32_t* block_base, int64_t per_block,
                     int32_t offset, int32_t* rows, int64_t ldrows, cudaStream_t stream) {
  if (m < 0 || k < 0 || per_block < 1 || ldrows < k) return cudaErrorInvalidValue;
  if (m == 0 || k == 0) return cudaSuccess;
  const LaunchConfig cfg = ElementwiseLaunch(m * k);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_LAUNCH(PickRowsKernel, cfg, stream, picks, m, k, block_base, per_block, offset, rows, ldrows);
  return cudaGetLastError();
}

cudaError_t FlagNonFinite(const float* x, int64_t ldx, int64_t n, const int32_t* rows, int64_t count, int32_t* flags,
                          cudaStream_t stream) {
  if (count < 0 || n < 0 || ldx < n) return cudaErrorInvalidValue;
  if (count == 0) return cudaSuccess;
  const LaunchConfig cfg = RmsNormLaunch(count, n > 0 ? n : 1);  // a block per row, as the norms
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_LAUNCH(FlagNonFiniteKernel, cfg, stream, x, ldx, n, rows, flags);
  return cudaGetLastError();
}

cudaError_t CombineRows(const float* src, int64_t lds, const int32_t* offsets, const int32_t* src_rows,
                        const float* weights, int64_t rows, int64_t D, bool accumulate, float* out, int64_t ldo,
                        cudaStream_t stream) {
  if (D < 0 || lds < D || ldo < D) return cudaErrorInvalidValue;
  if (rows == 0 || D == 0) return cudaSuccess;
  const LaunchConfig cfg = CombineLaunch(rows, D);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_LAUNCH(CombineRowsKernel, cfg, stream, src, lds, offsets, src_rows, weights, D, accumulate, out, ldo);
  return cudaGetLastError();
}

namespace {

// Thread per (token, column): the dequantized element, written to each copy.
template <WeightType kType>
__global__ void EmbedRowsKernel(WeightMatrix table, const int32_t* ids, int64_t cols, int copies, float* out,
                                int64_t ldo) {
  const int64_t t = blockIdx.x, c = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (c >= cols) return;
  const float v = LoadWeight<kType>(table, ids[t], c);
  for (int i = 0; i < copies; ++i) out[t * ldo + i * cols + c] = v;
}

}  // namespace

cudaError_t EmbedRows(const WeightMatrix& table, const int32_t* ids, int64_t n, int copies, float* out, int64_t ldo,
                      cudaStream_t stream) {
  DSV4_CUDA_SUPPORTED(CheckWeight(table));
  const int64_t cols = table.cols();
  if (copies < 1 || ldo < copies * cols) return cudaErrorInvalidValue;
  if (n == 0) return cudaSuccess;
  const LaunchConfig cfg = EmbedLaunch(n, cols);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_DISPATCH_WEIGHT_TYPE(table.type, kType,
                            DSV4_LAUNCH(EmbedRowsKernel<kType>, cfg, stream, table, ids, cols, copies, out, ldo));
  return cudaGetLastError();
}

}  // namespace dsv4::kernels::cuda
