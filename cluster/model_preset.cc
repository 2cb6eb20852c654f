#include "cluster/model_preset.h"

#include <algorithm>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "base/status.h"
#include "absl/synchronization/mutex.h"

namespace dsv4::cluster {
namespace {

using nlohmann::json;

// The V4 compress_ratios schedules of MODEL.md 1.2 / 1.3: `first` for layers 0 and 1, then 4 on even
// and 128 on odd layers.
std::vector<int64_t> AlternatingRatios(int64_t layers, int64_t first) {
  std::vector<int64_t> r(layers);
  for (int64_t l = 0; l < layers; ++l) r[l] = l < 2 ? first : (l % 2 == 0 ? 4 : 128);
  return r;
}

ModelConfig V4Config(int64_t hidden, int64_t layers, int64_t heads, int64_t q_lora, int64_t o_groups, int64_t experts,
                     int64_t experts_per_token, int64_t inter, int64_t index_topk, int64_t first_ratio) {
  ModelConfig c;
  c.vocab_size = 129280;
  c.hidden_size = hidden;
  c.num_hidden_layers = layers;
  c.num_attention_heads = heads;
  c.head_dim = 512;
  c.qk_rope_head_dim = 64;
  c.q_lora_rank = q_lora;
  c.o_groups = o_groups;
  c.o_lora_rank = 1024;
  c.n_routed_experts = experts;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = experts_per_token;
  c.moe_intermediate_size = inter;
  c.num_hash_layers = 3;
  c.sliding_window = 128;
  c.index_n_heads = 64;
  c.index_head_dim = 128;
  c.index_topk = index_topk;
  c.hc_mult = 4;
  c.max_position_embeddings = 1048576;
  c.compress_ratios = AlternatingRatios(layers, first_ratio);
  c.num_nextn_predict_layers = 1;
  return c;
}

// MODEL.md 1.4 (the reference's inference/config.json): ratios 2 (layers 2-19) and 1 (20-39); only
// kv_source_layers write a cache and only index_source_layers score; the others reuse them.
ModelConfig V41FlashConfig() {
  ModelConfig c;
  c.model_type = "deepseek_v41";
  c.family = ModelFamily::kV41;
  c.vocab_size = 129280;
  c.hidden_size = 5120;
  c.num_hidden_layers = 40;
  c.num_attention_heads = 64;
  c.head_dim = 512;
  c.qk_rope_head_dim = 64;
  c.q_lora_rank = 1280;
  c.o_groups = 8;
  c.o_lora_rank = 1024;
  c.n_routed_experts = 384;
  c.n_shared_experts = 1;
  c.num_experts_per_tok = 6;
  c.moe_intermediate_size = 2304;
  c.routed_scaling_factor = 1.5;
  c.swiglu_limit = 10;
  c.sliding_window = 128;
  c.index_n_heads = 32;
  c.index_head_dim = 128;
  c.index_topk = 512;
  c.hc_mult = 4;
  c.rms_norm_eps = 1e-20;
  c.max_position_embeddings = 1048576;
  c.compress_ratios.assign(43, 0);  // 40 layers + 3 DSpark
  for (int64_t l = 2; l < 40; ++l) c.compress_ratios[l] = l < 20 ? 2 : 1;
  c.kv_source_layer_ids = {2, 8, 14, 20};
  c.index_source_layer_ids = {2, 8, 14, 20, 24, 28, 32, 36};
  c.candidate_source_layer_id = 20;
  c.candidate_topk_blocks = 2048;
  c.candidate_block_size = 8;
  c.num_nextn_predict_layers = 3;  // DSpark draft layers
  c.fp8_block_rows = c.fp8_block_cols = 32;
  c.engram_layer_ids = {1, 14};
  c.engram_num_embeddings = {384006168, 384016682};
  c.engram_max_ngram_size = 4;
  c.engram_vocab_size = 16000000;
  c.engram_n_heads = 8;
  c.engram_head_dim = 256;
  c.engram_pad_id = 2;
  c.engram_compressed_vocab_size = 99092;
  return c;
}

ModelPreset V41Flash() {
  ModelPreset p = PresetFromModelConfig(V41FlashConfig(), "deepseek-v4.1-flash");
  p.source = "MODEL.md 1.4 (V4.1 reference inference/config.json)";
  return p;
}

ModelPreset Mla(const std::string& name, int64_t heads, int64_t dense_layers, int64_t experts, int64_t experts_per_token,
                int64_t vocab, int64_t mtp, const std::string& source) {
  ModelPreset p;
  p.name = name;
  p.attention = AttentionKind::kMla;
  p.vocab = vocab;
  p.hidden = 7168;
  p.layers = 61;
  p.max_context = 131072;
  p.heads = heads;
  p.q_lora_rank = 1536;
  p.kv_lora_rank = 512;
  p.qk_nope_dim = 128;
  p.qk_rope_dim = 64;
  p.v_head_dim = 128;
  p.dense_layers = dense_layers;
  p.dense_inter = 18432;
  p.routed_experts = experts;
  p.shared_experts = 1;
  p.experts_per_token = experts_per_token;
  p.expert_inter = 2048;
  p.hc_mult = 1;
  p.mtp_layers = mtp;
  p.source = source;
  return p;
}

// The pre-release description of V4 ("1T total, 32B active, top-16, 1M context") has no config. This
// is one V4-style architecture that matches those totals: hidden 6144, 61 layers, 64 heads, 896
// experts of width 1024 with top-16 and one shared expert -> 1.04T total, 31.9B active. [assumed]
ModelConfig Seed1TConfig() {
  ModelConfig c = V4Config(6144, 61, 64, 1536, 8, 896, 16, 1024, 1024, 128);
  return c;
}

// Reads V3-style keys; errors name the field.
absl::StatusOr<ModelPreset> ParseMlaConfig(const json& j, const std::string& source) {
  ModelPreset p = Mla(source, 0, 0, 0, 0, 0, 0, source);
  struct Key {
    const char* name;
    int64_t* out;
    bool required;
  };
  int64_t index_topk = 0, index_heads = 0, index_dim = 0;
  const Key keys[] = {
      {"hidden_size", &p.hidden, true},
      {"num_hidden_layers", &p.layers, true},
      {"num_attention_heads", &p.heads, true},
      {"kv_lora_rank", &p.kv_lora_rank, true},
      {"qk_nope_head_dim", &p.qk_nope_dim, true},
      {"qk_rope_head_dim", &p.qk_rope_dim, true},
      {"v_head_dim", &p.v_head_dim, true},
      {"n_routed_experts", &p.routed_experts, true},
      {"num_experts_per_tok", &p.experts_per_token, true},
      {"moe_intermediate_size", &p.expert_inter, true},
      {"vocab_size", &p.vocab, true},
      {"max_position_embeddings", &p.max_context, true},
      {"q_lora_rank", &p.q_lora_rank, false},
      {"n_shared_experts", &p.shared_experts, false},
      {"first_k_dense_replace", &p.dense_layers, false},
      {"intermediate_size", &p.dense_inter, false},
      {"num_nextn_predict_layers", &p.mtp_layers, false},
      {"index_topk", &index_topk, false},
      {"index_n_heads", &index_heads, false},
      {"index_head_dim", &index_dim, false},
  };
  for (const Key& k : keys) {
    auto it = j.find(k.name);
    if (it == j.end() || it->is_null()) {
      if (k.required) return absl::InvalidArgumentError(absl::StrCat(source, ": field '", k.name, "' is missing"));
      if (k.out == &p.q_lora_rank) *k.out = 0;  // V2-Lite style: no query compression
      continue;
    }
    if (!it->is_number_integer() || it->get<int64_t>() < 0)
      return absl::InvalidArgumentError(absl::StrCat(source, ": field '", k.name, "' must be a non-negative integer"));
    *k.out = it->get<int64_t>();
  }
  for (const auto* f : {&p.hidden, &p.layers, &p.heads, &p.routed_experts, &p.experts_per_token, &p.vocab, &p.max_context})
    if (*f <= 0) return absl::InvalidArgumentError(absl::StrCat(source, ": sizes must be positive"));
  if (p.experts_per_token > p.routed_experts)
    return absl::InvalidArgumentError(absl::StrCat(source, ": field 'num_experts_per_tok' exceeds n_routed_experts"));
  if (p.dense_layers > p.layers)
    return absl::InvalidArgumentError(absl::StrCat(source, ": field 'first_k_dense_replace' exceeds the layer count"));
  if (index_topk > 0) {
    p.mla_indexer = true;
    p.index_topk = index_topk;
    p.index_heads = index_heads > 0 ? index_heads : 64;
    p.index_dim = index_dim > 0 ? index_dim : 128;
  }
  return p;
}

}  // namespace

std::vector<std::string> PresetNames() {
  return {"deepseek-v3",     "deepseek-r1",         "deepseek-v3.2", "deepseek-v4-flash",
          "deepseek-v4-pro", "deepseek-v4.1-flash", "kimi-k2",       "seed-v4-1t"};
}

ModelPreset PresetFromModelConfig(const ModelConfig& c, const std::string& name) {
  ModelPreset p;
  p.name = name;
  p.attention = AttentionKind::kV4;
  p.vocab = c.vocab_size;
  p.hidden = c.hidden_size;
  p.layers = c.num_hidden_layers;
  p.max_context = c.max_position_embeddings;
  p.heads = c.num_attention_heads;
  p.q_lora_rank = c.q_lora_rank;
  p.qk_rope_dim = c.qk_rope_head_dim;
  p.head_dim = c.head_dim;
  p.o_groups = c.o_groups;
  p.o_lora_rank = c.o_lora_rank;
  p.window = c.sliding_window;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    V4Layer v;
    v.ratio = c.ratio(l);
    v.owns_cache = c.compresses(l);
    v.runs_indexer = c.runs_indexer(l);
    v.owns_index_keys = c.owns_index_keys(l);
    v.selects_topk = c.index_source(l) >= 0;
    v.overlapping = c.compressor_overlap(l);
    p.v4_layers.push_back(v);
  }
  p.index_heads = c.index_n_heads;
  p.index_dim = c.index_head_dim;
  p.index_topk = c.index_topk;
  p.routed_experts = c.n_routed_experts;
  p.shared_experts = c.n_shared_experts;
  p.experts_per_token = c.num_experts_per_tok;
  p.expert_inter = c.moe_intermediate_size;
  p.hc_mult = c.hc_mult;
  p.mtp_layers = c.num_nextn_predict_layers;
  if (c.has_engram()) {
    p.engram_layers = c.engram_layer_ids;
    double rows = 0;
    for (int64_t r : c.engram_num_embeddings) rows += static_cast<double>(r);
    p.engram_rows_per_layer = static_cast<int64_t>(rows / c.engram_num_embeddings.size());
    p.engram_lookups = (c.engram_max_ngram_size - 1) * c.engram_n_heads;
    p.engram_row_dim = c.engram_head_dim;
  }
  p.source = "ModelConfig";
  return p;
}

