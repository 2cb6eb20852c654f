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

// Sorts keys[0, count) descending by the whole block: pads keys[count, size) with zeros (they sort
// last; size a power of two >= count), then a bitonic network with a barrier per stage.
__device__ void BitonicSortDescending(uint64_t* keys, int64_t count, int64_t size) {
  for (int64_t i = count + threadIdx.x; i < size; i += blockDim.x) keys[i] = 0;
  __syncthreads();
  for (int64_t len = 2; len <= size; len <<= 1) {
    for (int64_t stride = len >> 1; stride > 0; stride >>= 1) {
      for (int64_t i = threadIdx.x; i < size; i += blockDim.x) {
        const int64_t j = i ^ stride;
        if (j > i) {
          const bool descending = (i & len) == 0;
          const uint64_t a = keys[i], b = keys[j];
          if ((a < b) == descending) keys[i] = b, keys[j] = a;
        }
      }
      __syncthreads();
    }
  }
}

// The exact radix select over one row, by the whole block (any block size that is a multiple of 32,
// at most 1024): (1) 8 bits per pass from the top, the kk-th largest ordered key T and how many
// keys equal to T make the cut; (2) one ordered pass collects every key > T and the lowest-indexed
// keys == T (ballots give each its rank among equals); (3) bitonic sort of the (value desc, index
// asc) 64-bit keys in `cand` [sort_size], padded with zeros (which sort last). The simple path, and
// the fast path's fallback for rows with more than kTopKCandidates keys tied in their top 22 bits.
__device__ void RadixSelectTopK(const float* row, int64_t nv, int kk, int64_t sort_size, uint64_t* cand,
                                int32_t* out) {
  __shared__ int hist[kTopKRadixBins];
  __shared__ int warp_counts[kMaxThreadsPerBlock / kWarpSize];
  __shared__ int selected;
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining;
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
  BitonicSortDescending(cand, kk, sort_size);
  for (int64_t i = threadIdx.x; i < kk; i += blockDim.x) out[i] = static_cast<int32_t>(TopKKeyIndex(cand[i]));
}

// Block-wide inclusive suffix sum of one int per thread (thread i gets the sum over threads >= i).
// `warp_sums` holds 32 ints of shared memory; synchronizes the block twice.
__device__ int BlockSuffixSum(int v, int* warp_sums) {
  const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
  for (int o = 1; o < kWarpSize; o <<= 1) {
    const int u = __shfl_down_sync(0xffffffffu, v, o);
    if (lane + o < kWarpSize) v += u;
  }
  if (lane == 0) warp_sums[warp] = v;  // the warp's total
  __syncthreads();
  for (int w = warp + 1; w < warps; ++w) v += warp_sums[w];
  __syncthreads();
  return v;
}

// The fast top-k (launch.h kTopKFastThreads): per row, levels of 11-bit histograms of the ordered
// keys' top bits (TopKPrefix / TopKBin) find the bin holding the kk-th largest; once the keys at or
// above that bin's start number at most kTopKCandidates they are collected into shared memory and
// sorted, and the first kk are the answer (every key of the top kk is among them: the kk-th largest
// is in the bin, the larger ones at or above it). Two levels (22 bits) without that, then the exact
// radix select. Histograms are kept in kTopKHistCopies copies (warp w adds to copy w % 4) to spread
// the atomics of clustered values.
static_assert(kTopKBins == 2 * kTopKFastThreads, "the threshold search gives each thread two bins");
static_assert(kTopKHistCopies * kTopKBins * 4 <= kTopKCandidates * 8, "histograms and candidates share memory");

