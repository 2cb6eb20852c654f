// Sparse attention with sinks over gathered KV rows (decode and prefill), and the compressor's
// softmax pooling of KV blocks.
#include <math_constants.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace dsv4::kernels::cuda {
namespace {

// kernels::KvSegments with a device-side Row(): index i < len[0] -> ptr[0], then ptr[1], then ptr[2];
// null for negative or out-of-range indices (masked).
struct KvView {
  const float* ptr[3];
  int64_t len[3];
  __device__ __forceinline__ const float* Row(int64_t i, int64_t d) const {
    if (i < 0) return nullptr;
#pragma unroll
    for (int s = 0; s < 3; ++s) {
      if (i < len[s]) return ptr[s] + i * d;
      i -= len[s];
    }
    return nullptr;
  }
};

// Block = (token t, heads h0 .. h0+kAttnHeadsPerBlock-1). Thread tid owns dims tid + r*kAttnThreads
// (r < kR) of each head's output. Keys go in chunks of kAttnChunk: warps compute the chunk's
// logits (one key per warp at a time, all heads of the block), every thread then takes the same
// per-head maximum, the probabilities are written over the logits, and each thread accumulates
// its dims of P.V. After the loop, acc / lsum are relative to e^{mrun}.
template <int kR>
__global__ void SparseAttentionKernel(const float* q, int64_t H, int64_t d, KvView kv, const int32_t* idx, int64_t k,
                                      const float* sink, float scale, float* out) {
  constexpr int kHeads = kAttnHeadsPerBlock, kChunk = kAttnChunk, kWarps = kAttnThreads / kWarpSize;
  extern __shared__ float smem[];
  float* qs = smem;                     // [kHeads, d]
  float* pr = qs + kHeads * d;          // [kHeads, kChunk]: logits, then probabilities
  int32_t* rid = reinterpret_cast<int32_t*>(pr + kHeads * kChunk);  // [kChunk]
  const int64_t t = blockIdx.x, h0 = static_cast<int64_t>(blockIdx.y) * kHeads;
  const int nh = static_cast<int>(H - h0 < kHeads ? H - h0 : kHeads);
  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;
  for (int64_t e = tid; e < kHeads * d; e += kAttnThreads) {
    const int64_t hh = e / d;
    qs[e] = hh < nh ? q[(t * H + h0 + hh) * d + e % d] : 0.f;
  }
  float acc[kHeads][kR] = {};
  float mrun[kHeads], lsum[kHeads];
#pragma unroll
  for (int hh = 0; hh < kHeads; ++hh) mrun[hh] = -CUDART_INF_F, lsum[hh] = 0.f;
  const int32_t* ti = idx + t * k;
  for (int64_t c0 = 0; c0 < k; c0 += kChunk) {
    if (tid < kChunk) rid[tid] = c0 + tid < k ? ti[c0 + tid] : -1;
    __syncthreads();
    for (int jj = warp; jj < kChunk; jj += kWarps) {
      const float* row = kv.Row(rid[jj], d);
      float part[kHeads] = {};
      if (row != nullptr) {
        for (int64_t i = lane; i < d; i += kWarpSize) {
          const float v = row[i];
#pragma unroll
          for (int hh = 0; hh < kHeads; ++hh) part[hh] += qs[hh * d + i] * v;
        }
      }
#pragma unroll
      for (int hh = 0; hh < kHeads; ++hh) {
        const float s = WarpSum(part[hh]);
        if (lane == 0) pr[hh * kChunk + jj] = row != nullptr ? scale * s : -CUDART_INF_F;
      }
    }
    __syncthreads();
    float mnew[kHeads];
#pragma unroll
    for (int hh = 0; hh < kHeads; ++hh) {
      float cm = -CUDART_INF_F;
      for (int jj = 0; jj < kChunk; ++jj) cm = fmaxf(cm, pr[hh * kChunk + jj]);
      mnew[hh] = fmaxf(mrun[hh], cm);
    }
    __syncthreads();  // every thread has its maxima before the logits are overwritten
    for (int e = tid; e < kHeads * kChunk; e += kAttnThreads) {
      const float l = pr[e];
      pr[e] = l == -CUDART_INF_F ? 0.f : expf(l - mnew[e / kChunk]);
    }
    __syncthreads();
#pragma unroll
    for (int hh = 0; hh < kHeads; ++hh) {
      const float alpha = mrun[hh] == -CUDART_INF_F ? 0.f : expf(mrun[hh] - mnew[hh]);
      lsum[hh] *= alpha;
#pragma unroll
      for (int r = 0; r < kR; ++r) acc[hh][r] *= alpha;
      mrun[hh] = mnew[hh];
    }
    for (int jj = 0; jj < kChunk; ++jj) {
      const float* row = kv.Row(rid[jj], d);
      if (row == nullptr) continue;
      float v[kR];
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        const int64_t i = tid + r * kAttnThreads;
        v[r] = i < d ? row[i] : 0.f;
      }
#pragma unroll
      for (int hh = 0; hh < kHeads; ++hh) {
        const float p = pr[hh * kChunk + jj];
        lsum[hh] += p;
#pragma unroll
        for (int r = 0; r < kR; ++r) acc[hh][r] += p * v[r];
      }
    }
    __syncthreads();  // before the next chunk overwrites rid / pr
  }
  // o = acc e^{mrun} / (lsum e^{mrun} + e^{sink}), both scaled by e^{-max(mrun, sink)}.
#pragma unroll
  for (int hh = 0; hh < kHeads; ++hh) {
    if (hh >= nh) break;
    float* o = out + (t * H + h0 + hh) * d;
    float factor = 0.f;
    if (mrun[hh] != -CUDART_INF_F) {  // nothing visible: output 0
      const float sk = sink[h0 + hh], mx = fmaxf(mrun[hh], sk), f = expf(mrun[hh] - mx);
      factor = f / (lsum[hh] * f + expf(sk - mx));
    }
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      const int64_t i = tid + r * kAttnThreads;
      if (i < d) o[i] = acc[hh][r] * factor;
    }
  }
}