absl::StatusOr<ModelPreset> FindPreset(const std::string& name) {
  // Release dates: the public weight releases (DeepSeek-V3 2024-12-26, R1 2025-01-20, V3.2-Exp
  // 2025-09-29, Kimi-K2 2025-07-11, V4 Flash and Pro 2026-04-24).
  if (name == "deepseek-v3" || name == "deepseek-r1") {
    ModelPreset p = Mla(name, 128, 3, 256, 8, 129280, 1, "deepseek-ai/DeepSeek-V3:inference/configs/config_671B.json");
    p.release_date = name == "deepseek-v3" ? "2024-12-26" : "2025-01-20";
    p.architecture_date = "2024-12-26";
    return p;
  }
  if (name == "deepseek-v3.2") {
    ModelPreset p = Mla(name, 128, 3, 256, 8, 129280, 1, "MODEL.md 1.1 and 2.2 (V3 + DSA indexer)");
    p.mla_indexer = true;
    p.index_heads = 64;
    p.index_dim = 128;
    p.index_topk = 2048;
    p.release_date = "2025-09-29";
    p.architecture_date = "2025-09-29";  // MLA with the DSA indexer
    return p;
  }
  if (name == "kimi-k2") {
    ModelPreset p = Mla(name, 64, 1, 384, 8, 163840, 0, "moonshotai/Kimi-K2-Instruct config.json (public)");
    p.release_date = "2025-07-11";
    p.architecture_date = "2024-12-26";  // the DeepSeek-V3 architecture
    return p;
  }
  if (name == "deepseek-v4-flash") {
    ModelPreset p = PresetFromModelConfig(V4Config(4096, 43, 64, 1024, 8, 256, 6, 2048, 512, 0), name);
    p.source = "MODEL.md 1.2 (HF config.json of DeepSeek-V4-Flash)";
    p.release_date = p.architecture_date = "2026-04-24";
    return p;
  }
  if (name == "deepseek-v4-pro") {
    ModelPreset p = PresetFromModelConfig(V4Config(7168, 61, 128, 1536, 16, 384, 6, 3072, 1024, 128), name);
    p.source = "MODEL.md 1.3 (HF config.json of DeepSeek-V4-Pro)";
    p.release_date = p.architecture_date = "2026-04-24";
    return p;
  }
  if (name == "deepseek-v4.1-flash") return V41Flash();
  if (name == "seed-v4-1t") {
    ModelPreset p = PresetFromModelConfig(Seed1TConfig(), name);
    p.source = "pre-release description (1T total / 32B active / top-16 / 1M context); layer sizes assumed";
    return p;
  }
  return absl::InvalidArgumentError(absl::StrCat("model: unknown preset '", name, "' (known: ",
                                                 absl::StrJoin(PresetNames(), ", "), "; or a path to a config.json)"));
}

