// MoE routing and grouping on the GPU: the twins of kernels/cpu/moe.cc. The router runs one block
// per token (scores in shared memory, top-k by repeated block argmax, ties to the lower index as
// the CPU's TopK); grouping is a stable radix sort of the pairs by expert (CUB), so the rows of an
// expert keep pair order as on the CPU, then offsets, positions and token ids from the sorted keys.
#include <cub/cub.cuh>

#include <algorithm>
#include <climits>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/kernels.h"

namespace dsv4::kernels::cuda {
namespace {

__device__ __forceinline__ float Softplus(float z) { return z > 20.0f ? z : log1pf(expf(z)); }

// The larger of (value, index) pairs, ties to the lower index (TopK's order). NaN never wins.
__device__ __forceinline__ bool Better(float v, int i, float bv, int bi) {
  if (isnan(v)) return false;
  if (isnan(bv)) return true;
  return v > bv || (v == bv && i < bi);
}

__global__ void RouteKernel(float* scores, int64_t E, int64_t K, float temp, int score, const float* bias,
                            const int32_t* tid2eid, const int32_t* tokens, bool normalize, float norm_eps,
                            float scaling, int32_t* experts, float* weights) {
  extern __shared__ float sh[];  // [E] scores, [E] biased, then 2 * 32 for reductions
  float* s = sh;
  float* biased = sh + E;
  float* red_v = sh + 2 * E;
  int* red_i = reinterpret_cast<int*>(red_v + kWarpSize);
  __shared__ int picked[kMaxRouteK];
  const int64_t t = blockIdx.x;
  float* row = scores + t * E;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    float v = row[e];
    if (temp != 1.0f) v /= temp;
    if (score == static_cast<int>(RouterScore::kSqrtSoftplus)) v = sqrtf(Softplus(v));
    if (score == static_cast<int>(RouterScore::kSigmoid)) v = 1.0f / (1.0f + expf(-v));
    s[e] = v;
  }
  __syncthreads();
  if (score == static_cast<int>(RouterScore::kSoftmax) && threadIdx.x == 0) {  // E is small: one thread, CPU order
    float mx = s[0];
    for (int64_t e = 1; e < E; ++e) mx = fmaxf(mx, s[e]);
    float sum = 0.f;
    for (int64_t e = 0; e < E; ++e) sum += (s[e] = expf(s[e] - mx));
    for (int64_t e = 0; e < E; ++e) s[e] /= sum;
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    row[e] = s[e];
    biased[e] = s[e] + (bias != nullptr ? bias[e] : 0.f);
  }
  __syncthreads();
  if (tid2eid != nullptr) {
    if (threadIdx.x < K) picked[threadIdx.x] = tid2eid[static_cast<int64_t>(tokens[t]) * K + threadIdx.x];
  } else {
    const int lane = threadIdx.x % kWarpSize, warp = threadIdx.x / kWarpSize, warps = blockDim.x / kWarpSize;
    for (int64_t j = 0; j < K; ++j) {
      float bv = NAN;
      int bi = INT_MAX;
      for (int64_t e = threadIdx.x; e < E; e += blockDim.x)
        if (Better(biased[e], static_cast<int>(e), bv, bi)) bv = biased[e], bi = static_cast<int>(e);
      for (int o = kWarpSize / 2; o > 0; o >>= 1) {
        const float ov = __shfl_xor_sync(0xffffffffu, bv, o);
        const int oi = __shfl_xor_sync(0xffffffffu, bi, o);
        if (Better(ov, oi, bv, bi)) bv = ov, bi = oi;
      }
      if (lane == 0) red_v[warp] = bv, red_i[warp] = bi;
      __syncthreads();
      if (threadIdx.x == 0) {
        float best = NAN;
        int at = INT_MAX;
        for (int w = 0; w < warps; ++w)
          if (Better(red_v[w], red_i[w], best, at)) best = red_v[w], at = red_i[w];
        picked[j] = at;
        biased[at] = NAN;  // taken
      }
      __syncthreads();
    }
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    float w[kMaxRouteK], sum = 0.f;
    for (int64_t j = 0; j < K; ++j) sum += (w[j] = s[picked[j]]);
    for (int64_t j = 0; j < K; ++j) {
      float v = w[j];
      if (normalize) v /= sum + norm_eps;
      experts[t * K + j] = picked[j];
      weights[t * K + j] = v * scaling;
    }
  }
}

// One thread per token: an insertion sort of its K slots, in place (stable, as on the CPU).
__global__ void SortSlotsKernel(int32_t* experts, float* weights, int64_t m, int64_t K) {
  const int64_t t = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (t >= m) return;
  int32_t* e = experts + t * K;
  float* w = weights == nullptr ? nullptr : weights + t * K;
  for (int64_t i = 1; i < K; ++i) {
    const int32_t ke = e[i];
    const float kw = w == nullptr ? 0.f : w[i];
    int64_t j = i - 1;
    for (; j >= 0 && e[j] > ke; --j) {
      e[j + 1] = e[j];
      if (w != nullptr) w[j + 1] = w[j];
    }
    e[j + 1] = ke;
    if (w != nullptr) w[j + 1] = kw;
  }
}

// Keys for the sort: the expert, or E for pairs left out (they sort last); values: the pair ids.
__global__ void GroupKeysKernel(const int32_t* experts, int64_t pairs, int64_t E, int32_t* keys, int64_t* vals) {
  const int64_t p = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (p >= pairs) return;
  const int32_t e = experts[p];
  keys[p] = (e >= 0 && e < E) ? e : static_cast<int32_t>(E);
  vals[p] = p;
}

// From the sorted keys: offsets (the first row of each expert, by binary search), and per row its
// pair, token and the pair's position.
__global__ void GroupOutputKernel(const int32_t* keys, const int64_t* vals, int64_t pairs, int64_t K, int64_t E,
                                  int32_t* offsets, int64_t* order, int64_t* order_tokens, int32_t* position,
                                  int64_t* counts) {
  const int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i <= E) {
    int64_t lo = 0, hi = pairs;  // first row whose key >= i
    while (lo < hi) {
      const int64_t mid = (lo + hi) / 2;
      if (keys[mid] < i) lo = mid + 1;
      else hi = mid;
    }
    offsets[i] = static_cast<int32_t>(lo);
  }
  if (i < pairs) {
    const bool kept = keys[i] < E;
    order[i] = kept ? vals[i] : -1;
    order_tokens[i] = kept ? vals[i] / K : -1;
    position[vals[i]] = kept ? static_cast<int32_t>(i) : -1;
  }
}