__global__ void __launch_bounds__(kTopKFastThreads) TopKFastKernel(const float* x, int64_t n, int64_t ldx,
                                                                  const int64_t* nvalid, int64_t k, int32_t* idx,
                                                                  int64_t ldidx, bool vec4) {
  extern __shared__ uint64_t smem64[];  // histograms [copies][bins] (ints), then candidates [..] (keys)
  int* hist = reinterpret_cast<int*>(smem64);
  uint64_t* cand = smem64;
  __shared__ int warp_sums[kWarpSize];
  __shared__ int s_bin, s_above, s_count;
  const int64_t t = blockIdx.x;
  const float* row = x + t * ldx;
  int32_t* out = idx + t * ldidx;
  int64_t nv = nvalid ? nvalid[t] : n;
  nv = nv < 0 ? 0 : (nv > n ? n : nv);
  const int kk = static_cast<int>(k < nv ? k : nv);
  for (int64_t i = kk + threadIdx.x; i < k; i += blockDim.x) out[i] = -1;
  if (kk == 0) return;

  // Runs f(value, index) over the row's nv valid values (16-byte loads when the row allows).
  auto scan_row = [&](auto&& f) {
    int64_t start = 0;
    if (vec4) {
      const int64_t n4 = nv / 4;
      for (int64_t i = threadIdx.x; i < n4; i += blockDim.x) {
        const float4 v = reinterpret_cast<const float4*>(row)[i];
        f(v.x, 4 * i), f(v.y, 4 * i + 1), f(v.z, 4 * i + 2), f(v.w, 4 * i + 3);
      }
      start = 4 * n4;
    }
    for (int64_t i = start + threadIdx.x; i < nv; i += blockDim.x) f(row[i], i);
  };

  uint32_t prefix = 0;
  int level = 0, need = kk, above_total = 0, collect = -1;
  int* my_hist = hist + (threadIdx.x / kWarpSize % kTopKHistCopies) * kTopKBins;
  for (; level < 2; ++level) {
    for (int b = threadIdx.x; b < kTopKHistCopies * kTopKBins; b += blockDim.x) hist[b] = 0;
    __syncthreads();
    scan_row([&](float v, int64_t) {
      const uint32_t key = OrderedKey(v);
      if (level == 0 || TopKPrefix(key, 0) == prefix) atomicAdd(&my_hist[TopKBin(key, level)], 1);
    });
    __syncthreads();
    for (int b = threadIdx.x; b < kTopKBins; b += blockDim.x) {
      int sum = 0;
      for (int c = 0; c < kTopKHistCopies; ++c) sum += hist[c * kTopKBins + b];
      hist[b] = sum;  // copy 0 <- the total (each bin by one thread, reading before writing)
    }
    __syncthreads();
    // TopKThresholdBin in parallel: thread i owns bins 2i, 2i + 1 (kTopKBins = 2 kTopKFastThreads).
    const int b0 = 2 * threadIdx.x, h0 = hist[b0], h1 = hist[b0 + 1];
    const int suffix = BlockSuffixSum(h0 + h1, warp_sums);  // keys in bins >= b0
    int pick_bin = 0, pick_above = 0;
    if (TopKPickInPair(b0, h0, h1, suffix, need, &pick_bin, &pick_above)) s_bin = pick_bin, s_above = pick_above;
    __syncthreads();
    const int bin = s_bin;
    above_total += s_above;
    need -= s_above;
    prefix = level == 0 ? static_cast<uint32_t>(bin) : (prefix << kTopKLevelBits) | static_cast<uint32_t>(bin);
    const int count = above_total + hist[bin];  // keys with TopKPrefix(key, level) >= prefix
    __syncthreads();                            // every thread has read hist before it is reused
    if (count <= kTopKCandidates) {
      collect = count;
      break;
    }
  }
  if (collect < 0) {  // more than kTopKCandidates keys share their top 22 bits: the exact path
    RadixSelectTopK(row, nv, kk, TopKSortSize(kk), cand, out);
    return;
  }
  if (threadIdx.x == 0) s_count = 0;
  __syncthreads();
  scan_row([&](float v, int64_t i) {
    if (TopKPrefix(OrderedKey(v), level) >= prefix) cand[atomicAdd(&s_count, 1)] = TopKKey(v, static_cast<uint32_t>(i));
  });
  __syncthreads();
  BitonicSortDescending(cand, collect, TopKSortSize(collect));
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

namespace {

// Level 1, first pass: block b of query t scores the max of its visible positions; the block of the
// newest visible position +inf; blocks past the visible ones are not valid (vb[t] counts the valid).
__global__ void CandidateBlockScoresKernel(const float* scores, int64_t n, int64_t width, const int64_t* nvis,
                                           int64_t block_size, int64_t nb, float* block, int64_t* vb) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n * nb;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / nb, b = e % nb;
    const int64_t visible = nvis[t] < width ? (nvis[t] > 0 ? nvis[t] : 0) : width;
    const int64_t valid = (visible + block_size - 1) / block_size;
    if (b == 0) vb[t] = valid;
    float mx = -CUDART_INF_F;
    if (b < valid) {
      const int64_t p1 = (b + 1) * block_size < visible ? (b + 1) * block_size : visible;
      for (int64_t p = b * block_size; p < p1; ++p) mx = fmaxf(mx, scores[t * width + p]);
      if (b == valid - 1) mx = CUDART_INF_F;
    }
    block[e] = mx;
  }
}

// Level 1, last pass: keep[t] = 1 on the picked blocks whose score is not -inf, 0 elsewhere.
__global__ void KeepCandidateBlocksKernel(const float* block, const int32_t* best, int64_t n, int64_t nb, int64_t k,
                                          uint8_t* keep) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n * nb;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / nb, b = e % nb;
    uint8_t kept = 0;
    for (int64_t i = 0; i < k; ++i)
      if (best[t * k + i] == b) kept = block[e] > -CUDART_INF_F;
    keep[e] = kept;
  }
}

__global__ void MaskToCandidatesKernel(float* scores, int64_t n, int64_t width, const uint8_t* keep, int64_t block_size,
                                       int64_t nb) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n * width;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / width, p = e % width;
    if (!keep[t * nb + p / block_size]) scores[e] = -CUDART_INF_F;
  }
}

