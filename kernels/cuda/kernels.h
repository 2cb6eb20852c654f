// CUDA kernels of the forward pass: the GPU twins of kernels/cpu/kernels.h, which is their
// reference (tests/kernels/cuda_kernels_test.cc compares every one against it).
//
// Conventions (as on CPU): row-major float32 activations, a "row" is the last dimension, `ld*` is a
// row stride in elements. Every pointer is device memory (or host memory mapped into the device's
// address space where a function says so). Every function only enqueues work on `stream`: it
// returns cudaErrorInvalidValue when dispatch.h does not support the shape (nothing launched), else
// the launch status. No function allocates or synchronizes, so all of them may be captured in a
// CUDA graph. Shapes are host values; anything that changes per step without changing the launch
// (positions, row ids, visible counts) is read from device memory.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cpu/kernels.h"
#include "kernels/cuda/launch.h"

namespace dsv4::kernels::cuda {

// The current device's compute capability and multiprocessor count (cached per device), which the
// launchers plan with (launch.h).
DeviceCaps CurrentDeviceCaps();

// ---- format rounding (the reference's QAT steps) ---------------------------------------------------

// x [m, n] (row stride ld), in place: per row, groups of `group` along the row rounded to FP8 E4M3 /
// FP4 E2M1 with a power-of-two scale, exactly as kernels::QdqFp8 / QdqFp4 (bit-identical).
cudaError_t QdqFp8(float* x, int64_t m, int64_t n, int64_t ld, int group, cudaStream_t stream);
cudaError_t QdqFp4(float* x, int64_t m, int64_t n, int64_t ld, int group, cudaStream_t stream);
// FP4 E2M1 with an E4M3 scale per group, exactly as kernels::QdqFp4E4m3 (V4.1's compressed KV).
cudaError_t QdqFp4E4m3(float* x, int64_t m, int64_t n, int64_t ld, int group, cudaStream_t stream);
// Engram's gate after W_kv (kernels::EngramGate): kv [n, ldkv] the hc keys and the value of each
// token, gate_weight [hc, D]; x [n, hc, D] updated in place.
cudaError_t EngramGateRows(const float* kv, int64_t ldkv, const float* gate_weight, int64_t n, int hc, int64_t D,
                           float eps, float* x, cudaStream_t stream);

// ---- normalization, rotation ----------------------------------------------------------------------

// y[t] = w * x[t] / sqrt(mean(x[t]^2) + eps); x [m, n] (ldx), y [m, n] (ldy), w [n] or null. y may be x.
cudaError_t RmsNorm(const float* x, const float* w, float eps, int64_t m, int64_t n, int64_t ldx, float* y,
                    int64_t ldy, cudaStream_t stream);

// Interleaved RoPE on `rows` rows of 2*half floats: row r starts at x + r * ldx and uses table entry
// e = r / rows_per_entry of cos / sin [entries, half] (one entry per token position; rows_per_entry
// = heads when the rows are [token, head]). inverse rotates by -angle.
cudaError_t Rope(float* x, int64_t rows, int64_t ldx, int64_t half, const float* cos, const float* sin,
                 int64_t rows_per_entry, bool inverse, cudaStream_t stream);

// Walsh-Hadamard transform (natural order) times `scale` of each row of x [m, n] (ld), in place.
cudaError_t Hadamard(float* x, int64_t m, int64_t n, int64_t ld, float scale, cudaStream_t stream);

// ---- mHC (MODEL.md 2.6), fused per token ---------------------------------------------------------

// For each token t with streams x[t] [hc, D] (row stride ldx >= hc*D): mixes = (x . fn^T) / rms(x)
// with fn [hc*(hc+2), hc*D] (dense), then split + Sinkhorn (kernels::HcSplitSinkhorn with scale3 [3],
// base [hc*(hc+2)]), then collapsed[t] [D] = sum_i pre_i x[t, i]. Writes post [m, hc] and comb
// [m, hc, hc] for HcPost, and pre [m, hc] when not null; collapsed may be null (as kernels::HcPre).
cudaError_t HcPre(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale3,
                  const float* base, int iters, float norm_eps, float hc_eps, float* collapsed, float* post,
                  float* comb, float* pre, cudaStream_t stream);
// x[t, j] <- post[t, j] * y[t] + sum_i comb[t, i, j] x[t, i]; x [m, hc, D] (ldx), y [m, D] (ldy).
cudaError_t HcPost(const float* y, int64_t ldy, const float* post, const float* comb, int64_t m, int hc, int64_t D,
                   float* x, int64_t ldx, cudaStream_t stream);

// Head collapse (kernels::HcHead): out[t] [D] (ldo) = sum_i pre_i x[t, i], pre_i = sigmoid((x . fn_i)
// / rms(x) * scale[0] + base[i]) + hc_eps; fn [hc, hc*D] dense, scale [1], base [hc].
cudaError_t HcHead(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale,
                   const float* base, float norm_eps, float hc_eps, float* out, int64_t ldo, cudaStream_t stream);

// ---- linear layers ---------------------------------------------------------------------------------

// y[m, w.rows()] = x[m, w.cols()] W^T (ldx, ldy: row strides). `w` is a view whose data / scales are
// device pointers (kernels/cuda/memory.h UploadWeight), in any of the four formats, dequantized on
// the fly. The caller rounds x to FP8 first where the reference does (QdqFp8).
cudaError_t Linear(const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, float* y, int64_t ldy,
                   cudaStream_t stream);

// Grouped linear (MoE experts): rows [offsets[g], offsets[g+1]) of x [*, ldx] go through weights[g]
// into the same rows of y [*, ldy]. weights [groups] and offsets [groups + 1] are device arrays
// (one expert per group, all views of one shape and type: `like` is any of them, read on the host
// for the type and shape). max_rows bounds every group's row count (e.g. all tokens).
cudaError_t GroupedLinear(const float* x, int64_t ldx, const WeightMatrix* weights, const WeightMatrix& like,
                          const int32_t* offsets, int64_t groups, int64_t max_rows, float* y, int64_t ldy,
                          cudaStream_t stream);

// The same with options: activation rounding and a workspace for the faster paths.
struct LinearOptions {
  // > 0: multiply QdqFp8(x, act_fp8_group) (the reference's rounding of activations to FP8 in
  // groups of this many columns, from x's column 0, before every FP8 / FP4 linear; a no-op on
  // activations already rounded so) instead of x, which lets FP8 tensor cores take exact FP8 x FP8
  // products: 32, 64 or 128. 0: x as it is.
  int act_fp8_group = 0;
  // Device scratch the call may use (split-K partial sums, activations as FP8 codes), 16-byte
  // aligned, at least LinearWorkspaceBytes for its shapes to get the fastest path; null / 0 is
  // valid (no split-K, no FP8 tensor-core prefill), except with act_fp8_group > 0 on weights or
  // devices the tensor-core kernels do not take (F32 weights, before sm_80, K not a multiple of 128):
  // the simple kernels then round a copy of x there, and a smaller workspace is
  // cudaErrorInvalidValue. Used only by the work this call enqueues.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};
// Bytes of workspace Linear's fastest path needs on the current device (0: none).
int64_t LinearWorkspaceBytes(int64_t m, const WeightMatrix& w, int act_fp8_group);
cudaError_t Linear(const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, float* y, int64_t ldy,
                   const LinearOptions& options, cudaStream_t stream);
// Grouped with options: act_fp8_group as above (the workspace is not used: groups give the
// parallelism). With act_fp8_group > 0 the weights must be ones the tensor-core kernel takes
// (BF16 / FP8 / FP4, K a multiple of 128), else cudaErrorInvalidValue.
cudaError_t GroupedLinear(const float* x, int64_t ldx, const WeightMatrix* weights, const WeightMatrix& like,
                          const int32_t* offsets, int64_t groups, int64_t max_rows, float* y, int64_t ldy,
                          const LinearOptions& options, cudaStream_t stream);

// Clamped SwiGLU of the V4 experts (MODEL.md 2.5): h = silu(min(g, limit)) * clamp(u, -limit, limit)
// (no clamp when limit <= 0), times row_weight[t] when not null. g, u, h [m, I] with row stride ld;
// h may be g.
cudaError_t SwiGlu(const float* g, const float* u, int64_t m, int64_t I, int64_t ld, const float* row_weight,
                   float limit, float* h, cudaStream_t stream);

// ---- attention -------------------------------------------------------------------------------------

// Sparse attention with sinks (kernels::SparseAttention): q [m, H, d], out [m, H, d]; for query t
// the KV rows idx[t * k + j] (j < k; -1 = unused) of the index space kv (up to three device
// segments of rows of d floats); sink [H]. Decode and prefill alike.
cudaError_t SparseAttention(const float* q, int64_t m, int64_t H, int64_t d, const KvSegments& kv,
                            const int32_t* idx, int64_t k, const float* sink, float scale, float* out,
                            cudaStream_t stream);

// The same with a workspace (SparseAttentionWorkspaceBytes, 16-byte aligned; null / 0: none) that
// lets the fused kernel split the KV rows of each query over several blocks when queries are few
// (decode), merged in a fixed order.
int64_t SparseAttentionWorkspaceBytes(int64_t m, int64_t H, int64_t d, int64_t k);
cudaError_t SparseAttention(const float* q, int64_t m, int64_t H, int64_t d, const KvSegments& kv,
                            const int32_t* idx, int64_t k, const float* sink, float scale, float* out, void* workspace,
                            int64_t workspace_bytes, cudaStream_t stream);

// Compressor pooling (MODEL.md 2.3, before its RMSNorm / RoPE / rounding, which are the kernels
// above). kv, score [rows, width] (row stride ld); ape [ratio, width]. Output block b (< num_blocks)
// pools rows first_row + b*ratio + i (i < ratio) with per-channel softmax weights score + ape[i]:
//   no overlap (width = hd):    channel ch of those rows;
//   overlap (width = 2*hd):     channel hd+ch of those rows, and channel ch of the previous block's
//                               rows first_row + (b-1)*ratio + i, all 2*ratio in one softmax, when
//                               b > 0 or first_has_prev.
// out [num_blocks, hd] (row stride ldo).
cudaError_t CompressPool(const float* kv, const float* score, int64_t ld, const float* ape, int64_t ratio,
                         int64_t hd, bool overlap, int64_t first_row, bool first_has_prev, int64_t num_blocks,
                         float* out, int64_t ldo, cudaStream_t stream);

// Lightning-indexer scores (kernels::IndexerScores): q [m, H, d], w [m, H], keys [n, d],
// nvis [m] (device), score [m, n]: sum_h w[t,h] relu(q[t,h] . keys[j]) for j < nvis[t], -inf beyond.
cudaError_t IndexerScores(const float* q, const float* w, int64_t m, int64_t H, int64_t d, const float* keys,
                          int64_t n, const int64_t* nvis, float* score, cudaStream_t stream);

// Top-k per row (kernels::TopK): row t of x [m, n] (ldx) has nvalid[t] valid leading entries (all n
// when nvalid is null); idx[t] [k] (ldidx) receives the indices of the min(k, nvalid[t]) largest in
// descending order (ties: lower index first), then -1s.
cudaError_t TopK(const float* x, int64_t m, int64_t n, int64_t ldx, const int64_t* nvalid, int64_t k, int32_t* idx,
                 int64_t ldidx, cudaStream_t stream);

// V4.1's two-level indexer (kernels::SelectCandidateBlocks, MaskToCandidates, DropMaskedPicks): all
// pointers in device memory. Level 1 takes a workspace of SelectCandidateBlocksWorkspaceBytes (-1:
// bad sizes) for the block scores and their top-k.
int64_t SelectCandidateBlocksWorkspaceBytes(int64_t n, int64_t width, int64_t topk_blocks, int64_t block_size);
cudaError_t SelectCandidateBlocks(const float* scores, int64_t n, int64_t width, const int64_t* nvis,
                                  int64_t topk_blocks, int64_t block_size, uint8_t* keep, void* workspace,
                                  int64_t workspace_bytes, cudaStream_t stream);
cudaError_t MaskToCandidates(float* scores, int64_t n, int64_t width, const uint8_t* keep, int64_t block_size,
                             cudaStream_t stream);
cudaError_t DropMaskedPicks(const float* scores, int64_t n, int64_t width, const int64_t* nvis, int32_t* picks,
                            int64_t k, cudaStream_t stream);

// ---- MoE routing and grouping (kernels::Route, kernels::GroupByExpert) ------------------------------

// The router over gate logits scores [m, E] (device, updated in place to the routing scores);
// bias [E], tid2eid [vocab, K] and tokens [m] may be null as on the CPU. Top-k ties go to the lower
// expert id, as kernels::TopK.
cudaError_t Route(float* scores, int64_t m, int64_t E, int64_t K, float temp, RouterScore score, const float* bias,
                  const int32_t* tid2eid, const int32_t* tokens, bool normalize, float norm_eps, float scaling,
                  int32_t* experts, float* weights, cudaStream_t stream);
// kernels::SortSlotsByExpert on the device: one thread per token (K <= 32, as Route).
cudaError_t SortSlotsByExpert(int32_t* experts, float* weights, int64_t m, int64_t K, cudaStream_t stream);
// Bytes of device workspace GroupByExpert needs for `pairs` pairs over E experts (-1: unsupported).
int64_t GroupByExpertWorkspaceBytes(int64_t pairs, int64_t E);
// kernels::GroupByExpert on the device (a stable radix sort: rows of an expert keep pair order).
cudaError_t GroupByExpert(const int32_t* experts, int64_t pairs, int64_t K, int64_t E, int32_t* offsets, int64_t* order,
                          int64_t* order_tokens, int32_t* position, int64_t* counts, void* workspace,
                          int64_t workspace_bytes, cudaStream_t stream);

// ---- data movement ---------------------------------------------------------------------------------

// dst row r [row_bytes] (pitch dst_pitch) = src row ids[r] (pitch src_pitch); ids[r] < 0 zero-fills.
// src may be pinned host memory mapped into the device (cudaHostAlloc(..., cudaHostAllocMapped) or
// cudaHostRegister(..., cudaHostRegisterMapped)): Engram rows are read straight from host DRAM.
// Also packs MoE dispatch buffers. 16-byte copies when every address and pitch allows.
cudaError_t GatherRows(const void* src, int64_t src_pitch, const int64_t* ids, int64_t rows, int64_t row_bytes,
                       void* dst, int64_t dst_pitch, cudaStream_t stream);

// dst row ids[r] = src row r; ids[r] < 0 is skipped; the ids of one call are distinct
// (kernels::ScatterRows).
cudaError_t ScatterRows(const void* src, int64_t src_pitch, const int64_t* ids, int64_t rows, int64_t row_bytes,
                        void* dst, int64_t dst_pitch, cudaStream_t stream);

// Row r to the address dst[r] (0: skipped); row_bytes a multiple of 4 (kernels::ScatterRowsTo).
cudaError_t ScatterRowsTo(const void* src, int64_t src_pitch, const uint64_t* dst, int64_t rows, int64_t row_bytes,
                          cudaStream_t stream);

// x[i] = start + i * step for i < n (kernels::Iota).
cudaError_t Iota(int32_t* x, int64_t n, int32_t start, int32_t step, cudaStream_t stream);
// x[i] *= s for i < n (kernels::Scale).
cudaError_t Scale(float* x, int64_t n, float s, cudaStream_t stream);
// Attention rows from the indexer's picks through a block table (kernels::PickRows).
cudaError_t PickRows(const int32_t* picks, int64_t m, int64_t k, const int32_t* block_base, int64_t per_block,
                     int32_t offset, int32_t* rows, int64_t ldrows, cudaStream_t stream);
// flags[i] = 1 where row rows[i] of x holds a NaN or an Inf among its first n values (kernels::FlagNonFinite).
cudaError_t FlagNonFinite(const float* x, int64_t ldx, int64_t n, const int32_t* rows, int64_t count, int32_t* flags,
                          cudaStream_t stream);

// Embedding (kernels::EmbedRows): out[t] (ldo) = `copies` copies of row ids[t] (device) of `table`
// (a placed view, any format) dequantized.
cudaError_t EmbedRows(const WeightMatrix& table, const int32_t* ids, int64_t n, int copies, float* out, int64_t ldo,
                      cudaStream_t stream);

// Ordered weighted combine (MoE): out[t] (+)= sum over e in [offsets[t], offsets[t+1]) of
// weight[e] * src[src_rows[e]] (weight 1 when weights is null; src_rows[e] < 0 is skipped), summed
// in e order, so the result does not depend on thread timing. src [*, D] (lds), out [rows, D] (ldo); accumulate = add
// to out.
cudaError_t CombineRows(const float* src, int64_t lds, const int32_t* offsets, const int32_t* src_rows,
                        const float* weights, int64_t rows, int64_t D, bool accumulate, float* out, int64_t ldo,
                        cudaStream_t stream);

// ---- diagnostics -----------------------------------------------------------------------------------

// One mma.sync.m16n8k16 (flavor 0: f16, 1: bf16) or m16n8k32 (2: e4m3, sm_89+, else
// cudaErrorNotSupported) by one warp from zero accumulators: lane l's A registers a[4l..4l+3], B
// registers b[2l..2l+1], results d[4l..4l+3] (device arrays). The gpu tests check the register
// model of mma_model.h with it.
cudaError_t MmaProbe(int flavor, const uint32_t* a, const uint32_t* b, float* d, cudaStream_t stream);

}  // namespace dsv4::kernels::cuda
