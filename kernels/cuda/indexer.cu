// Lightning-indexer scoring and row-wise top-k (also the MoE router's top-k).
#include <math_constants.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace dsv4::kernels::cuda {
namespace {

// Block = (token t, keys j0 .. j0+kIndexerKeysPerBlock-1). The token's queries [H, d] and weights
// [H] sit in shared memory, query rows padded to d+1 floats so lanes reading different heads hit
// different banks. One warp per key, one lane per head (strided), one warp reduction per key.
__global__ void IndexerScoresKernel(const float* q, const float* w, int64_t H, int64_t d, const float* keys, int64_t n,
                                    const int64_t* nvis, float* score) {
  extern __shared__ float smem[];
  float* qs = smem;            // [H, d+1]
  float* ws = qs + H * (d + 1);  // [H]
  const int64_t t = blockIdx.x, j0 = static_cast<int64_t>(blockIdx.y) * kIndexerKeysPerBlock;
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
  const int64_t vis = nvis[t] < n ? nvis[t] : n;
  float* out = score + t * n;
  if (j0 >= vis) {  // nothing visible in this slice
    for (int64_t jj = threadIdx.x; jj < kIndexerKeysPerBlock && j0 + jj < n; jj += blockDim.x)
      out[j0 + jj] = -CUDART_INF_F;
    return;
  }
  for (int64_t e = threadIdx.x; e < H * d; e += blockDim.x) qs[(e / d) * (d + 1) + e % d] = q[t * H * d + e];
  for (int64_t h = threadIdx.x; h < H; h += blockDim.x) ws[h] = w[t * H + h];
  __syncthreads();
  for (int64_t jj = warp; jj < kIndexerKeysPerBlock; jj += warps) {
    const int64_t j = j0 + jj;
    if (j >= n) break;
    if (j >= vis) {
      if (lane == 0) out[j] = -CUDART_INF_F;
      continue;
    }
    const float* key = keys + j * d;
    float s = 0.f;
    for (int64_t h = lane; h < H; h += kWarpSize) {
      const float* qh = qs + h * (d + 1);
      float dot = 0.f;
      for (int64_t i = 0; i < d; ++i) dot += qh[i] * key[i];
      s += ws[h] * fmaxf(0.f, dot);
    }
    s = WarpSum(s);
    if (lane == 0) out[j] = s;
  }
}

// Block per row. (1) Radix select, 8 bits per pass from the top, of the kk-th largest ordered key T
// and of how many keys equal to T make the cut. (2) One ordered pass collects every key > T and the
// lowest-indexed keys == T (ballots give each its rank among equals). (3) Bitonic sort of the
// (value desc, index asc) 64-bit keys in shared memory, padded with zeros (which sort last).
__global__ void TopKKernel(const float* x, int64_t n, int64_t ldx, const int64_t* nvalid, int64_t k, int64_t sort_size,
                           int32_t* idx, int64_t ldidx) {
  extern __shared__ uint64_t cand[];  // [sort_size]
  __shared__ int hist[kTopKRadixBins];
  __shared__ int warp_counts[kTopKThreads / kWarpSize];
  __shared__ int selected;
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining;
  const int64_t t = blockIdx.x;
  const float* row = x + t * ldx;
  int32_t* out = idx + t * ldidx;
  int64_t nv = nvalid ? nvalid[t] : n;
  nv = nv < 0 ? 0 : (nv > n ? n : nv);
  const int kk = static_cast<int>(k < nv ? k : nv);
  for (int64_t i = kk + threadIdx.x; i < k; i += blockDim.x) out[i] = -1;
  if (kk == 0) return;

  uint32_t prefix = 0, mask = 0;
  int remaining = kk;  // how many of the keys matching `prefix` are still to be taken
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = threadIdx.x; b < kTopKRadixBins; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    for (int64_t i = threadIdx.x; i < nv; i += blockDim.x) {
      const uint32_t key = OrderedKey(row[i]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xff], 1);
    }
    __syncthreads();
    if (threadIdx.x == 0) {
      int above = 0;
      for (int b = kTopKRadixBins - 1; b >= 0; --b) {
        if (above + hist[b] >= remaining) {
          s_prefix = prefix | (static_cast<uint32_t>(b) << shift);
          s_remaining = remaining - above;
          break;
        }
        above += hist[b];
      }
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 0xffu << shift;
  }
  // After the loop: exactly kk - remaining keys are > prefix, and `remaining` of those == prefix
  // are taken, lowest index first.
  if (threadIdx.x == 0) selected = 0;
  __syncthreads();
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
  int64_t equal_before = 0;  // keys == prefix at indices below this chunk (same in every thread)
  for (int64_t base = 0; base < nv; base += blockDim.x) {
    const int64_t i = base + threadIdx.x;
    const bool valid = i < nv;
    const float v = valid ? row[i] : 0.f;
    const uint32_t key = valid ? OrderedKey(v) : 0u;
    if (valid && key > prefix) cand[atomicAdd(&selected, 1)] = TopKKey(v, static_cast<uint32_t>(i));
    const bool eq = valid && key == prefix;
    const unsigned ballot = __ballot_sync(0xffffffffu, eq);
    if (lane == 0) warp_counts[warp] = __popc(ballot);
    __syncthreads();
    int64_t rank = equal_before + __popc(ballot & ((1u << lane) - 1u)), chunk_total = 0;
    for (int w = 0; w < warps; ++w) {
      if (w < warp) rank += warp_counts[w];
      chunk_total += warp_counts[w];
    }
    if (eq && rank < remaining) cand[atomicAdd(&selected, 1)] = TopKKey(v, static_cast<uint32_t>(i));
    equal_before += chunk_total;
    __syncthreads();
  }
  for (int64_t i = kk + threadIdx.x; i < sort_size; i += blockDim.x) cand[i] = 0;
  __syncthreads();
  for (int64_t size = 2; size <= sort_size; size <<= 1) {
    for (int64_t stride = size >> 1; stride > 0; stride >>= 1) {
      for (int64_t i = threadIdx.x; i < sort_size; i += blockDim.x) {
        const int64_t j = i ^ stride;
        if (j > i) {
          const bool descending = (i & size) == 0;
          const uint64_t a = cand[i], b = cand[j];
          if ((a < b) == descending) cand[i] = b, cand[j] = a;
        }
      }
      __syncthreads();
    }
  }
  for (int64_t i = threadIdx.x; i < kk; i += blockDim.x) out[i] = static_cast<int32_t>(TopKKeyIndex(cand[i]));
}

}  // namespace

