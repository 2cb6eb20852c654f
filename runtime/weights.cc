#include "runtime/weights.h"

#include <atomic>
#include <cstring>
#include <filesystem>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "base/log.h"
#include "base/status.h"
#include "kernels/cpu/formats.h"
#include "kernels/cpu/thread_pool.h"
#include "runtime/builtin.h"
#include "runtime/tokenizer/tokenizer.h"

namespace dsv4 {
namespace {

using kernels::WeightType;

std::string Shape(const std::vector<int64_t>& s) { return absl::StrCat("[", absl::StrJoin(s, ", "), "]"); }

// Looks tensors up by name and checks them; the first error is kept and returned by status().
class Reader {
 public:
  Reader(const Checkpoint& ckpt, int64_t block_rows, int64_t block_cols)
      : ckpt_(ckpt), block_rows_(block_rows), block_cols_(block_cols) {}

  const absl::Status& status() const { return status_; }
  // Names of the tensors read so far.
  const std::set<std::string>& used() const { return used_; }

  const TensorInfo* Require(const std::string& name) {
    const TensorInfo* t = Find(name);
    if (t == nullptr) Fail(absl::StrCat("tensor '", name, "' is missing from the checkpoint"));
    return t;
  }

  // A linear layer [out, in] in any supported storage; FP8 uses `block` x `block` scale blocks
  // (0: the config's weight_block_size).
  WeightMatrix Linear(const std::string& prefix, int64_t out, int64_t in, int64_t block = 0) {
    const int64_t br = block > 0 ? block : block_rows_, bc = block > 0 ? block : block_cols_;
    WeightMatrix w;
    const std::string name = prefix + ".weight";
    const TensorInfo* t = Require(name);
    if (t == nullptr) return w;
    w.data = t->data;
    w.row_begin = 0, w.row_end = out, w.col_begin = 0, w.col_end = in;
    switch (t->dtype) {
      case DType::kF32:
      case DType::kBF16:
        w.type = t->dtype == DType::kF32 ? WeightType::kF32 : WeightType::kBF16;
        w.ld = in;
        ExpectShape(*t, {out, in});
        return w;
      case DType::kF8_E4M3: {
        w.type = WeightType::kFP8;
        w.ld = in;
        w.block_rows = static_cast<int32_t>(br), w.block_cols = static_cast<int32_t>(bc);
        ExpectShape(*t, {out, in});
        const int64_t sr = (out + br - 1) / br, sc = (in + bc - 1) / bc;
        if (block == 0) ExpectTiles(prefix, out, in, sr, sc);
        w.scales = Scales(prefix, sr, sc);
        w.scale_ld = sc;
        return w;
      }
      case DType::kI8:
      case DType::kF4: {  // packed E2M1 pairs, low nibble first
        w.type = WeightType::kFP4;
        w.ld = in / 2;
        w.block_rows = 1, w.block_cols = 32;
        if (in % 32 != 0) Fail(absl::StrCat("tensor '", name, "': FP4 input width ", in, " is not a multiple of 32"));
        if (t->dtype == DType::kI8) ExpectShape(*t, {out, in / 2});
        else ExpectShape(*t, {out, in});
        w.scales = Scales(prefix, out, in / 32);
        w.scale_ld = in / 32;
        return w;
      }
      default:
        Fail(absl::StrCat("tensor '", name, "' (", t->file, "): dtype ", DTypeName(t->dtype),
                          " is not a weight format (expected F8_E4M3, packed FP4 as I8, BF16 or F32)"));
        return w;
    }
  }

  // FP8 E4M3 rows [rows, cols] with one E8M0 scale per 32 values of a row ([rows, cols / 32]), as
  // Engram tables are stored. The scales are not scanned for NaN here (a table can hold billions;
  // the row gather checks the rows it reads).
  WeightMatrix Fp8Rows(const std::string& prefix, int64_t rows, int64_t cols) {
    WeightMatrix w;
    const std::string name = prefix + ".weight";
    const TensorInfo* t = Require(name);
    if (t == nullptr) return w;
    if (t->dtype != DType::kF8_E4M3) {
      Fail(absl::StrCat("tensor '", name, "' (", t->file, "): dtype ", DTypeName(t->dtype), ", expected F8_E4M3"));
      return w;
    }
    ExpectShape(*t, {rows, cols});
    w.type = WeightType::kFP8;
    w.data = t->data;
    w.ld = cols;
    w.row_begin = 0, w.row_end = rows, w.col_begin = 0, w.col_end = cols;
    w.block_rows = 1, w.block_cols = 32;
    w.scales = Scales(prefix, rows, cols / 32, /*scan_nan=*/false);
    w.scale_ld = cols / 32;
    return w;
  }

