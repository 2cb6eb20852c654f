// Compressed KV (MODEL.md 2.3, 2.4): a layer that compresses pools every `ratio` tokens into one
// latent, which its cache keeps as one row at the position of the block's first token.
//
//   V4:   softmax pooling of the gate scores plus a position bias `ape` (ratio 4: overlapping blocks,
//         2 x head_dim channels), RMSNorm, RoPE, FP8 rounding of the non-rope part (groups of 64).
//         Ratio-4 layers run a second, 128-wide compressor for the indexer's keys (RoPE, Hadamard,
//         FP4 in groups of 32).
//   V4.1: only KV sources compress; pooling without `ape` (ratio 1: the projection itself), RMSNorm
//         gives the latent; index keys come from the latent (wk, k_norm, RoPE, FP4 in groups of 32);
//         the cached row is the latent with RoPE, FP4 in groups of 16 with E4M3 scales.
//
// Pooling is in float32 per sequence, with the rows of an incomplete block kept in the cache's
// CompressorState between steps, so any chunking of a sequence gives the same rows. The rows go
// into the pool (runtime/model/cache.h) through the sequence's block table. All of it runs as the
// backend's operations on its memory: the host decides only which rows go where.
#include <algorithm>
#include <cmath>

#include "base/status.h"
#include "kernels/cpu/scratch.h"
#include "runtime/model/model.h"

