// CPU kernels: math on raw pointers. Nothing here knows about checkpoints, requests or ranks.
//
// Conventions: row-major, float32 activations; a "row" is the last dimension. Weights stay in their
// checkpoint format (BF16, FP8 E4M3 with E8M0 block scales, packed FP4 E2M1 with E8M0 per-32
// scales) and are dequantized in registers; sums are float32. Every kernel with a vectorized or
// multi-threaded path has a plain-loop twin in namespace `ref` that the tests compare against.
// Kernels allocate nothing on the heap once their thread's scratch arena has grown (scratch.h).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace dsv4::kernels {

enum class WeightType : uint8_t { kF32, kBF16, kFP8, kFP4 };

// A weight matrix W, logically [rows = out_features, cols = in_features], used as y = x W^T.
// `data` points at logical element (0, 0) of the FULL stored matrix; the view covers rows
// [row_begin, row_end) and columns [col_begin, col_end) of it, so tensor-parallel shards are views
// of the one mmapped tensor. Storage per type:
//   kF32 / kBF16: `ld` elements per stored row.
//   kFP8: one byte per element, `ld` bytes per row; scales E8M0 [ceil(R/bh), scale_ld] for
//         blocks of `block_rows` x `block_cols` (128 x 128 in V4, 32 x 32 in V4.1; any shape, the
//         fast paths take block_cols a multiple of 32).
//   kFP4: two elements per byte (low nibble = even column), `ld` BYTES per row; scales E8M0
//         [R, scale_ld], one per `block_cols` (32) columns, `block_rows` = 1.
struct WeightMatrix {
  WeightType type = WeightType::kF32;
  const void* data = nullptr;
  const uint8_t* scales = nullptr;
  int64_t ld = 0;
  int64_t scale_ld = 0;
  int32_t block_rows = 1;
  int32_t block_cols = 1;
  int64_t row_begin = 0, row_end = 0;
  int64_t col_begin = 0, col_end = 0;
  // Stored for the amx level's tiles (PackForTiles): per group of 16 rows and pair of columns, the
  // even column's 16 elements, then the odd column's (FP4: one byte per row, the even column in
  // the low nibble); rows padded to whole groups, ld (columns) to a multiple of 32, with zeros.
  bool tiled = false;

  int64_t rows() const { return row_end - row_begin; }
  int64_t cols() const { return col_end - col_begin; }
};

// Bytes PackForTiles writes for the view w: 0 where w cannot be stored so (FP32, already tiled, an
// FP8 view not starting on a block of scales, an FP4 view not starting on a group of 32).
int64_t TiledBytes(const WeightMatrix& w);
// The view w (FP8, FP4 or BF16) repacked for the tiles into `out` (TiledBytes(w) bytes, 64-byte
// aligned: the fast paths load whole lines); the scales are w's. Every byte of `out` is written, in
// parallel on the pool's threads, so fresh pages are faulted in by the threads that fill them.
// w itself where TiledBytes(w) is 0.
WeightMatrix PackForTiles(const WeightMatrix& w, void* out);
// True when a layer's input activations are rounded to FP8 before the product (the reference does
// this for FP8 and FP4 weights only).
inline bool IsQuantized(const WeightMatrix& w) { return w.type == WeightType::kFP8 || w.type == WeightType::kFP4; }

// Bytes StoreForThisCpu writes for w: 0 where this CPU's level multiplies w as it is.
int64_t StoredBytes(const WeightMatrix& w);
// w as this CPU's level multiplies it fastest, for products of inputs rounded as the reference
// rounds them: an FP8/FP4 w stored for the tiles (PackForTiles) into `out` (StoredBytes(w) bytes,
// 64-byte aligned) at the amx level, else w itself. Weights against unrounded inputs stay as they
// are: in the tiles' order their decode keeps three chains per column, which trailed the streaming
// path.
WeightMatrix StoreForThisCpu(const WeightMatrix& w, void* out);

