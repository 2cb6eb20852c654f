#include "runtime/config.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <string_view>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "base/status.h"

namespace dsv4 {
namespace {

using nlohmann::json;

// The reference inference/config.json's spellings (its ModelArgs names) of the published keys,
// accepted as aliases: {published, inference}.
constexpr std::pair<const char*, const char*> kAliases[] = {
    {"hidden_size", "dim"},
    {"num_hidden_layers", "n_layers"},
    {"num_attention_heads", "n_heads"},
    {"moe_intermediate_size", "moe_inter_dim"},
    {"num_experts_per_tok", "n_activated_experts"},
    {"scoring_func", "score_func"},
    {"routed_scaling_factor", "route_scale"},
    {"qk_rope_head_dim", "rope_head_dim"},
    {"rms_norm_eps", "norm_eps"},
    {"sliding_window", "window_size"},
    {"num_hash_layers", "n_hash_layers"},
    {"num_nextn_predict_layers", "n_mtp_layers"},
    {"kv_source_layer_ids", "kv_source_layers"},
    {"index_source_layer_ids", "index_source_layers"},
    {"candidate_source_layer_id", "candidate_source_layer"},
    {"engram_pad_id", "engram_pad_token_id"},
};

// Reads one field with a type check; `required` fields must be present. A field may be spelled as
// its alias (kAliases); both spellings with different values is an error.
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
  void Bool(const char* key, bool* out, bool required = true) {
    const json* v = Get(key, required);
    if (v == nullptr) return;
    if (!v->is_boolean()) return Fail(key, "must be true or false");
    *out = v->get<bool>();
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
  bool Has(const char* key) const { return Find(key) != nullptr; }
  void Fail(const std::string& key, const std::string& what) {
    if (status_.ok()) status_ = absl::InvalidArgumentError(absl::StrCat(source_, ": field '", key, "' ", what));
  }
  const absl::Status& status() const { return status_; }

 private:
  const json* FindExact(const char* key) const {
    auto it = j_.find(key);
    return it == j_.end() || it->is_null() ? nullptr : &*it;
  }
  const json* Find(const char* key) const {
    if (const json* v = FindExact(key)) return v;
    for (const auto& [name, alias] : kAliases)
      if (std::string_view(name) == key) return FindExact(alias);
    return nullptr;
  }
  const json* Get(const char* key, bool required) {
    const json* v = FindExact(key);
    for (const auto& [name, alias] : kAliases) {
      if (std::string_view(name) != key) continue;
      const json* a = FindExact(alias);
      if (v != nullptr && a != nullptr && *v != *a) {
        Fail(key, absl::StrCat("and its alias '", alias, "' disagree (", v->dump(), " vs ", a->dump(), ")"));
        return nullptr;
      }
      if (v == nullptr) v = a;
    }
    if (v == nullptr && required) Fail(key, "is missing");
    return v;
  }

  const json& j_;
  std::string source_;
  absl::Status status_;
};

// The model's keys as one object: the released V4.1 config nests them in `text_config` (next to
// `quantization_config`, token ids and `model_type` at the top); nested keys take precedence.
json FlattenTextConfig(const json& j) {
  auto it = j.find("text_config");
  if (it == j.end() || !it->is_object()) return j;
  json flat = j;
  flat.erase("text_config");
  for (const auto& [key, value] : it->items()) {
    if (key == "model_type" && flat.contains(key)) continue;  // "deepseek_v41" over "deepseek_v41_text"
    flat[key] = value;
  }
  return flat;
}

absl::StatusOr<ModelFamily> FamilyOf(const std::string& model_type, bool has_model_type, bool has_kv_sources,
                                     const std::string& source) {
  if (!has_model_type) return has_kv_sources ? ModelFamily::kV41 : ModelFamily::kV4;  // an inference config
  if (model_type == "deepseek_v4") return ModelFamily::kV4;
  if (model_type == "deepseek_v41" || model_type == "deepseek_v41_text") return ModelFamily::kV41;
  return absl::InvalidArgumentError(absl::StrCat(source, ": field 'model_type' = \"", model_type,
                                                 "\" is not a model this runtime executes (deepseek_v4, "
                                                 "deepseek_v41)"));
}

// The latest entry of an ascending list that is <= layer, or -1.
int64_t LatestAtOrBefore(const std::vector<int64_t>& ascending, int64_t layer) {
  int64_t found = -1;
  for (int64_t l : ascending) {
    if (l > layer) break;
    found = l;
  }
  return found;
}

bool Contains(const std::vector<int64_t>& v, int64_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

// A list of layer ids: each in range, strictly ascending, on a compressed layer.
absl::Status ValidateSourceList(const ModelConfig& c, const char* field, const std::vector<int64_t>& ids,
                                const std::string& source) {
  auto bad = [&](const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": field '", field, "' ", what));
  };
  for (size_t i = 0; i < ids.size(); ++i) {
    const int64_t l = ids[i];
    if (l < 0 || l >= c.num_hidden_layers)
      return bad(absl::StrCat("[", i, "] = ", l, " is outside [0, ", c.num_hidden_layers, ")"));
    if (i > 0 && l <= ids[i - 1])
      return bad(absl::StrCat("must be strictly ascending ([", i, "] = ", l, " follows ", ids[i - 1], ")"));
    if (c.ratio(l) == 0) return bad(absl::StrCat("lists layer ", l, ", whose compress_ratios entry is 0"));
  }
  return absl::OkStatus();
}

// KV sharing and the two-level indexer (V4.1): every relation the attention relies on.
absl::Status ValidateSharing(const ModelConfig& c, const std::string& source) {
  auto bad = [&](const std::string& field, const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(source, ": field '", field, "' ", what));
  };
  if (!c.v41()) {
    if (!c.kv_source_layer_ids.empty() || !c.index_source_layer_ids.empty() || c.candidate_source_layer_id >= 0)
      return bad(c.kv_source_layer_ids.empty() ? (c.index_source_layer_ids.empty() ? "candidate_source_layer_id"
                                                                                   : "index_source_layer_ids")
                                               : "kv_source_layer_ids",
                 "is a V4.1 key; this config's model_type is deepseek_v4 (every compressed layer compresses and "
                 "indexes for itself)");
    return absl::OkStatus();
  }
  DSV4_RETURN_IF_ERROR(ValidateSourceList(c, "kv_source_layer_ids", c.kv_source_layer_ids, source));
  DSV4_RETURN_IF_ERROR(ValidateSourceList(c, "index_source_layer_ids", c.index_source_layer_ids, source));
  bool any_compressed = false;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const int64_t r = c.ratio(l);
    if (r == 0) continue;
    any_compressed = true;
    // The cache, the top-k and the index keys a layer uses come from earlier layers with its ratio
    // (one compressed position stands for the same `ratio` tokens in all of them).
    const int64_t kv = LatestAtOrBefore(c.kv_source_layer_ids, l);
    if (kv < 0) return bad("kv_source_layer_ids", absl::StrCat("has no layer at or before compressed layer ", l));
    if (c.ratio(kv) != r)
      return bad("kv_source_layer_ids", absl::StrCat("gives layer ", l, " (ratio ", r, ") the cache of layer ", kv,
                                                     " (ratio ", c.ratio(kv), ")"));
    const int64_t idx = LatestAtOrBefore(c.index_source_layer_ids, l);
    if (idx < 0)
      return bad("index_source_layer_ids", absl::StrCat("has no layer at or before compressed layer ", l));
    if (c.ratio(idx) != r)
      return bad("index_source_layer_ids", absl::StrCat("gives layer ", l, " (ratio ", r, ") the top-k of layer ",
                                                        idx, " (ratio ", c.ratio(idx), ")"));
  }
  for (int64_t l : c.index_source_layer_ids) {
    const int64_t keys = c.index_key_source(l);
    if (keys < 0)
      return bad("index_source_layer_ids",
                 absl::StrCat("lists layer ", l, ", but no layer at or before it is both a KV source and an index "
                              "source (index keys come from a KV source's latent)"));
    if (c.ratio(keys) != c.ratio(l))
      return bad("index_source_layer_ids", absl::StrCat("gives layer ", l, " (ratio ", c.ratio(l),
                                                        ") the index keys of layer ", keys, " (ratio ",
                                                        c.ratio(keys), ")"));
  }
  if (any_compressed) {
    if (c.index_n_heads < 1 || c.index_head_dim < 2 || c.index_topk < 1)
      return bad("index_n_heads", "index_n_heads, index_head_dim and index_topk must be positive");
    if (c.qk_rope_head_dim > c.index_head_dim)
      return bad("index_head_dim", absl::StrCat("= ", c.index_head_dim, " is smaller than qk_rope_head_dim"));
  }
  const int64_t cand = c.candidate_source_layer_id;
  if (cand < 0) return absl::OkStatus();
  if (cand >= c.num_hidden_layers)
    return bad("candidate_source_layer_id", absl::StrCat("= ", cand, " is outside [0, ", c.num_hidden_layers, ")"));
  if (!Contains(c.index_source_layer_ids, cand))
    return bad("candidate_source_layer_id",
               absl::StrCat("= ", cand, " is not an index source (index_source_layer_ids: [",
                            absl::StrJoin(c.index_source_layer_ids, ", "), "])"));
  if (c.candidate_topk_blocks < 1 || c.candidate_topk_blocks > (int64_t{1} << 30))
    return bad("candidate_topk_blocks", absl::StrCat("= ", c.candidate_topk_blocks, " must be in [1, 2^30]"));
  if (c.candidate_block_size < 1 || c.candidate_block_size > (int64_t{1} << 20))
    return bad("candidate_block_size", absl::StrCat("= ", c.candidate_block_size, " must be in [1, 2^20]"));
  // Level 2 picks its top-k among the candidates: with the newest (possibly one-position) block
  // pinned, candidates can be as few as (blocks - 1) x block_size + 1. Fewer than index_topk would
  // make the reference pick among masked positions in an unspecified order.
  if ((c.candidate_topk_blocks - 1) * c.candidate_block_size + 1 < c.index_topk)
    return bad("candidate_topk_blocks",
               absl::StrCat("x candidate_block_size can leave ",
                            (c.candidate_topk_blocks - 1) * c.candidate_block_size + 1,
                            " candidate positions, fewer than index_topk = ", c.index_topk));
  for (int64_t l : c.index_source_layer_ids)
    if (l > cand && c.ratio(l) != c.ratio(cand))
      return bad("candidate_source_layer_id",
                 absl::StrCat("= ", cand, " (ratio ", c.ratio(cand), ") gives its candidate blocks to index source ",
                              l, " of another ratio (", c.ratio(l), ")"));
  return absl::OkStatus();
}

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
  json top;
  try {
    top = json::parse(json_text);
  } catch (const json::exception& e) {  // parse_error, and out_of_range for a number like 1e999
    constexpr size_t kMax = 300;  // the message quotes the offending token, which may be long
    const std::string what = e.what();
    return absl::InvalidArgumentError(
        absl::StrCat(source, ": invalid JSON: ", what.substr(0, kMax), what.size() > kMax ? "..." : ""));
  }
  if (!top.is_object())
    return absl::InvalidArgumentError(absl::StrCat(source, ": must be a JSON object, not ", top.type_name()));
  if (top.contains("text_config") && !top["text_config"].is_object())
    return absl::InvalidArgumentError(absl::StrCat(source, ": field 'text_config' must be an object"));
  const json j = FlattenTextConfig(top);
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
  r.Double("gate_temp", &c.gate_temp, false);
  r.Bool("norm_topk_prob", &c.norm_topk_prob, false);
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
  r.IntList("kv_source_layer_ids", &c.kv_source_layer_ids, false);
  r.IntList("index_source_layer_ids", &c.index_source_layer_ids, false);
  r.Int("candidate_source_layer_id", &c.candidate_source_layer_id, false);
  r.Int("candidate_topk_blocks", &c.candidate_topk_blocks, false);
  r.Int("candidate_block_size", &c.candidate_block_size, false);
  if (const json* rs = r.Object("rope_scaling")) {
    FieldReader y(*rs, source + ": rope_scaling");
    y.Double("factor", &c.rope_factor);
    y.Int("original_max_position_embeddings", &c.original_max_position_embeddings);
    y.Double("beta_fast", &c.beta_fast, false);
    y.Double("beta_slow", &c.beta_slow, false);
    DSV4_RETURN_IF_ERROR(y.status());
  } else if (r.Has("rope_factor")) {  // the inference config's flat YaRN keys
    r.Double("rope_factor", &c.rope_factor);
    r.Int("original_seq_len", &c.original_max_position_embeddings);
    r.Double("beta_fast", &c.beta_fast, false);
    r.Double("beta_slow", &c.beta_slow, false);
  }
  std::string expert_dtype = "fp4";
  r.String("expert_dtype", &expert_dtype, false);
  if (const json* q = r.Object("quantization_config")) {
    FieldReader y(*q, source + ": quantization_config");
    std::vector<int64_t> block;
    y.IntList("weight_block_size", &block, false);
    y.String("expert_dtype", &expert_dtype, false);  // V4.1 states it here
    DSV4_RETURN_IF_ERROR(y.status());
    if (!block.empty()) {
      if (block.size() != 2 || block[0] < 1 || block[1] < 1 || block[0] > 4096 || block[1] > 4096)
        return absl::InvalidArgumentError(absl::StrCat(
            source, ": field 'quantization_config.weight_block_size' must be [rows, cols] with each in [1, 4096]"));
      c.fp8_block_rows = block[0], c.fp8_block_cols = block[1];
    }
  }
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
  DSV4_ASSIGN_OR_RETURN(c.family, FamilyOf(c.model_type, r.Has("model_type"), r.Has("kv_source_layer_ids"), source));
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
      {"hc_mult", c.hc_mult, 1, 16},
      {"hc_sinkhorn_iters", c.hc_sinkhorn_iters, 1, 1000},
      {"max_position_embeddings", c.max_position_embeddings, 1, int64_t{1} << 32},
      {"index_n_heads", c.index_n_heads, 0, 4096},
      {"index_head_dim", c.index_head_dim, 0, 4096},
      {"index_topk", c.index_topk, 0, int64_t{1} << 30},
  };
  for (const auto& r : ranges)
    if (r.value < r.lo || r.value > r.hi)
      return bad(r.name, absl::StrCat("= ", r.value, " is outside [", r.lo, ", ", r.hi, "]"));
  // Token ids the runtime feeds or stops on must be rows of the embedding.
  for (const auto& [name, id] : {std::pair{"bos_token_id", c.bos_token_id}, std::pair{"eos_token_id", c.eos_token_id}})
    if (id < 0 || id >= c.vocab_size)
      return bad(name, absl::StrCat("= ", id, " is outside the vocabulary [0, ", c.vocab_size, ")"));
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
    if (c.v41() ? (r < 0 || r > 1024) : (r != 0 && r != 4 && r != 128))
      return bad("compress_ratios",
                 absl::StrCat("[", l, "] = ", r, c.v41() ? " (V4.1: 0, or 1 to 1024)" : " (supported: 0, 4, 128)"));
    any_indexer |= !c.v41() && r == 4;
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
  if (c.v41() && c.num_hash_layers != 0)
    return bad("num_hash_layers", absl::StrCat("= ", c.num_hash_layers, ": V4.1 routes every layer by score"));
  if (!(c.gate_temp > 0) || !std::isfinite(c.gate_temp))
    return bad("gate_temp", absl::StrCat("= ", c.gate_temp, " must be positive"));
  if (c.hidden_size % 32 != 0) return bad("hidden_size", "must be a multiple of 32");
  if (c.moe_intermediate_size % 32 != 0) return bad("moe_intermediate_size", "must be a multiple of 32");
  if (c.rms_norm_eps < 0 || c.hc_eps < 0) return bad("rms_norm_eps", "must be non-negative");
  if (c.rope_theta <= 0 || c.compress_rope_theta <= 0) return bad("rope_theta", "must be positive");
  if (c.rope_factor <= 0) return bad("rope_scaling.factor", "must be positive");
  DSV4_RETURN_IF_ERROR(ValidateSharing(c, source));
  return ValidateEngramConfig(c, source);
}

