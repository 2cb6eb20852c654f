// The DeepSeek-V4 / V4.1 forward pass. Reads top to bottom like MODEL.md section 2:
// embedding into hc_mult residual streams; per layer (Engram first where configured) mHC collapse
// -> norm -> attention -> mHC expand, then mHC collapse -> norm -> MoE -> mHC expand; the final
// collapse, norm and vocab head. What V4.1 changes comes from ModelConfig's predicates (shared
// compressed KV, the two-level indexer, lagged mHC collapses, ...), not from a second forward.
//
// The operations run on the model's Backend (runtime/backend/backend.h): projections, norms, mHC,
// attention and its rotations, the compressors' pooling, the indexer's scores and picks, the MoE,
// the watchdog's checks. The whole forward keeps to device memory: its buffers are the backend's
// (DeviceScratch, KvPool, the compressors' state), its parameters placed on it, and only its
// operations touch them (tests/runtime/model_test.cc proves it on a guarded backend). The indexer's
// picks (and V4.1's level-1 candidates) stay on the device, where attention maps them to pool
// rows; the host reads back the watchdog's flags once per step and the logits; Engram's rows,
// fetched into host memory, are
// dequantized there and copied over for the gate. Still on the host: the expert- and tensor-
// parallel exchanges (MPI over host vectors).
//
// Activations are float32. The reference's deliberate rounding steps (FP8 inputs of quantized
// linears, FP8 window KV, FP8 (V4) or FP4 (V4.1) compressed KV, FP4 indexer q/k) are on unless
// ForwardOptions::qdq is false.
#pragma once

#include <atomic>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "kernels/cpu/scratch.h"
#include "parallel/layout.h"
#include "parallel/moe_dispatch.h"
#include "runtime/backend/backend.h"
#include "runtime/engram/row_source.h"
#include "runtime/model/cache.h"
#include "runtime/model/expert_exchange.h"
#include "runtime/weights.h"

namespace dsv4 {

struct ForwardOptions {
  bool qdq = true;  // reproduce the reference's quantization simulation
};

// Optional taps on intermediate tensors (for debugging and the per-block golden tests).
struct ForwardTaps {
  std::vector<std::vector<float>>* block_out = nullptr;   // per layer [n, hc, D]
  std::vector<std::vector<float>>* attn_out = nullptr;    // per layer [n, D]
  std::vector<std::vector<float>>* ffn_out = nullptr;     // per layer [n, D]
  std::vector<std::vector<float>>* engram_out = nullptr;  // per Engram layer [n, hc, D]: the block's input
  std::vector<std::vector<float>>* pre_mix = nullptr;     // per layer [n, hc] (V4.1): the mix handed on
};

// Rotary tables of one kind of layer: float32 frequencies as the reference computes them.
class Rope {
 public:
  Rope(int64_t rope_dim, double theta, int64_t original_len, double factor, double beta_fast, double beta_slow);
  // Rotates x[rope_dim] (interleaved pairs) to position `pos`; inverse rotates back.
  void Apply(float* x, int64_t pos, bool inverse = false) const;
  // The same for `count` vectors `stride` floats apart, with the angles computed once.
  void ApplyMany(float* x, int64_t count, int64_t stride, int64_t pos, bool inverse = false) const;
  void CosSin(int64_t pos, float* cos, float* sin) const;