  // A float vector of `n` values from F32 or BF16 storage.
  std::vector<float> Vector(const std::string& name, std::vector<int64_t> shape) {
    const TensorInfo* t = Require(name);
    if (t == nullptr) return {};
    ExpectShape(*t, shape);
    if (!status_.ok()) return {};
    std::vector<float> out(t->numel());
    if (t->dtype == DType::kF32) {
      std::memcpy(out.data(), t->data, out.size() * sizeof(float));
    } else if (t->dtype == DType::kBF16) {
      for (size_t i = 0; i < out.size(); ++i) {
        uint16_t v;
        std::memcpy(&v, t->data + 2 * i, 2);
        out[i] = kernels::Bf16ToFloat(v);
      }
    } else {
      Fail(absl::StrCat("tensor '", name, "' (", t->file, "): dtype ", DTypeName(t->dtype), ", expected F32 or BF16"));
    }
    return out;
  }

  // An integer table (I64 or I32) whose values must lie in [0, limit).
  std::vector<int32_t> IndexTable(const std::string& name, std::vector<int64_t> shape, int64_t limit) {
    const TensorInfo* t = Require(name);
    if (t == nullptr) return {};
    ExpectShape(*t, shape);
    if (!status_.ok()) return {};
    if (t->dtype != DType::kI64 && t->dtype != DType::kI32) {
      Fail(absl::StrCat("tensor '", name, "' (", t->file, "): dtype ", DTypeName(t->dtype), ", expected I64 or I32"));
      return {};
    }
    std::vector<int32_t> out(t->numel());
    for (size_t i = 0; i < out.size(); ++i) {
      int64_t v;
      if (t->dtype == DType::kI64) {
        std::memcpy(&v, t->data + 8 * i, 8);
      } else {
        int32_t v32;
        std::memcpy(&v32, t->data + 4 * i, 4);
        v = v32;
      }
      if (v < 0 || v >= limit) {
        Fail(absl::StrCat("tensor '", name, "' (", t->file, "): entry ", i, " = ", v, " is outside [0, ", limit, ")"));
        return {};
      }
      out[i] = static_cast<int32_t>(v);
    }
    return out;
  }

  void Fail(const std::string& msg) {
    if (status_.ok()) status_ = absl::InvalidArgumentError(msg);
  }

 private:
  // The FP8 scales of [out, in] must be [sr, sc], the config's tiles: a mismatch names
  // weight_block_size and the tiles the scales would fit.
  void ExpectTiles(const std::string& prefix, int64_t out, int64_t in, int64_t sr, int64_t sc) {
    const TensorInfo* s = ckpt_.Find(prefix + ".scale");
    if (s == nullptr || s->shape.size() != 2 || (s->shape[0] == sr && s->shape[1] == sc)) return;
    std::string fits;
    if (s->shape[0] > 0 && s->shape[1] > 0) {
      const int64_t br = (out + s->shape[0] - 1) / s->shape[0], bc = (in + s->shape[1] - 1) / s->shape[1];
      if ((out + br - 1) / br == s->shape[0] && (in + bc - 1) / bc == s->shape[1])
        fits = absl::StrCat(" (they fit ", br, " x ", bc, " tiles)");
    }
    Fail(absl::StrCat("tensor '", s->name, "' (", s->file, "): shape ", Shape(s->shape), ", expected [", sr, ", ",
                      sc, "] for ", out, " x ", in, " weights in ", block_rows_, " x ", block_cols_,
                      " tiles: the scales do not match config.json's quantization_config.weight_block_size",
                      fits));
  }

  void ExpectShape(const TensorInfo& t, const std::vector<int64_t>& want) {
    if (t.shape != want)
      Fail(absl::StrCat("tensor '", t.name, "' (", t.file, "): shape ", Shape(t.shape), ", expected ", Shape(want),
                        " from config.json"));
  }