namespace dsv4 {

absl::Status Model::PoolBlocks(const CompressorWeights& cw, const CompressorParams& cp, const float* kv,
                               const float* score, int64_t n, int64_t start, CompressorState& st, float* latents,
                               const CompressorTail* tail) const {
  Backend& be = *backend_;
  if (st.rows == nullptr && st.floats() > 0)  // Model::PrepareBlocks reserves every state before a step
    return absl::InternalError("a compressor's state was not reserved before its step");
  const int64_t ratio = cw.ratio, hd = cw.head_dim, width = st.width;
  const int64_t row_bytes = width * static_cast<int64_t>(sizeof(float));
  // The state's planes hold [previous block (lead rows) | the r0 rows of the block being filled].
  const int64_t lead = cw.overlap ? ratio : 0, r0 = start % ratio, blocks = (r0 + n) / ratio;
  if (blocks == 0) return absl::InternalError("PoolBlocks called for rows that complete no block");
  // The rows in order, [previous block | the waiting rows | the step's], then every completed
  // block pooled at once: block b's rows start at lead + b * ratio, its predecessor's ratio before.
  const int64_t rows = lead + r0 + n;
  DeviceScratch<float> all_kv(be, rows * width), all_score(be, rows * width);
  if (lead + r0 > 0) {
    be.CopyOnDevice(all_kv.data(), st.kv(), (lead + r0) * row_bytes);
    be.CopyOnDevice(all_score.data(), st.score(), (lead + r0) * row_bytes);
  }
  be.CopyOnDevice(all_kv.data() + (lead + r0) * width, kv, n * row_bytes);
  be.CopyOnDevice(all_score.data() + (lead + r0) * width, score, n * row_bytes);
  be.CompressPool(all_kv.data(), all_score.data(), width, cp.ape, ratio, hd, cw.overlap, lead, st.has_prev, blocks,
                  latents, hd);
  be.RmsNorm(latents, cp.norm, static_cast<float>(config().rms_norm_eps), blocks, hd, hd, latents, hd);
  // A block completed at a KV block's end stays with that KV block (it is the previous block of
  // a sequence resuming there): [2 (kv, score), ratio, width].
  for (int64_t b = 0; tail != nullptr && b < blocks; ++b) {
    const int64_t end = start - r0 + (b + 1) * ratio;  // one past the block's last position
    if (end % tail->block_tokens != 0) continue;
    float* t = tail->rows->data() + (*tail->blocks)[end / tail->block_tokens - 1].block * 2 * ratio * width;
    be.CopyOnDevice(t, all_kv.data() + (lead + b * ratio) * width, ratio * row_bytes);
    be.CopyOnDevice(t + ratio * width, all_score.data() + (lead + b * ratio) * width, ratio * row_bytes);
  }
  // What waits for the next step: the last completed block (overlap) and the rows after it.
  const int64_t keep_from = lead + (blocks - (cw.overlap ? 1 : 0)) * ratio;
  be.CopyOnDevice(st.kv(), all_kv.data() + keep_from * width, (rows - keep_from) * row_bytes);
  be.CopyOnDevice(st.score(), all_score.data() + keep_from * width, (rows - keep_from) * row_bytes);
  st.has_prev = st.has_prev || cw.overlap;
  return absl::OkStatus();
}

absl::Status Model::CompressLayer(int64_t layer, const float* x, int64_t n, std::span<const SeqSlice> seqs,
                                  const StepTableViews& tables) const {
  const ModelConfig& c = config();
  const LayerWeights& lw = w_->layers[layer];
  const AttentionParams& ap = attn_params_[layer];
  Backend& be = *backend_;
  const int64_t D = c.hidden_size, rd = c.qk_rope_head_dim, half = rd / 2;
  const float eps = static_cast<float>(c.rms_norm_eps);
  // The compressor of the KV, then (V4 ratio 4) the indexer's own: projections over the batch,
  // pooling per sequence.
  const bool own_index_compressor = lw.has_indexer && !c.index_keys_from_latent();
  for (int k = 0; k < (own_index_compressor ? 2 : 1); ++k) {
    const bool index_keys = k == 1;
    const CompressorWeights& cw = index_keys ? lw.index_compressor : lw.compressor;
    const CompressorParams& cp = index_keys ? ap.index_compressor : ap.compressor;
    const int64_t width = cw.width(), hd = cw.head_dim, ratio = cw.ratio;
    DeviceScratch<float> ckv(be, n * width), cscore(be, ratio > 1 ? n * width : 0);
    Project(cp.wkv, x, n, D, ckv.data());
    if (ratio > 1) Project(cp.wgate, x, n, D, cscore.data());
    // The sequences whose step completes no block only add their rows to the state: all of them at
    // once, to the addresses the step's tables list.
    if (ratio > 1) {
      const uint64_t* appends = tables.compressor_appends + ((layer * 2 + k) * 2) * n;
      be.ScatterRowsTo(ckv.data(), width * 4, appends, n, width * 4);
      be.ScatterRowsTo(cscore.data(), width * 4, appends + n, n, width * 4);
    }
    for (const SeqSlice& s : seqs) {
      SequenceCache& cache = *s.cache;
      KvPool::Layer& pl = cache.pool->layer(layer);
      // The step completes compressed rows j0 .. j0 + blocks - 1, row j at position j * ratio.
      const int64_t j0 = s.start / ratio, blocks = (s.start % ratio + s.n) / ratio;
      if (blocks == 0) continue;  // its rows joined the state above (ratio 1 completes one per row)
      DeviceScratch<float> latents(be, blocks * hd);
      if (ratio == 1) {  // every token is a block of its own: nothing to pool
        be.RmsNorm(ckv.data() + s.begin * width, cp.norm, eps, s.n, hd, width, latents.data(), hd);
      } else {
        // Resumable block ends are kept in shared pools only (a private pool's blocks are its own).
        const CompressorTail tail{index_keys ? &pl.index_tail : &pl.compressor_tail, &cache.blocks,
                                  cache.pool->block_tokens()};
        const bool keep_tail = cw.overlap && cache.own_pool == nullptr;
        LayerCache& lc = cache.layers[layer];
        DSV4_RETURN_IF_ERROR(PoolBlocks(cw, cp, ckv.data() + s.begin * width, cscore.data() + s.begin * width, s.n,
                                        s.start, index_keys ? lc.index_compressor : lc.compressor, latents.data(),
                                        keep_tail ? &tail : nullptr));
      }
      // The rotations of the completed rows' positions, from the step's tables.
      const SeqKindTables& kt = s.kinds[layer_kind_[layer]];
      DSV4_CHECK(kinds_[layer_kind_[layer]].ratio == ratio, "layer ", layer, "'s compressor pools ", ratio,
                 " positions, its layer ", kinds_[layer_kind_[layer]].ratio);
      const float* cos = kt.block_cos;
      const float* sin = kt.block_sin;
      // Rows j0.. into the pool through the block table: a run of consecutive rows per KV block.
      auto store = [&](PoolRows& rows, const float* src, int64_t dim) {
        for (int64_t j = j0; j < j0 + blocks;) {
          const int64_t run = std::min(j0 + blocks, (j / pl.per_block + 1) * pl.per_block) - j;
          be.CopyOnDevice(rows.data() + cache.PoolRow(pl, j) * dim, src + (j - j0) * dim,
                          run * dim * static_cast<int64_t>(sizeof(float)));
          j += run;
        }
      };
      if (c.index_keys_from_latent() && c.owns_index_keys(layer)) {
        // Index keys from the latents, before they are rotated and rounded for the cache.
        const int64_t di = c.index_head_dim;
        DeviceScratch<float> keys(be, blocks * di);
        Project(ap.index_wk, latents.data(), blocks, hd, keys.data());
        be.RmsNorm(keys.data(), ap.index_k_norm, eps, blocks, di, di, keys.data(), di);
        be.Rope(keys.data() + di - rd, blocks, di, half, cos, sin, 1, /*inverse=*/false);
        if (opt_.qdq) be.QdqFp4(keys.data(), blocks, di, di, 32);
        store(pl.index_keys, keys.data(), di);
      }
      be.Rope(latents.data() + hd - rd, blocks, hd, half, cos, sin, 1, /*inverse=*/false);
      if (index_keys) {
        be.Hadamard(latents.data(), blocks, hd, hd, 1.0f / std::sqrt(static_cast<float>(hd)));
        if (opt_.qdq) be.QdqFp4(latents.data(), blocks, hd, hd, 32);
      } else if (opt_.qdq && c.compressed_kv_fp4()) {
        be.QdqFp4E4m3(latents.data(), blocks, hd, hd, 16);
      } else if (opt_.qdq) {
        be.QdqFp8(latents.data(), blocks, hd - rd, hd, 64);
      }
      store(index_keys ? pl.index_keys : pl.compressed, latents.data(), hd);
    }
  }
  return absl::OkStatus();
}

}  // namespace dsv4