 private:
  std::vector<float> freqs_;
};

struct EngramStep;  // runtime/model/engram.h

// One sequence's share of a batched step (Model::ForwardBatch): its next `n` tokens, appended to
// `cache`; with `logits`, its last position's logits are computed.
struct SequenceChunk {
  SequenceCache* cache = nullptr;
  int64_t n = 0;
  bool logits = true;
};

// What one sequence's layers hand down the stack within a step: the compressed positions the last
// index source picked for each of its rows (the layers up to the next index source attend the
// same), and the blocks the candidate source kept (level 1 of the V4.1 indexer).
// The buffers belong to the step (ForwardBatch's scratch, sized for every layer of the step), in the
// backend's memory: attention maps the picks to rows there.
struct StepPicks {
  int64_t k = 0;
  int32_t* picks = nullptr;  // [n, k], device: compressed positions, -1 = none
  int64_t num_blocks = 0;
  uint8_t* candidates = nullptr;    // [n, num_blocks], device: 1 = kept by level 1
  int64_t candidates_capacity = 0;  // entries `candidates` has room for
};

// One sequence's tables for the layers of one attention kind (Model::AttentionKind), made once per
// step (StepTables), in the backend's memory.
struct SeqKindTables {
  int64_t k = 0;                   // rows each query attends: the window's, then compressed ones
  int32_t* rows = nullptr;         // [n, k] rows of [window pool | step's keys | compressed pool], -1 none;
                                   // picked kinds: each layer's PickRows writes the compressed part
  const int32_t* bases = nullptr;  // picked: the pool row of each KV block's first compressed row
  // ratio > 0: the rotations of the compressed rows the step completes (row j at position j * ratio),
  // [blocks, rope_dim / 2], for the compressor.
  const float* block_cos = nullptr;
  const float* block_sin = nullptr;
  int64_t nkeys = 0;              // indexed: the index keys complete after the step
  const int64_t* nvis = nullptr;  // indexed: [n] keys each query sees
  // indexed, when the sequence's blocks are not consecutive in the pool: [nkeys] the pool row of
  // each key in position order (null: the keys are read in place).
  const int64_t* key_rows = nullptr;
};

// A sequence's rows inside a batched layer: rows [begin, begin + n) of the step, at positions
// start .. start + n - 1, with that sequence's cache (all layers: V4.1 layers read their KV
// source's), its step state and its tables.
struct SeqSlice {
  int64_t begin = 0, n = 0, start = 0;
  SequenceCache* cache = nullptr;
  StepPicks* picks = nullptr;
  const SeqKindTables* kinds = nullptr;  // [the model's attention kinds]
};

// What every layer of a step shares, made on the host once per step and copied to the backend's
// memory in one copy (StepTables): the layers then upload nothing. Pointers are backend memory.
struct StepTableViews {
  const int32_t* tokens = nullptr;           // [n]
  const int32_t* last_rows = nullptr;        // [sequences] each sequence's last row (the watchdog's)
  const float* one_hot = nullptr;            // V4.1: [n, hc] the first block's attention mix, [1, 0, ...]
  const int64_t* window_rows = nullptr;      // [n] the window pool row each token's key goes to (-1: none)
  // Where each row joins its compressor's state when the step completes no block of its sequence
  // (0: it does, and the compressor takes the sequence alone): [layers, 2 (the KV's compressor, the
  // indexer's), 2 (kv, score), n] device addresses; null when no layer keeps a state.
  const uint64_t* compressor_appends = nullptr;
  const float* cos[2] = {nullptr, nullptr};  // [n, rope_dim / 2] at each row's position: the window
  const float* sin[2] = {nullptr, nullptr};  // layers' rotation [0], the compressed layers' [1]
};

class Model {
 public:
  // `parallel` (may be null: a world of one) must outlive the model; the weights must be loaded
  // with the same TP slice and expert ownership. The model runs its operations on `backend` (null:
  // a CPU backend of its own), which it shares with nothing else that runs while a Forward does.
  explicit Model(std::shared_ptr<const ModelWeights> weights, ForwardOptions options = {},
                 const ParallelContext* parallel = nullptr, std::shared_ptr<Backend> backend = nullptr);

  const ModelConfig& config() const { return w_->config; }
  const ModelWeights& weights() const { return *w_; }
  const ForwardOptions& options() const { return opt_; }
  Backend& backend() const { return *backend_; }
  // The job's layout and communicators (null: a world of one).
  const ParallelContext* parallel() const { return par_; }

  // A cache with a private pool (runtime/model/cache.h) that grows with the sequence, holding
  // compressed blocks for `reserve_tokens` positions from the start (the decode path then
  // allocates nothing until it passes them).
  SequenceCache NewCache(int64_t reserve_tokens = 0) const;
  // A cache whose blocks live in `pool`, shared with other sequences: the caller sets its block
  // table (the serving engine, from the leader's plan).
  SequenceCache NewCache(KvPool* pool) const;
  // Positions per KV block of this model's caches (KvPool::DefaultBlockTokens).
  int64_t block_tokens() const { return block_tokens_; }
  // A sequence starting at a block boundary (cache.length = k * B, its table's blocks 0..k-1 set
  // and written by whichever sequence computed them, in a step that ended at that boundary): its
  // overlapping compressors' state and Engram history, from block k-1. INTERNAL when the cache is
  // not at a block end of a shared pool.
  absl::Status RestoreAtBlockEnd(SequenceCache& cache) const;