  const uint8_t* Scales(const std::string& prefix, int64_t rows, int64_t cols, bool scan_nan = true) {
    const std::string name = prefix + ".scale";
    const TensorInfo* s = Find(name);
    if (s == nullptr) {
      Fail(absl::StrCat("tensor '", name, "' (the block scales of '", prefix, ".weight') is missing"));
      return nullptr;
    }
    if (s->dtype != DType::kF8_E8M0) {
      Fail(absl::StrCat("tensor '", name, "' (", s->file, "): dtype ", DTypeName(s->dtype), ", expected F8_E8M0"));
      return nullptr;
    }
    ExpectShape(*s, {rows, cols});
    if (!status_.ok()) return nullptr;
    for (int64_t i = 0; scan_nan && i < rows * cols; ++i)
      if (s->data[i] == 0xff) {
        Fail(absl::StrCat("tensor '", name, "' (", s->file, "): scale ", i, " is 0xFF (E8M0 NaN)"));
        return nullptr;
      }
    return s->data;
  }

  const TensorInfo* Find(const std::string& name) {
    const TensorInfo* t = ckpt_.Find(name);
    if (t != nullptr) used_.insert(name);
    return t;
  }

  const Checkpoint& ckpt_;
  int64_t block_rows_, block_cols_;
  std::set<std::string> used_;
  absl::Status status_;
};

// A compressor of `head_dim` outputs: V4 pools with a position bias `ape` (ratio 4: overlapping,
// 2 x head_dim channels); V4.1 without, and ratio 1 is a bare projection (no gate).
void LoadCompressor(Reader& r, const std::string& p, const ModelConfig& c, int64_t layer, int64_t head_dim,
                    CompressorWeights* w) {
  const int64_t ratio = c.ratio(layer);
  w->ratio = ratio;
  w->head_dim = head_dim;
  w->overlap = c.compressor_overlap(layer);
  w->wkv = r.Linear(p + ".wkv", w->width(), c.hidden_size);
  if (c.compressor_gate(layer)) w->wgate = r.Linear(p + ".wgate", w->width(), c.hidden_size);
  if (c.compressor_ape()) w->ape = r.Vector(p + ".ape", {ratio, w->width()});
  w->norm = r.Vector(p + ".norm.weight", {head_dim});
}

ExpertWeights LoadExpert(Reader& r, const std::string& p, const ModelConfig& c) {
  ExpertWeights e;
  e.w1 = r.Linear(p + ".w1", c.moe_intermediate_size, c.hidden_size);
  e.w2 = r.Linear(p + ".w2", c.hidden_size, c.moe_intermediate_size);
  e.w3 = r.Linear(p + ".w3", c.moe_intermediate_size, c.hidden_size);
  return e;
}

// Narrows the views to this TP rank's heads and output groups. Query heads h and output groups g
// are split in contiguous blocks; the shared KV head, compressors and indexer stay whole (see
// DESIGN.md: they are small, and every TP rank must pick the same compressed blocks).
void SliceAttention(const ModelConfig& c, int tp_rank, int tp_size, LayerWeights* w) {
  const int64_t hd = c.head_dim, heads = c.num_attention_heads / tp_size, groups = c.o_groups / tp_size;
  const int64_t h0 = tp_rank * heads, g0 = tp_rank * groups, lora = c.o_lora_rank;
  w->wq_b.row_begin = h0 * hd, w->wq_b.row_end = (h0 + heads) * hd;
  w->attn_sink = std::vector<float>(w->attn_sink.begin() + h0, w->attn_sink.begin() + h0 + heads);
  w->wo_a.row_begin = g0 * lora, w->wo_a.row_end = (g0 + groups) * lora;
  w->wo_b.col_begin = g0 * lora, w->wo_b.col_end = (g0 + groups) * lora;
}

// layers.L.engram.*: the table, W_kv (32x32 FP8 blocks) and the gate weights.
void LoadEngram(Reader& r, const std::string& p, const ModelConfig& c, int64_t table_rows, EngramWeights* w) {
  const int64_t D = c.hidden_size, hc = c.hc_mult;
  const int64_t cols = (c.engram_max_ngram_size - 1) * c.engram_n_heads;
  w->table = r.Fp8Rows(p + "embed", table_rows, c.engram_head_dim);
  w->wkv = r.Linear(p + "wkv", (hc + 1) * D, cols * c.engram_head_dim, /*block=*/32);
  const std::vector<float> q = r.Vector(p + "q_weight", {hc, D});
  const std::vector<float> k = r.Vector(p + "k_weight", {hc, D});
  if (q.size() != k.size()) return;  // an error is already recorded
  w->gate_weight.resize(q.size());
  for (size_t i = 0; i < q.size(); ++i) w->gate_weight[i] = q[i] * k[i];
}

// What config.json makes of a layer, for error messages.
std::string LayerRoles(const ModelConfig& c, int64_t l) {
  if (l < 0 || l >= c.num_hidden_layers) return absl::StrCat("no layer ", l);
  std::vector<std::string> roles = {absl::StrCat("layer ", l, ": compress_ratios ", c.ratio(l))};
  if (c.ratio(l) > 0) {
    roles.push_back(c.compresses(l) ? "compresses" : absl::StrCat("reads layer ", c.kv_source(l), "'s cache"));
    if (c.runs_indexer(l)) roles.push_back(c.owns_index_keys(l) ? "indexer with keys" : "indexer");
  }
  if (c.is_hash_layer(l)) roles.push_back("hash-routed");
  if (c.engram_index(l) >= 0) roles.push_back("Engram");
  return absl::StrJoin(roles, ", ");
}

// The Engram hasher: given in the options, or built from their tokenizer.json.
absl::StatusOr<std::shared_ptr<const EngramHasher>> EngramHasherFor(const ModelConfig& config,
                                                                   const LoadOptions& options) {
  if (options.engram_hasher) {
    const EngramHasher& h = *options.engram_hasher;
    if (h.layout().layer_ids != config.engram_layer_ids || h.layout().num_rows != config.engram_num_embeddings ||
        h.compressed_vocab() != config.engram_compressed_vocab_size)
      return absl::InvalidArgumentError("the Engram hasher given to LoadWeights does not match config.json");
    return options.engram_hasher;
  }
  if (options.tokenizer_json.empty())
    return absl::InvalidArgumentError(
        "config.json has Engram layers (engram_layer_ids), which need the model's tokenizer.json");
  return LoadEngramHasher(config, options.tokenizer_json);
}

void LoadLayer(Reader& r, const ModelConfig& c, int64_t l, const LoadOptions& opt, LayerWeights* w) {
  const std::string p = absl::StrCat("layers.", l, ".");
  const int64_t D = c.hidden_size, hc = c.hc_mult, mix = hc * (hc + 2);
  w->hc_attn_fn = r.Vector(p + "hc_attn_fn", {mix, hc * D});
  w->hc_attn_base = r.Vector(p + "hc_attn_base", {mix});
  w->hc_attn_scale = r.Vector(p + "hc_attn_scale", {3});
  w->hc_ffn_fn = r.Vector(p + "hc_ffn_fn", {mix, hc * D});
  w->hc_ffn_base = r.Vector(p + "hc_ffn_base", {mix});
  w->hc_ffn_scale = r.Vector(p + "hc_ffn_scale", {3});
  w->attn_norm = r.Vector(p + "attn_norm.weight", {D});
  w->ffn_norm = r.Vector(p + "ffn_norm.weight", {D});

  const int64_t H = c.num_attention_heads, hd = c.head_dim, G = c.o_groups;
  w->wq_a = r.Linear(p + "attn.wq_a", c.q_lora_rank, D);
  w->q_norm = r.Vector(p + "attn.q_norm.weight", {c.q_lora_rank});
  w->wq_b = r.Linear(p + "attn.wq_b", H * hd, c.q_lora_rank);
  w->wkv = r.Linear(p + "attn.wkv", hd, D);
  w->kv_norm = r.Vector(p + "attn.kv_norm.weight", {hd});
  w->attn_sink = r.Vector(p + "attn.attn_sink", {H});
  w->wo_a = r.Linear(p + "attn.wo_a", G * c.o_lora_rank, H * hd / G);
  w->wo_b = r.Linear(p + "attn.wo_b", D, G * c.o_lora_rank);
  w->has_compressor = c.compresses(l);
  w->has_indexer = c.runs_indexer(l);
  if (w->has_compressor) LoadCompressor(r, p + "attn.compressor", c, l, hd, &w->compressor);
  if (w->has_indexer) {
    if (!c.index_keys_from_latent())
      LoadCompressor(r, p + "attn.indexer.compressor", c, l, c.index_head_dim, &w->index_compressor);
    w->index_wq_b = r.Linear(p + "attn.indexer.wq_b", c.index_n_heads * c.index_head_dim, c.q_lora_rank);
    w->index_weights_proj = r.Linear(p + "attn.indexer.weights_proj", c.index_n_heads, D);
    if (c.index_keys_from_latent() && c.owns_index_keys(l)) {
      w->index_wk = r.Linear(p + "attn.indexer.wk", c.index_head_dim, hd);
      w->index_k_norm = r.Vector(p + "attn.indexer.k_norm.weight", {c.index_head_dim});
    }
  }

  const int64_t E = c.n_routed_experts;
  w->gate = r.Linear(p + "ffn.gate", E, D);
  if (c.is_hash_layer(l)) {
    w->tid2eid = r.IndexTable(p + "ffn.gate.tid2eid", {c.vocab_size, c.num_experts_per_tok}, E);
  } else {
    w->gate_bias = r.Vector(p + "ffn.gate.bias", {E});
  }
  w->experts.resize(E);
  w->expert_loaded.assign(E, false);
  for (int64_t e = 0; e < E; ++e) {
    if (opt.owns_expert && !opt.owns_expert(l, e)) continue;
    w->experts[e] = LoadExpert(r, absl::StrCat(p, "ffn.experts.", e), c);
    w->expert_loaded[e] = true;
  }
  w->shared = LoadExpert(r, p + "ffn.shared_experts", c);
  if (const int64_t e = c.engram_index(l); e >= 0) {
    w->has_engram = true;
    LoadEngram(r, p + "engram.", c, c.engram_num_embeddings[e], &w->engram);
  }
  if (opt.tp_size > 1) SliceAttention(c, opt.tp_rank, opt.tp_size, w);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ModelWeights>> LoadWeights(std::shared_ptr<const Checkpoint> ckpt,
                                                         const ModelConfig& config, const LoadOptions& options) {
  auto w = std::make_unique<ModelWeights>();
  w->config = config;
  w->checkpoint = ckpt;
  // Tensors of layers the config does not have mean config and checkpoint disagree. Draft layers
  // (MTP in V4, DSpark in V4.1) live under mtp.*: recognised, and not part of this model.
  for (const auto& [name, info] : ckpt->all()) {
    if (name.rfind("mtp.", 0) == 0) ++w->num_draft_tensors;
    if (name.rfind("layers.", 0) != 0) continue;
    const int64_t l = std::atoll(name.c_str() + 7);
    if (l >= config.num_hidden_layers)
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' (", info->file, ") belongs to layer ", l,
                                                     " but config.json has num_hidden_layers = ",
                                                     config.num_hidden_layers));
    if (name.find(".engram.") != std::string::npos && config.engram_index(l) < 0)
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' (", info->file, ") is an Engram tensor of ",
                                                     "layer ", l, ", which config.json's engram_layer_ids lacks"));
  }
  if (config.has_engram()) {
    DSV4_ASSIGN_OR_RETURN(w->engram_hasher, EngramHasherFor(config, options));
  }
  // The slice comes from a validated layout (ParallelLayout::Make checks that tp divides the heads
  // and output groups): anything else is a caller's bug.
  DSV4_CHECK(options.tp_size >= 1 && options.tp_rank >= 0 && options.tp_rank < options.tp_size &&
                 config.num_attention_heads % options.tp_size == 0 && config.o_groups % options.tp_size == 0,
             "tensor-parallel slice ", options.tp_rank, "/", options.tp_size, " of ", config.num_attention_heads,
             " heads and ", config.o_groups, " output groups");
  Reader r(*ckpt, config.fp8_block_rows, config.fp8_block_cols);
  const int64_t D = config.hidden_size, hc = config.hc_mult;
  w->embed = r.Linear("embed", config.vocab_size, D);
  w->head = r.Linear("head", config.vocab_size, D);
  // The one place that decides whether the vocab head is split over the TP group.
  w->vocab_parallel_head = options.tp_size > 1 && config.vocab_size % options.tp_size == 0;
  if (w->vocab_parallel_head) {
    const int64_t part = config.vocab_size / options.tp_size;
    w->head.row_begin = options.tp_rank * part, w->head.row_end = (options.tp_rank + 1) * part;
  }
  w->norm = r.Vector("norm.weight", {D});
  if (!config.hc_lagged()) {  // V4.1 collapses the final streams with the last block's mix
    w->hc_head_fn = r.Vector("hc_head_fn", {hc, hc * D});
    w->hc_head_base = r.Vector("hc_head_base", {hc});
    w->hc_head_scale = r.Vector("hc_head_scale", {1});
  }
  DSV4_RETURN_IF_ERROR(r.status());
  w->layers.resize(config.num_hidden_layers);
  for (int64_t l = 0; l < config.num_hidden_layers; ++l) {
    LoadLayer(r, config, l, options, &w->layers[l]);
    DSV4_RETURN_IF_ERROR(r.status());
  }
  // Every tensor of a main layer has a use (routed experts of other ranks aside, and V4.1's
  // image-token routing bias: the runtime serves text): a leftover means the config describes
  // another model (e.g. kv_source_layer_ids lists fewer sources).
  auto ends_with = [](const std::string& s, const std::string& tail) {
    return s.size() >= tail.size() && s.compare(s.size() - tail.size(), tail.size(), tail) == 0;
  };
  for (const auto& [name, info] : ckpt->all()) {
    if (name.rfind("layers.", 0) != 0 || r.used().count(name) || name.find(".ffn.experts.") != std::string::npos ||
        ends_with(name, ".ffn.gate.bias_vl"))
      continue;
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' (", info->file,
                                                   ") has no use in the model config.json describes (",
                                                   LayerRoles(config, std::atoll(name.c_str() + 7)), ")"));
  }
  if (w->num_draft_tensors > 0)
    DSV4_LOG(kInfo, w->num_draft_tensors, " draft-layer tensors (mtp.*) in the checkpoint are not loaded");
  return w;
}

