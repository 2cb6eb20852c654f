// Model configuration: the published DeepSeek-V4 / V4.1 `config.json` keys, parsed and validated
// once, and the per-layer facts derived from them (which layer compresses, which indexer a layer
// uses, how many cache rows a token adds): computed here, asked for everywhere else.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv4 {

enum class ScoreFunc { kSoftmax, kSigmoid, kSqrtSoftplus };

// V4 (Flash, Pro) or V4.1 (Flash with Engram): MODEL.md 2.4-2.7 list what V4.1 changes. The family
// comes from `model_type` (deepseek_v4; deepseek_v41 / deepseek_v41_text); the differences are the
// predicates below, not checks of the family scattered through the model.
enum class ModelFamily { kV4, kV41 };

// Cache rows one sequence adds per token, summed over layers: compressed KV rows of head_dim values
// and indexer-key rows of index_head_dim values (fractions: one row per `ratio` tokens).
struct CacheRowsPerToken {
  double kv = 0;
  double index_keys = 0;
};

struct ModelConfig {
  std::string model_type = "deepseek_v4";
  ModelFamily family = ModelFamily::kV4;
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;            // D
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;    // H
  int64_t head_dim = 0;               // 512 in V4
  int64_t qk_rope_head_dim = 0;       // rope part at the END of each head vector
  int64_t q_lora_rank = 0;
  int64_t o_groups = 0;
  int64_t o_lora_rank = 0;
  int64_t n_routed_experts = 0;
  int64_t n_shared_experts = 1;
  int64_t num_experts_per_tok = 0;
  int64_t moe_intermediate_size = 0;
  ScoreFunc scoring_func = ScoreFunc::kSqrtSoftplus;
  double routed_scaling_factor = 1.0;
  double swiglu_limit = 0.0;
  int64_t num_hash_layers = 0;
  int64_t sliding_window = 0;
  int64_t index_n_heads = 0;
  int64_t index_head_dim = 0;
  int64_t index_topk = 0;
  int64_t hc_mult = 4;
  int64_t hc_sinkhorn_iters = 20;
  double hc_eps = 1e-6;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000;
  double compress_rope_theta = 160000;
  // YaRN (applies to compressed layers only).
  double rope_factor = 1;
  int64_t original_max_position_embeddings = 0;
  double beta_fast = 32, beta_slow = 1;
  int64_t max_position_embeddings = 0;
  std::vector<int64_t> compress_ratios;  // per layer (MTP / DSpark entries beyond num_hidden_layers ignored)
  int64_t num_nextn_predict_layers = 0;  // MTP (V4) or DSpark draft layers (V4.1): mtp.* tensors, not run
  int64_t bos_token_id = 0, eos_token_id = 1;
  // Quantization (quantization_config): FP8 E4M3 dense weights with one E8M0 scale per block of
  // fp8_block_rows x fp8_block_cols (weight_block_size: V4 128 x 128, V4.1 32 x 32); the inputs of
  // FP8 and FP4 linears are rounded to FP8 in groups of fp8_block_cols (act_quant_group). Experts
  // are FP4 (or FP8).
  int64_t fp8_block_rows = 128, fp8_block_cols = 128;
  bool expert_fp4 = true;
  // Routing: logits divided by gate_temp before scoring (V4.1); top-k weights renormalized.
  double gate_temp = 1.0;
  bool norm_topk_prob = true;
  // KV sharing and the two-level indexer (V4.1, MODEL.md 2.4); empty lists in V4, where every
  // compressed layer compresses for itself and ratio-4 layers run their own indexer.
  //   kv_source_layer_ids: the layers that compress; a later compressed layer reads the latest one's cache.
  //   index_source_layer_ids: the layers that run an indexer; a later compressed layer reuses the latest
  //     one's top-k. An index source that is also a KV source makes index keys from its latent; the
  //     others score the latest such layer's keys.
  //   candidate_source_layer_id: level 1 (-1: off): its indexer keeps, per query, the
  //     candidate_topk_blocks best blocks of candidate_block_size compressed positions; later index
  //     sources pick their top-k inside those blocks (level 2).
  std::vector<int64_t> kv_source_layer_ids;
  std::vector<int64_t> index_source_layer_ids;
  int64_t candidate_source_layer_id = -1;
  int64_t candidate_topk_blocks = 0;
  int64_t candidate_block_size = 0;
  // Engram (V4.1, MODEL.md 2.7): hashed n-gram tables read before the blocks of engram_layer_ids.
  // All optional; an empty engram_layer_ids means no Engram.
  std::vector<int64_t> engram_layer_ids;
  std::vector<int64_t> engram_num_embeddings;  // table rows, one per entry of engram_layer_ids
  int64_t engram_max_ngram_size = 0;           // n-grams of size 2..max
  int64_t engram_vocab_size = 0;               // the smallest table prime is >= this
  int64_t engram_n_heads = 0;
  int64_t engram_head_dim = 0;                 // table row width (a multiple of 32)
  int64_t engram_pad_id = 0;                   // token id whose compressed id pads n-grams
  int64_t engram_compressed_vocab_size = 0;    // must equal the tokenizer's compression key count

