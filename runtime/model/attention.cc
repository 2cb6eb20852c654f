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

#include "kernels/cpu/kernels.h"
#include "runtime/model/model.h"
#include "runtime/status.h"

namespace dsv4 {

void Model::Compress(const CompressorWeights& cw, const Rope& rope, bool indexer, const float* x, int64_t n,
                     int64_t start, CompressorState& st, std::vector<float>& out_rows) const {
  const ModelConfig& c = config();
  const int64_t ratio = cw.ratio, hd = cw.head_dim, width = st.width, rd = c.qk_rope_head_dim;
  const bool overlap = ratio == 4;
  std::vector<float> kv(n * width), score(n * width), block(hd);
  Project(cw.wkv, x, n, c.hidden_size, kv.data());
  Project(cw.wgate, x, n, c.hidden_size, score.data());
  for (int64_t t = 0; t < n; ++t) {
    const int64_t pos = start + t, i = pos % ratio;
    std::memcpy(&st.cur_kv[i * width], &kv[t * width], width * sizeof(float));
    for (int64_t ch = 0; ch < width; ++ch) st.cur_score[i * width + ch] = score[t * width + ch] + cw.ape[i * width + ch];
    if (i != ratio - 1) continue;

    // Block j = pos / ratio is complete: softmax-weighted pooling over its rows, per channel. With
    // overlap, channels [0, hd) come from the previous block's rows and [hd, 2hd) from this one's,
    // all 2*ratio candidates in one softmax.
    for (int64_t ch = 0; ch < hd; ++ch) {
      float mx = -INFINITY;
      const int64_t cur_ch = overlap ? hd + ch : ch;
      for (int64_t r = 0; r < ratio; ++r) mx = std::max(mx, st.cur_score[r * width + cur_ch]);
      if (overlap && st.has_prev)
        for (int64_t r = 0; r < ratio; ++r) mx = std::max(mx, st.prev_score[r * width + ch]);
      float num = 0.f, den = 0.f;
      for (int64_t r = 0; r < ratio; ++r) {
        const float p = std::exp(st.cur_score[r * width + cur_ch] - mx);
        den += p, num += p * st.cur_kv[r * width + cur_ch];
      }
      if (overlap && st.has_prev)
        for (int64_t r = 0; r < ratio; ++r) {
          const float p = std::exp(st.prev_score[r * width + ch] - mx);
          den += p, num += p * st.prev_kv[r * width + ch];
        }
      block[ch] = num / den;
    }
    kernels::RmsNorm(block.data(), cw.norm.data(), static_cast<float>(c.rms_norm_eps), 1, hd, hd, block.data(), hd);
    rope.Apply(&block[hd - rd], pos + 1 - ratio);  // a block sits at its first token's position
    if (indexer) {
      kernels::Hadamard(block.data(), hd, 1.0f / std::sqrt(static_cast<float>(hd)));
      if (opt_.qdq) kernels::QdqFp4(block.data(), 1, hd, hd, 32);
    } else if (opt_.qdq) {
      kernels::QdqFp8(block.data(), 1, hd - rd, hd, 64);
    }
    out_rows.insert(out_rows.end(), block.begin(), block.end());
    if (overlap) {
      std::swap(st.prev_kv, st.cur_kv);
      std::swap(st.prev_score, st.cur_score);
      st.has_prev = true;
    }
  }
}

void Model::IndexerTopK(int64_t layer, const float* x, const float* qr, int64_t n, int64_t start,
                        const LayerCache& cache, std::vector<int32_t>& picks, int64_t& k) const {
  const ModelConfig& c = config();
  const LayerWeights& lw = w_->layers[layer];
  const Rope& rope = RopeFor(layer);
  const int64_t Hi = c.index_n_heads, di = c.index_head_dim, rd = c.qk_rope_head_dim, ratio = c.ratio(layer);
  const int64_t nblocks = static_cast<int64_t>(cache.index_keys.size()) / di;
  std::vector<float> q(n * Hi * di), wts(n * Hi);
  Project(lw.index_wq_b, qr, n, c.q_lora_rank, q.data());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < Hi; ++h) {
      float* qh = &q[(t * Hi + h) * di];
      rope.Apply(qh + di - rd, start + t);
      kernels::Hadamard(qh, di, 1.0f / std::sqrt(static_cast<float>(di)));
      if (opt_.qdq) kernels::QdqFp4(qh, 1, di, di, 32);
    }
  Project(lw.index_weights_proj, x, n, c.hidden_size, wts.data());
  const float wscale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(di)) / std::sqrt(static_cast<double>(Hi)));
  for (float& v : wts) v *= wscale;

  std::vector<int64_t> nvis(n);
  for (int64_t t = 0; t < n; ++t) nvis[t] = (start + t + 1) / ratio;
  std::vector<float> scores(n * nblocks);
  kernels::IndexerScores(q.data(), wts.data(), n, Hi, di, cache.index_keys.data(), nblocks, nvis.data(),
                         scores.data());
  k = std::min(c.index_topk, nblocks);
  picks.assign(n * k, -1);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t m = std::min(k, nvis[t]);
    kernels::TopK(&scores[t * nblocks], nvis[t], m, &picks[t * k]);
  }
}