// Dequantizes logical row `r` (relative to row_begin), columns [col_begin, col_end), into out.
// A value below the normal float range reads as 0 (FTZ, isa.h).
void DequantRow(const WeightMatrix& w, int64_t r, float* out);

// y[m, w.rows()] = x[m, w.cols()] W^T (ldx / ldy: row strides of x and y, in elements).
// Multi-threaded over output rows. Up to 16 token rows stream each weight row once (decode); more
// go through a cache-blocked GEMM on weight panels decoded once per call (prefill).
// Every (row, token) result is summed in one order whatever m is, so a token's output does not
// depend on the rows computed with it (the order depends on the instruction-set level only). Fast
// paths read weights as they are stored: FP8 E4M3 codes other than NaN (0x7F/0xFF read as +-480),
// E8M0 scales in [2^-100, 2^20] (released checkpoints use about 2^-10..2^0). On the avx512_bf16 and
// amx levels, products whose inputs are all exact in BF16 (checked per call) are taken in BF16 with
// FP32 sums in the same order, which gives the same bits.
void Linear(const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, float* y, int64_t ldy);

// One product of a grouped call: y[m, w->rows()] = x[m, w->cols()] W^T.
struct LinearJob {
  const float* x = nullptr;
  int64_t m = 0, ldx = 0;
  const WeightMatrix* w = nullptr;
  float* y = nullptr;
  int64_t ldy = 0;
};
// Runs every job in one parallel pass (MoE experts over the tokens routed to them): the threads
// share out all the jobs' rows, so many small products cost one dispatch and keep every core
// busy. Jobs must not write overlapping outputs.
void LinearGroup(const LinearJob* jobs, int64_t num_jobs);

// The arithmetic a floating-point operation was done with: FP32 FMAs (at the level's vector width),
// BF16 dot products with FP32 sums (vdpbf16ps), or AMX BF16 tiles.
enum class FlopKind : uint8_t { kFp32, kBf16, kAmxBf16 };

// Work done by the kernels, counted while enabled (benchmarks turn it on): bytes of weights read by
// Linear, bytes of KV cache / indexer keys read by attention and indexer scoring, and
// floating-point operations (a multiply-add is 2), of which bf16_flops and amx_flops were BF16
// products (the rest FP32). Off by default.
struct WorkCounts {
  int64_t weight_bytes = 0;
  int64_t cache_bytes = 0;
  int64_t flops = 0;
  int64_t bf16_flops = 0;
  int64_t amx_flops = 0;
};
void EnableWorkCounters(bool on);
WorkCounts ReadWorkCounters();
void ResetWorkCounters();
// Adds to the counters when they are enabled (for work done outside these kernels).
void CountWork(int64_t weight_bytes, int64_t cache_bytes, int64_t flops, FlopKind kind = FlopKind::kFp32);

// Quantize-dequantize each row of x[m, n] in place, in groups of `group` along the row, exactly as
// the reference's QAT simulation: scale = 2^ceil(log2(amax / fmt_max)), amax floored at 1e-4
// (FP8) or 6 * 2^-126 (FP4); value / scale rounded to the format (ties to even, saturating),
// times scale. A short last group (n % group != 0) is scaled on its own.
void QdqFp8(float* x, int64_t m, int64_t n, int64_t ld, int group);
void QdqFp4(float* x, int64_t m, int64_t n, int64_t ld, int group);
// FP4 E2M1 with an E4M3 scale per group (V4.1's compressed KV, groups of 16): amax floored at
// 6 * 2^-9, scale = amax / 6 rounded to E4M3 (ties to even, saturating), value / scale rounded to
// E2M1 (saturating at 6), times scale. The scale is not a power of two: the quotient is a true division.
void QdqFp4E4m3(float* x, int64_t m, int64_t n, int64_t ld, int group);

// y[i] += x[i] for i < n, vectorized: each element is one add, so the bits are a plain loop's (the
// MoE combines call it; at -O2 that loop stays scalar for fear of aliasing).
void AddTo(float* y, const float* x, int64_t n);