  // Tokens this rank's copy of each routed expert has processed since the model was built, summed
  // over layers: [n_routed_experts], for load reporting (the control plane's Status). Thread-safe.
  std::vector<int64_t> ExpertLoad() const;
  // The same per MoE layer: [num_hidden_layers * n_routed_experts], layer-major (what EPLB
  // balances). Thread-safe.
  std::vector<int64_t> ExpertLoadByLayer() const;

  // Expert parallelism: where the routed experts live now (null without a ParallelContext).
  // Thread-safe.
  std::shared_ptr<const ModelPlacement> placement() const;
  // OK when `next` fits this model and its EP group (the checks SwitchPlacement makes first).
  absl::Status CheckPlacement(const ModelPlacement& next) const;
  // Switches to `next`: views of the experts this rank gains are loaded from the mapped checkpoint
  // (and checked) first, then the placement and this rank's expert table change together. Every rank
  // of the job must switch at the same step, between steps (the step plan carries it: runtime/step.h);
  // not while a Forward runs. On error nothing changed here, but other ranks may have switched:
  // the job must stop.
  absl::Status SwitchPlacement(const ModelPlacement& next);

  // OK when every id is in the vocabulary and, with Engram, has a compressed id.
  absl::Status CheckTokens(std::span<const int32_t> tokens) const;
  // Engram models only: where table rows come from (default: the checkpoint's tables, mmapped).
  // Not to be called while a Forward runs.
  void SetEngramRowSource(std::shared_ptr<EngramRowSource> source);
  // The checkpoint's Engram tables, in engram_layer_ids order (empty without Engram).
  std::vector<EngramTableView> EngramTables() const;
  bool has_engram() const { return w_->engram_hasher != nullptr; }

  // Runs tokens [n] at positions cache.length .. +n-1, updates the cache and writes the
  // last position's logits [vocab] to `logits` (may be null). Under a ParallelContext every rank
  // of the job calls it with its group's tokens. Errors are communication failures, and DATA_LOSS
  // naming the layer when the numerical watchdog finds a NaN or Inf in the sequence's hidden state
  // or logits (cache.nonfinite_layer; the cache is updated either way, so ranks stay in step).
  absl::Status Forward(std::span<const int32_t> tokens, SequenceCache& cache, float* logits,
                       const ForwardTaps* taps = nullptr) const;
  // Several sequences in one step (batched decode, or prefills together): `tokens` holds each
  // sequence's chunk in turn; logits [sequences with `logits` set, vocab] gets their last-position
  // logits in order (may be null). Every weight is read once per step for the whole batch: the
  // dense projections and the head take all rows at once, and each routed expert runs once over
  // all tokens routed to it. Attention runs per sequence on its own cache. The result equals one
  // Forward per sequence, bit for bit (the kernels' sums do not depend on the batch).
  //
  // Under a ParallelContext every rank calls it once per step, with its own group's sequences —
  // possibly none (data-parallel attention groups take different sequences): a rank without
  // tokens still takes part in the MoE's collectives, so the others are not left waiting.
  //
  // The numerical watchdog: after every layer, each sequence's last row is checked for NaN/Inf
  // (hc * D values per sequence and layer; a bad value elsewhere in a sequence reaches its last
  // row through attention by the next layer), and so are the logits; the first finding is kept in
  // that sequence's cache (nonfinite_layer). Rows never mix across sequences, so one poisoned
  // sequence leaves the others' results unchanged; the caller decides what to do with it.
  absl::Status ForwardBatch(std::span<const int32_t> tokens, std::span<const SequenceChunk> seqs, float* logits,
                            const ForwardTaps* taps = nullptr) const;

  // The watchdog's error for a poisoned cache (OK when cache.nonfinite_layer < 0).
  absl::Status NumericalError(const SequenceCache& cache) const;

  // Pieces, public for tests.
  void Embed(std::span<const int32_t> tokens, float* x) const;  // x [n, hc, D]

 private:
  friend class ModelTestPeer;  // tests/runtime/model_test.cc: one layer alone