cudaError_t IndexerScores(const float* q, const float* w, int64_t m, int64_t H, int64_t d, const float* keys,
                          int64_t n, const int64_t* nvis, float* score, cudaStream_t stream) {
  DSV4_CUDA_SUPPORTED(CheckIndexer(H, d));
  if (m == 0 || n == 0) return cudaSuccess;
  const LaunchConfig cfg = IndexerLaunch(m, H, d, n);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_LAUNCH(IndexerScoresKernel, cfg, stream, q, w, H, d, keys, n, nvis, score);
  return cudaGetLastError();
}

cudaError_t TopK(const float* x, int64_t m, int64_t n, int64_t ldx, const int64_t* nvalid, int64_t k, int32_t* idx,
                 int64_t ldidx, cudaStream_t stream) {
  DSV4_CUDA_SUPPORTED(CheckTopK(n, k));
  if (ldx < n || ldidx < k) return cudaErrorInvalidValue;
  if (m == 0 || k == 0) return cudaSuccess;
  const LaunchConfig cfg = TopKLaunch(m, k);
  DSV4_LAUNCH(TopKKernel, cfg, stream, x, n, ldx, nvalid, k, TopKSortSize(k), idx, ldidx);
  return cudaGetLastError();
}

}  // namespace dsv4::kernels::cuda
