// V4 attention (MODEL.md 2.3): one shared K=V head per layer over a sliding window, plus per-layer
// compressed KV: ratio 128 attended in full, ratio 4 (overlapping blocks) through the lightning
// indexer's top-k. Attention sinks, output de-rotation and the grouped low-rank output projection.
//
// Works on any chunk of n tokens at positions start .. start+n-1: a one-token decode step and a
// whole-prompt prefill are the same code. Keys for a query come from three places addressed as one
// index space: [ring of the last `window` positions before the chunk | the chunk's own rows |
// compressed blocks].
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "base/status.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/scratch.h"
#include "runtime/model/model.h"

namespace dsv4 {

void Model::Compress(const CompressorWeights& cw, const Rope& rope, bool indexer, const float* kv, const float* score,
                     int64_t n, int64_t start, CompressorState& st, std::vector<float>& out_rows) const {
  const ModelConfig& c = config();
  const int64_t ratio = cw.ratio, hd = cw.head_dim, width = st.width, rd = c.qk_rope_head_dim;
  const bool overlap = ratio == 4;
  kernels::Scratch<float> block(hd, kernels::NoInit{});
  kernels::Scratch<const float*> values(2 * ratio, kernels::NoInit{}), scores(2 * ratio, kernels::NoInit{});
  for (int64_t t = 0; t < n; ++t) {
    const int64_t pos = start + t, i = pos % ratio;
    std::memcpy(&st.cur_kv[i * width], &kv[t * width], width * sizeof(float));
    for (int64_t ch = 0; ch < width; ++ch) st.cur_score[i * width + ch] = score[t * width + ch] + cw.ape[i * width + ch];
    if (i != ratio - 1) continue;

    // Block j = pos / ratio is complete: softmax-weighted pooling over its rows, per channel. With
    // overlap, channels [0, hd) come from the previous block's rows and [hd, 2hd) from this one's,
    // all 2*ratio candidates in one softmax (this block's rows first).
    int64_t nrows = 0;
    for (int64_t r = 0; r < ratio; ++r, ++nrows) {
      values[nrows] = &st.cur_kv[r * width + (overlap ? hd : 0)];
      scores[nrows] = &st.cur_score[r * width + (overlap ? hd : 0)];
    }
    if (overlap && st.has_prev) {
      for (int64_t r = 0; r < ratio; ++r, ++nrows) {
        values[nrows] = &st.prev_kv[r * width];
        scores[nrows] = &st.prev_score[r * width];
      }
    }
    kernels::SoftmaxPool(values.data(), scores.data(), nrows, hd, block.data());
    kernels::RmsNorm(block.data(), cw.norm.data(), static_cast<float>(c.rms_norm_eps), 1, hd, hd, block.data(), hd);
    rope.Apply(&block[hd - rd], pos + 1 - ratio);  // a block sits at its first token's position
    if (indexer) {
      kernels::Hadamard(block.data(), hd, 1.0f / std::sqrt(static_cast<float>(hd)));
      if (opt_.qdq) kernels::QdqFp4(block.data(), 1, hd, hd, 32);
    } else if (opt_.qdq) {
      kernels::QdqFp8(block.data(), 1, hd - rd, hd, 64);
    }
    out_rows.insert(out_rows.end(), block.begin(), block.end());  // the cache grows (amortized)
    if (overlap) {
      std::swap(st.prev_kv, st.cur_kv);
      std::swap(st.prev_score, st.cur_score);
      st.has_prev = true;
    }
  }
}

void Model::IndexerQueries(int64_t layer, const float* x, const float* qr, int64_t n, const int64_t* pos, float* q,
                           float* w) const {
  const ModelConfig& c = config();
  const LayerWeights& lw = w_->layers[layer];
  const Rope& rope = RopeFor(layer);
  const int64_t Hi = c.index_n_heads, di = c.index_head_dim, rd = c.qk_rope_head_dim;
  Project(lw.index_wq_b, qr, n, c.q_lora_rank, q);
  for (int64_t t = 0; t < n; ++t) {
    float* qt = &q[t * Hi * di];
    rope.ApplyMany(qt + di - rd, Hi, di, pos[t]);
    for (int64_t h = 0; h < Hi; ++h) kernels::Hadamard(qt + h * di, di, 1.0f / std::sqrt(static_cast<float>(di)));
    if (opt_.qdq) kernels::QdqFp4(qt, Hi, di, di, 32);
  }
  Project(lw.index_weights_proj, x, n, c.hidden_size, w);
  const float wscale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(di)) / std::sqrt(static_cast<double>(Hi)));
  for (int64_t i = 0; i < n * Hi; ++i) w[i] *= wscale;
}

