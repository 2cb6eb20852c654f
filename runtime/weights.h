// The model's weights as typed views into the checkpoint (no copies of large tensors), checked
// against the config: every tensor's presence, dtype and shape, and the shape of its scales.
//
// Storage policy for a linear layer [out, in]: F8_E4M3 with F8_E8M0 block scales
// [ceil(out/Br), ceil(in/Bc)] for the config's Br x Bc tiles (quantization_config.weight_block_size);
// packed FP4 (I8 [out, in/2]) with F8_E8M0 scales [out, in/32]; or plain BF16 / F32. Any other dtype
// is an error naming the tensor; bytes are never reinterpreted. Scales of 0xFF (E8M0 NaN) are
// rejected. Small vectors (norm gains, sinks, mHC parameters, `ape`, router bias) are converted to
// float32 copies. A tensor of a main layer that the config gives no use is an error (config and
// checkpoint disagree); MTP / DSpark draft tensors (`mtp.*`) are recognised and left out.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernels/cpu/kernels.h"
#include "runtime/config.h"
#include "runtime/engram/hash.h"
#include "runtime/safetensors.h"

namespace dsv4 {

using kernels::IsQuantized;
using kernels::WeightMatrix;

struct CompressorWeights {
  int64_t ratio = 0;
  int64_t head_dim = 0;        // output width (512 main, index_head_dim for the V4 indexer)
  bool overlap = false;        // V4 ratio 4: each token projects 2 x head_dim channels (coff = 2)
  WeightMatrix wkv, wgate;     // [coff * head_dim, D]; V4.1 ratio 1 has no wgate
  std::vector<float> ape;      // [ratio, coff * head_dim] (V4; V4.1 has no position bias)
  std::vector<float> norm;     // [head_dim]
  int64_t width() const { return (overlap ? 2 : 1) * head_dim; }
};

struct ExpertWeights {
  WeightMatrix w1, w2, w3;  // w1/w3 [inter, D], w2 [D, inter]
};

// An Engram module (V4.1, MODEL.md 2.7), read before its layer's block.
struct EngramWeights {
  WeightMatrix table;              // [engram_num_embeddings, head_dim] FP8 E4M3, one E8M0 scale per 32 values
  WeightMatrix wkv;                // [(hc + 1) * D, cols * head_dim]: one key per stream, then the value
  std::vector<float> gate_weight;  // [hc, D]: q_weight * k_weight (exact in fp32 for BF16 factors)
};

struct LayerWeights {
  // mHC and norms.
  std::vector<float> hc_attn_fn, hc_attn_base, hc_attn_scale;  // [hc(hc+2), hc*D], [hc(hc+2)], [3]
  std::vector<float> hc_ffn_fn, hc_ffn_base, hc_ffn_scale;
  std::vector<float> attn_norm, ffn_norm;  // [D]
  // Attention.
  WeightMatrix wq_a;             // [q_lora, D]
  std::vector<float> q_norm;     // [q_lora]
  WeightMatrix wq_b;             // [H * head_dim, q_lora]
  WeightMatrix wkv;              // [head_dim, D]
  std::vector<float> kv_norm;    // [head_dim]
  std::vector<float> attn_sink;  // [H]
  WeightMatrix wo_a;             // [G * o_lora, H * head_dim / G]
  WeightMatrix wo_b;             // [D, G * o_lora]
  // Compressor (ModelConfig::compresses) and indexer (runs_indexer): V4 indexers have their own
  // ratio-4 compressor for the keys; V4.1 key owners (owns_index_keys) project the latent instead.
  bool has_compressor = false, has_indexer = false;
  CompressorWeights compressor;
  CompressorWeights index_compressor;  // V4
  WeightMatrix index_wq_b;             // [index_heads * index_head_dim, q_lora]
  WeightMatrix index_weights_proj;     // [index_heads, D]
  WeightMatrix index_wk;               // V4.1 key owners: [index_head_dim, head_dim]
  std::vector<float> index_k_norm;     // V4.1 key owners: [index_head_dim]
  // MoE.
  WeightMatrix gate;                 // [E, D]
  std::vector<float> gate_bias;      // [E] (score-routed layers)
  std::vector<int32_t> tid2eid;      // [vocab, top-k] (hash layers)
  std::vector<ExpertWeights> experts;  // [E]; only locally owned experts are loaded
  std::vector<bool> expert_loaded;
  ExpertWeights shared;
  // Engram (layers listed in engram_layer_ids).
  bool has_engram = false;
  EngramWeights engram;
};

struct ModelWeights {
  ModelConfig config;
  WeightMatrix embed;  // [vocab, D]
  WeightMatrix head;   // [vocab, D]
  std::vector<float> norm;                                       // [D]
  std::vector<float> hc_head_fn, hc_head_base, hc_head_scale;    // [hc, hc*D], [hc], [1] (V4; none in V4.1)
  std::vector<LayerWeights> layers;
  // The vocab head's rows are split over the TP group (tp > 1 divides the vocabulary): each rank
  // computes its part of the logits and the parts are gathered. Decided once, when loading.
  bool vocab_parallel_head = false;
  int64_t num_draft_tensors = 0;  // mtp.* tensors (MTP / DSpark draft layers): recognised, not loaded
  // Engram hashing (tokenizer compression, multipliers, layout); null without Engram layers.
  std::shared_ptr<const EngramHasher> engram_hasher;
  std::shared_ptr<const Checkpoint> checkpoint;  // keeps the mappings alive
};

struct LoadOptions {
  // Which routed experts this rank holds (default: all). Others can be loaded later
  // (LoadExpertWeights).
  std::function<bool(int64_t layer, int64_t expert)> owns_expert;
  // Tensor-parallel slice of attention: query heads, sinks, output groups (wo_a rows, wo_b columns)
  // and the vocab rows of the head. Views into the one mapping: nothing else is read.
  int tp_rank = 0, tp_size = 1;
  // Engram configs only: the hasher to use, or else the tokenizer.json to build it from (LoadModel
  // fills in the model's own tokenizer.json).
  std::shared_ptr<const EngramHasher> engram_hasher;
  std::string tokenizer_json;
};

absl::StatusOr<std::unique_ptr<ModelWeights>> LoadWeights(std::shared_ptr<const Checkpoint> ckpt,
                                                         const ModelConfig& config, const LoadOptions& options = {});

// Views of routed expert `expert` of layer `layer`, checked as LoadWeights checks them: what a rank
// loads when a new expert placement gives it an expert it did not hold.
absl::StatusOr<ExpertWeights> LoadExpertWeights(const Checkpoint& ckpt, const ModelConfig& config, int64_t layer,
                                                int64_t expert);

// --check-weights: reads the floating-point tensors of `ckpt` (F64, F32, F16, BF16, F8_E4M3,
// F8_E5M2, F8_E8M0; F4 has no NaN or Inf) at positions part, part + parts, ... of the name order,
// so the ranks of a job share one pass over the checkpoint. INVALID_ARGUMENT naming the first
// tensor that holds a NaN or Inf, with its file, how many and the first index.
absl::Status CheckWeightsFinite(const Checkpoint& ckpt, int part = 0, int parts = 1);

// OK when `model` is an existing directory: NOT_FOUND, or INVALID_ARGUMENT for a file, naming it.
absl::Status CheckModelDir(const std::string& model);
// The config.json text of a model directory or built-in name.
absl::StatusOr<std::string> ModelConfigText(const std::string& model);

// Opens `dir` (config.json + safetensors) or a built-in name ("builtin:v4-tiny") and loads it.
// `make_options`, when given, decides the slice to load once the config is known.
using LoadOptionsFn = std::function<absl::StatusOr<LoadOptions>(const ModelConfig&)>;
absl::StatusOr<std::unique_ptr<ModelWeights>> LoadModel(const std::string& model, const LoadOptionsFn& make_options = {});

}  // namespace dsv4
