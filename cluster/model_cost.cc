#include "cluster/model_cost.h"

#include <algorithm>
#include <cmath>

namespace dsv4::cluster {
namespace {

constexpr double kBf16 = 2, kFp32 = 4;

// Bytes of one cached KV entry of `dim` values whose last `rope` values stay BF16. The quantized part
// carries `scale_bytes` per `group` values: V4 uses one UE8M0 byte per 64 (MODEL.md 2.3), FlashMLA's FP8
// layout for MLA one fp32 per 128 (656 B per token for V3's 576-d latent).
double EntryBytes(double dim, double rope, double bits, double group = 64, double scale_bytes = 1) {
  if (bits >= 16) return dim * bits / 8;
  return (dim - rope) * bits / 8 + rope * kBf16 + (dim - rope) / group * scale_bytes;
}

double MlaEntryBytes(const ModelPreset& m, double bits) {
  return EntryBytes(m.kv_lora_rank + m.qk_rope_dim, m.qk_rope_dim, bits, 128, 4);
}

// Indexer keys: FP4 with a scale per 32 values in V4 (FP8 with one fp32 scale per key in V3.2).
double IndexKeyBytes(const ModelPreset& m) {
  if (m.attention == AttentionKind::kMla) return m.index_dim + 4;
  return m.index_dim * 0.5 + m.index_dim / 32.0;
}

// Compressed entries a query at `context` attends in layer `v` (V4), excluding the window.
double CompressedAttended(const ModelPreset& m, const V4Layer& v, double context) {
  if (v.ratio <= 0) return 0;
  const double visible = std::floor(context / v.ratio);
  return v.selects_topk ? std::min<double>(m.index_topk, visible) : visible;
}

double MlaAttentionParams(const ModelPreset& m, double* split) {
  const double D = m.hidden, H = m.heads, qk = m.qk_nope_dim + m.qk_rope_dim;
  const double q = m.q_lora_rank > 0 ? D * m.q_lora_rank + m.q_lora_rank * H * qk + m.q_lora_rank : D * H * qk;
  const double q_b = m.q_lora_rank > 0 ? m.q_lora_rank * H * qk : D * H * qk;
  const double kv_a = D * (m.kv_lora_rank + m.qk_rope_dim) + m.kv_lora_rank;
  const double kv_b = m.kv_lora_rank * H * (m.qk_nope_dim + m.v_head_dim);
  const double o = H * m.v_head_dim * D;
  double idx = 0;
  if (m.mla_indexer) idx = m.q_lora_rank * m.index_heads * m.index_dim + D * m.index_dim + D * m.index_heads;
  *split = q_b + kv_b + o;
  return q + kv_a + kv_b + o + idx + 2 * D;  // + attention and FFN norms
}

double V4AttentionParams(const ModelPreset& m, const V4Layer& v, double* split) {
  const double D = m.hidden, H = m.heads, hd = m.head_dim;
  const double wq = D * m.q_lora_rank + m.q_lora_rank * H * hd + m.q_lora_rank;
  const double wkv = D * hd + hd;
  const double wo_a = m.o_groups * m.o_lora_rank * (H * hd / m.o_groups);
  const double wo_b = D * m.o_groups * m.o_lora_rank;
  double compressor = 0, indexer = 0;
  if (v.ratio > 0 && v.owns_cache) {
    const double coff = v.overlapping ? 2 : 1;
    const double mats = v.ratio == 1 ? 1 : 2;  // ratio 1 is one projection; others have kv and gate
    compressor = mats * D * coff * hd + v.ratio * coff * hd + hd;
  }
  if (v.runs_indexer) {
    const double coff = v.overlapping ? 2 : 1;
    indexer = m.q_lora_rank * m.index_heads * m.index_dim + D * m.index_heads + 2 * D * coff * m.index_dim;
  }
  *split = m.q_lora_rank * H * hd + wo_a + wo_b;
  return wq + wkv + wo_a + wo_b + compressor + indexer + H + 2 * D;  // + sinks, norms
}

}  // namespace

double ParamCounts::Total() const {
  return attention + mhc + router + dense_ffn + shared_experts + routed_experts + embed + head + engram_tables +
         engram_proj + mtp + mtp_routed;
}

double WeightBytes::Total() const {
  return attention + mhc + router + dense_ffn + shared_experts + routed_experts + embed_head + engram_tables +
         engram_proj + mtp + mtp_routed;
}

bool IsMoeLayer(const ModelPreset& m, int64_t layer) { return layer >= m.dense_layers && m.routed_experts > 0; }

double ExpertFlopsPerToken(const ModelPreset& m) { return 2.0 * 3 * m.hidden * m.expert_inter; }
double DenseFfnParams(const ModelPreset& m) { return 3.0 * m.hidden * m.dense_inter; }
double SharedExpertParams(const ModelPreset& m) { return 3.0 * m.hidden * m.expert_inter * m.shared_experts; }
double RouterParams(const ModelPreset& m) { return static_cast<double>(m.routed_experts) * m.hidden; }

double MhcFlopsPerToken(const ModelPreset& m) {
  if (m.hc_mult <= 1) return 0;
  const double n = m.hc_mult, D = m.hidden;
  // Per sub-layer: the [n(n+2), nD] mixing projection, collapse and expand (2nD each), Sinkhorn is O(n^2).
  return 2 * (2 * n * (n + 2) * n * D + 4 * n * D);
}

double ResidualBytesPerToken(const ModelPreset& m) {
  const double n = std::max<int64_t>(1, m.hc_mult), D = m.hidden;
  // Per sub-layer: read the n streams twice (mix, collapse), write them once, read/write the D-wide
  // sub-layer input and output.
  return 2 * (3 * n * D + 2 * D) * kBf16;
}

double EngramGatherBytesPerToken(const ModelPreset& m) {
  return m.engram_lookups * (m.engram_row_dim + m.engram_row_dim / 32.0);
}

double EngramProjParams(const ModelPreset& m) {
  if (m.engram_layers.empty()) return 0;
  return static_cast<double>(m.hc_mult + 1) * m.hidden * m.engram_lookups * m.engram_row_dim +
         2.0 * m.hc_mult * m.hidden;
}

ParamCounts CountParams(const ModelPreset& m) {
  ParamCounts c;
  const double D = m.hidden, expert = 3.0 * D * m.expert_inter;
  c.expert_params = expert;
  double per_layer_mean_attention = 0;
  for (int64_t l = 0; l < m.layers; ++l) {
    double split = 0;
    const double a = m.attention == AttentionKind::kMla ? MlaAttentionParams(m, &split)
                                                        : V4AttentionParams(m, m.v4_layers[l], &split);
    c.attention += a;
    c.attention_head_split += split;
    if (m.hc_mult > 1) c.mhc += 2.0 * (m.hc_mult * (m.hc_mult + 2)) * (m.hc_mult * D + 1) + 6;
    if (IsMoeLayer(m, l)) {
      c.router += RouterParams(m) + m.routed_experts;
      c.shared_experts += SharedExpertParams(m);
      c.routed_experts += m.routed_experts * expert;
    } else {
      c.dense_ffn += DenseFfnParams(m);
    }
  }
  per_layer_mean_attention = c.attention / m.layers;
  c.embed = static_cast<double>(m.vocab) * D;
  c.head = static_cast<double>(m.vocab) * D + D;
  c.engram_tables = static_cast<double>(m.engram_layers.size()) * m.engram_rows_per_layer * m.engram_row_dim;
  c.engram_proj = m.engram_layers.size() * EngramProjParams(m);
  // An MTP / draft layer: one full block plus the embedding/hidden projections (embed and head shared).
  c.mtp = m.mtp_layers * (per_layer_mean_attention + SharedExpertParams(m) + RouterParams(m) + 2 * D * D);
  c.mtp_routed = m.mtp_layers * m.routed_experts * expert;
  const double moe_layers = m.layers - m.dense_layers;
  c.active = c.attention + c.mhc + c.router + c.dense_ffn + c.shared_experts + moe_layers * m.experts_per_token * expert + c.head +
             c.engram_proj + D /* embedding row */;
  return c;
}

WeightBytes CountWeightBytes(const ModelPreset& m, const Precision& p) {
  const ParamCounts c = CountParams(m);
  WeightBytes b;
  b.attention = c.attention * p.dense_bits / 8;
  b.mhc = c.mhc * kFp32;
  b.router = c.router * kBf16;
  b.dense_ffn = c.dense_ffn * p.dense_bits / 8;
  b.shared_experts = c.shared_experts * p.dense_bits / 8;
  b.routed_experts = c.routed_experts * p.expert_bits / 8;
  b.embed_head = (c.embed + c.head) * kBf16;
  b.engram_tables = c.engram_tables * (1 + 1.0 / 32);  // FP8 rows with one E8M0 scale per 32
  b.engram_proj = c.engram_proj * p.dense_bits / 8;
  b.mtp = c.mtp * p.dense_bits / 8;
  b.mtp_routed = c.mtp_routed * p.expert_bits / 8;
  b.expert_bytes = c.expert_params * p.expert_bits / 8;
  return b;
}

AttentionWork LayerAttentionWork(const ModelPreset& m, int64_t layer, double context, bool prefill,
                                 const Precision& p) {
  AttentionWork w;
  const double H = m.heads;
  if (m.attention == AttentionKind::kMla) {
    w.proj_params = MlaAttentionParams(m, &w.proj_params_split);
    const double attended = m.mla_indexer ? std::min<double>(m.index_topk, context) : context;
    const double latent = m.kv_lora_rank + m.qk_rope_dim;
    if (prefill && !m.mla_indexer) {
      w.core_flops = 2 * H * (m.qk_nope_dim + m.qk_rope_dim + m.v_head_dim) * attended;
    } else {  // absorbed MQA form over the latent (decode; V3.2 sparse prefill too)
      w.core_flops = 2 * H * (latent + m.kv_lora_rank) * attended;
    }
    if (m.mla_indexer) w.indexer_flops = 2.0 * m.index_heads * m.index_dim * context;
    w.indexed_rows = m.mla_indexer ? context : 0;
    w.indexer_bytes = m.mla_indexer ? context * IndexKeyBytes(m) : 0;
    w.kv_read_bytes = attended * MlaEntryBytes(m, p.kv_bits) + w.indexer_bytes;
    w.kernels = 18 + (m.mla_indexer ? 6 : 0);
    return w;
  }
  const V4Layer& v = m.v4_layers[layer];
  w.proj_params = V4AttentionParams(m, v, &w.proj_params_split);
  const double window = std::min<double>(m.window, context + 1);
  const double compressed = CompressedAttended(m, v, context);
  const double attended = window + compressed;
  w.core_flops = 2 * H * (2.0 * m.head_dim) * attended;  // QK and PV over the 512-d K = V head
  if (v.runs_indexer && v.ratio > 0) w.indexed_rows = context / v.ratio;
  w.indexer_flops = 2.0 * m.index_heads * m.index_dim * w.indexed_rows;
  const double entry = EntryBytes(m.head_dim, m.qk_rope_dim, p.kv_bits);
  w.indexer_bytes = v.runs_indexer && v.ratio > 0 ? (context / v.ratio) * IndexKeyBytes(m) : 0;
  w.kv_read_bytes = attended * entry + w.indexer_bytes;
  w.window_flops = 2 * H * (2.0 * m.head_dim) * window;
  w.window_bytes = window * entry;
  // Norms, q/kv projections, rope, window and compressed cache writes, sparse attention, output groups;
  // the compressor and the indexer (projection, scores, top-k) add their own kernels.
  w.kernels = 16 + (v.ratio > 0 ? 4 : 0) + (v.runs_indexer ? 6 : 0);
  w.seq_kernels = 1 + (v.selects_topk ? 1 : 0) + (v.runs_indexer ? 2 : 0);
  return w;
}

CacheBytes LayerCacheBytes(const ModelPreset& m, int64_t layer, const Precision& p) {
  CacheBytes c;
  if (m.attention == AttentionKind::kMla) {
    c.per_token = MlaEntryBytes(m, p.kv_bits) + (m.mla_indexer ? IndexKeyBytes(m) : 0);
    return c;
  }
  const V4Layer& v = m.v4_layers[layer];
  const double entry = EntryBytes(m.head_dim, m.qk_rope_dim, p.kv_bits);
  c.fixed = m.window * entry;
  if (v.ratio > 0 && v.owns_cache) c.per_token += entry / v.ratio;
  if (v.ratio > 0 && v.owns_index_keys) c.per_token += IndexKeyBytes(m) / v.ratio;
  return c;
}

double SequenceCacheBytes(const ModelPreset& m, double tokens, const Precision& p) {
  double total = 0;
  for (int64_t l = 0; l < m.layers; ++l) {
    const CacheBytes c = LayerCacheBytes(m, l, p);
    total += c.per_token * tokens + std::min(c.fixed, c.fixed * tokens / std::max<double>(1, m.window));
  }
  return total;
}

double MeanCacheBytesPerTokenPerLayer(const ModelPreset& m, const Precision& p) {
  double total = 0;
  for (int64_t l = 0; l < m.layers; ++l) total += LayerCacheBytes(m, l, p).per_token;
  return total / m.layers;
}

std::vector<TokenCostRow> PerTokenCosts(const ModelPreset& m, const Precision& p, double context) {
  TokenCostRow proj{"attention projections"}, window{"attention: sliding window"},
      compressed{m.attention == AttentionKind::kMla ? "attention: latent KV (MLA)" : "attention: compressed KV"},
      indexer{"indexer"}, routed{"MoE routed experts (top-k)"}, shared{"MoE shared experts"}, router{"router"},
      dense{"dense FFN"}, mhc{m.hc_mult > 1 ? "mHC" : "residual + norms"}, engram{"Engram"}, head{"head"};
  const double expert_bytes = 3.0 * m.hidden * m.expert_inter * p.expert_bits / 8;
  for (int64_t l = 0; l < m.layers; ++l) {
    const AttentionWork w = LayerAttentionWork(m, l, context, false, p);
    proj.flops += 2 * w.proj_params;
    proj.bytes += w.proj_params * p.dense_bits / 8;
    window.flops += w.window_flops;
    window.bytes += w.window_bytes;
    compressed.flops += w.core_flops - w.window_flops;
    compressed.bytes += w.kv_read_bytes - w.window_bytes - w.indexer_bytes;
    indexer.flops += w.indexer_flops;
    indexer.bytes += w.indexer_bytes;
    mhc.flops += MhcFlopsPerToken(m);
    mhc.bytes += ResidualBytesPerToken(m);
    if (IsMoeLayer(m, l)) {
      routed.flops += m.experts_per_token * ExpertFlopsPerToken(m);
      routed.bytes += m.experts_per_token * expert_bytes;
      shared.flops += 2 * SharedExpertParams(m);
      shared.bytes += SharedExpertParams(m) * p.dense_bits / 8;
      router.flops += 2 * RouterParams(m);
      router.bytes += RouterParams(m) * kBf16;
    } else {
      dense.flops += 2 * DenseFfnParams(m);
      dense.bytes += DenseFfnParams(m) * p.dense_bits / 8;
    }
    if (std::find(m.engram_layers.begin(), m.engram_layers.end(), l) != m.engram_layers.end()) {
      engram.flops += 2 * EngramProjParams(m);
      engram.bytes += EngramProjParams(m) * p.dense_bits / 8 + EngramGatherBytesPerToken(m);
    }
  }
  head.flops = 2.0 * m.vocab * m.hidden;
  head.bytes = static_cast<double>(m.vocab) * m.hidden * kBf16;
  std::vector<TokenCostRow> out;
  for (const TokenCostRow& r : {proj, window, compressed, indexer, routed, shared, router, dense, mhc, engram, head})
    if (r.flops > 0 || r.bytes > 0) out.push_back(r);
  return out;
}

std::vector<ComponentRow> ComponentTable(const ModelPreset& m, const Precision& p) {
  const ParamCounts c = CountParams(m);
  const WeightBytes b = CountWeightBytes(m, p);
  std::vector<ComponentRow> rows = {
      {"attention (incl. compressor, indexer)", c.attention, b.attention},
      {"mHC mixing", c.mhc, b.mhc},
      {"router", c.router, b.router},
      {"dense FFN", c.dense_ffn, b.dense_ffn},
      {"shared experts", c.shared_experts, b.shared_experts},
      {"routed experts", c.routed_experts, b.routed_experts},
      {"embedding + head", c.embed + c.head, b.embed_head},
      {"Engram tables (host)", c.engram_tables, b.engram_tables},
      {"Engram projections", c.engram_proj, b.engram_proj},
      {"MTP / draft layers", c.mtp + c.mtp_routed, b.mtp + b.mtp_routed},
  };
  std::vector<ComponentRow> out;
  for (auto& r : rows)
    if (r.params > 0) out.push_back(r);
  return out;
}

}  // namespace dsv4::cluster