absl::StatusOr<ModelPreset> ParsePresetConfig(const std::string& json_text, const std::string& source) {
  const json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  std::string type = "deepseek_v4";
  if (auto it = j.find("model_type"); it != j.end() && it->is_string()) type = it->get<std::string>();
  if (type == "deepseek_v4" || type == "deepseek_v41" || type == "deepseek_v41_text") {
    DSV4_ASSIGN_OR_RETURN(auto c, ParseModelConfig(json_text, source));
    return PresetFromModelConfig(c, source);
  }
  if (type == "deepseek_v3" || type == "deepseek_v32" || type == "kimi_k2" || type == "deepseek_v2")
    return ParseMlaConfig(j, source);
  return absl::InvalidArgumentError(absl::StrCat(source, ": field 'model_type' = \"", type,
                                                 "\" is not one the planner knows (deepseek_v4, deepseek_v41, "
                                                 "deepseek_v3, deepseek_v32, kimi_k2)"));
}

namespace {

struct ConfigRegistry {
  absl::Mutex mu;
  std::map<std::string, std::string> configs ABSL_GUARDED_BY(mu);
};

ConfigRegistry& Registry() {
  static ConfigRegistry* r = new ConfigRegistry;
  return *r;
}

}  // namespace

void RegisterModelConfig(const std::string& name, const std::string& config_json) {
  ConfigRegistry& r = Registry();
  absl::MutexLock lock(&r.mu);
  r.configs[name] = config_json;
}

absl::StatusOr<ModelPreset> LoadPreset(const std::string& spec) {
  if (spec.empty()) return absl::InvalidArgumentError("model: must name a preset or a config.json path");
  {
    ConfigRegistry& r = Registry();
    absl::MutexLock lock(&r.mu);
    if (auto it = r.configs.find(spec); it != r.configs.end()) return ParsePresetConfig(it->second, spec);
  }
  if (spec.find('/') == std::string::npos && spec.find(".json") == std::string::npos) return FindPreset(spec);
  DSV4_ASSIGN_OR_RETURN(const std::string text, ReadFile(spec), "model: config file");
  return ParsePresetConfig(text, spec);
}

}  // namespace dsv4::cluster
