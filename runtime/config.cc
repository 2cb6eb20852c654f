#include "runtime/config.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "base/status.h"

namespace dsv4 {
namespace {

using nlohmann::json;

// Reads one field with a type check; `required` fields must be present.
class FieldReader {
 public:
  FieldReader(const json& j, std::string source) : j_(j), source_(std::move(source)) {}

  void Int(const char* key, int64_t* out, bool required = true) {
    const json* v = Get(key, required);
    if (v == nullptr) return;
    if (!v->is_number_integer()) return Fail(key, "must be an integer");
    *out = v->get<int64_t>();
  }
  void Double(const char* key, double* out, bool required = true) {
    const json* v = Get(key, required);
    if (v == nullptr) return;
    if (!v->is_number()) return Fail(key, "must be a number");
    *out = v->get<double>();
  }
  void String(const char* key, std::string* out, bool required = true) {
    const json* v = Get(key, required);
    if (v == nullptr) return;
    if (!v->is_string()) return Fail(key, "must be a string");
    *out = v->get<std::string>();
  }
  void IntList(const char* key, std::vector<int64_t>* out, bool required = true) {
    const json* v = Get(key, required);
    if (v == nullptr) return;
    if (!v->is_array()) return Fail(key, "must be an array of integers");
    out->clear();
    for (const auto& e : *v) {
      if (!e.is_number_integer()) return Fail(key, "must be an array of integers");
      out->push_back(e.get<int64_t>());
    }
  }
  const json* Object(const char* key) {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) return nullptr;
    if (!it->is_object()) {
      Fail(key, "must be an object");
      return nullptr;
    }
    return &*it;
  }
  void Fail(const std::string& key, const std::string& what) {
    if (status_.ok()) status_ = absl::InvalidArgumentError(absl::StrCat(source_, ": field '", key, "' ", what));
  }
  const absl::Status& status() const { return status_; }

 private:
  const json* Get(const char* key, bool required) {
    auto it = j_.find(key);
    if (it == j_.end() || it->is_null()) {
      if (required) Fail(key, "is missing");
      return nullptr;
    }
    return &*it;
  }