absl::StatusOr<ExpertWeights> LoadExpertWeights(const Checkpoint& ckpt, const ModelConfig& config, int64_t layer,
                                                int64_t expert) {
  if (layer < 0 || layer >= config.num_hidden_layers || expert < 0 || expert >= config.n_routed_experts)
    return absl::InvalidArgumentError(absl::StrCat("expert ", expert, " of layer ", layer, " is outside the model (",
                                                   config.num_hidden_layers, " layers, ", config.n_routed_experts,
                                                   " routed experts)"));
  Reader r(ckpt, config.fp8_block_rows, config.fp8_block_cols);
  ExpertWeights e = LoadExpert(r, absl::StrCat("layers.", layer, ".ffn.experts.", expert), config);
  DSV4_RETURN_IF_ERROR(r.status());
  return e;
}

namespace {

// Engram models build their hasher from the model's tokenizer.json (FindTokenizerJson: the
// directory's own, or the built-in models' DeepSeek tokenizer) unless the options name one.
absl::Status FindEngramTokenizer(const std::string& model, const ModelConfig& config, LoadOptions& options) {
  if (!config.has_engram() || options.engram_hasher || !options.tokenizer_json.empty()) return absl::OkStatus();
  absl::StatusOr<std::string> path = FindTokenizerJson(model);
  if (!path.ok())
    return absl::Status(path.status().code(), absl::StrCat("the Engram layers need the tokenizer's compression map: ",
                                                           path.status().message()));
  options.tokenizer_json = *path;
  return absl::OkStatus();
}

}  // namespace

