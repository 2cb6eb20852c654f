// Parameter, byte and FLOP counts of a ModelPreset: what each component weighs at given precisions,
// and what one token costs in each operator at a given context length.
//
// Units: parameters are counts, bytes are bytes, FLOPs count a multiply-add as 2. Context lengths are
// tokens. Nothing here knows about devices or layouts (step_model.h applies those).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "cluster/model_preset.h"

namespace dsv4::cluster {

// Storage precisions in bits per value (may be fractional: 2.5 for 2-bit quants with scales).
struct Precision {
  double dense_bits = 8;   // attention, dense FFN, shared experts, Engram projection
  double expert_bits = 4;  // routed experts (scales included in the bit count)
  double kv_bits = 8;      // KV and compressed caches
};

// Parameter counts by component (whole model; routed experts counted over all experts).
struct ParamCounts {
  double attention = 0;             // projections, compressors, indexers, norms, sinks (all main layers)
  double attention_head_split = 0;  // the part of `attention` split by TP (per-head weights)
  double mhc = 0;                   // hyper-connection mixing weights (FP32)
  double router = 0;                // gate weights (BF16)
  double dense_ffn = 0;             // leading dense FFN layers
  double shared_experts = 0;
  double routed_experts = 0;  // all routed experts of all main layers
  double embed = 0;
  double head = 0;
  double engram_tables = 0;  // rows x dim, FP8 in host memory
  double engram_proj = 0;
  double mtp = 0;            // MTP / draft layers: attention + shared expert + projections
  double mtp_routed = 0;     // their routed experts
  double expert_params = 0;  // one routed expert
  double Total() const;
  // Parameters touched per token (top-k routed experts, no Engram tables).
  double active = 0;
};

// Bytes of each component at a precision (weights only).
struct WeightBytes {
  double attention = 0, mhc = 0, router = 0, dense_ffn = 0, shared_experts = 0, routed_experts = 0;
  double embed_head = 0, engram_tables = 0, engram_proj = 0, mtp = 0, mtp_routed = 0;
  double expert_bytes = 0;  // one routed expert
  double Total() const;
};

ParamCounts CountParams(const ModelPreset& m);
WeightBytes CountWeightBytes(const ModelPreset& m, const Precision& p);

// One attention layer's per-token work at a context position.
struct AttentionWork {
  double proj_params = 0;        // projection parameters used by every token (GEMM)
  double proj_params_split = 0;  // the per-head part of those, split by TP
  double core_flops = 0;         // QK and PV FLOPs for one new token
  double indexer_flops = 0;      // indexer scoring FLOPs for one new token
  double kv_read_bytes = 0;      // cache bytes one decode step of one sequence reads
  double kernels = 0;            // kernel launches of this layer's attention
  // Of those, the ones dsv4's CPU backend runs once per sequence, each sequence on its own cache
  // (sparse attention; the picks and the indexer's scores and top-k where the layer has them).
  double seq_kernels = 0;
  // The part of core_flops / kv_read_bytes spent on the sliding window (V4); the rest is the
  // compressed cache (V4) or the whole latent cache (MLA, counted as window = 0).
  double window_flops = 0;
  double window_bytes = 0;
  double indexer_bytes = 0;  // indexer keys read (part of kv_read_bytes)
  double indexed_rows = 0;   // rows the indexer scores for one new token (compressed rows; MLA: tokens)
};

// Cache bytes one sequence holds per layer: `per_token` grows with the context, `fixed` does not
// (V4's sliding-window ring).
struct CacheBytes {
  double per_token = 0;
  double fixed = 0;
};

// Per-layer attention work for a token that sees `context` earlier tokens (prefill: the naive MLA form;
// decode: the absorbed form).
AttentionWork LayerAttentionWork(const ModelPreset& m, int64_t layer, double context, bool prefill, const Precision& p);
CacheBytes LayerCacheBytes(const ModelPreset& m, int64_t layer, const Precision& p);
// Sum over layers: bytes a sequence of `tokens` tokens keeps in cache.
double SequenceCacheBytes(const ModelPreset& m, double tokens, const Precision& p);
// Cache bytes per token per layer, averaged over layers (for reports).
double MeanCacheBytesPerTokenPerLayer(const ModelPreset& m, const Precision& p);

// Per-token FLOPs of the non-attention parts of one layer.
double ExpertFlopsPerToken(const ModelPreset& m);        // one routed expert, one token
double DenseFfnParams(const ModelPreset& m);             // one dense FFN layer
double SharedExpertParams(const ModelPreset& m);         // one layer's shared experts
double RouterParams(const ModelPreset& m);               // one layer's gate
double MhcFlopsPerToken(const ModelPreset& m);           // one layer, both sub-layers
double ResidualBytesPerToken(const ModelPreset& m);      // one layer: stream reads and writes (BF16)
double EngramGatherBytesPerToken(const ModelPreset& m);  // one Engram layer
double EngramProjParams(const ModelPreset& m);           // one Engram layer
bool IsMoeLayer(const ModelPreset& m, int64_t layer);

// What one decoded token costs per component at a context length, summed over layers, at batch 1:
// FLOPs and the bytes moved (weights streamed plus cache read).
struct TokenCostRow {
  std::string component;
  double flops = 0;
  double bytes = 0;
};
std::vector<TokenCostRow> PerTokenCosts(const ModelPreset& m, const Precision& p, double context);

// A breakdown for reports: rows of (component, parameters, bytes) that sum to the totals.
struct ComponentRow {
  std::string component;
  double params = 0;
  double bytes = 0;
};
std::vector<ComponentRow> ComponentTable(const ModelPreset& m, const Precision& p);

}  // namespace dsv4::cluster