int64_t ModelConfig::kv_source(int64_t layer) const {
  if (ratio(layer) == 0) return -1;
  return v41() ? LatestAtOrBefore(kv_source_layer_ids, layer) : layer;
}

int64_t ModelConfig::index_source(int64_t layer) const {
  if (ratio(layer) == 0) return -1;
  if (!v41()) return ratio(layer) == 4 ? layer : -1;
  return LatestAtOrBefore(index_source_layer_ids, layer);
}

int64_t ModelConfig::index_key_source(int64_t layer) const {
  if (!v41()) return ratio(layer) == 4 ? layer : -1;
  // The latest indexer at or before `layer` that is also a KV source owns (publishes) keys.
  int64_t found = -1;
  for (int64_t l : index_source_layer_ids) {
    if (l > layer) break;
    if (Contains(kv_source_layer_ids, l)) found = l;
  }
  return found;
}

CacheRowsPerToken ModelConfig::cache_rows_per_token() const {
  CacheRowsPerToken rows;
  for (int64_t l = 0; l < num_hidden_layers; ++l) {
    if (compresses(l)) rows.kv += 1.0 / ratio(l);
    if (owns_index_keys(l)) rows.index_keys += 1.0 / ratio(l);
  }
  return rows;
}

}  // namespace dsv4
