// Sparse attention with sinks over gathered KV rows (decode and prefill), and the compressor's
// softmax pooling of KV blocks.
#include <math_constants.h>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/mma.cuh"

namespace dsv4::kernels::cuda {
namespace {

// launch.h AttentionPartialFloats, for the device.
__host__ __device__ constexpr int64_t AttentionPartialFloatsDevice(int warps) {
  return int64_t{kFusedHeadsPerWarp} * warps * kFusedDim + 2 * int64_t{kFusedHeadsPerWarp} * warps;
}

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

// One step of the warp reduce-scatter (device_math.h ReduceScatterIndex) over the first 2 kOff
// values: a lane keeps the lower half when (lane & kOff) == 0, else the upper half, plus its
// partner's copy of that half.
template <int kOff, int kN>
__device__ __forceinline__ void ReduceScatterStep(float (&part)[kN], int lane) {
  const bool upper = (lane & kOff) != 0;
#pragma unroll
  for (int v = 0; v < kOff; ++v) {
    const float lo = part[v], hi = part[v + kOff];
    part[v] = (upper ? hi : lo) + __shfl_xor_sync(0xffffffffu, upper ? lo : hi, kOff);
  }
}

// ---- the fused kernel (d = 512): launch.h PlanAttention ---------------------------------------------
//
// Block = (query token t, heads h0 .. h0 + 4 kWarps - 1, KV split sp), kWarps warps. The split's KV
// rows pass through shared memory kFusedRows at a time (two buffers, cp.async), read once for all
// the block's heads. Per tile:
//   logits  warp w, heads 4w..4w+3: lane l holds q's dims 4l + 128j (j < 4) of its 4 heads in
//           registers and adds its 16 dims of each row's products; a reduce-scatter over the lanes
//           leaves lane l with the logit of head 4w + l / 8, row l % 8;
//   softmax one thread per head: running max, rescale factor, probabilities over the logits;
//   P.V     warp w owns dims [w 512 / kWarps, +512 / kWarps) of every head of the block: lane l
//           accumulates kPV = 16 / kWarps of them for all 4 kWarps heads (64 registers).
// After the last tile: out = acc e^m / (sum e^m + e^sink) (or, split, the unnormalized acc, m, sum).
template <int kWarps>
__global__ void __launch_bounds__(kWarps * kWarpSize) FusedAttentionKernel(const float* q, int64_t H, KvView kv,
                                                                          const int32_t* idx, int64_t k,
                                                                          const float* sink, float scale, float* out,
                                                                          float* partial, int64_t rows_per_split) {
  constexpr int kHeads = kFusedHeadsPerWarp * kWarps, kR = kFusedRows, kD = static_cast<int>(kFusedDim);
  constexpr int kThreads = kWarps * kWarpSize, kPV = 16 / kWarps;
  static_assert(kHeads * kPV == 64, "P.V holds 64 accumulators per lane");
  extern __shared__ float4 smem4[];
  float* tiles = reinterpret_cast<float*>(smem4);       // [2][kR][kD]
  float* probs = tiles + 2 * kR * kD;                    // [kR][kHeads]: logits, then probabilities
  int* valid = reinterpret_cast<int*>(probs + kR * kHeads);  // [2][kR]
  float* mrun = reinterpret_cast<float*>(valid + 2 * kR);     // [kHeads] running max
  float* lsum = mrun + kHeads;                                // [kHeads] running sum (relative to e^mrun)
  float* alpha = lsum + kHeads;                               // [kHeads] this tile's rescale factor

  const int tid = threadIdx.x, lane = tid % kWarpSize, warp = tid / kWarpSize;
  const int64_t t = blockIdx.x, h0 = static_cast<int64_t>(blockIdx.y) * kHeads, sp = blockIdx.z;
  const int64_t j_begin = sp * rows_per_split;
  const int64_t j_end = j_begin + rows_per_split < k ? j_begin + rows_per_split : k;
  const int64_t ntiles = j_end > j_begin ? (j_end - j_begin + kR - 1) / kR : 0;
  const int32_t* ti = idx + t * k;

  float4 qr[kFusedHeadsPerWarp][4];
#pragma unroll
  for (int hh = 0; hh < kFusedHeadsPerWarp; ++hh) {
    const int64_t h = h0 + kFusedHeadsPerWarp * warp + hh;
#pragma unroll
    for (int j = 0; j < 4; ++j)
      qr[hh][j] = h < H ? *reinterpret_cast<const float4*>(q + (t * H + h) * kD + FusedQDim(lane, j, 0))
                        : make_float4(0.f, 0.f, 0.f, 0.f);
  }
  float o[kHeads][kPV];
#pragma unroll
  for (int h = 0; h < kHeads; ++h)
#pragma unroll
    for (int e = 0; e < kPV; ++e) o[h][e] = 0.f;
  if (tid < kHeads) mrun[tid] = -CUDART_INF_F, lsum[tid] = 0.f;

  // Tile i -> buffer i % 2: 16-byte pieces of its rows (masked rows: zeros), and each row's validity.
  auto load_tile = [&](int64_t i) {
    float* buf = tiles + (i % 2) * kR * kD;
    for (int e = tid; e < kR * (kD / 4); e += kThreads) {
      const int r = e / (kD / 4), piece = e % (kD / 4);
      const int64_t j = j_begin + i * kR + r;
      const float* row = j < j_end ? kv.Row(ti[j], kD) : nullptr;
      CpAsync16(buf + r * kD + 4 * piece, row != nullptr ? row + 4 * piece : q, row != nullptr);
      if (piece == 0) valid[(i % 2) * kR + r] = row != nullptr;
    }
    CpAsyncCommit();
  };

  if (ntiles > 0) load_tile(0);
  for (int64_t i = 0; i < ntiles; ++i) {
    if (i + 1 < ntiles) {
      load_tile(i + 1);  // its buffer was last read in tile i - 1, before that tile's final barrier
      CpAsyncWait<1>();
    } else {
      CpAsyncWait<0>();
    }
    __syncthreads();  // tile i has landed (every thread's copies); mrun / lsum initialized
    const float* tile = tiles + (i % 2) * kR * kD;
    const int* tvalid = valid + (i % 2) * kR;

    // Logits of heads 4w..4w+3: value index hh * kR + r, reduce-scattered to one per lane.
    float part[kFusedHeadsPerWarp * kR];
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      float4 kvv[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) kvv[j] = *reinterpret_cast<const float4*>(tile + r * kD + FusedQDim(lane, j, 0));
#pragma unroll
      for (int hh = 0; hh < kFusedHeadsPerWarp; ++hh) {
        float sdot = 0.f;
#pragma unroll
        for (int j = 0; j < 4; ++j)
          sdot += qr[hh][j].x * kvv[j].x + qr[hh][j].y * kvv[j].y + qr[hh][j].z * kvv[j].z + qr[hh][j].w * kvv[j].w;
        part[hh * kR + r] = sdot;
      }
    }
    ReduceScatterStep<16>(part, lane);  // ReduceScatterIndex: lane l ends with value l in part[0]
    ReduceScatterStep<8>(part, lane);
    ReduceScatterStep<4>(part, lane);
    ReduceScatterStep<2>(part, lane);
    ReduceScatterStep<1>(part, lane);
    {
      const int hh = lane / kR, r = lane % kR;
      probs[r * kHeads + kFusedHeadsPerWarp * warp + hh] = tvalid[r] ? part[0] * scale : -CUDART_INF_F;
    }
    __syncthreads();
    if (tid < kHeads) {  // online softmax of head tid over the tile's rows, in row order
      const float mold = mrun[tid];
      float mt = -CUDART_INF_F;
#pragma unroll
      for (int r = 0; r < kR; ++r) mt = fmaxf(mt, probs[r * kHeads + tid]);
      const float mnew = fmaxf(mold, mt);
      float sum = 0.f;
#pragma unroll
      for (int r = 0; r < kR; ++r) {
        const float l = probs[r * kHeads + tid];
        const float p = l == -CUDART_INF_F ? 0.f : expf(l - mnew);
        probs[r * kHeads + tid] = p;
        sum += p;
      }
      const float a = mold == -CUDART_INF_F ? 0.f : expf(mold - mnew);
      lsum[tid] = lsum[tid] * a + sum;
      mrun[tid] = mnew;
      alpha[tid] = a;
    }
    __syncthreads();
    // P.V over this warp's slice of dims, every head of the block.
#pragma unroll
    for (int h = 0; h < kHeads; ++h) {
      const float a = alpha[h];
#pragma unroll
      for (int e = 0; e < kPV; ++e) o[h][e] *= a;
    }
#pragma unroll
    for (int r = 0; r < kR; ++r) {
      float v[kPV];
      if constexpr (kPV == 2) {
        const float2 f = *reinterpret_cast<const float2*>(tile + r * kD + FusedPvDim(kWarps, warp, lane, 0));
        v[0] = f.x, v[1] = f.y;
      } else {
#pragma unroll
        for (int j = 0; j < kPV / 4; ++j) {
          const float4 f = *reinterpret_cast<const float4*>(tile + r * kD + FusedPvDim(kWarps, warp, lane, 4 * j));
          v[4 * j] = f.x, v[4 * j + 1] = f.y, v[4 * j + 2] = f.z, v[4 * j + 3] = f.w;
        }
      }
#pragma unroll
      for (int h4 = 0; h4 < kHeads / 4; ++h4) {
        const float4 p4 = *reinterpret_cast<const float4*>(probs + r * kHeads + 4 * h4);
        const float p[4] = {p4.x, p4.y, p4.z, p4.w};
#pragma unroll
        for (int hh = 0; hh < 4; ++hh)
#pragma unroll
          for (int e = 0; e < kPV; ++e) o[4 * h4 + hh][e] = fmaf(p[hh], v[e], o[4 * h4 + hh][e]);
      }
    }
    __syncthreads();  // the tile buffer and probs are free for the next loads / logits
  }
  if (ntiles == 0) __syncthreads();  // mrun / lsum initialized