// Thread per (output block b, channel ch): one softmax over the block's rows (and, with overlap,
// the previous block's), per channel. Same order of operations as the CPU compressor.
__global__ void CompressPoolKernel(const float* kv, const float* score, int64_t ld, const float* ape, int64_t ratio,
                                   int64_t hd, bool overlap, int64_t first_row, bool first_has_prev, float* out,
                                   int64_t ldo) {
  const int64_t b = blockIdx.x, ch = static_cast<int64_t>(blockIdx.y) * blockDim.x + threadIdx.x;
  if (ch >= hd) return;
  const int64_t width = overlap ? 2 * hd : hd, cur = first_row + b * ratio, prev = cur - ratio;
  const int64_t cur_ch = overlap ? hd + ch : ch;
  const bool with_prev = overlap && (b > 0 || first_has_prev);
  float mx = -CUDART_INF_F;
  for (int64_t r = 0; r < ratio; ++r) mx = fmaxf(mx, score[(cur + r) * ld + cur_ch] + ape[r * width + cur_ch]);
  if (with_prev)
    for (int64_t r = 0; r < ratio; ++r) mx = fmaxf(mx, score[(prev + r) * ld + ch] + ape[r * width + ch]);
  float num = 0.f, den = 0.f;
  for (int64_t r = 0; r < ratio; ++r) {
    const float p = expf(score[(cur + r) * ld + cur_ch] + ape[r * width + cur_ch] - mx);
    den += p, num += p * kv[(cur + r) * ld + cur_ch];
  }
  if (with_prev) {
    for (int64_t r = 0; r < ratio; ++r) {
      const float p = expf(score[(prev + r) * ld + ch] + ape[r * width + ch] - mx);
      den += p, num += p * kv[(prev + r) * ld + ch];
    }
  }
  out[b * ldo + ch] = num / den;
}

}  // namespace

cudaError_t SparseAttention(const float* q, int64_t m, int64_t H, int64_t d, const KvSegments& kv,
                            const int32_t* idx, int64_t k, const float* sink, float scale, float* out,
                            cudaStream_t stream) {
  DSV4_CUDA_SUPPORTED(CheckAttention(H, d, k));
  if (m == 0) return cudaSuccess;
  KvView view;
  for (int s = 0; s < 3; ++s) view.ptr[s] = kv.ptr[s], view.len[s] = kv.ptr[s] ? kv.len[s] : 0;
  const LaunchConfig cfg = AttentionLaunch(m, H, d);
  DSV4_DISPATCH_DIMS_PER_THREAD(AttnDimsPerThread(d), kR,
                                DSV4_LAUNCH(SparseAttentionKernel<kR>, cfg, stream, q, H, d, view, idx, k, sink,
                                            scale, out));
  return cudaGetLastError();
}

cudaError_t CompressPool(const float* kv, const float* score, int64_t ld, const float* ape, int64_t ratio,
                         int64_t hd, bool overlap, int64_t first_row, bool first_has_prev, int64_t num_blocks,
                         float* out, int64_t ldo, cudaStream_t stream) {
  DSV4_CUDA_SUPPORTED(CheckCompress(ratio, hd));
  if (ld < (overlap ? 2 * hd : hd) || ldo < hd) return cudaErrorInvalidValue;
  if (first_row - ((overlap && first_has_prev) ? ratio : 0) < 0) return cudaErrorInvalidValue;
  if (num_blocks == 0) return cudaSuccess;
  const LaunchConfig cfg = CompressLaunch(num_blocks, hd);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_LAUNCH(CompressPoolKernel, cfg, stream, kv, score, ld, ape, ratio, hd, overlap, first_row, first_has_prev, out,
              ldo);
  return cudaGetLastError();
}

}  // namespace dsv4::kernels::cuda
