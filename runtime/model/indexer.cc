// The lightning indexer (MODEL.md 2.3, 2.4): per query, the compressed positions worth attending.
//
//   q_h   = RoPE(wq_b(qr))_h, V4: Hadamard-rotated; FP4 in groups of 32     [Hi heads of di]
//   w_h   = weights_proj(x)_h / sqrt(di * Hi)
//   I[j]  = sum_h w_h relu(q_h . k_j) over the index keys k_j visible to the query
//   picks = the index_topk best j
//
// V4.1 adds a first level at the candidate source (kernels::SelectCandidateBlocks): there each
// query also keeps its best blocks of positions, and the later index sources pick inside them. The
// picks of an index source serve the layers after it that run no indexer (StepPicks).
//
// Queries, keys, scores, V4.1's two levels and the top-k run on the backend, and the picks stay
// there: attention maps them to pool rows on the device (Backend::PickRows).
#include <algorithm>
#include <cmath>

#include "base/status.h"
#include "runtime/model/model.h"

namespace dsv4 {

void Model::IndexerQueries(int64_t layer, const float* x, const float* qr, int64_t n, const float* cos,
                           const float* sin, float* q, float* w) const {
  const ModelConfig& c = config();
  const AttentionParams& ap = attn_params_[layer];
  const int64_t Hi = c.index_n_heads, di = c.index_head_dim, rd = c.qk_rope_head_dim;
  Backend& be = *backend_;
  Project(ap.index_wq_b, qr, n, c.q_lora_rank, q);
  // Every head of every row: each operation works row by row.
  be.Rope(q + di - rd, n * Hi, di, rd / 2, cos, sin, Hi, /*inverse=*/false);
  if (c.index_hadamard()) be.Hadamard(q, n * Hi, di, di, 1.0f / std::sqrt(static_cast<float>(di)));
  if (opt_.qdq) be.QdqFp4(q, n * Hi, di, di, 32);
  Project(ap.index_weights_proj, x, n, c.hidden_size, w);
  be.Scale(w, n * Hi,
           static_cast<float>(1.0 / std::sqrt(static_cast<double>(di)) / std::sqrt(static_cast<double>(Hi))));
}

void Model::IndexerTopK(int64_t layer, const float* q, const float* w, const SeqSlice& seq) const {
  const ModelConfig& c = config();
  Backend& be = *backend_;
  const int64_t Hi = c.index_n_heads, di = c.index_head_dim, n = seq.n;
  // The index keys completed by the end of this step (their owner ran before this layer), read in
  // place when the sequence's blocks are consecutive in the pool, else gathered through the rows
  // the step's tables list; each query sees those of the blocks completed by its position.
  const SequenceCache& cache = *seq.cache;
  const int64_t owner = c.index_key_source(layer);
  const SeqKindTables& kt = seq.kinds[layer_kind_[layer]];
  const int64_t nkeys = kt.nkeys, key_bytes = di * static_cast<int64_t>(sizeof(float));
  DeviceScratch<float> gathered(be, kt.key_rows != nullptr ? nkeys * di : 0);
  const float* keys = nkeys == 0 ? nullptr : cache.IndexKeyRow(owner, 0);
  if (kt.key_rows != nullptr) {
    be.GatherRows(cache.pool->layer(owner).index_keys.data(), key_bytes, kt.key_rows, nkeys, key_bytes, gathered.data(),
                  key_bytes);
    keys = gathered.data();
  }
  const int64_t* nvis = kt.nvis;
  DeviceScratch<float> scores(be, n * nkeys);
  be.IndexerScores(q, w, n, Hi, di, keys, nkeys, nvis, scores.data());

  StepPicks& out = *seq.picks;
  const bool level1 = c.is_candidate_source(layer), level2 = !level1 && c.uses_candidates(layer);
  if (level1) {  // this layer's own picks stay unrestricted
    out.num_blocks = kernels::CandidateBlockCount(nkeys, c.candidate_block_size);
    DSV4_CHECK(n * out.num_blocks <= out.candidates_capacity, "candidate buffer too small");
    be.SelectCandidateBlocks(scores.data(), n, nkeys, nvis, c.candidate_topk_blocks, c.candidate_block_size,
                             out.candidates);
  } else if (level2) {  // pick inside the candidate source's blocks
    DSV4_CHECK(out.num_blocks == kernels::CandidateBlockCount(nkeys, c.candidate_block_size), "layer ", layer,
               ": no level-1 candidates for its ", nkeys, " positions");
    be.MaskToCandidates(scores.data(), n, nkeys, out.candidates, c.candidate_block_size);
  }
  const int64_t k = std::min(c.index_topk, nkeys);
  out.k = k;
  be.TopK(scores.data(), n, nkeys, nkeys, nvis, k, out.picks, k);
  // A masked position is never attended, even when fewer candidates than k remain.
  if (level2) be.DropMaskedPicks(scores.data(), n, nkeys, nvis, out.picks, k);
}

}  // namespace dsv4