  // A layer over a batch of sequences (x [n, hc, D], n = sum of the slices' rows). `pre_mix`
  // [n, hc] (V4.1, lagged mHC): in, the collapse weights the previous block's FFN computed; out,
  // this block's FFN weights for the next block (null in V4).
  absl::Status BlockBatch(int64_t layer, float* x, std::span<const int32_t> tokens, std::span<const SeqSlice> seqs,
                          const StepTableViews& tables, float* pre_mix, const ForwardTaps* taps) const;
  // Logits of `count` last positions: x_last[i] points at [hc, D], pre_last[i] at its final
  // collapse weights [hc] (V4.1; null in V4, which computes them with hc_head_*); logits [count, vocab].
  absl::Status HeadBatch(const float* const* x_last, const float* const* pre_last, int64_t count,
                         float* logits) const;
  // y[n, w.rows()] = x W^T, with the FP8 input rounding when the weight is quantized.
  void Project(const WeightMatrix& w, const float* x, int64_t n, int64_t ldx, float* y) const;
  absl::Status Attention(int64_t layer, const float* x, int64_t n, std::span<const SeqSlice> seqs,
                         const StepTableViews& tables, float* out) const;
  // The row-parallel output projection wo_b (the checkpoint's view; `placed`, the backend's) over
  // this rank's groups, summed across the TP group.
  absl::Status OutputProjection(const WeightMatrix& wo_b, const WeightMatrix& placed, const float* z, int64_t n,
                                float* out) const;
  // Makes sure `cache` holds the blocks positions [length, length + n) write and the window parts
  // their queries read: a private pool grows (and recycles window blocks out of the window); a
  // shared pool's blocks must have been set by the caller (else INTERNAL: ranks out of step).
  absl::Status PrepareBlocks(SequenceCache& cache, int64_t n) const;
  // compressor.cc: runs the layer's compressor(s) over the batch's rows x [n, D] and writes each
  // sequence's completed blocks into the layer's pool rows, through its block table: compressed
  // KV, and the index keys (V4: from the indexer's own compressor; V4.1 key owners: from the
  // latents). Everything stays in the backend's memory.
  absl::Status CompressLayer(int64_t layer, const float* x, int64_t n, std::span<const SeqSlice> seqs,
                             const StepTableViews& tables) const;
  // Feeds one sequence's projected rows kv, score [n, width] (ratio > 1), which complete at least
  // one block, to its compressor, whose state holds the rows of the block being filled (and,
  // overlapping, of the previous block); writes the pooled, normalized latents of the blocks
  // completed, the first at the block of position `start`, to latents [(start % ratio + n) / ratio,
  // head_dim]. (Rows that complete no block join the state in CompressLayer, all sequences at once.) With `tail` (an
  // overlapping compressor in a shared pool), the rows of a block completed at a KV block's end
  // are kept with that KV block (KvPool::Layer), for a sequence that resumes there.
  struct CompressorTail {
    PoolRows* rows;
    const std::vector<BlockRef>* blocks;
    int64_t block_tokens;
  };
  struct CompressorParams;
  absl::Status PoolBlocks(const CompressorWeights& cw, const CompressorParams& cp, const float* kv, const float* score,
                          int64_t n, int64_t start, CompressorState& st, float* latents,
                          const CompressorTail* tail) const;
  // indexer.cc: the indexer's queries q [n, Hi, di] (rotated, V4: Hadamard-transformed, rounded)
  // and head weights w [n, Hi] of a batch's rows, with the rotary tables of their positions (cos,
  // sin [n, rope_dim / 2], the step's: StepTableViews).
  void IndexerQueries(int64_t layer, const float* x, const float* qr, int64_t n, const float* cos, const float* sin,
                      float* q, float* w) const;
  // One sequence's picks of compressed positions into seq.picks ([seq.n, k], -1: none,
  // k = min(index_topk, positions)), from the index keys of index_key_source(layer); the candidate
  // source also records its kept blocks there, and later index sources pick inside them.
  void IndexerTopK(int64_t layer, const float* q, const float* w, const SeqSlice& seq) const;
  // tokens [n]: the step's token ids in the backend's memory (hash layers route by them).
  absl::Status MoE(int64_t layer, const float* x, int64_t n, const int32_t* tokens, float* out) const;
  // Router: top-k logical experts and their weights for each of n tokens.
  void Route(int64_t layer, const float* x, int64_t n, const int32_t* tokens, int32_t* experts, float* weights) const;
  // The routed experts on this rank over rows x [m, D] into out [m, D] (overwritten): each row's
  // experts' outputs summed in expert order (as the reference), then, with `shared`, the shared
  // expert's. experts / weights [m, K] (-1: an expert served elsewhere) are sorted in place;
  // max_rows (host) bounds the pairs routed here.
  void RoutedLocal(int64_t layer, const float* x, int64_t m, int32_t* experts, float* weights, int64_t max_rows,
                   bool shared, float* out) const;
  // The routed experts over the EP group (MoeDispatcher in host memory, ExpertExchange in a
  // device's): out [n, D] is written, not added to.
  absl::Status RoutedExpertParallel(int64_t layer, const float* x, int64_t n, const int32_t* experts,
                                    const float* weights, float* out) const;
  // out [m, D] += the shared expert over x [m, D].
  void AddSharedExpert(int64_t layer, const float* x, int64_t m, float* out) const;
  // The shared expert over x [m, D] as a job of Backend::ExpertFfnGroup, with its buffers: xsh
  // (x's copy, which the expert may round in place) and ysh [m, D], offsets [2].
  ExpertFfnJob SharedExpertJob(int64_t layer, const float* x, int64_t m, float* xsh, int32_t* offsets,
                               float* ysh) const;
  // out [m, D] += y [m, D], through the backend's ordered combine.
  void AddRows(const float* y, int64_t m, float* out) const;
  ExpertFfnOptions FfnOptions() const;
  // The layers' routed-expert tables on the backend, from routed_ (SwitchPlacement rebuilds them).
  absl::StatusOr<std::unique_ptr<ExpertTable>> PlaceRoutedExperts(
      const std::vector<const ExpertWeights*>& experts) const;
  // Publishes the backend's expert-load counters to expert_load_ (end of a step).
  void PublishExpertLoad() const;
  // mHC (mhc.cc): the mixes of a sub-layer from the streams x [n, hc, D]: expansion weights post
  // [n, hc], the Sinkhorn mixing comb [n, hc, hc], the collapse weights pre [n, hc] (may be null),
  // and the sub-layer's input collapsed [n, D]: with its own pre weights (V4), or with lagged_pre
  // [n, hc], those of an earlier sub-layer (V4.1's lagged collapse).
  struct HcParams;
  void HcPreLayer(const HcParams& p, const float* x, int64_t n, const float* lagged_pre, float* collapsed, float* post,
                  float* comb, float* pre) const;
  // collapsed [n, D] = sum_i pre[t, i] x[t, i], summed in stream order.
  void HcCollapse(const float* x, const float* pre, int64_t n, float* collapsed) const;
  // Engram (engram.cc): hash the step's tokens for every Engram layer and start the row gathers;
  // then, before each Engram layer's block, wait for its rows and gate them into x [n, hc, D].
  void InitEngram();
  absl::StatusOr<EngramStep> BeginEngram(std::span<const int32_t> tokens, SequenceCache& cache) const;
  absl::Status ApplyEngram(int64_t layer, EngramStep& step, float* x) const;

