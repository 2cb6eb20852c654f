// The lightning indexer (MODEL.md 2.3, 2.4): per query, the compressed positions worth attending.
//
//   q_h   = RoPE(wq_b(qr))_h, V4: Hadamard-rotated; FP4 in groups of 32     [Hi heads of di]
//   w_h   = weights_proj(x)_h / sqrt(di * Hi)
//   I[j]  = sum_h w_h relu(q_h . k_j) over the index keys k_j visible to the query
//   picks = the index_topk best j
//
// V4.1 adds a first level at the candidate source (candidates.h): there each query also keeps its
// best blocks of positions, and the later index sources pick inside them. The picks of an index
// source serve the layers after it that run no indexer (StepPicks).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "base/status.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/scratch.h"
#include "runtime/model/candidates.h"
#include "runtime/model/model.h"

namespace dsv4 {

void Model::IndexerQueries(int64_t layer, const float* x, const float* qr, int64_t n, const float* cos,
                           const float* sin, float* q, float* w) const {
  const ModelConfig& c = config();
  const LayerWeights& lw = w_->layers[layer];
  const int64_t Hi = c.index_n_heads, di = c.index_head_dim, rd = c.qk_rope_head_dim;
  Backend& be = *backend_;
  Project(lw.index_wq_b, qr, n, c.q_lora_rank, q);
  // Every head of every row: each operation works row by row.
  be.Rope(q + di - rd, n * Hi, di, rd / 2, cos, sin, Hi, /*inverse=*/false);
  if (c.index_hadamard()) be.Hadamard(q, n * Hi, di, di, 1.0f / std::sqrt(static_cast<float>(di)));
  if (opt_.qdq) be.QdqFp4(q, n * Hi, di, di, 32);
  Project(lw.index_weights_proj, x, n, c.hidden_size, w);
  const float wscale =
      static_cast<float>(1.0 / std::sqrt(static_cast<double>(di)) / std::sqrt(static_cast<double>(Hi)));
  for (int64_t i = 0; i < n * Hi; ++i) w[i] *= wscale;
}

void Model::IndexerTopK(int64_t layer, const float* q, const float* w, const SeqSlice& seq) const {
  const ModelConfig& c = config();
  const int64_t Hi = c.index_n_heads, di = c.index_head_dim, ratio = c.ratio(layer), n = seq.n;
  // The index keys completed by the end of this step (their owner ran before this layer), read in
  // place when the sequence's blocks are consecutive in the pool, else gathered.
  const SequenceCache& cache = *seq.cache;
  const int64_t owner = c.index_key_source(layer);
  const KvPool::Layer& pl = cache.pool->layer(owner);
  const int64_t nkeys = (seq.start + n) / ratio;
  const int64_t used = (nkeys + pl.per_block - 1) / pl.per_block;
  bool consecutive = true;
  for (int64_t b = 1; b < used && consecutive; ++b) consecutive = cache.blocks[b].block == cache.blocks[0].block + b;
  kernels::Scratch<float> gathered(consecutive ? 0 : nkeys * di, kernels::NoInit{});
  const float* keys = nkeys == 0 ? nullptr : cache.IndexKeyRow(owner, 0);
  if (!consecutive) {
    for (int64_t j = 0; j < nkeys; ++j) std::memcpy(&gathered[j * di], cache.IndexKeyRow(owner, j), di * sizeof(float));
    keys = gathered.data();
  }
  // A query at position p sees the blocks completed by then.
  kernels::Scratch<int64_t> nvis(n);
  for (int64_t t = 0; t < n; ++t) nvis[t] = std::min(nkeys, (seq.start + t + 1) / ratio);
  kernels::Scratch<float> scores(n * nkeys, kernels::NoInit{});
  backend_->IndexerScores(q, w, n, Hi, di, keys, nkeys, nvis.data(), scores.data());

  StepPicks& out = *seq.picks;
  if (c.is_candidate_source(layer)) {  // level 1: this layer's own picks stay unrestricted
    out.num_blocks = CandidateBlockCount(nkeys, c.candidate_block_size);
    DSV4_CHECK(n * out.num_blocks <= out.candidates_capacity, "candidate buffer too small");
    SelectCandidateBlocks(scores.data(), n, nkeys, nvis.data(), c.candidate_topk_blocks, c.candidate_block_size,
                          out.candidates);
  } else if (c.uses_candidates(layer)) {  // level 2: pick inside the candidate source's blocks
    DSV4_CHECK(out.num_blocks == CandidateBlockCount(nkeys, c.candidate_block_size), "layer ", layer,
               ": no level-1 candidates for its ", nkeys, " positions");
    MaskToCandidates(scores.data(), n, nkeys, out.candidates, c.candidate_block_size);
  }
  const int64_t k = std::min(c.index_topk, nkeys);
  out.k = k;
  backend_->TopK(scores.data(), n, nkeys, nkeys, nvis.data(), k, out.picks, k);
  for (int64_t t = 0; t < n; ++t) {
    const float* row = &scores[t * nkeys];
    int32_t* picks = &out.picks[t * k];
    // A masked position (level 2) is never attended, even when fewer candidates than k remain.
    for (int64_t i = 0; i < std::min(k, nvis[t]); ++i)
      if (row[picks[i]] == -std::numeric_limits<float>::infinity()) picks[i] = -1;
  }
}

}  // namespace dsv4
