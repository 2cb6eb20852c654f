// mHC (manifold-constrained hyper-connections): the hc_mult residual streams are collapsed into
// one input per sub-layer and the sub-layer's output is expanded back with a doubly-stochastic
// (Sinkhorn-projected) mixing of the streams. MODEL.md section 2.6.
#include <cmath>
#include <vector>

#include "base/status.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/scratch.h"
#include "kernels/cpu/thread_pool.h"
#include "runtime/model/model.h"

namespace dsv4 {

void Model::HcMixes(const std::vector<float>& fn, const std::vector<float>& scale, const std::vector<float>& base,
                    const float* x, int64_t n, float* pre, float* post, float* comb) const {
  const ModelConfig& c = config();
  const int64_t hc = c.hc_mult, mix = hc * (hc + 2), width = hc * c.hidden_size;
  // mixes = (flat x . fn^T) / rms(flat x); no learned gain. One product for all tokens.
  kernels::Scratch<float> mixes(n * mix, kernels::NoInit{});
  WeightMatrix fw;
  fw.type = kernels::WeightType::kF32, fw.data = fn.data(), fw.ld = width;
  fw.row_end = mix, fw.col_end = width;
  kernels::Linear(x, n, width, fw, mixes.data(), mix);
  kernels::ParallelFor(n, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* xt = x + t * width;
      float* mt = &mixes[t * mix];
      const float rs = 1.0f / std::sqrt(kernels::Dot(xt, xt, width) / width + static_cast<float>(c.rms_norm_eps));
      for (int64_t k = 0; k < mix; ++k) mt[k] *= rs;
      kernels::HcSplitSinkhorn(mt, scale.data(), base.data(), static_cast<int>(hc),
                               static_cast<int>(c.hc_sinkhorn_iters), static_cast<float>(c.hc_eps), pre + t * hc,
                               post + t * hc, comb + t * hc * hc);
    }
  });
}

void Model::HcCollapse(const float* x, const float* pre, int64_t n, float* collapsed) const {
  const int64_t D = config().hidden_size, hc = config().hc_mult;
  kernels::ParallelFor(n, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* xt = x + t * hc * D;
      float* u = collapsed + t * D;
      for (int64_t d = 0; d < D; ++d) u[d] = 0.f;
      for (int64_t i = 0; i < hc; ++i)
        for (int64_t d = 0; d < D; ++d) u[d] += pre[t * hc + i] * xt[i * D + d];
    }
  });
}

void Model::HcPost(const float* y, const float* post, const float* comb, int64_t n, float* x) const {
  const int64_t D = config().hidden_size, hc = config().hc_mult;
  kernels::ParallelFor(n, 1, [&](int64_t b, int64_t e) {
    kernels::Scratch<float> mixed(hc * D, kernels::NoInit{});
    for (int64_t t = b; t < e; ++t) {
      float* xt = x + t * hc * D;
      const float* ct = comb + t * hc * hc;
      // X'_j = post_j * y + sum_i comb[i][j] * X_i
      for (int64_t j = 0; j < hc; ++j) {
        float* out = &mixed[j * D];
        for (int64_t d = 0; d < D; ++d) out[d] = post[t * hc + j] * y[t * D + d];
        for (int64_t i = 0; i < hc; ++i) {
          const float w = ct[i * hc + j];
          for (int64_t d = 0; d < D; ++d) out[d] += w * xt[i * D + d];
        }
      }
      std::copy(mixed.begin(), mixed.end(), xt);
    }
  });
}

}  // namespace dsv4