// y = w * x / sqrt(mean(x^2) + eps), per row of length n. `w` may be null (no gain).
void RmsNorm(const float* x, const float* w, float eps, int64_t m, int64_t n, int64_t ldx, float* y, int64_t ldy);

// Interleaved rotary embedding on rows of length 2*half: pairs (2i, 2i+1) rotated by angle with
// cos/sin taken from tables [pos, half]. inverse = rotate by -angle.
void Rope(float* x, int64_t half, const float* cos, const float* sin, bool inverse);

// Walsh-Hadamard transform of one row of length n (a power of two), natural order, times `scale`.
void Hadamard(float* x, int64_t n, float scale);

// mHC split + Sinkhorn for one token: mixes [hc*(hc+2)] -> pre [hc], post [hc], comb [hc, hc]
// (comb[i][j]: weight of source stream i in destination stream j).
void HcSplitSinkhorn(const float* mixes, const float* scale3, const float* base, int hc, int iters, float eps,
                     float* pre, float* post, float* comb);

// A KV source made of up to three contiguous segments addressed as one index space:
// index i < n0 -> seg0[i], then seg1, then seg2. Row length d.
struct KvSegments {
  const float* ptr[3] = {nullptr, nullptr, nullptr};
  int64_t len[3] = {0, 0, 0};
  const float* Row(int64_t i, int64_t d) const {
    for (int s = 0; s < 3; ++s) {
      if (i < len[s]) return ptr[s] + i * d;
      i -= len[s];
    }
    return nullptr;
  }
};

// Attention of m queries (H heads of dim d, K = V) over gathered rows: for query t, the rows
// idx[t * k + j] (j < k; -1 = unused). Softmax with one extra "sink" logit per head whose value is
// zero: o = sum_j e^{l_j} v_j / (sum_j e^{l_j} + e^{sink_h}), l_j = scale * q . v_j.
void SparseAttention(const float* q, int64_t m, int64_t H, int64_t d, const KvSegments& kv, const int32_t* idx,
                     int64_t k, const float* sink, float scale, float* out);

// Lightning-indexer scores: score[t, j] = sum_h w[t, h] * relu(q[t, h] . keys[j]) for j < nvis[t],
// -inf beyond. q [m, H, d], w [m, H], keys [n, d], score [m, n].
void IndexerScores(const float* q, const float* w, int64_t m, int64_t H, int64_t d, const float* keys, int64_t n,
                   const int64_t* nvis, float* score);

// Softmax-weighted pooling, channel by channel, over n rows (the compressors' blocks):
// out[c] = sum_i e^{s_i[c] - m[c]} v_i[c] / sum_i e^{s_i[c] - m[c]}, m[c] = max_i s_i[c], for c < width;
// row i is values[i], scores[i] (pointers to its first channel). Sums run in row order.
void SoftmaxPool(const float* const* values, const float* const* scores, int64_t n, int64_t width, float* out);

// Indices of the k largest values of x[n] (k <= n), in descending order of value; ties by lower
// index first.
void TopK(const float* x, int64_t n, int64_t k, int32_t* idx);

// ---- the model's fused row operations (fused.cc), named and shaped as their CUDA twins -----------

// Residual streams the CPU mHC kernels take (the CUDA ones: kernels::cuda::kMaxHc).
inline constexpr int kMaxHcStreams = 16;

// Clamped SwiGLU of the V4 experts: h = silu(min(g, limit)) * clamp(u, -limit, limit) (no clamp
// when limit <= 0), times row_weight[t] when not null. g, u, h [m, I] with row stride ld; h may be g.
void SwiGlu(const float* g, const float* u, int64_t m, int64_t I, int64_t ld, const float* row_weight, float limit,
            float* h);

