// mHC (manifold-constrained hyper-connections): the hc_mult residual streams are collapsed into
// one input per sub-layer and the sub-layer's output is expanded back with a doubly-stochastic
// (Sinkhorn-projected) mixing of the streams. MODEL.md section 2.6. The arithmetic is the
// backend's (HcPre, HcPost, HcHead); what stays here is which pre weights collapse which sub-layer.
#include "runtime/model/model.h"

namespace dsv4 {

void Model::HcPreLayer(const HcParams& p, const float* x, int64_t n, const float* lagged_pre, float* collapsed,
                       float* post, float* comb, float* pre) const {
  const ModelConfig& c = config();
  const int hc = static_cast<int>(c.hc_mult);
  const int64_t D = c.hidden_size;
  backend_->HcPre(x, n, hc, D, hc * D, p.fn, p.scale, p.base, static_cast<int>(c.hc_sinkhorn_iters),
                  static_cast<float>(c.rms_norm_eps), static_cast<float>(c.hc_eps),
                  lagged_pre != nullptr ? nullptr : collapsed, post, comb, pre);
  if (lagged_pre != nullptr) HcCollapse(x, lagged_pre, n, collapsed);
}

void Model::HcCollapse(const float* x, const float* pre, int64_t n, float* collapsed) const {
  // Row t*hc + i of x is stream i of token t: an ordered weighted combine of each token's rows.
  const int64_t D = config().hidden_size, hc = config().hc_mult;
  Backend& be = *backend_;
  DeviceScratch<int32_t> offsets(be, n + 1), rows(be, n * hc);
  be.Iota(offsets.data(), n + 1, 0, static_cast<int32_t>(hc));
  be.Iota(rows.data(), n * hc, 0, 1);
  be.CombineRows(x, D, offsets.data(), rows.data(), pre, n, D, false, collapsed, D);
}

}  // namespace dsv4