__global__ void GroupCountsKernel(const int32_t* offsets, int64_t E, int64_t* counts) {
  const int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (e < E) counts[e] += offsets[e + 1] - offsets[e];
}

int SortBits(int64_t E) {
  int bits = 1;
  while ((int64_t{1} << bits) <= E) ++bits;  // keys are 0..E
  return bits;
}

}  // namespace

cudaError_t Route(float* scores, int64_t m, int64_t E, int64_t K, float temp, RouterScore score, const float* bias,
                  const int32_t* tid2eid, const int32_t* tokens, bool normalize, float norm_eps, float scaling,
                  int32_t* experts, float* weights, cudaStream_t stream) {
  DSV4_CUDA_SUPPORTED(CheckRoute(E, K));
  if (m == 0) return cudaSuccess;
  const LaunchConfig cfg = RouteLaunch(m, E);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_LAUNCH(RouteKernel, cfg, stream, scores, E, K, temp, static_cast<int>(score), bias, tid2eid, tokens, normalize,
              norm_eps, scaling, experts, weights);
  return cudaGetLastError();
}

cudaError_t SortSlotsByExpert(int32_t* experts, float* weights, int64_t m, int64_t K, cudaStream_t stream) {
  if (m < 0 || K < 1 || K > kMaxRouteK) return cudaErrorInvalidValue;
  if (m == 0 || K == 1) return cudaSuccess;
  LaunchConfig cfg = ElementwiseLaunch(m);
  cfg.grid.x = static_cast<unsigned>((m + kElementwiseThreads - 1) / kElementwiseThreads);
  if (!Launchable(cfg)) return cudaErrorInvalidValue;
  DSV4_LAUNCH(SortSlotsKernel, cfg, stream, experts, weights, m, K);
  return cudaGetLastError();
}

