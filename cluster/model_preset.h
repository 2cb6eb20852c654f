// Model presets for the capacity planner: the architecture facts that decide bytes and FLOPs.
//
// The runtime's ModelConfig describes what the runtime executes (V4, V4.1). The planner also has to
// cost V3-class MLA models, Kimi-K2 and a pre-release description, so it keeps its own struct. A V4
// or V4.1 `config.json` goes through ParseModelConfig (one validation, and the layer roles and cache
// rows ModelConfig derives, for both); V3-style configs (`model_type` deepseek_v3 / deepseek_v32 /
// kimi_k2) are read here.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/config.h"

namespace dsv4::cluster {

enum class AttentionKind {
  kMla,  // DeepSeek-V3 multi-head latent attention (naive MHA form in prefill, absorbed MQA form in decode)
  kV4,   // one shared 512-d K=V head, sliding window, compressed KV (CSA with indexer / HCA)
};

// Per-layer attention schedule of a V4-style model.
struct V4Layer {
  int64_t ratio = 0;          // compression ratio: 0 = window only; 4 = CSA; 128 = HCA; V4.1 also 1 and 2
  bool owns_cache = true;     // writes its own compressed cache (V4.1 shares caches between layers)
  bool runs_indexer = false;  // computes indexer scores itself (else reuses another layer's top-k, or none)
  bool owns_index_keys = false;  // stores indexer keys (V4.1: only indexers that are also KV sources)
  bool selects_topk = false;  // attends only index_topk compressed entries (else all of them)
  bool overlapping = false;   // its compressor pools overlapping blocks: 2 x head_dim channels (V4, ratio 4)
};

struct ModelPreset {
  std::string name;
  AttentionKind attention = AttentionKind::kV4;
  int64_t vocab = 0;
  int64_t hidden = 0;       // D
  int64_t layers = 0;       // main layers, without MTP / draft layers
  int64_t max_context = 0;  // tokens
  int64_t heads = 0;        // query heads
  int64_t q_lora_rank = 0;
  // MLA (V3, V3.2, Kimi-K2).
  int64_t kv_lora_rank = 0;  // 512
  int64_t qk_nope_dim = 0;   // 128
  int64_t qk_rope_dim = 0;   // 64 (also V4's rope part)
  int64_t v_head_dim = 0;    // 128
  // V4.
  int64_t head_dim = 0;  // 512, K = V
  int64_t o_groups = 0;
  int64_t o_lora_rank = 0;
  int64_t window = 0;              // sliding window, tokens
  std::vector<V4Layer> v4_layers;  // one per main layer
  // Indexer (V3.2 DSA on every layer; V4 on CSA layers). index_topk = 0: no indexer.
  int64_t index_heads = 0;
  int64_t index_dim = 0;
  int64_t index_topk = 0;
  bool mla_indexer = false;  // V3.2: every MLA layer runs the DSA indexer over the full context
  // FFN.
  int64_t dense_layers = 0;  // leading layers with a dense FFN (V3: 3; V4: 0)
  int64_t dense_inter = 0;
  int64_t routed_experts = 0;
  int64_t shared_experts = 0;
  int64_t experts_per_token = 0;  // routed experts per token (config: num_experts_per_tok)
  int64_t expert_inter = 0;
  // mHC residual streams (1 = plain residual).
  int64_t hc_mult = 1;
  // Engram (V4.1): tables of FP8 rows looked up before the listed layers.
  std::vector<int64_t> engram_layers;
  int64_t engram_rows_per_layer = 0;
  int64_t engram_lookups = 0;  // rows gathered per token per Engram layer (n-gram orders x heads)
  int64_t engram_row_dim = 0;  // elements per row
  // Multi-token prediction / draft layers shipped with the checkpoint.
  int64_t mtp_layers = 0;
  // Public release date of the weights, and of the first model of its architecture (YYYY-MM-DD;
  // "" = unknown). Software maturity counts from the architecture's: Kimi-K2 runs on DeepSeek-V3's
  // kernels from its first day.
  std::string release_date;
  std::string architecture_date;
  // Free text: where the numbers come from.
  std::string source;
};

// Names accepted by FindPreset, in a stable order.
std::vector<std::string> PresetNames();
// A built-in preset; the error lists the known names.
absl::StatusOr<ModelPreset> FindPreset(const std::string& name);
// A V4 / V4.1 runtime config turned into a preset (layer roles from ModelConfig).
ModelPreset PresetFromModelConfig(const ModelConfig& config, const std::string& name);
// Parses a config.json text: V4 / V4.1 (through ParseModelConfig) or V3-style MLA configs.
absl::StatusOr<ModelPreset> ParsePresetConfig(const std::string& json_text, const std::string& source);
// `spec` is a preset name, a name given to RegisterModelConfig, or a path to a config.json.
absl::StatusOr<ModelPreset> LoadPreset(const std::string& spec);
// Makes `name` (e.g. "builtin:v4-bench", whose config the runtime owns) resolve to `config_json`.
// Thread-safe.
void RegisterModelConfig(const std::string& name, const std::string& config_json);

}  // namespace dsv4::cluster