// mHC pre for tokens x [m, hc, D] (row stride ldx >= hc*D): mixes = (x . fn^T) / rms(x) with fn
// [hc*(hc+2), hc*D] dense, then HcSplitSinkhorn, then collapsed[t] [D] = sum_i pre_i x[t, i].
// Writes post [m, hc] and comb [m, hc, hc] for HcPost, and pre [m, hc] when not null. collapsed may
// be null (V4.1's lagged mHC collapses with the pre weights of an earlier sub-layer). hc <= kMaxHcStreams.
void HcPre(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale3,
           const float* base, int iters, float norm_eps, float hc_eps, float* collapsed, float* post, float* comb,
           float* pre);
// x[t, j] <- post[t, j] * y[t] + sum_i comb[t, i, j] x[t, i]; x [m, hc, D] (ldx), y [m, D] (ldy).
void HcPost(const float* y, int64_t ldy, const float* post, const float* comb, int64_t m, int hc, int64_t D, float* x,
            int64_t ldx);

// The final collapse of the streams before the head (MODEL.md 2.6), per token of x [m, hc, D] (ldx):
// rs = 1 / sqrt(mean(x^2) + norm_eps); pre_i = sigmoid((x . fn_i) rs scale + base_i) + hc_eps;
// out[t] [D] (ldo) = sum_i pre_i x[t, i]. fn [hc, hc*D] dense, scale [1], base [hc].
void HcHead(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale,
            const float* base, float norm_eps, float hc_eps, float* out, int64_t ldo);

// Embedding: out[t] (ldo) holds `copies` copies of row ids[t] of `table` dequantized (the residual
// streams start equal). ids must be rows of the view.
void EmbedRows(const WeightMatrix& table, const int32_t* ids, int64_t n, int copies, float* out, int64_t ldo);

// Compressor pooling (MODEL.md 2.3, before its norm / rotation / rounding). kv, score [rows, width]
// (row stride ld); ape [ratio, width]. Output block b (< num_blocks) pools rows first_row + b*ratio
// + i (i < ratio) with per-channel softmax weights score + ape[i]:
//   no overlap (width = hd): channel ch of those rows;
//   overlap (width = 2*hd):  channel hd+ch of those rows, then channel ch of the previous block's
//                            rows first_row + (b-1)*ratio + i, all 2*ratio in one softmax, when b > 0
//                            or first_has_prev.
// out [num_blocks, hd] (row stride ldo). Sums run in that candidate order (SoftmaxPool).
void CompressPool(const float* kv, const float* score, int64_t ld, const float* ape, int64_t ratio, int64_t hd,
                  bool overlap, int64_t first_row, bool first_has_prev, int64_t num_blocks, float* out, int64_t ldo);

// Rope over `rows` rows of 2*half floats (row r at x + r*ldx) with table entry r / rows_per_entry
// of cos / sin [entries, half].
void Rope(float* x, int64_t rows, int64_t ldx, int64_t half, const float* cos, const float* sin, int64_t rows_per_entry,
          bool inverse);
// Hadamard of each row of x [m, n] (ld).
void Hadamard(float* x, int64_t m, int64_t n, int64_t ld, float scale);
// Top-k of each row of x [m, n] (ldx): row t has nvalid[t] valid leading entries (n when nvalid is
// null); idx[t] [k] (ldidx) gets the indices of the min(k, nvalid[t]) largest (TopK's order), then -1s.
void TopK(const float* x, int64_t m, int64_t n, int64_t ldx, const int64_t* nvalid, int64_t k, int32_t* idx,
          int64_t ldidx);
// ---- MoE routing and grouping (moe.cc) ---------------------------------------------------------------

enum class RouterScore : uint8_t { kSoftmax, kSigmoid, kSqrtSoftplus };

// The router (MODEL.md 2.5) over gate logits scores [m, E], which become the routing scores in place:
// divided by temp (when != 1), then softmax / sigmoid / sqrt(softplus). experts[t] [K] are the
// hash table's tid2eid[tokens[t]] (hash layers: tid2eid [vocab, K] non-null) or the top-K of
// scores + bias (bias may be null; TopK's order); weights[t] [K] the scores of those experts,
// divided by their sum + norm_eps when `normalize`, times `scaling`.
void Route(float* scores, int64_t m, int64_t E, int64_t K, float temp, RouterScore score, const float* bias,
           const int32_t* tid2eid, const int32_t* tokens, bool normalize, float norm_eps, float scaling,
           int32_t* experts, float* weights);