void Model::IndexerTopK(int64_t layer, const float* q, const float* w, int64_t n, int64_t start,
                        const LayerCache& cache, int32_t* picks, int64_t k) const {
  const ModelConfig& c = config();
  const int64_t Hi = c.index_n_heads, di = c.index_head_dim, ratio = c.ratio(layer);
  const int64_t nblocks = static_cast<int64_t>(cache.index_keys.size()) / di;
  kernels::Scratch<int64_t> nvis(n);
  for (int64_t t = 0; t < n; ++t) nvis[t] = (start + t + 1) / ratio;
  kernels::Scratch<float> scores(n * nblocks, kernels::NoInit{});
  kernels::IndexerScores(q, w, n, Hi, di, cache.index_keys.data(), nblocks, nvis.data(), scores.data());
  std::fill(picks, picks + n * k, -1);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t m = std::min(k, nvis[t]);
    kernels::TopK(&scores[t * nblocks], nvis[t], m, &picks[t * k]);
  }
}

absl::Status Model::Attention(int64_t layer, const float* x, int64_t n, std::span<const SeqSlice> seqs,
                              float* out) const {
  using kernels::NoInit;
  using kernels::Scratch;
  const ModelConfig& c = config();
  const LayerWeights& lw = w_->layers[layer];
  const Rope& rope = RopeFor(layer);
  // Under tensor parallelism the views cover this rank's heads and output groups only.
  const int64_t hd = c.head_dim, H = lw.wq_b.rows() / hd, rd = c.qk_rope_head_dim, nope = hd - rd;
  const int64_t win = c.sliding_window, ratio = c.ratio(layer), D = c.hidden_size, ql = c.q_lora_rank;
  const float eps = static_cast<float>(c.rms_norm_eps);
  Scratch<int64_t> pos(n);
  for (const SeqSlice& s : seqs)
    for (int64_t t = 0; t < s.n; ++t) pos[s.begin + t] = s.start + t;

  // Queries: low-rank projection, per-head RMS renormalization (no gain), RoPE on the last rd dims.
  // Every projection takes the whole batch's rows at once.
  Scratch<float> qr(n * ql, NoInit{}), q(n * H * hd, NoInit{});
  Project(lw.wq_a, x, n, D, qr.data());
  kernels::RmsNorm(qr.data(), lw.q_norm.data(), eps, n, ql, ql, qr.data(), ql);
  Project(lw.wq_b, qr.data(), n, ql, q.data());
  kernels::RmsNorm(q.data(), nullptr, eps, n * H, hd, hd, q.data(), hd);
  for (int64_t t = 0; t < n; ++t) rope.ApplyMany(&q[t * H * hd + nope], H, hd, pos[t]);

  // The batch's window keys (= values).
  Scratch<float> kv(n * hd, NoInit{});
  Project(lw.wkv, x, n, D, kv.data());
  kernels::RmsNorm(kv.data(), lw.kv_norm.data(), eps, n, hd, hd, kv.data(), hd);
  for (int64_t t = 0; t < n; ++t) {
    rope.Apply(&kv[t * hd + nope], pos[t]);
    if (opt_.qdq) kernels::QdqFp8(&kv[t * hd], 1, nope, hd, 64);
  }

  // Compressed blocks completed by this step (projections batched, pooling per sequence), and the
  // indexer's queries.
  const int64_t Hi = c.index_n_heads, di = c.index_head_dim;
  Scratch<float> iq(lw.has_indexer ? n * Hi * di : 0, NoInit{}), iw(lw.has_indexer ? n * Hi : 0, NoInit{});
  if (ratio > 0) {
    const CompressorWeights* comps[2] = {&lw.compressor, lw.has_indexer ? &lw.index_compressor : nullptr};
    for (int k = 0; k < 2 && comps[k] != nullptr; ++k) {
      const CompressorWeights& cw = *comps[k];
      const int64_t width = (cw.ratio == 4 ? 2 : 1) * cw.head_dim;
      Scratch<float> ckv(n * width, NoInit{}), cscore(n * width, NoInit{});
      Project(cw.wkv, x, n, D, ckv.data());
      Project(cw.wgate, x, n, D, cscore.data());
      for (const SeqSlice& s : seqs) {
        LayerCache& lc = *s.cache;
        Compress(cw, rope, /*indexer=*/k == 1, &ckv[s.begin * width], &cscore[s.begin * width], s.n, s.start,
                 k == 1 ? lc.index_compressor : lc.compressor, k == 1 ? lc.index_keys : lc.compressed);
      }
    }
    if (lw.has_indexer) IndexerQueries(layer, x, qr.data(), n, pos.data(), iq.data(), iw.data());
  }

  // Attention per sequence over [its window ring | this step's rows | its compressed blocks].
  Scratch<float> o(n * H * hd, NoInit{});
  for (const SeqSlice& s : seqs) {
    LayerCache& cache = *s.cache;
    const int64_t nblocks = static_cast<int64_t>(cache.compressed.size()) / hd;
    int64_t k_comp = 0;
    if (lw.has_indexer) {
      k_comp = std::min<int64_t>(c.index_topk, static_cast<int64_t>(cache.index_keys.size()) / di);
    } else if (ratio > 0) {
      k_comp = nblocks;
    }
    Scratch<int32_t> picks(lw.has_indexer ? s.n * k_comp : 0, NoInit{});
    if (lw.has_indexer)
      IndexerTopK(layer, &iq[s.begin * Hi * di], &iw[s.begin * Hi], s.n, s.start, cache, picks.data(), k_comp);
    const int64_t k = win + k_comp;
    Scratch<int32_t> idx(s.n * k, -1);
    for (int64_t t = 0; t < s.n; ++t) {
      const int64_t p0 = s.start + t;
      int32_t* row = &idx[t * k];
      int64_t j = 0;
      for (int64_t p = std::max<int64_t>(0, p0 - win + 1); p <= p0; ++p)
        row[j++] = static_cast<int32_t>(p >= s.start ? win + (p - s.start) : p % win);
      const int64_t comp_base = win + s.n;
      if (lw.has_indexer) {
        for (int64_t i = 0; i < k_comp; ++i)
          if (picks[t * k_comp + i] >= 0) row[win + i] = static_cast<int32_t>(comp_base + picks[t * k_comp + i]);
      } else if (ratio > 0) {
        const int64_t visible = std::min(nblocks, (p0 + 1) / ratio);
        for (int64_t b = 0; b < visible; ++b) row[win + b] = static_cast<int32_t>(comp_base + b);
      }
    }
    kernels::KvSegments segs;
    segs.ptr[0] = cache.window.data(), segs.len[0] = win;
    segs.ptr[1] = &kv[s.begin * hd], segs.len[1] = s.n;
    segs.ptr[2] = cache.compressed.data(), segs.len[2] = nblocks;
    kernels::SparseAttention(&q[s.begin * H * hd], s.n, H, hd, segs, idx.data(), k, lw.attn_sink.data(),
                             1.0f / std::sqrt(static_cast<float>(hd)), &o[s.begin * H * hd]);
    // The ring keeps the last `win` positions for later steps.
    for (int64_t t = std::max<int64_t>(0, s.n - win); t < s.n; ++t)
      std::memcpy(&cache.window[((s.start + t) % win) * hd], &kv[(s.begin + t) * hd], hd * sizeof(float));
  }
  for (int64_t t = 0; t < n; ++t) rope.ApplyMany(&o[t * H * hd + nope], H, hd, pos[t], /*inverse=*/true);

  // Grouped low-rank output: group g's heads -> o_lora via its block of wo_a (applied unrounded,
  // as the reference does), all groups in one pass; then wo_b over all groups.
  const int64_t lora = c.o_lora_rank, G = lw.wo_a.rows() / lora, gw = H * hd / G;
  Scratch<float> z(n * G * lora, NoInit{});
  Scratch<WeightMatrix> wg(G);
  Scratch<kernels::LinearJob> jobs(G);
  for (int64_t g = 0; g < G; ++g) {
    wg[g] = lw.wo_a;
    wg[g].row_begin = lw.wo_a.row_begin + g * lora, wg[g].row_end = wg[g].row_begin + lora;
    jobs[g].x = &o[g * gw], jobs[g].m = n, jobs[g].ldx = H * hd, jobs[g].w = &wg[g];
    jobs[g].y = &z[g * lora], jobs[g].ldy = G * lora;
  }
  kernels::LinearGroup(jobs.data(), G);
  return OutputProjection(lw.wo_b, z.data(), n, out);
}