int64_t GroupByExpertWorkspaceBytes(int64_t pairs, int64_t E) {
  size_t temp = 0;
  if (cub::DeviceRadixSort::SortPairs<int32_t, int64_t>(nullptr, temp, nullptr, nullptr, nullptr, nullptr,
                                                         static_cast<int>(pairs), 0, SortBits(E)) != cudaSuccess)
    return -1;
  // keys in/out, values in/out, then CUB's temporary storage, each 256-byte aligned.
  auto up = [](int64_t b) { return (b + 255) / 256 * 256; };
  return 2 * up(pairs * 4) + 2 * up(pairs * 8) + up(static_cast<int64_t>(temp));
}

cudaError_t GroupByExpert(const int32_t* experts, int64_t pairs, int64_t K, int64_t E, int32_t* offsets,
                          int64_t* order, int64_t* order_tokens, int32_t* position, int64_t* counts, void* workspace,
                          int64_t workspace_bytes, cudaStream_t stream) {
  if (pairs < 0 || E < 1 || K < 1 || pairs > (int64_t{1} << 30)) return cudaErrorInvalidValue;
  const int64_t need = GroupByExpertWorkspaceBytes(pairs, E);
  if (need < 0 || workspace_bytes < need) return cudaErrorInvalidValue;
  auto up = [](int64_t b) { return (b + 255) / 256 * 256; };
  char* w = static_cast<char*>(workspace);
  int32_t* keys_in = reinterpret_cast<int32_t*>(w);
  int32_t* keys_out = reinterpret_cast<int32_t*>(w + up(pairs * 4));
  int64_t* vals_in = reinterpret_cast<int64_t*>(w + 2 * up(pairs * 4));
  int64_t* vals_out = reinterpret_cast<int64_t*>(w + 2 * up(pairs * 4) + up(pairs * 8));
  void* temp = w + 2 * up(pairs * 4) + 2 * up(pairs * 8);
  size_t temp_bytes = static_cast<size_t>(need - 2 * up(pairs * 4) - 2 * up(pairs * 8));
  const LaunchConfig rows = ElementwiseLaunch(std::max<int64_t>(pairs, E + 1));
  if (pairs > 0) {
    DSV4_LAUNCH(GroupKeysKernel, ElementwiseLaunch(pairs), stream, experts, pairs, E, keys_in, vals_in);
    if (cudaError_t e = cub::DeviceRadixSort::SortPairs(temp, temp_bytes, keys_in, keys_out, vals_in, vals_out,
                                                        static_cast<int>(pairs), 0, SortBits(E), stream);
        e != cudaSuccess)
      return e;
  }
  // Grid-stride free: ElementwiseLaunch caps blocks, so cover every index with enough blocks.
  LaunchConfig cover = rows;
  cover.grid.x = (std::max<int64_t>(pairs, E + 1) + kElementwiseThreads - 1) / kElementwiseThreads;
  DSV4_LAUNCH(GroupOutputKernel, cover, stream, keys_out, vals_out, pairs, K, E, offsets, order, order_tokens,
              position, counts);
  if (counts != nullptr) {
    LaunchConfig c = ElementwiseLaunch(E);
    c.grid.x = (E + kElementwiseThreads - 1) / kElementwiseThreads;
    DSV4_LAUNCH(GroupCountsKernel, c, stream, offsets, E, counts);
  }
  return cudaGetLastError();
}

}  // namespace dsv4::kernels::cuda