// Each token's K routing slots (experts[t] [K], weights[t] [K] alongside; weights may be null) in
// ascending expert order, stably (-1s, experts not held here, first). After it, a token's rows from
// GroupByExpert's `position` are in expert order, the order in which the reference sums its experts.
void SortSlotsByExpert(int32_t* experts, float* weights, int64_t m, int64_t K);

// Groups `pairs` (token, slot) pairs p = t*K + j by experts[p] in [0, E) (others are left out: not
// held here): offsets [E+1] (expert e's rows are [offsets[e], offsets[e+1])), order [pairs] the pair
// of each row (pair order within an expert) then -1s, order_tokens [pairs] = order / K (then -1s),
// position [pairs] the row of each pair (-1 when left out). counts [E] (may be null) += rows per
// expert.
void GroupByExpert(const int32_t* experts, int64_t pairs, int64_t K, int64_t E, int32_t* offsets, int64_t* order,
                   int64_t* order_tokens, int32_t* position, int64_t* counts);

// dst row r [row_bytes] (pitch dst_pitch) = src row ids[r] (pitch src_pitch); ids[r] < 0 zero-fills.
void GatherRows(const void* src, int64_t src_pitch, const int64_t* ids, int64_t rows, int64_t row_bytes, void* dst,
                int64_t dst_pitch);
// dst row ids[r] [row_bytes] (pitch dst_pitch) = src row r (pitch src_pitch); ids[r] < 0 is skipped.
// The ids of one call are distinct.
void ScatterRows(const void* src, int64_t src_pitch, const int64_t* ids, int64_t rows, int64_t row_bytes, void* dst,
                 int64_t dst_pitch);
// Row r [row_bytes, a multiple of 4] (pitch src_pitch) to the address dst[r]; dst[r] = 0 is skipped.
// The destinations of one call do not overlap.
void ScatterRowsTo(const void* src, int64_t src_pitch, const uint64_t* dst, int64_t rows, int64_t row_bytes);
// x[i] = start + i * step for i < n.
void Iota(int32_t* x, int64_t n, int32_t start, int32_t step);
// x[i] *= s for i < n.
void Scale(float* x, int64_t n, float s);

// ---- Engram's gate (engram.cc; the math: runtime/model/engram.h) ----------------------------------

struct EngramGateOptions {
  bool act_qdq = true;    // round emb to FP8 in groups of 32 before an FP8 W_kv (the reference's act_quant)
  bool bf16_kv = false;   // round kv to BF16, as the reference's BF16 activations do
  bool bf16_out = false;  // round the updated streams to BF16
};

// Optional intermediates (resized as needed), for tests and debugging.
struct EngramGateTaps {
  std::vector<float>* kv_f32 = nullptr;  // [n, (hc + 1) D] before any rounding
  std::vector<float>* dot = nullptr;     // [n, hc]
  std::vector<float>* gate = nullptr;    // [n, hc]
};

// Updates x [n, hc, D] in place from emb [n, K] through W_kv (wkv [(hc + 1) D, K], 32-wide K blocks
// summed in K order) and the streams' gate weights gate_weight [hc, D]. `emb` is consumed (rounded
// in place when act_qdq applies); `mask` [n] may be null (every token gated), 0 closes the gate.
void EngramGate(const WeightMatrix& wkv, const float* gate_weight, float* emb, int64_t n, int64_t hc, int64_t D,
                float eps, const uint8_t* mask, const EngramGateOptions& options, float* x,
                const EngramGateTaps* taps = nullptr);