absl::Status Model::OutputProjection(const WeightMatrix& wo_b, const float* z, int64_t n, float* out) const {
  const int64_t cols = wo_b.cols(), D = config().hidden_size, block = config().fp8_block;
  if (!distributed() || par_->layout.tp == 1) {
    Project(wo_b, z, n, cols, out);
    return absl::OkStatus();
  }
  // Row-parallel: this rank holds columns [col_begin, col_end) of wo_b and the matching slice of
  // z. The reference rounds z to FP8 in blocks of `block` along the FULL row; when the slice cuts
  // through a block, gather the whole row first so the block's scale is the same as on one rank.
  const bool aligned = wo_b.col_begin % block == 0 && cols % block == 0;
  if (opt_.qdq && IsQuantized(wo_b) && !aligned) {
    const int tp = par_->layout.tp;
    std::vector<float> all(tp * n * cols), row(tp * cols), zq(n * cols);
    std::vector<int64_t> counts(tp, n * cols);
    DSV4_RETURN_IF_ERROR(par_->tp->AllGatherV(z, counts.data(), all.data()));
    for (int64_t t = 0; t < n; ++t) {
      for (int r = 0; r < tp; ++r) std::memcpy(&row[r * cols], &all[(r * n + t) * cols], cols * sizeof(float));
      kernels::QdqFp8(row.data(), 1, tp * cols, tp * cols, static_cast<int>(block));
      std::memcpy(&zq[t * cols], &row[par_->layout.tp_rank * cols], cols * sizeof(float));
    }
    kernels::Linear(zq.data(), n, cols, wo_b, out, D);
  } else {
    Project(wo_b, z, n, cols, out);
  }
  return par_->tp->AllReduceSum(out, n * D);
}

}  // namespace dsv4
