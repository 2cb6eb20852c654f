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
// into the pool (runtime/model/cache.h) through the sequence's block table.
#include <cmath>
#include <cstring>
#include <vector>

#include "kernels/cpu/kernels.h"
#include "kernels/cpu/scratch.h"
#include "runtime/model/model.h"

namespace dsv4 {

int64_t Model::PoolBlocks(const CompressorWeights& cw, const float* kv, const float* score, int64_t n, int64_t start,
                          CompressorState& st, float* latents, int64_t* positions, const CompressorTail* tail) const {
  const int64_t ratio = cw.ratio, hd = cw.head_dim;
  const float eps = static_cast<float>(config().rms_norm_eps);
  int64_t blocks = 0;
  if (ratio == 1) {  // every token is a block of its own: nothing to pool
    backend_->RmsNorm(kv, cw.norm.data(), eps, n, hd, hd, latents, hd);
    for (int64_t t = 0; t < n; ++t) positions[t] = start + t;
    return n;
  }
  const int64_t width = st.width;
  kernels::Scratch<const float*> values(2 * ratio, kernels::NoInit{}), scores(2 * ratio, kernels::NoInit{});
  for (int64_t t = 0; t < n; ++t) {
    const int64_t pos = start + t, i = pos % ratio;
    std::memcpy(&st.cur_kv[i * width], &kv[t * width], width * sizeof(float));
    if (cw.ape.empty()) {
      std::memcpy(&st.cur_score[i * width], &score[t * width], width * sizeof(float));
    } else {
      for (int64_t ch = 0; ch < width; ++ch)
        st.cur_score[i * width + ch] = score[t * width + ch] + cw.ape[i * width + ch];
    }
    if (i != ratio - 1) continue;

    // Block j = pos / ratio is complete: softmax-weighted pooling over its rows, per channel. With
    // overlap, channels [0, hd) come from the previous block's rows and [hd, 2hd) from this one's,
    // all 2*ratio candidates in one softmax (this block's rows first).
    int64_t nrows = 0;
    for (int64_t r = 0; r < ratio; ++r, ++nrows) {
      values[nrows] = &st.cur_kv[r * width + (cw.overlap ? hd : 0)];
      scores[nrows] = &st.cur_score[r * width + (cw.overlap ? hd : 0)];
    }
    if (cw.overlap && st.has_prev) {
      for (int64_t r = 0; r < ratio; ++r, ++nrows) {
        values[nrows] = &st.prev_kv[r * width];
        scores[nrows] = &st.prev_score[r * width];
      }
    }
    float* block = latents + blocks * hd;
    kernels::SoftmaxPool(values.data(), scores.data(), nrows, hd, block);
    backend_->RmsNorm(block, cw.norm.data(), eps, 1, hd, hd, block, hd);
    positions[blocks++] = pos + 1 - ratio;  // a block sits at its first token's position
    if (cw.overlap) {
      std::swap(st.prev_kv, st.cur_kv);
      std::swap(st.prev_score, st.cur_score);
      st.has_prev = true;
      // At a KV block's end, the rows a sequence resuming there needs stay with the block.
      if (tail != nullptr && (pos + 1) % tail->block_tokens == 0) {
        float* t = &(*tail->rows)[(*tail->blocks)[pos / tail->block_tokens].block * 2 * ratio * width];
        std::memcpy(t, st.prev_kv.data(), ratio * width * sizeof(float));
        std::memcpy(t + ratio * width, st.prev_score.data(), ratio * width * sizeof(float));
      }
    }
  }
  return blocks;
}

void Model::CompressLayer(int64_t layer, const float* x, int64_t n, std::span<const SeqSlice> seqs) const {
  using kernels::NoInit;
  using kernels::Scratch;
  const ModelConfig& c = config();
  const LayerWeights& lw = w_->layers[layer];
  const Rope& rope = RopeFor(layer);
  const int64_t D = c.hidden_size, rd = c.qk_rope_head_dim;
  // The compressor of the KV, then (V4 ratio 4) the indexer's own: projections over the batch,
  // pooling per sequence.
  const bool own_index_compressor = lw.has_indexer && !c.index_keys_from_latent();
  const CompressorWeights* comps[2] = {&lw.compressor, own_index_compressor ? &lw.index_compressor : nullptr};
  for (int k = 0; k < 2 && comps[k] != nullptr; ++k) {
    const CompressorWeights& cw = *comps[k];
    const bool index_keys = k == 1;
    const int64_t width = cw.width(), hd = cw.head_dim;
    Scratch<float> ckv(n * width, NoInit{}), cscore(cw.ratio > 1 ? n * width : 0, NoInit{});
    Project(cw.wkv, x, n, D, ckv.data());
    if (cw.ratio > 1) Project(cw.wgate, x, n, D, cscore.data());
    for (const SeqSlice& s : seqs) {
      SequenceCache& cache = *s.cache;
      LayerCache& lc = cache.layers[layer];
      KvPool::Layer& pl = cache.pool->layer(layer);
      const int64_t room = s.n / cw.ratio + 1;
      Scratch<float> latents(room * hd, NoInit{});
      Scratch<int64_t> positions(room, NoInit{});
      // Resumable block ends are kept in shared pools only (a private pool's blocks are its own).
      const CompressorTail tail{index_keys ? &pl.index_tail : &pl.compressor_tail, &cache.blocks,
                                cache.pool->block_tokens()};
      const bool keep_tail = cw.overlap && cache.own_pool == nullptr;
      const int64_t blocks =
          PoolBlocks(cw, &ckv[s.begin * width], cw.ratio > 1 ? &cscore[s.begin * width] : nullptr, s.n, s.start,
                     index_keys ? lc.index_compressor : lc.compressor, latents.data(), positions.data(),
                     keep_tail ? &tail : nullptr);
      if (blocks == 0) continue;
      // Compressed row j (position j * ratio) lives in KV block j / per_block of the table.
      auto pool_row = [&](PoolRows& rows, int64_t b, int64_t dim) {
        const int64_t j = positions[b] / cw.ratio;
        return &rows[(cache.blocks[j / pl.per_block].block * pl.per_block + j % pl.per_block) * dim];
      };
      if (c.index_keys_from_latent() && c.owns_index_keys(layer)) {
        // Index keys from the latents, before they are rotated and rounded for the cache.
        const int64_t di = c.index_head_dim;
        Scratch<float> keys(blocks * di, NoInit{});
        Project(lw.index_wk, latents.data(), blocks, hd, keys.data());
        backend_->RmsNorm(keys.data(), lw.index_k_norm.data(), static_cast<float>(c.rms_norm_eps), blocks, di, di,
                          keys.data(), di);
        for (int64_t b = 0; b < blocks; ++b) {
          rope.Apply(&keys[b * di + di - rd], positions[b]);
          if (opt_.qdq) backend_->QdqFp4(&keys[b * di], 1, di, di, 32);
        }
        for (int64_t b = 0; b < blocks; ++b)
          std::memcpy(pool_row(pl.index_keys, b, di), &keys[b * di], di * sizeof(float));
      }
      for (int64_t b = 0; b < blocks; ++b) {
        float* row = &latents[b * hd];
        rope.Apply(row + hd - rd, positions[b]);
        if (index_keys) {
          backend_->Hadamard(row, 1, hd, hd, 1.0f / std::sqrt(static_cast<float>(hd)));
          if (opt_.qdq) backend_->QdqFp4(row, 1, hd, hd, 32);
        } else if (opt_.qdq && c.compressed_kv_fp4()) {
          kernels::QdqFp4E4m3(row, 1, hd, hd, 16);
        } else if (opt_.qdq) {
          backend_->QdqFp8(row, 1, hd - rd, hd, 64);
        }
      }
      for (int64_t b = 0; b < blocks; ++b)
        std::memcpy(pool_row(index_keys ? pl.index_keys : pl.compressed, b, hd), &latents[b * hd], hd * sizeof(float));
    }
  }
}

}  // namespace dsv4
