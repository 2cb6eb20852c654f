// MoE routing and grouping (MODEL.md 2.5): the router's scores, its top-k (or a hash layer's fixed
// experts) and weights; the (token, slot) pairs grouped by expert for the grouped expert products.
// The CUDA twins are kernels/cuda/moe.cu.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/scratch.h"

namespace dsv4::kernels {
namespace {

// torch.nn.functional.softplus with its default threshold of 20.
float Softplus(float z) { return z > 20.0f ? z : std::log1p(std::exp(z)); }

}  // namespace

void Route(float* scores, int64_t m, int64_t E, int64_t K, float temp, RouterScore score, const float* bias,
           const int32_t* tid2eid, const int32_t* tokens, bool normalize, float norm_eps, float scaling,
           int32_t* experts, float* weights) {
  EnsureFlushDenormals();
  Scratch<float> biased(E, NoInit{});
  for (int64_t t = 0; t < m; ++t) {
    float* s = scores + t * E;
    if (temp != 1.0f)
      for (int64_t e = 0; e < E; ++e) s[e] /= temp;
    switch (score) {
      case RouterScore::kSqrtSoftplus:
        for (int64_t e = 0; e < E; ++e) s[e] = std::sqrt(Softplus(s[e]));
        break;
      case RouterScore::kSigmoid:
        for (int64_t e = 0; e < E; ++e) s[e] = 1.0f / (1.0f + std::exp(-s[e]));
        break;
      case RouterScore::kSoftmax: {
        const float mx = *std::max_element(s, s + E);
        float sum = 0.f;
        for (int64_t e = 0; e < E; ++e) sum += (s[e] = std::exp(s[e] - mx));
        for (int64_t e = 0; e < E; ++e) s[e] /= sum;
        break;
      }
    }
    int32_t* idx = experts + t * K;
    if (tid2eid != nullptr) {  // hash layer: fixed experts per token id
      std::memcpy(idx, tid2eid + static_cast<int64_t>(tokens[t]) * K, K * sizeof(int32_t));
    } else {  // the bias only steers selection
      for (int64_t e = 0; e < E; ++e) biased[e] = s[e] + (bias == nullptr ? 0.f : bias[e]);
      TopK(biased.data(), E, K, idx);
    }
    float* w = weights + t * K;
    float sum = 0.f;
    for (int64_t j = 0; j < K; ++j) sum += (w[j] = s[idx[j]]);
    for (int64_t j = 0; j < K; ++j) {
      if (normalize) w[j] /= sum + norm_eps;
      w[j] *= scaling;
    }
  }
}

void SortSlotsByExpert(int32_t* experts, float* weights, int64_t m, int64_t K) {
  for (int64_t t = 0; t < m; ++t) {
    int32_t* e = experts + t * K;
    float* w = weights == nullptr ? nullptr : weights + t * K;
    for (int64_t i = 1; i < K; ++i) {  // insertion sort: K is small, and it is stable
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
}

void GroupByExpert(const int32_t* experts, int64_t pairs, int64_t K, int64_t E, int32_t* offsets, int64_t* order,
                   int64_t* order_tokens, int32_t* position, int64_t* counts) {
  EnsureFlushDenormals();
  // A counting sort: pairs in expert order, pair order within an expert.
  std::fill(offsets, offsets + E + 1, 0);
  for (int64_t p = 0; p < pairs; ++p)
    if (experts[p] >= 0 && experts[p] < E) ++offsets[experts[p] + 1];
  for (int64_t e = 0; e < E; ++e) offsets[e + 1] += offsets[e];
  Scratch<int32_t> fill(E, NoInit{});
  std::copy(offsets, offsets + E, fill.begin());
  for (int64_t p = 0; p < pairs; ++p) {
    const int32_t e = experts[p];
    if (e < 0 || e >= E) {
      position[p] = -1;
      continue;
    }
    const int32_t i = fill[e]++;
    order[i] = p, order_tokens[i] = p / K, position[p] = i;
  }
  for (int64_t i = offsets[E]; i < pairs; ++i) order[i] = -1, order_tokens[i] = -1;
  if (counts != nullptr)
    for (int64_t e = 0; e < E; ++e) counts[e] += offsets[e + 1] - offsets[e];
}

}  // namespace dsv4::kernels