// V4.1's two-level indexer (MODEL.md 2.4). Level 1: the candidate-source layer keeps, for each
// query, the best blocks of `block_size` consecutive compressed positions; the index sources after
// it pick their top-k only inside those blocks.
// Blocks covering `width` positions: ceil(width / block_size).
inline int64_t CandidateBlockCount(int64_t width, int64_t block_size) { return (width + block_size - 1) / block_size; }
// scores [n, width]: indexer scores of n queries, -inf from each query's nvis[t] visible positions
// on. A block scores the max of its positions. For each query, keep [n, CandidateBlockCount] gets 1
// for the block holding its newest visible position (always kept: it may be only partly filled)
// and for the best of the others, topk_blocks in all, leaving out blocks with no visible position
// and blocks whose positions all score -inf. Ties between block scores go to the lower block.
void SelectCandidateBlocks(const float* scores, int64_t n, int64_t width, const int64_t* nvis, int64_t topk_blocks,
                           int64_t block_size, uint8_t* keep);
// Level 2: scores [n, width] of positions outside the kept blocks become -inf.
void MaskToCandidates(float* scores, int64_t n, int64_t width, const uint8_t* keep, int64_t block_size);
// Level 2's top-k picks [n, k] of masked positions become -1 (for i < min(k, nvis[t]): where
// scores[t, picks[t, i]] is -inf), so fewer candidates than k are never padded with them.
void DropMaskedPicks(const float* scores, int64_t n, int64_t width, const int64_t* nvis, int32_t* picks, int64_t k);
// Attention rows from the indexer's picks: rows[t * ldrows + i] = offset + block_base[p / per_block] +
// p % per_block for p = picks[t * k + i] >= 0 (a compressed position, through its sequence's block
// table: block_base[b] is the pool row of compressed block b's first position), -1 for p < 0.
void PickRows(const int32_t* picks, int64_t m, int64_t k, const int32_t* block_base, int64_t per_block, int32_t offset,
              int32_t* rows, int64_t ldrows);
// Whether x [n] holds no NaN and no Inf.
bool AllFinite(const float* x, int64_t n);
// flags[i] = 1 where row rows[i] of x (ldx) holds a NaN or an Inf among its first n values, else 0.
void FlagNonFinite(const float* x, int64_t ldx, int64_t n, const int32_t* rows, int64_t count, int32_t* flags);
// Ordered weighted combine: out[t] (+)= sum over j in [offsets[t], offsets[t+1]) of weights[j] *
// src[src_rows[j]] (weight 1 when weights is null; src_rows[j] < 0 is skipped), summed in j order,
// each product rounded before it is added. src [*, D] (lds), out [rows, D] (ldo).
void CombineRows(const float* src, int64_t lds, const int32_t* offsets, const int32_t* src_rows, const float* weights,
                 int64_t rows, int64_t D, bool accumulate, float* out, int64_t ldo);

namespace ref {
// Plain loops, obviously correct, no threads, no intrinsics.
void Linear(const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, float* y, int64_t ldy);
void SparseAttention(const float* q, int64_t m, int64_t H, int64_t d, const KvSegments& kv, const int32_t* idx,
                     int64_t k, const float* sink, float scale, float* out);
void IndexerScores(const float* q, const float* w, int64_t m, int64_t H, int64_t d, const float* keys, int64_t n,
                   const int64_t* nvis, float* score);
void SoftmaxPool(const float* const* values, const float* const* scores, int64_t n, int64_t width, float* out);
// The fused operations in double precision.
void SwiGlu(const float* g, const float* u, int64_t m, int64_t I, int64_t ld, const float* row_weight, float limit,
            float* h);
void HcPre(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale3,
           const float* base, int iters, float norm_eps, float hc_eps, float* collapsed, float* post, float* comb);
void CompressPool(const float* kv, const float* score, int64_t ld, const float* ape, int64_t ratio, int64_t hd,
                  bool overlap, int64_t first_row, bool first_has_prev, int64_t num_blocks, float* out, int64_t ldo);
}  // namespace ref

}  // namespace dsv4::kernels
