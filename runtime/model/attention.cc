// V4 / V4.1 attention (MODEL.md 2.3, 2.4): one shared K=V head per layer over a sliding window,
// plus compressed KV: V4 ratio 128 attended in full, ratio 4 through the lightning indexer's top-k;
// V4.1 every compressed layer through the top-k of its index source, on its KV source's cache.
// Attention sinks, output de-rotation and the grouped low-rank output projection.
//
// Works on any chunk of n tokens at positions start .. start+n-1: a one-token decode step and a
// whole-prompt prefill are the same code. Keys for a query come from three places addressed as one
// index space: [the pool's window rows | the chunk's own rows | the pool's compressed rows of the
// layer's KV source]; a sequence's block table (runtime/model/cache.h) turns its positions and
// compressed positions into rows of the pools, so sequences sharing blocks read the same rows.
// The compressors live in compressor.cc, the indexer in indexer.cc.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <vector>

#include "base/status.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/scratch.h"
#include "runtime/model/model.h"

namespace dsv4 {

absl::Status Model::Attention(int64_t layer, const float* x, int64_t n, std::span<const SeqSlice> seqs,
                              const StepTableViews& tables, float* out) const {
  using kernels::Scratch;
  const ModelConfig& c = config();
  const LayerWeights& lw = w_->layers[layer];
  const AttentionParams& ap = attn_params_[layer];
  // Under tensor parallelism the views cover this rank's heads and output groups only.
  const int64_t hd = c.head_dim, H = lw.wq_b.rows() / hd, rd = c.qk_rope_head_dim, nope = hd - rd;
  const int64_t win = c.sliding_window, ratio = c.ratio(layer), D = c.hidden_size, ql = c.q_lora_rank;
  const float eps = static_cast<float>(c.rms_norm_eps);
  Backend& be = *backend_;
  // The rotations of the batch's positions (the step's, for this kind of layer), shared by the
  // queries, the keys and the outputs.
  const int64_t half = rd / 2, rope = ratio > 0 ? 1 : 0;
  const float* cos = tables.cos[rope];
  const float* sin = tables.sin[rope];

  // Queries: low-rank projection, (V4) per-head RMS renormalization without gain, RoPE on the last
  // rd dims. Every projection takes the whole batch's rows at once.
  DeviceScratch<float> qr(be, n * ql), q(be, n * H * hd);
  Project(ap.wq_a, x, n, D, qr.data());
  be.RmsNorm(qr.data(), ap.q_norm, eps, n, ql, ql, qr.data(), ql);
  Project(ap.wq_b, qr.data(), n, ql, q.data());
  if (c.q_head_norm()) be.RmsNorm(q.data(), nullptr, eps, n * H, hd, hd, q.data(), hd);
  be.Rope(q.data() + nope, n * H, hd, half, cos, sin, H, /*inverse=*/false);

  // The batch's window keys (= values), rounded as the reference caches them.
  DeviceScratch<float> kv(be, n * hd);
  Project(ap.wkv, x, n, D, kv.data());
  be.RmsNorm(kv.data(), ap.kv_norm, eps, n, hd, hd, kv.data(), hd);
  be.Rope(kv.data() + nope, n, hd, half, cos, sin, 1, /*inverse=*/false);
  if (opt_.qdq) be.QdqFp8(kv.data(), n, c.window_kv_qdq_len(), hd, static_cast<int>(c.window_kv_qdq_group()));

  // Compressed blocks completed by this step, then the indexer's picks (kept in each sequence's
  // StepPicks for the layers that reuse them).
  if (lw.has_compressor) DSV4_RETURN_IF_ERROR(CompressLayer(layer, x, n, seqs, tables));
  if (lw.has_indexer) {
    const int64_t Hi = c.index_n_heads, di = c.index_head_dim;
    DeviceScratch<float> iq(be, n * Hi * di), iw(be, n * Hi);
    IndexerQueries(layer, x, qr.data(), n, cos, sin, iq.data(), iw.data());
    for (const SeqSlice& s : seqs) IndexerTopK(layer, iq.data() + s.begin * Hi * di, iw.data() + s.begin * Hi, s);
  }

  // Attention per sequence over [the window pool | this step's rows | the KV source's compressed
  // pool]: the step's tables give the rows each query attends; the indexer's picks are mapped
  // through the block table on the device.
  const bool picked = ratio > 0 && c.index_source(layer) >= 0;
  const int kind = layer_kind_[layer];
  DeviceScratch<float> o(be, n * H * hd);
  KvPool* window_pool = nullptr;
  int64_t window_from = 0;
  // The step's window keys, by absolute position, into the blocks that keep a window part (for
  // later steps and for sequences that reuse these blocks): one scatter per run of sequences that
  // share a pool.
  auto keep_window = [&](int64_t upto) {
    if (window_pool != nullptr && upto > window_from)
      be.ScatterRows(kv.data() + window_from * hd, hd * 4, tables.window_rows + window_from, upto - window_from, hd * 4,
                     window_pool->layer(layer).window.data(), hd * 4);
  };
  for (const SeqSlice& s : seqs) {
    SequenceCache& cache = *s.cache;
    KvPool& pool = *cache.pool;
    const int64_t B = pool.block_tokens(), window_rows = pool.num_window_blocks() * B;
    const KvPool::Layer* comp = ratio > 0 ? &pool.layer(c.kv_source(layer)) : nullptr;
    const SeqKindTables& kt = s.kinds[kind];
    const int64_t k = kt.k;
    if (picked && k > win) {  // this layer's picks, over the kind's compressed columns
      DSV4_CHECK(s.picks->k == k - win, "layer ", layer, ": ", s.picks->k, " picks for ", k - win, " compressed rows");
      be.PickRows(s.picks->picks, s.n, k - win, kt.bases, comp->per_block, static_cast<int32_t>(window_rows + s.n),
                  kt.rows + win, k);
    }
    const int32_t* rows = kt.rows;
    KvPool::Layer& wl = pool.layer(layer);
    kernels::KvSegments segs;
    segs.ptr[0] = wl.window.data(), segs.len[0] = window_rows;
    segs.ptr[1] = kv.data() + s.begin * hd, segs.len[1] = s.n;
    segs.ptr[2] = comp ? comp->compressed.data() : nullptr;
    segs.len[2] = comp ? pool.num_blocks() * comp->per_block : 0;
    be.SparseAttention(q.data() + s.begin * H * hd, s.n, H, hd, segs, rows, k, ap.attn_sink,
                       1.0f / std::sqrt(static_cast<float>(hd)), o.data() + s.begin * H * hd);
    if (&pool != window_pool) {
      keep_window(s.begin);
      window_pool = &pool, window_from = s.begin;
    }
  }
  keep_window(n);
  be.Rope(o.data() + nope, n * H, hd, half, cos, sin, H, /*inverse=*/true);

  // Grouped low-rank output: group g's heads -> o_lora via its block of wo_a (applied unrounded,
  // as the reference does), all groups in one pass; then wo_b over all groups.
  const int64_t lora = c.o_lora_rank, G = lw.wo_a.rows() / lora, gw = H * hd / G;
  DeviceScratch<float> z(be, n * G * lora);
  Scratch<WeightMatrix> wg(G);
  Scratch<kernels::LinearJob> jobs(G);
  for (int64_t g = 0; g < G; ++g) {
    wg[g] = ap.wo_a;
    wg[g].row_begin = ap.wo_a.row_begin + g * lora, wg[g].row_end = wg[g].row_begin + lora;
    jobs[g].x = o.data() + g * gw, jobs[g].m = n, jobs[g].ldx = H * hd, jobs[g].w = &wg[g];
    jobs[g].y = z.data() + g * lora, jobs[g].ldy = G * lora;
  }
  be.LinearGroup(jobs.data(), G);
  return OutputProjection(lw.wo_b, ap.wo_b, z.data(), n, out);
}

absl::Status Model::OutputProjection(const WeightMatrix& wo_b, const WeightMatrix& placed, const float* z, int64_t n,
                                     float* out) const {
  const int64_t cols = wo_b.cols(), D = config().hidden_size, block = config().act_quant_group();
  if (!distributed() || par_->layout.tp == 1) {
    Project(placed, z, n, cols, out);
    return absl::OkStatus();
  }
  // Row-parallel: this rank holds columns [col_begin, col_end) of wo_b and the matching slice of
  // z. The reference rounds z to FP8 in blocks of `block` along the FULL row; when the slice cuts
  // through a block, gather the whole row first so the block's scale is the same as on one rank.
  const bool aligned = wo_b.col_begin % block == 0 && cols % block == 0;
  if (opt_.qdq && IsQuantized(wo_b) && !aligned) {
    // Every rank's slices [tp, n, cols] become whole rows [n, tp * cols] (row (t, r) is slice r's
    // row t), are rounded, and this rank multiplies its columns of them.
    const int tp = par_->layout.tp;
    const int64_t full = tp * cols, slice_bytes = cols * static_cast<int64_t>(sizeof(float));
    Backend& be = *backend_;
    DeviceScratch<float> all(be, tp * n * cols), rows(be, n * full);
    DeviceScratch<int64_t> order(be, n * tp);
    std::vector<int64_t> counts(tp, n * cols), host_order(n * tp);
    DSV4_RETURN_IF_ERROR(tp_rows_->AllGatherV(z, counts.data(), all.data()));
    for (int64_t t = 0; t < n; ++t)
      for (int r = 0; r < tp; ++r) host_order[t * tp + r] = r * n + t;
    be.CopyToDevice(order.data(), host_order.data(), order.bytes());
    be.GatherRows(all.data(), slice_bytes, order.data(), n * tp, slice_bytes, rows.data(), slice_bytes);
    be.QdqFp8(rows.data(), n, full, full, static_cast<int>(block));
    be.Linear(rows.data() + par_->layout.tp_rank * cols, n, full, placed, out, D);
  } else {
    Project(placed, z, n, cols, out);
  }
  return tp_rows_->AllReduceSum(out, n * D);
}

}  // namespace dsv4