  int64_t ratio(int64_t layer) const { return compress_ratios[layer]; }
  int64_t nope_dim() const { return head_dim - qk_rope_head_dim; }
  bool v41() const { return family == ModelFamily::kV41; }
  int64_t act_quant_group() const { return fp8_block_cols; }

  // ---- attention roles of a layer (all -1 / false for ratio-0 layers) ----
  // The layer whose compressed cache `layer` attends: itself in V4, the latest KV source in V4.1.
  int64_t kv_source(int64_t layer) const;
  bool compresses(int64_t layer) const { return ratio(layer) > 0 && kv_source(layer) == layer; }
  // The layer whose indexer picks the compressed blocks `layer` attends: itself for V4 ratio-4
  // layers, the latest index source in V4.1; -1 when every visible block is attended (V4 ratio 128).
  int64_t index_source(int64_t layer) const;
  bool runs_indexer(int64_t layer) const { return ratio(layer) > 0 && index_source(layer) == layer; }
  // The layer whose index keys the indexer of `layer` scores (layer must run an indexer).
  int64_t index_key_source(int64_t layer) const;
  bool owns_index_keys(int64_t layer) const { return runs_indexer(layer) && index_key_source(layer) == layer; }
  bool is_candidate_source(int64_t layer) const {
    return candidate_source_layer_id >= 0 && layer == candidate_source_layer_id;
  }
  bool uses_candidates(int64_t layer) const {
    return candidate_source_layer_id >= 0 && layer > candidate_source_layer_id && runs_indexer(layer);
  }

  // ---- what V4.1 changes (MODEL.md 2.4, 2.6) ----
  // V4 ratio-4 compressors pool overlapping blocks: 2 x head_dim projected channels per token.
  bool compressor_overlap(int64_t layer) const { return !v41() && ratio(layer) == 4; }
  // V4 compressors add a learned position bias `ape` to the gate scores; V4.1's have none, and at
  // ratio 1 no gate either (the latent is the normalized projection).
  bool compressor_ape() const { return !v41(); }
  bool compressor_gate(int64_t layer) const { return !v41() || ratio(layer) > 1; }
  // Compressed KV rounding: V4 FP8 like the window; V4.1 FP4 in groups of 16 with E4M3 scales.
  bool compressed_kv_fp4() const { return v41(); }
  // V4 renormalizes each query head (no gain); V4.1 does not.
  bool q_head_norm() const { return !v41(); }
  // Window KV rounding: FP8 over the first window_kv_qdq_len() channels in groups of
  // window_kv_qdq_group() (V4: the non-rope part, groups of 64; V4.1: the whole vector, groups of 32).
  int64_t window_kv_qdq_len() const { return v41() ? head_dim : nope_dim(); }
  int64_t window_kv_qdq_group() const { return v41() ? act_quant_group() : 64; }
  // Index keys: V4 from the indexer's own ratio-4 compressor, rotated by a Hadamard transform as
  // the queries are; V4.1 from the KV source's latent (wk, k_norm), queries and keys unrotated.
  bool index_keys_from_latent() const { return v41(); }
  bool index_hadamard() const { return !v41(); }
  // mHC: V4.1 collapses each sub-layer's input with the pre weights computed one sub-layer earlier
  // and the final output with the last block's FFN pre weights (no hc_head_* tensors).
  bool hc_lagged() const { return v41(); }
  // Router: V4 normalizes the top-k weights unless scoring is softmax; V4.1 when norm_topk_prob and
  // top-k > 1, with 1e-20 added to the sum.
  bool route_normalizes() const {
    return v41() ? norm_topk_prob && num_experts_per_tok > 1 : scoring_func != ScoreFunc::kSoftmax;
  }
  double route_norm_eps() const { return v41() ? 1e-20 : 0.0; }

  // Compressed KV and index-key rows a token adds to one sequence's cache (only the layers that
  // store them: every compressed layer in V4, the KV sources in V4.1).
  CacheRowsPerToken cache_rows_per_token() const;
  bool is_hash_layer(int64_t layer) const { return layer < num_hash_layers; }
  bool has_engram() const { return !engram_layer_ids.empty(); }
  // Position of `layer` in engram_layer_ids, or -1 when the layer has no Engram module.
  int64_t engram_index(int64_t layer) const {
    for (size_t i = 0; i < engram_layer_ids.size(); ++i)
      if (engram_layer_ids[i] == layer) return static_cast<int64_t>(i);
    return -1;
  }
};

// Parses and validates config.json text; errors name the field. `source` names the file.
absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source);
absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path);
// Checks every relation the runtime relies on (called by ParseModelConfig).
absl::Status ValidateModelConfig(const ModelConfig& c, const std::string& source);

}  // namespace dsv4