  const json& j_;
  std::string source_;
  absl::Status status_;
};

// The engram_* fields (when engram_layer_ids is not empty).
absl::Status ValidateEngramConfig(const ModelConfig& c, const std::string& source) {
  if (!c.has_engram()) return absl::OkStatus();
  auto bad = [&](const std::string& field, const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": field '", field, "' ", what));
  };
  for (size_t i = 0; i < c.engram_layer_ids.size(); ++i) {
    const int64_t l = c.engram_layer_ids[i];
    if (l < 0 || l >= c.num_hidden_layers)
      return bad("engram_layer_ids", absl::StrCat("[", i, "] = ", l, " is outside [0, ", c.num_hidden_layers, ")"));
    if (c.engram_index(l) != static_cast<int64_t>(i))
      return bad("engram_layer_ids", absl::StrCat("lists layer ", l, " twice"));
  }
  if (c.engram_num_embeddings.size() != c.engram_layer_ids.size())
    return bad("engram_num_embeddings", absl::StrCat("has ", c.engram_num_embeddings.size(), " entries for ",
                                                     c.engram_layer_ids.size(), " engram_layer_ids"));
  for (size_t i = 0; i < c.engram_num_embeddings.size(); ++i)
    if (c.engram_num_embeddings[i] < 1)
      return bad("engram_num_embeddings", absl::StrCat("[", i, "] = ", c.engram_num_embeddings[i], " must be positive"));
  struct Range {
    const char* name;
    int64_t value, lo, hi;
  };
  const Range ranges[] = {
      {"engram_max_ngram_size", c.engram_max_ngram_size, 2, 64},
      {"engram_vocab_size", c.engram_vocab_size, 1, int64_t{1} << 40},
      {"engram_n_heads", c.engram_n_heads, 1, 4096},
      {"engram_head_dim", c.engram_head_dim, 32, 1 << 16},
      {"engram_pad_id", c.engram_pad_id, 0, c.vocab_size - 1},
      {"engram_compressed_vocab_size", c.engram_compressed_vocab_size, 1, c.vocab_size},
  };
  for (const auto& r : ranges)
    if (r.value < r.lo || r.value > r.hi)
      return bad(r.name, absl::StrCat("= ", r.value, " is outside [", r.lo, ", ", r.hi, "]"));
  if (c.engram_head_dim % 32 != 0) return bad("engram_head_dim", "must be a multiple of 32 (one scale per 32 values)");
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ModelConfig> ParseModelConfig(const std::string& json_text, const std::string& source) {
  const json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  ModelConfig c;
  FieldReader r(j, source);
  r.String("model_type", &c.model_type, /*required=*/false);
  r.Int("vocab_size", &c.vocab_size);
  r.Int("hidden_size", &c.hidden_size);
  r.Int("num_hidden_layers", &c.num_hidden_layers);
  r.Int("num_attention_heads", &c.num_attention_heads);
  r.Int("head_dim", &c.head_dim);
  r.Int("qk_rope_head_dim", &c.qk_rope_head_dim);
  r.Int("q_lora_rank", &c.q_lora_rank);
  r.Int("o_groups", &c.o_groups);
  r.Int("o_lora_rank", &c.o_lora_rank);
  r.Int("n_routed_experts", &c.n_routed_experts);
  r.Int("n_shared_experts", &c.n_shared_experts, false);
  r.Int("num_experts_per_tok", &c.num_experts_per_tok);
  r.Int("moe_intermediate_size", &c.moe_intermediate_size);
  std::string score = "sqrtsoftplus";
  r.String("scoring_func", &score, false);
  r.Double("routed_scaling_factor", &c.routed_scaling_factor, false);
  r.Double("swiglu_limit", &c.swiglu_limit, false);
  r.Int("num_hash_layers", &c.num_hash_layers, false);
  r.Int("sliding_window", &c.sliding_window);
  r.Int("index_n_heads", &c.index_n_heads, false);
  r.Int("index_head_dim", &c.index_head_dim, false);
  r.Int("index_topk", &c.index_topk, false);
  r.Int("hc_mult", &c.hc_mult, false);
  r.Int("hc_sinkhorn_iters", &c.hc_sinkhorn_iters, false);
  r.Double("hc_eps", &c.hc_eps, false);
  r.Double("rms_norm_eps", &c.rms_norm_eps, false);
  r.Double("rope_theta", &c.rope_theta, false);
  r.Double("compress_rope_theta", &c.compress_rope_theta, false);
  r.Int("max_position_embeddings", &c.max_position_embeddings);
  r.IntList("compress_ratios", &c.compress_ratios);
  r.Int("num_nextn_predict_layers", &c.num_nextn_predict_layers, false);
  r.Int("bos_token_id", &c.bos_token_id, false);
  r.Int("eos_token_id", &c.eos_token_id, false);
  if (const json* rs = r.Object("rope_scaling")) {
    FieldReader y(*rs, source + ": rope_scaling");
    y.Double("factor", &c.rope_factor);
    y.Int("original_max_position_embeddings", &c.original_max_position_embeddings);
    y.Double("beta_fast", &c.beta_fast, false);
    y.Double("beta_slow", &c.beta_slow, false);
    DSV4_RETURN_IF_ERROR(y.status());
  }
  if (const json* q = r.Object("quantization_config")) {
    FieldReader y(*q, source + ": quantization_config");
    std::vector<int64_t> block;
    y.IntList("weight_block_size", &block, false);
    DSV4_RETURN_IF_ERROR(y.status());
    if (!block.empty()) {
      if (block.size() != 2 || block[0] != block[1] || block[0] <= 0)
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": field 'quantization_config.weight_block_size' must be [B, B] with B > 0"));
      c.fp8_block = block[0];
    }
  }
  std::string expert_dtype = "fp4";
  r.String("expert_dtype", &expert_dtype, false);
  r.IntList("engram_layer_ids", &c.engram_layer_ids, false);
  if (!c.engram_layer_ids.empty()) {  // the other engram_* keys are required with it
    r.IntList("engram_num_embeddings", &c.engram_num_embeddings);
    r.Int("engram_max_ngram_size", &c.engram_max_ngram_size);
    r.Int("engram_vocab_size", &c.engram_vocab_size);
    r.Int("engram_n_heads", &c.engram_n_heads);
    r.Int("engram_head_dim", &c.engram_head_dim);
    r.Int("engram_pad_id", &c.engram_pad_id);
    r.Int("engram_compressed_vocab_size", &c.engram_compressed_vocab_size);
  }
  DSV4_RETURN_IF_ERROR(r.status());
  if (expert_dtype != "fp4" && expert_dtype != "fp8")
    return absl::InvalidArgumentError(absl::StrCat(source, ": field 'expert_dtype' must be \"fp4\" or \"fp8\", got \"",
                                                   expert_dtype, "\""));
  c.expert_fp4 = expert_dtype == "fp4";
  if (score == "sqrtsoftplus") {
    c.scoring_func = ScoreFunc::kSqrtSoftplus;
  } else if (score == "sigmoid") {
    c.scoring_func = ScoreFunc::kSigmoid;
  } else if (score == "softmax") {
    c.scoring_func = ScoreFunc::kSoftmax;
  } else {
    return absl::InvalidArgumentError(absl::StrCat(source, ": field 'scoring_func' has unknown value \"", score, "\""));
  }
  DSV4_RETURN_IF_ERROR(ValidateModelConfig(c, source));
  return c;
}

absl::StatusOr<ModelConfig> LoadModelConfig(const std::string& path) {
  DSV4_ASSIGN_OR_RETURN(const std::string text, ReadFile(path, int64_t{64} << 20));
  return ParseModelConfig(text, path);
}