  bool distributed() const { return par_ != nullptr && par_->layout.world > 1; }

  // Layers that read their cache alike: one compression ratio, and whether an indexer picks the
  // compressed rows (picked) or computes picks (indexed). The step's tables are made per kind.
  struct AttentionKind {
    int64_t ratio = 0;
    bool picked = false, indexed = false;
    int64_t comp_layer = -1;  // a layer whose pool rows the compressed rows are (the KV source)
    int64_t key_layer = -1;   // indexed: a layer whose pool rows the index keys are
  };
  void InitAttentionKinds();
  friend class StepTables;
  // The step's tables (StepTables): their bytes (host == null), or written at host with the
  // pointers the backend will see (device) set in `views`, `kinds` [seqs, kinds] and the slices.
  int64_t WriteStepTables(std::span<const int32_t> tokens, std::span<SeqSlice> seqs, char* host, char* device,
                          StepTableViews* views, SeqKindTables* kinds) const;

  std::shared_ptr<const ModelWeights> w_;
  ForwardOptions opt_;
  const ParallelContext* par_ = nullptr;
  std::unique_ptr<Rope> rope_window_, rope_compressed_;
  int64_t block_tokens_ = 0;
  std::vector<AttentionKind> kinds_;
  std::vector<int> layer_kind_;                   // [layers] index into kinds_
  std::shared_ptr<EngramRowSource> engram_rows_;  // null without Engram layers
  std::shared_ptr<Backend> backend_;
  // One layer's MoE parameters as the backend holds them: router weights, and the routed experts
  // this rank serves (null when it serves none of the layer's) and the shared expert as tables.
  struct MoeLayer {
    WeightMatrix gate;
    const float* gate_bias = nullptr;
    const int32_t* tid2eid = nullptr;
    std::unique_ptr<ExpertTable> routed, shared;
  };
  std::vector<MoeLayer> moe_;
  // The vectors the blocks and the head hand to operations, as the backend holds them (views on
  // the CPU): mHC parameters and norm gains.
  struct HcParams {
    const float* fn = nullptr;
    const float* scale = nullptr;
    const float* base = nullptr;
  };
  struct BlockParams {
    HcParams hc_attn, hc_ffn;
    const float* attn_norm = nullptr;
    const float* ffn_norm = nullptr;
    WeightMatrix engram_wkv;             // Engram layers: W_kv
    const float* engram_gate = nullptr;  // and the streams' gate weights [hc, D]
  };
  std::vector<BlockParams> block_params_;
  // A compressor's parameters as the backend holds them.
  struct CompressorParams {
    WeightMatrix wkv, wgate;
    const float* ape = nullptr;  // [ratio, width]; zeros where the model has no position bias (V4.1)
    const float* norm = nullptr;
  };
  // A layer's attention parameters as the backend holds them. Their geometry (TP slices, rows per
  // head) is read from the checkpoint's views in w_, which a GPU's copies re-base.
  struct AttentionParams {
    WeightMatrix wq_a, wq_b, wkv, wo_a, wo_b;
    const float* q_norm = nullptr;
    const float* kv_norm = nullptr;
    const float* attn_sink = nullptr;
    CompressorParams compressor, index_compressor;
    WeightMatrix index_wq_b, index_weights_proj, index_wk;
    const float* index_k_norm = nullptr;
  };
  std::vector<AttentionParams> attn_params_;
  HcParams hc_head_;              // V4's final collapse
  const float* norm_ = nullptr;  // the final norm
  WeightMatrix embed_, head_;     // placed: the embedding table and this rank's vocab head
  // Rows each routed expert of each layer has processed, in backend memory [layers *
  // n_routed_experts] (GroupByExpert adds to it), and their host copy as of the last step's end,
  // which ExpertLoad reads from any thread.
  int64_t* load_counts_ = nullptr;
  std::unique_ptr<std::atomic<int64_t>[]> expert_load_;
  // The routed experts this rank serves: [layer][expert] -> views (null: held elsewhere), pointing
  // into w_ (loaded at start) or into extra_ (loaded by a placement switch). Engine thread only.
  std::vector<std::vector<const ExpertWeights*>> routed_;
  std::vector<std::vector<std::unique_ptr<ExpertWeights>>> extra_;
  mutable absl::Mutex placement_mu_;
  std::shared_ptr<const ModelPlacement> placement_ ABSL_GUARDED_BY(placement_mu_);
  // The EP exchange's buffers, kept across layers and steps (engine thread only, like the caches):
  // the dispatcher where host memory is the device's, else the exchange over device memory.
  mutable std::unique_ptr<MoeDispatcher> dispatcher_;
  mutable std::unique_ptr<ExpertExchange> exchange_;
  // The TP and EP groups over the backend's memory: the ParallelContext's device communicators, its
  // host ones where host memory is the device's, else those reached through host copies (staged_*).
  Communicator* tp_rows_ = nullptr;
  Communicator* ep_rows_ = nullptr;
  std::unique_ptr<Communicator> staged_tp_, staged_ep_;
};

// The tables of one step (StepTableViews, SeqKindTables) for the rest of the scope: laid out, written
// on the host and copied to the backend in one copy (none where host memory is the device's); the
// slices' `kinds` and `window_rows` point into them. Made by ForwardBatch after the sequences'
// blocks are prepared, like the backend's other step buffers (destroyed in reverse order).
class StepTables {
 public:
  StepTables(const Model& model, std::span<const int32_t> tokens, std::span<SeqSlice> seqs);
  StepTables(const StepTables&) = delete;
  StepTables& operator=(const StepTables&) = delete;
  const StepTableViews& views() const { return views_; }
  int64_t bytes() const { return bytes_; }

 private:
  const int64_t bytes_;
  kernels::Scratch<char> host_;
  DeviceScratch<char> device_;
  kernels::Scratch<SeqKindTables> kinds_;
  StepTableViews views_;
};

}  // namespace dsv4