namespace {

// Whether an element's bit pattern is a NaN or an infinity, per dtype (false: it has none).
bool NonFinite(DType t, const uint8_t* p) {
  uint64_t v = 0;
  switch (t) {
    case DType::kF64:
      std::memcpy(&v, p, 8);
      return (v & 0x7ff0000000000000ull) == 0x7ff0000000000000ull;
    case DType::kF32:
      std::memcpy(&v, p, 4);
      return (v & 0x7f800000u) == 0x7f800000u;
    case DType::kF16:
      std::memcpy(&v, p, 2);
      return (v & 0x7c00u) == 0x7c00u;
    case DType::kBF16:
      std::memcpy(&v, p, 2);
      return (v & 0x7f80u) == 0x7f80u;
    case DType::kF8_E4M3:  // e4m3fn: no infinity; S.1111.111 is NaN
      return (p[0] & 0x7f) == 0x7f;
    case DType::kF8_E5M2:
      return (p[0] & 0x7c) == 0x7c;
    case DType::kF8_E8M0:
      return p[0] == 0xff;
    default:
      return false;
  }
}

bool CanBeNonFinite(DType t) {
  switch (t) {
    case DType::kF64:
    case DType::kF32:
    case DType::kF16:
    case DType::kBF16:
    case DType::kF8_E4M3:
    case DType::kF8_E5M2:
    case DType::kF8_E8M0:
      return true;
    default:
      return false;
  }
}

}  // namespace

