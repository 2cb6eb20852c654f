// Model configuration: the published DeepSeek-V4 `config.json` keys, parsed and validated once.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv4 {

enum class ScoreFunc { kSoftmax, kSigmoid, kSqrtSoftplus };

struct ModelConfig {
  std::string model_type = "deepseek_v4";
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
  std::vector<int64_t> compress_ratios;  // per layer (MTP entries beyond num_hidden_layers ignored)
  int64_t num_nextn_predict_layers = 0;
  int64_t bos_token_id = 0, eos_token_id = 1;
  // Quantization: FP8 block size for dense weights, and the expert format.
  int64_t fp8_block = 128;
  bool expert_fp4 = true;
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