  // This lane's dims of P.V.
  auto dim = [&](int e) -> int { return FusedPvDim(kWarps, warp, lane, e); };
  if (partial != nullptr) {  // split: unnormalized acc, then running max and sum, per block
    float* base = partial + ((t * gridDim.y + blockIdx.y) * gridDim.z + sp) * AttentionPartialFloatsDevice(kWarps);
#pragma unroll
    for (int h = 0; h < kHeads; ++h)
#pragma unroll
      for (int e = 0; e < kPV; ++e) base[h * kD + dim(e)] = o[h][e];
    if (tid < kHeads) base[kHeads * kD + tid] = mrun[tid], base[kHeads * kD + kHeads + tid] = lsum[tid];
    return;
  }
#pragma unroll
  for (int h = 0; h < kHeads; ++h) {
    if (h0 + h >= H) break;
    const float m = mrun[h];
    float factor = 0.f;
    if (m != -CUDART_INF_F) {  // nothing visible: output 0
      const float sk = sink[h0 + h], mx = fmaxf(m, sk), f = expf(m - mx);
      factor = f / (lsum[h] * f + expf(sk - mx));
    }
    float* oh = out + (t * H + h0 + h) * kD;
#pragma unroll
    for (int e = 0; e < kPV; ++e) oh[dim(e)] = o[h][e] * factor;
  }
}

// Merges the splits of one (token, head) in split order: thread per 4 dims.
__global__ void AttentionCombineKernel(const float* partial, int64_t H, int warps, int64_t head_groups, int64_t splits,
                                       const float* sink, float* out) {
  const int64_t t = blockIdx.x, h = blockIdx.y;
  const int heads = kFusedHeadsPerWarp * warps;
  const int64_t group = h / heads, hh = h % heads, pf = AttentionPartialFloatsDevice(warps);
  const float* base = partial + (t * head_groups + group) * splits * pf;
  float mx = -CUDART_INF_F;
  for (int64_t s = 0; s < splits; ++s) mx = fmaxf(mx, base[s * pf + heads * kFusedDim + hh]);
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  float l = 0.f;
  if (mx != -CUDART_INF_F) {
    for (int64_t s = 0; s < splits; ++s) {
      const float ms = base[s * pf + heads * kFusedDim + hh];
      if (ms == -CUDART_INF_F) continue;
      const float f = expf(ms - mx);
      l += base[s * pf + heads * kFusedDim + heads + hh] * f;
      const float4 v = *reinterpret_cast<const float4*>(base + s * pf + hh * kFusedDim + 4 * threadIdx.x);
      acc.x += v.x * f, acc.y += v.y * f, acc.z += v.z * f, acc.w += v.w * f;
    }
  }
  float factor = 0.f;
  if (mx != -CUDART_INF_F) {
    const float sk = sink[h], m2 = fmaxf(mx, sk), f = expf(mx - m2);
    factor = f / (l * f + expf(sk - m2));
  }
  *reinterpret_cast<float4*>(out + (t * H + h) * kFusedDim + 4 * threadIdx.x) =
      make_float4(acc.x * factor, acc.y * factor, acc.z * factor, acc.w * factor);
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

namespace {

bool Aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

bool AttentionAligned(const float* q, const KvSegments& kv, const float* out) {
  if (!Aligned16(q) || !Aligned16(out)) return false;
  for (int s = 0; s < 3; ++s)
    if (kv.ptr[s] != nullptr && kv.len[s] > 0 && !Aligned16(kv.ptr[s])) return false;
  return true;
}

template <int kWarps>
cudaError_t LaunchFused(const AttentionPlan& p, const float* q, int64_t H, const KvView& view, const int32_t* idx,
                        int64_t k, const float* sink, float scale, float* out, float* partial, cudaStream_t stream) {
  DSV4_LAUNCH(FusedAttentionKernel<kWarps>, p.launch, stream, q, H, view, idx, k, sink, scale, out, partial,
              p.rows_per_split);
  return cudaGetLastError();
}

}  // namespace

int64_t SparseAttentionWorkspaceBytes(int64_t m, int64_t H, int64_t d, int64_t k) {
  if (CheckAttention(H, d, k) != nullptr || m < 0) return 0;
  return AttentionWorkspaceBytesFor(PlanAttention(m, H, d, k, CurrentDeviceCaps(), true, true), m);
}

cudaError_t SparseAttention(const float* q, int64_t m, int64_t H, int64_t d, const KvSegments& kv,
                            const int32_t* idx, int64_t k, const float* sink, float scale, float* out, void* workspace,
                            int64_t workspace_bytes, cudaStream_t stream) {
  DSV4_CUDA_SUPPORTED(CheckAttention(H, d, k));
  if (workspace_bytes < 0 || (workspace != nullptr && !Aligned16(workspace))) return cudaErrorInvalidValue;
  if (m == 0) return cudaSuccess;
  KvView view;
  for (int s = 0; s < 3; ++s) view.ptr[s] = kv.ptr[s], view.len[s] = kv.ptr[s] ? kv.len[s] : 0;
  const DeviceCaps dev = CurrentDeviceCaps();
  const bool aligned = AttentionAligned(q, kv, out);
  AttentionPlan p = PlanAttention(m, H, d, k, dev, aligned, workspace != nullptr);
  if (p.fused && AttentionWorkspaceBytesFor(p, m) > (workspace != nullptr ? workspace_bytes : 0))
    p = PlanAttention(m, H, d, k, dev, aligned, false);
  if (!p.fused) {
    DSV4_DISPATCH_DIMS_PER_THREAD(AttnDimsPerThread(d), kR,
                                  DSV4_LAUNCH(SparseAttentionKernel<kR>, p.launch, stream, q, H, d, view, idx, k, sink,
                                              scale, out));
    return cudaGetLastError();
  }
  if (!Launchable(p.launch)) return cudaErrorInvalidValue;
  float* partial = p.splits > 1 ? static_cast<float*>(workspace) : nullptr;
  cudaError_t e = cudaErrorInvalidValue;
  switch (p.warps) {
    case 1:
      e = LaunchFused<1>(p, q, H, view, idx, k, sink, scale, out, partial, stream);
      break;
    case 2:
      e = LaunchFused<2>(p, q, H, view, idx, k, sink, scale, out, partial, stream);
      break;
    case 4:
      e = LaunchFused<4>(p, q, H, view, idx, k, sink, scale, out, partial, stream);
      break;
    case 8:
      e = LaunchFused<8>(p, q, H, view, idx, k, sink, scale, out, partial, stream);
      break;
  }
  if (e != cudaSuccess || partial == nullptr) return e;
  DSV4_LAUNCH(AttentionCombineKernel, AttentionCombineLaunch(m, H), stream, partial, H, p.warps, p.head_groups,
              p.splits, sink, out);
  return cudaGetLastError();
}

cudaError_t SparseAttention(const float* q, int64_t m, int64_t H, int64_t d, const KvSegments& kv,
                            const int32_t* idx, int64_t k, const float* sink, float scale, float* out,
                            cudaStream_t stream) {
  return SparseAttention(q, m, H, d, kv, idx, k, sink, scale, out, nullptr, 0, stream);
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