absl::Status CheckWeightsFinite(const Checkpoint& ckpt, int part, int parts) {
  int64_t index = -1;
  for (const auto& [name, tensor] : ckpt.all()) {
    const TensorInfo* info = tensor;  // clang 14 cannot capture a structured binding in a lambda
    if (++index % parts != part) continue;
    if (!CanBeNonFinite(info->dtype)) continue;
    const int64_t bytes = DTypeBits(info->dtype) / 8, n = info->numel();
    std::atomic<int64_t> bad{0}, first{n};
    kernels::ParallelForDynamic(n, int64_t{1} << 20, [&](int64_t begin, int64_t end) {
      int64_t count = 0, at = -1;
      for (int64_t i = begin; i < end; ++i)
        if (NonFinite(info->dtype, info->data + i * bytes)) {
          if (at < 0) at = i;
          ++count;
        }
      if (count == 0) return;
      bad.fetch_add(count);
      int64_t prev = first.load();
      while (at < prev && !first.compare_exchange_weak(prev, at)) {
      }
    });
    if (bad.load() > 0)
      return absl::InvalidArgumentError(absl::StrCat("--check-weights: tensor '", name, "' (", info->file, ", ",
                                                     DTypeName(info->dtype), " ", info->ShapeString(), ") holds ",
                                                     bad.load(), " NaN/Inf value(s), the first at element ",
                                                     first.load()));
  }
  return absl::OkStatus();
}