__global__ void DropMaskedPicksKernel(const float* scores, int64_t n, int64_t width, const int64_t* nvis,
                                      int32_t* picks, int64_t k) {
  for (int64_t e = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; e < n * k;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t t = e / k, i = e % k;
    if (i < nvis[t] && scores[t * width + picks[e]] == -CUDART_INF_F) picks[e] = -1;
  }
}

}  // namespace

namespace {

// Level 1's workspace: the block scores [n, nb] (float), the valid blocks per query [n] (int64) and
// their top-k [n, k] (int32), each part 256-byte aligned.
struct CandidateLayout {
  int64_t nb = 0, k = 0;
  int64_t valid_at = 0, best_at = 0, bytes = -1;
  CandidateLayout(int64_t n, int64_t width, int64_t topk_blocks, int64_t block_size) {
    if (n < 0 || width < 0 || topk_blocks < 0 || block_size < 1) return;
    auto up = [](int64_t b) { return (b + 255) / 256 * 256; };
    nb = CandidateBlockCount(width, block_size), k = topk_blocks < nb ? topk_blocks : nb;
    valid_at = up(n * nb * 4), best_at = valid_at + up(n * 8), bytes = best_at + up(n * k * 4);
  }
};

}  // namespace

int64_t SelectCandidateBlocksWorkspaceBytes(int64_t n, int64_t width, int64_t topk_blocks, int64_t block_size) {
  return CandidateLayout(n, width, topk_blocks, block_size).bytes;
}

cudaError_t SelectCandidateBlocks(const float* scores, int64_t n, int64_t width, const int64_t* nvis,
                                  int64_t topk_blocks, int64_t block_size, uint8_t* keep, void* workspace,
                                  int64_t workspace_bytes, cudaStream_t stream) {
  const CandidateLayout layout(n, width, topk_blocks, block_size);
  if (layout.bytes < 0 || workspace_bytes < layout.bytes) return cudaErrorInvalidValue;
  const int64_t nb = layout.nb, k = layout.k;
  if (n == 0 || nb == 0) return cudaSuccess;
  char* w = static_cast<char*>(workspace);
  float* block = reinterpret_cast<float*>(w);
  int64_t* vb = reinterpret_cast<int64_t*>(w + layout.valid_at);
  int32_t* best = reinterpret_cast<int32_t*>(w + layout.best_at);
  const LaunchConfig cfg = ElementwiseLaunch(n * nb);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_LAUNCH(CandidateBlockScoresKernel, cfg, stream, scores, n, width, nvis, block_size, nb, block, vb);
  if (k > 0) {
    if (cudaError_t e = TopK(block, n, nb, nb, vb, k, best, k, stream); e != cudaSuccess) return e;
  }
  DSV4_LAUNCH(KeepCandidateBlocksKernel, cfg, stream, block, best, n, nb, k, keep);
  return cudaGetLastError();
}

cudaError_t MaskToCandidates(float* scores, int64_t n, int64_t width, const uint8_t* keep, int64_t block_size,
                             cudaStream_t stream) {
  if (n < 0 || width < 0 || block_size < 1) return cudaErrorInvalidValue;
  if (n == 0 || width == 0) return cudaSuccess;
  const LaunchConfig cfg = ElementwiseLaunch(n * width);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_LAUNCH(MaskToCandidatesKernel, cfg, stream, scores, n, width, keep, block_size,
              (width + block_size - 1) / block_size);
  return cudaGetLastError();
}

cudaError_t DropMaskedPicks(const float* scores, int64_t n, int64_t width, const int64_t* nvis, int32_t* picks,
                            int64_t k, cudaStream_t stream) {
  if (n < 0 || width < 0 || k < 0) return cudaErrorInvalidValue;
  if (n == 0 || k == 0) return cudaSuccess;
  const LaunchConfig cfg = ElementwiseLaunch(n * k);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_LAUNCH(DropMaskedPicksKernel, cfg, stream, scores, n, width, nvis, picks, k);
  return cudaGetLastError();
}

cudaError_t TopK(const float* x, int64_t m, int64_t n, int64_t ldx, const int64_t* nvalid, int64_t k, int32_t* idx,
                 int64_t ldidx, cudaStream_t stream) {
  DSV4_CUDA_SUPPORTED(CheckTopK(n, k));
  if (ldx < n || ldidx < k) return cudaErrorInvalidValue;
  if (m == 0 || k == 0) return cudaSuccess;
  const bool vec4 = reinterpret_cast<uintptr_t>(x) % 16 == 0 && ldx % 4 == 0;
  DSV4_LAUNCH(TopKFastKernel, TopKFastLaunch(m), stream, x, n, ldx, nvalid, k, idx, ldidx, vec4);
  return cudaGetLastError();
}

}  // namespace dsv4::kernels::cuda