absl::Status Model::Attention(int64_t layer, const float* x, int64_t n, int64_t start, LayerCache& cache,
                              float* out) const {
  const ModelConfig& c = config();
  const LayerWeights& lw = w_->layers[layer];
  const Rope& rope = RopeFor(layer);
  // Under tensor parallelism the views cover this rank's heads and output groups only.
  const int64_t hd = c.head_dim, H = lw.wq_b.rows() / hd, rd = c.qk_rope_head_dim, nope = hd - rd;
  const int64_t win = c.sliding_window, ratio = c.ratio(layer), D = c.hidden_size;
  const float eps = static_cast<float>(c.rms_norm_eps);

  // Queries: low-rank projection, per-head RMS renormalization (no gain), RoPE on the last rd dims.
  std::vector<float> qr(n * c.q_lora_rank), q(n * H * hd);
  Project(lw.wq_a, x, n, D, qr.data());
  kernels::RmsNorm(qr.data(), lw.q_norm.data(), eps, n, c.q_lora_rank, c.q_lora_rank, qr.data(), c.q_lora_rank);
  Project(lw.wq_b, qr.data(), n, c.q_lora_rank, q.data());
  kernels::RmsNorm(q.data(), nullptr, eps, n * H, hd, hd, q.data(), hd);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < H; ++h) rope.Apply(&q[(t * H + h) * hd + nope], start + t);

  // The chunk's window keys (= values).
  std::vector<float> kv(n * hd);
  Project(lw.wkv, x, n, D, kv.data());
  kernels::RmsNorm(kv.data(), lw.kv_norm.data(), eps, n, hd, hd, kv.data(), hd);
  for (int64_t t = 0; t < n; ++t) {
    rope.Apply(&kv[t * hd + nope], start + t);
    if (opt_.qdq) kernels::QdqFp8(&kv[t * hd], 1, nope, hd, 64);
  }

  // Compressed blocks completed by this chunk, and which of them each query reads.
  std::vector<int32_t> picks;
  int64_t k_comp = 0;
  if (ratio > 0) {
    Compress(lw.compressor, rope, /*indexer=*/false, x, n, start, cache.compressor, cache.compressed);
    if (lw.has_indexer) {
      Compress(lw.index_compressor, rope, /*indexer=*/true, x, n, start, cache.index_compressor, cache.index_keys);
      IndexerTopK(layer, x, qr.data(), n, start, cache, picks, k_comp);
    } else {
      k_comp = static_cast<int64_t>(cache.compressed.size()) / hd;
    }
  }
  const int64_t nblocks = static_cast<int64_t>(cache.compressed.size()) / hd;
  const int64_t k = win + k_comp;
  std::vector<int32_t> idx(n * k, -1);
  for (int64_t t = 0; t < n; ++t) {
    const int64_t pos = start + t;
    int32_t* row = &idx[t * k];
    int64_t j = 0;
    for (int64_t p = std::max<int64_t>(0, pos - win + 1); p <= pos; ++p)
      row[j++] = static_cast<int32_t>(p >= start ? win + (p - start) : p % win);
    const int64_t comp_base = win + n;
    if (lw.has_indexer) {
      for (int64_t i = 0; i < k_comp; ++i)
        if (picks[t * k_comp + i] >= 0) row[win + i] = static_cast<int32_t>(comp_base + picks[t * k_comp + i]);
    } else if (ratio > 0) {
      const int64_t visible = std::min(nblocks, (pos + 1) / ratio);
      for (int64_t b = 0; b < visible; ++b) row[win + b] = static_cast<int32_t>(comp_base + b);
    }
  }
  kernels::KvSegments segs;
  segs.ptr[0] = cache.window.data(), segs.len[0] = win;
  segs.ptr[1] = kv.data(), segs.len[1] = n;
  segs.ptr[2] = cache.compressed.data(), segs.len[2] = nblocks;
  std::vector<float> o(n * H * hd);
  kernels::SparseAttention(q.data(), n, H, hd, segs, idx.data(), k, lw.attn_sink.data(),
                           1.0f / std::sqrt(static_cast<float>(hd)), o.data());
  for (int64_t t = 0; t < n; ++t)
    for (int64_t h = 0; h < H; ++h) rope.Apply(&o[(t * H + h) * hd + nope], start + t, /*inverse=*/true);

  // The ring keeps the last `win` positions for later chunks.
  for (int64_t t = std::max<int64_t>(0, n - win); t < n; ++t)
    std::memcpy(&cache.window[((start + t) % win) * hd], &kv[t * hd], hd * sizeof(float));

  // Grouped low-rank output: group g's heads -> o_lora via its block of wo_a (applied unrounded,
  // as the reference does), then wo_b over all groups.
  const int64_t lora = c.o_lora_rank, G = lw.wo_a.rows() / lora, gw = H * hd / G;
  std::vector<float> z(n * G * lora);
  for (int64_t g = 0; g < G; ++g) {
    WeightMatrix wg = lw.wo_a;
    wg.row_begin = lw.wo_a.row_begin + g * lora, wg.row_end = wg.row_begin + lora;
    kernels::Linear(&o[g * gw], n, H * hd, wg, &z[g * lora], G * lora);
  }
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