absl::Status CheckModelDir(const std::string& model) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(model, ec);
  if (!fs::exists(st))
    return absl::NotFoundError(absl::StrCat("model directory '", model, "' does not exist (or use builtin:v4-tiny)"));
  if (!fs::is_directory(st))
    return absl::InvalidArgumentError(absl::StrCat(
        "model '", model, "' is a file, not a checkpoint directory (config.json, *.safetensors, tokenizer.json)"));
  return absl::OkStatus();
}

absl::StatusOr<std::string> ModelConfigText(const std::string& model) {
  if (model.rfind("builtin:", 0) == 0) return BuiltinConfigJson(model.substr(8));
  DSV4_RETURN_IF_ERROR(CheckModelDir(model));
  return ReadFile(model + "/config.json", int64_t{64} << 20);
}

absl::StatusOr<std::unique_ptr<ModelWeights>> LoadModel(const std::string& model, const LoadOptionsFn& make_options) {
  auto options_for = [&](const ModelConfig& c) -> absl::StatusOr<LoadOptions> {
    return make_options ? make_options(c) : LoadOptions{};
  };
  if (model.rfind("builtin:", 0) == 0) {
    DSV4_ASSIGN_OR_RETURN(BuiltinModel b, MakeBuiltinModel(model.substr(8)));
    DSV4_ASSIGN_OR_RETURN(LoadOptions options, options_for(b.config));
    DSV4_RETURN_IF_ERROR(FindEngramTokenizer(model, b.config, options));
    return LoadWeights(std::move(b.checkpoint), b.config, options);
  }
  namespace fs = std::filesystem;
  DSV4_RETURN_IF_ERROR(CheckModelDir(model));
  DSV4_ASSIGN_OR_RETURN(ModelConfig config, LoadModelConfig((fs::path(model) / "config.json").string()));
  DSV4_ASSIGN_OR_RETURN(LoadOptions options, options_for(config));
  DSV4_RETURN_IF_ERROR(FindEngramTokenizer(model, config, options));
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::OpenDir(model));
  return LoadWeights(std::shared_ptr<const Checkpoint>(std::move(ckpt)), config, options);
}

}  // namespace dsv4