absl::Status ValidateModelConfig(const ModelConfig& c, const std::string& source) {
  auto bad = [&](const std::string& field, const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": field '", field, "' ", what));
  };
  // Absurd sizes are rejected before anything is allocated from them.
  struct Range {
    const char* name;
    int64_t value, lo, hi;
  };
  const Range ranges[] = {
      {"vocab_size", c.vocab_size, 1, 1 << 24},
      {"hidden_size", c.hidden_size, 1, 1 << 16},
      {"num_hidden_layers", c.num_hidden_layers, 1, 1024},
      {"num_attention_heads", c.num_attention_heads, 1, 4096},
      {"head_dim", c.head_dim, 2, 4096},
      {"qk_rope_head_dim", c.qk_rope_head_dim, 2, 4096},
      {"q_lora_rank", c.q_lora_rank, 1, 1 << 16},
      {"o_groups", c.o_groups, 1, 4096},
      {"o_lora_rank", c.o_lora_rank, 1, 1 << 16},
      {"n_routed_experts", c.n_routed_experts, 1, 1 << 16},
      {"n_shared_experts", c.n_shared_experts, 1, 1},
      {"num_experts_per_tok", c.num_experts_per_tok, 1, 1 << 16},
      {"moe_intermediate_size", c.moe_intermediate_size, 1, 1 << 18},
      {"num_hash_layers", c.num_hash_layers, 0, 1024},
      {"sliding_window", c.sliding_window, 1, 1 << 20},
      {"hc_mult", c.hc_mult, 1, 64},
      {"hc_sinkhorn_iters", c.hc_sinkhorn_iters, 1, 1000},
      {"max_position_embeddings", c.max_position_embeddings, 1, int64_t{1} << 32},
      {"index_n_heads", c.index_n_heads, 0, 4096},
      {"index_head_dim", c.index_head_dim, 0, 4096},
      {"index_topk", c.index_topk, 0, int64_t{1} << 30},
  };
  for (const auto& r : ranges)
    if (r.value < r.lo || r.value > r.hi)
      return bad(r.name, absl::StrCat("= ", r.value, " is outside [", r.lo, ", ", r.hi, "]"));
  if (c.num_experts_per_tok > c.n_routed_experts)
    return bad("num_experts_per_tok", absl::StrCat("= ", c.num_experts_per_tok, " exceeds n_routed_experts = ",
                                                    c.n_routed_experts));
  if (c.qk_rope_head_dim % 2 != 0 || c.qk_rope_head_dim > c.head_dim)
    return bad("qk_rope_head_dim", absl::StrCat("= ", c.qk_rope_head_dim, " must be even and <= head_dim = ", c.head_dim));
  if (c.num_attention_heads % c.o_groups != 0)
    return bad("o_groups", absl::StrCat("= ", c.o_groups, " does not divide num_attention_heads = ",
                                        c.num_attention_heads));
  if (static_cast<int64_t>(c.compress_ratios.size()) < c.num_hidden_layers)
    return bad("compress_ratios", absl::StrCat("has ", c.compress_ratios.size(), " entries for ", c.num_hidden_layers,
                                               " layers"));
  bool any_indexer = false;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const int64_t r = c.compress_ratios[l];
    if (r != 0 && r != 4 && r != 128)
      return bad("compress_ratios", absl::StrCat("[", l, "] = ", r, " (supported: 0, 4, 128)"));
    any_indexer |= r == 4;
  }
  if (any_indexer) {
    if (c.index_n_heads < 1 || c.index_head_dim < 2 || c.index_topk < 1)
      return bad("index_n_heads", "index_n_heads, index_head_dim and index_topk must be positive for ratio-4 layers");
    if ((c.index_head_dim & (c.index_head_dim - 1)) != 0)
      return bad("index_head_dim", absl::StrCat("= ", c.index_head_dim, " must be a power of two (Hadamard)"));
    if (c.qk_rope_head_dim > c.index_head_dim)
      return bad("index_head_dim", absl::StrCat("= ", c.index_head_dim, " is smaller than qk_rope_head_dim"));
  }
  if (c.num_hash_layers > c.num_hidden_layers)
    return bad("num_hash_layers", absl::StrCat("= ", c.num_hash_layers, " exceeds num_hidden_layers"));
  if (c.hidden_size % 32 != 0) return bad("hidden_size", "must be a multiple of 32");
  if (c.moe_intermediate_size % 32 != 0) return bad("moe_intermediate_size", "must be a multiple of 32");
  if (c.rms_norm_eps < 0 || c.hc_eps < 0) return bad("rms_norm_eps", "must be non-negative");
  if (c.rope_theta <= 0 || c.compress_rope_theta <= 0) return bad("rope_theta", "must be positive");
  if (c.rope_factor <= 0) return bad("rope_scaling.factor", "must be positive");
  return ValidateEngramConfig(c, source);
}

}  // namespace dsv4
