#include "cluster/step_model.h"

#include <algorithm>
#include <cmath>
#include <map>

namespace dsv4::cluster {
namespace {

constexpr double kGB = 1e9;
constexpr double kUs = 1e-6;

// EP load spread across devices, as a coefficient of variation of per-device routed load.
// Without redundant experts SGLang measured a balancedness (mean/max) of ~0.4-0.5 at EP72 decode
// (LMSYS large-scale EP blog); with EPLB and redundant experts ~0.8. cv = (max/mean - 1) / sqrt(2 ln ep).
constexpr double kCvNoEplb = 0.5;
constexpr double kCvEplb = 0.08;
// DeepEP normal (prefill) kernels occupy ~20 of 132 SMs while they run (DeepEP README).
constexpr double kPrefillCommSmPenalty = 1.1;
// GEMMs on weights whose bit width the tensor cores do not take (2.5, 4.5, ...) dequantize tiles to FP16
// first: they run at the FP16 rate at this share of the usual efficiency (llama.cpp MMQ/dequant kernels).
constexpr double kDequantPenalty = 0.6;
// A hybrid step synchronises host and device once per MoE layer (PCIe round trip, thread wake-up).
constexpr double kHostSyncUs = 30;
// Fraction of link peak that DeepEP-style all-to-all reaches: NVLink ~153 of 200 GB/s on H800,
// RDMA ~43-46 of 50 GB/s (DeepEP README).
constexpr double kScaleUpEff = 0.77;
constexpr double kScaleOutEff = 0.85;
// Engines without DeepEP-style kernels run expert dispatch/combine as NCCL all-to-all-v: [estimate]
// about half the bandwidth (pplx-kernels and DeepEP READMEs compare against NCCL) and two more
// latency steps per call (a size exchange before the payload).
constexpr double kNcclAllToAllEff = 0.5;


bool NativeBits(double bits) { return bits == 4 || bits == 8 || bits == 16 || bits == 32; }

// Bytes per token per layer of attention activations written and read between kernels (all heads).
double AttentionActivationBytes(const ModelPreset& m, bool prefill) {
  const double H = m.heads;
  double elems;
  if (m.attention == AttentionKind::kMla) {
    elems = prefill ? H * (m.qk_nope_dim + m.qk_rope_dim) + H * (m.qk_nope_dim + m.v_head_dim) + H * m.v_head_dim
                    : H * (m.kv_lora_rank + m.qk_rope_dim) + H * (m.kv_lora_rank + m.v_head_dim);
  } else {
    elems = 2 * H * m.head_dim;  // q and the attention output, 512 per head each
  }
  return elems * 2 /* BF16 */ * 2 /* write + read */;
}

}  // namespace

struct StepModel::Accum {
  std::vector<OpTime> ops;  // a dozen distinct operators: a linear search beats a map of strings
  OpTime& Op(const char* name) {
    for (OpTime& op : ops)
      if (op.name == name) return op;
    ops.push_back(OpTime{name, 0, 0, 0, ""});
    return ops.back();
  }
  double host_s = 0;
  double engram_gather_s = 0;
  // Device "cpu" with a measured product floor: the fixed time each kernel of the current pass adds
  // (seconds). 0 elsewhere: GPU launches overlap the work, and only bound an operator from below.
  double serial_floor_s = 0;
  double by_bound[5] = {0, 0, 0, 0, 0};  // compute, memory, launch, host, host link (device time but [3])
  double Device() const { return by_bound[0] + by_bound[1] + by_bound[2] + by_bound[4]; }
};

StepModel::StepModel(const Resolved& r, const Profile* profile, bool speculative) : r_(r), profile_(profile) {
  Precision p = r_.s.precision;
  wb_ = CountWeightBytes(r_.model, p);
  pc_ = CountParams(r_.model);
  speculative_ = speculative;
  if (speculative_) {
    drafts_ = r_.s.speculative_tokens > 0 ? r_.s.speculative_tokens : (r_.s.speculative_accept >= 0 ? 1 : 3);
    // Unset: SGLang reported MTP acceptance rates of 0.57 to 0.70 for V4 (PyTorch blog, "Serving
    // DeepSeek-V4 on GB300 with SGLang").
    accept_ = r_.s.speculative_accept >= 0 ? r_.s.speculative_accept : 0.6;
  }
  // The weights, one request's cache and the activations of a small step must fit. A single device
  // whose weights do not fit spills routed experts to host memory (llama.cpp / ds4 style) so that a
  // prefill chunk of the engine's size (4096 tokens unless the scenario sets a budget) also fits.
  const double one_request = SequenceCacheBytes(r_.model, r_.s.input_tokens + r_.s.output_tokens, p) * r_.s.tp;
  const bool can_spill = r_.world == 1 && !r_.s.experts_on_host && !r_.device.IsHostOnly();
  const double chunk = can_spill ? (r_.s.token_budget > 0 ? r_.s.token_budget : 4096) : 512;
  const MemoryBreakdown m = Memory(one_request, chunk / r_.s.tp);
  if (m.free < 0) {
    if (can_spill && m.weights_experts > 0 && r_.host_gb > -m.free) {
      spill_fraction_ = std::min(1.0, (-m.free + 1.0) / m.weights_experts);
    } else {
      fits_ = false;
    }
  }
}

double StepModel::TokensPerDecodeStep() const {
  if (!speculative_ || drafts_ <= 0) return 1;
  if (accept_ >= 1) return drafts_ + 1;
  return (1 - std::pow(accept_, drafts_ + 1)) / (1 - accept_);
}

MemoryBreakdown StepModel::Memory(double kv_bytes, double step_tokens) const {
  MemoryBreakdown m;
  const Device& d = r_.device;
  const double tp = r_.s.tp;
  const double pp = r_.pp;  // each pipeline stage holds 1/pp of the layers (and of every sequence's cache)
  m.total = d.IsHostOnly() ? r_.host_gb : d.memory_gb;
  const double split = pc_.attention_head_split / pc_.attention;
  const double attention = wb_.attention * (1 - split + split / tp) + wb_.mhc + wb_.router;
  m.weights_attention = attention / pp / kGB;
  m.weights_dense = (wb_.dense_ffn + wb_.shared_experts) / pp / kGB;
  const double slots = r_.routed_experts + r_.s.redundant_experts;
  const double layers_moe = r_.model.layers - r_.model.dense_layers;
  // The fullest device holds ceil(slots / ep) experts per layer.
  const double experts_dev = std::ceil(slots / r_.ep) * std::ceil(layers_moe / pp) * wb_.expert_bytes / kGB;
  if (r_.s.experts_on_host && !d.IsHostOnly()) {
    m.experts_on_host = experts_dev;
  } else {
    m.weights_experts = experts_dev * (1 - spill_fraction_);
    m.experts_on_host = experts_dev * spill_fraction_;
  }
  m.spilled_expert_fraction = spill_fraction_;
  m.weights_embed_head = wb_.embed_head / tp / std::min(pp, 2.0) / kGB;  // embedding on the first stage, head on the last
  // MTP layers are resident with speculation on, and on single-device engines that map the whole
  // checkpoint file (llama.cpp, ds4); datacenter engines skip them otherwise.
  if (speculative_ || (r_.world == 1 && d.device_class != "datacenter")) {
    const double mtp_experts = r_.model.mtp_layers * slots / r_.ep * wb_.expert_bytes;
    m.weights_mtp = (wb_.mtp + (r_.s.experts_on_host ? 0 : mtp_experts)) / kGB;
  }
  m.engram = wb_.engram_proj / kGB;
  m.engram_tables_host = wb_.engram_tables / std::max(1, r_.world) / kGB;
  m.kv_cache = kv_bytes / pp / kGB;
  const double D = r_.model.hidden, hc = std::max<int64_t>(1, r_.model.hc_mult);
  const double per_token = D * 2 * (6 * hc + 10) + r_.model.experts_per_token * (2 * D + 2.0 * r_.model.expert_inter) * 2;
  // EP communication buffers: DeepEP-style buffers hold every received token (about 1 GB per device).
  const double comm = r_.ep > 1 ? 1.0 : 0.0;
  m.activations = step_tokens * per_token / kGB + comm;
  if (d.IsHostOnly()) {
    m.reserve = 4;
  } else if (d.device_class == "datacenter") {
    m.reserve = 3;  // CUDA context, cuBLAS/DeepGEMM workspaces, allocator slack
  } else if (d.device_class == "apple") {
    m.reserve = 1;
  } else {
    m.reserve = 1.5;
  }
  if (d.IsHostOnly()) m.experts_on_host = 0;  // everything is host memory already, counted above
  m.free = m.total - (m.Weights() + m.engram + m.kv_cache + m.activations + m.reserve);
  return m;
}

double StepModel::GemmRate(double bits, double tokens, bool grouped) const {
  const Device& d = r_.device;
  if (profile_ != nullptr) {
    const RateCurve& c = grouped && !profile_->grouped_gemm.empty() ? profile_->grouped_gemm
                         : bits <= 8 && !profile_->gemm_fp8.empty() ? profile_->gemm_fp8
                                                                    : profile_->gemm_bf16;
    // The products the step model prices reduce over the hidden size (projections out of the
    // residual stream, the head, the experts' gate/up): the measured rate at that K.
    if (!c.empty()) return c.At(tokens, static_cast<double>(r_.model.hidden));
  }
  if (d.IsHostOnly()) return r_.host_gflops * 1e-3;
  // An engine with no kernels for this device (ds4's generic CUDA build) multiplies on the CUDA cores.
  if (r_.untuned_device && d.fp32_tflops > 0)
    return d.fp32_tflops * r_.eff.gemm * (NativeBits(bits) ? 1.0 : kDequantPenalty);
  if (!NativeBits(bits)) return d.bf16_tflops * r_.eff.gemm * kDequantPenalty;
  // 4-bit weights on a device without FP4 tensor cores: converted to FP8 (SGLang, TensorRT-LLM) or
  // dequantized tile by tile to BF16 (Marlin-style W4A16: vLLM, llama.cpp), per the engine.
  if (bits <= 4 && d.fp4_tflops <= d.fp8_tflops && r_.engine.fp4_without_fp4 == "bf16")
    return d.bf16_tflops * r_.eff.gemm * kDequantPenalty;
  // Parts whose FP4 tensor cores no engine drives for grouped MoE GEMMs yet (GeForce and GB10
  // Blackwell, SM12x): the experts fall back to W4A16 kernels.
  if (bits <= 4 && grouped && !d.fp4_moe_kernels) return d.bf16_tflops * r_.eff.gemm * kDequantPenalty;
  return d.PeakTflops(bits) * r_.eff.gemm;
}

void StepModel::AddOp(Accum& acc, const char* name, double flops, double bytes, double kernels, double tflops,
                      double flop_eff, bool on_host, double mem_eff, double host_gbps) const {
  double bw, floor_us;
  if (on_host || r_.device.IsHostOnly()) {
    bw = host_gbps > 0 ? host_gbps : profile_ && profile_->host_memory_gbps > 0 ? profile_->host_memory_gbps : r_.host_gbps;
    floor_us = on_host ? 1 : profile_ && profile_->kernel_floor_us > 0 ? profile_->kernel_floor_us : r_.eff.kernel_floor_us;
  } else {
    bw = profile_ && profile_->memory_gbps > 0 ? profile_->memory_gbps
                                               : r_.device.memory_gbps * (mem_eff > 0 ? mem_eff : r_.eff.memory);
    floor_us = profile_ && profile_->kernel_floor_us > 0 ? profile_->kernel_floor_us : r_.eff.kernel_floor_us;
  }
  const double t_flops = tflops > 0 ? flops / (tflops * flop_eff * 1e12) : 0;
  const double t_bytes = bytes / (bw * kGB);
  const double t_launch = kernels * floor_us * kUs;
  double t = std::max({t_flops, t_bytes, t_launch});
  int bound = t == t_flops ? 0 : (t == t_bytes ? 1 : 2);
  if (acc.serial_floor_s > 0 && !on_host) t = std::max(t_flops, t_bytes) + kernels * acc.serial_floor_s;
  if (on_host) {
    acc.host_s += t;
    bound = 3;
  }
  OpTime& op = acc.Op(name);
  op.seconds += t;
  op.flops += flops;
  op.bytes += bytes;
  static const char* kBound[] = {"compute", "memory", "launch", "host"};
  op.bound = kBound[bound];
  acc.by_bound[bound] += t;
}

double StepModel::Imbalance(double pairs_per_device) const {
  if (r_.ep <= 1) return 1;
  // EPLB stated on without a redundant-expert count: balanced as with ep/4 redundant slots (the
  // count SGLang's large-scale EP deployments used); their memory is not charged.
  const double slots = r_.s.eplb == 1 ? std::max<double>(r_.s.redundant_experts, r_.ep / 4.0)
                       : r_.s.eplb == 0 ? 0.0
                                        : r_.s.redundant_experts;
  const double redundancy = std::min(1.0, slots / std::max(1.0, r_.ep / 4.0));
  const double cv = kCvNoEplb - (kCvNoEplb - kCvEplb) * redundancy;
  const double noise = 1.0 / std::max(pairs_per_device, 1e-9);
  const double imb = 1 + std::sqrt(cv * cv + noise) * std::sqrt(2 * std::log(r_.ep));
  return std::min(imb, static_cast<double>(r_.ep));
}

// What one pass over a layer works on: the group's tokens (or, for a draft pass, one token per decoding
// sequence) and the rates of this device.
struct StepModel::Pass {
  const std::vector<BatchPart>* parts = nullptr;
  double fraction = 1;  // this micro-batch's share of every part
  double mtp_seqs = 0;  // > 0: a draft pass of one MTP layer
  double g_tokens = 0;  // tokens of this attention group in the pass
  double d_tokens = 0;  // the group's tokens per device (TP ranks split them for the FFN)
  double e_tokens = 0;  // tokens per device the routed experts see (other DP groups included)
  bool prefill = false;  // the pass carries prefill chunks (not a draft pass)
  double dense_rate = 0, bf16_rate = 0, attn_peak = 0;  // TFLOP/s before efficiency
};

void StepModel::AttentionOps(Accum& acc, int64_t l, const Pass& s) const {
  const ModelPreset& m = r_.model;
  const Precision& p = r_.s.precision;
  const Efficiency& e = r_.eff;
  const double tp = r_.s.tp, D = m.hidden;
  const bool host_only = r_.device.IsHostOnly();
  const bool draft = s.mtp_seqs > 0;
  const AttentionWork w0 = LayerAttentionWork(m, l, 0, false, p);
  const double proj = w0.proj_params - w0.proj_params_split + w0.proj_params_split / tp;
  // Activations that travel between the attention kernels through memory (BF16 q and output heads,
  // MLA's up-projected k/v in prefill, quantized inputs) are written and read by the projection
  // GEMMs: their bytes count with the weights in the projections' roofline (hidden when compute-bound).
  double act_bytes = 0;
  for (const BatchPart& b : *s.parts) {
    const double seqs = b.seqs * s.fraction * (draft && b.prefill ? 0 : 1);
    if (seqs > 0)
      act_bytes += seqs * (draft ? 1 : b.new_tokens) * (AttentionActivationBytes(m, b.prefill && !draft) / tp + D * 6);
  }
  AddOp(acc, "attention.proj", 2 * proj * s.g_tokens, proj * p.dense_bits / 8 + s.g_tokens * D * 2 * 4 + act_bytes, 6,
        s.dense_rate, 1, false);
  for (const BatchPart& b : *s.parts) {
    const double seqs = b.seqs * s.fraction * (draft && b.prefill ? 0 : 1);
    if (seqs <= 0) continue;
    const double tokens = seqs * (draft ? 1 : b.new_tokens);
    const bool prefill = b.prefill && !draft;
    const double ctx = b.context + (prefill ? b.new_tokens / 2 : 0);
    const AttentionWork w = LayerAttentionWork(m, l, ctx, prefill, p);
    const bool measured = prefill && profile_ != nullptr && !profile_->attention_prefill.empty();
    // Attention kernels (FlashMLA, FlashAttention) reach the class's attention efficiency in prefill
    // and in compute-bound decode alike; GEMM efficiency is a different kernel family's.
    const double flop_eff = host_only ? 1 : e.attention;
    const char* core = prefill ? "attention.core (prefill)" : "attention.core (decode)";
    AddOp(acc, core, w.core_flops * tokens / tp, w.kv_read_bytes * seqs, w.kernels - 6,
          measured ? profile_->attention_prefill.At(ctx) : s.attn_peak, measured ? 1 : flop_eff, false, e.kv_memory);
    // On device "cpu" (dsv4's CPU backend) attention's per-sequence kernels run once for each
    // sequence, on its own cache: the part's other sequences pay their fixed time again, that of a
    // product of one sequence's tokens. (v4-tiny at batch 16 on a 2-core Xeon: 11 such kernels a
    // step at 1.5 us, 15 more times, 0.25 ms of the 1.9 ms the step model had missed out of 14.1.)
    if (host_only && profile_ != nullptr && !profile_->product_floor_us.empty() && seqs > 1) {
      const double t = (seqs - 1) * w.seq_kernels * profile_->product_floor_us.At(tokens / seqs) * kUs;
      OpTime& op = acc.Op(core);
      op.seconds += t;
      acc.by_bound[2] += t;
    }
    if (w.indexer_flops > 0)
      AddOp(acc, "attention.indexer", w.indexer_flops * tokens, 0, 0, host_only ? s.attn_peak : r_.device.PeakTflops(8),
            flop_eff, false);
    // An engine that sorts every visible row's score to pick the top-k, one thread group per token,
    // pays a time per row that a larger device does not shorten: the sort is the compute of one
    // group, and the groups of a batch's tokens run side by side. Prefill sorts many tokens at once
    // across the device and is not charged.
    if (!prefill && w.indexed_rows > 0 && r_.engine.indexer_topk == "sort") {
      const double t = w.indexed_rows * r_.tuning.select_sort_ns * 1e-9;
      OpTime& op = acc.Op("attention.select (sort)");
      op.seconds += t;
      op.bound = "compute";
      acc.by_bound[0] += t;
    }
  }
}

void StepModel::FfnOps(Accum& acc, int64_t l, const Pass& s) const {
  const ModelPreset& m = r_.model;
  const Precision& p = r_.s.precision;
  const double D = m.hidden, k = m.experts_per_token;
  if (!IsMoeLayer(m, l)) {
    const double params = DenseFfnParams(m);
    AddOp(acc, "dense FFN", 2 * params * s.d_tokens, params * p.dense_bits / 8, 3, s.dense_rate, 1, false);
    return;
  }
  AddOp(acc, "moe.router", 2 * RouterParams(m) * s.d_tokens, RouterParams(m) * 2, 3, s.bf16_rate, 1, false);
  const double shared = SharedExpertParams(m);
  if (shared > 0)
    AddOp(acc, "moe.shared", 2 * shared * s.d_tokens, shared * p.dense_bits / 8, 3, s.dense_rate, 1, false);
  // The busiest device's (token, expert) pairs, and the experts its tokens touch.
  const double pairs = s.e_tokens * k * Imbalance(s.e_tokens * k);
  const double local_slots = static_cast<double>(r_.routed_experts + r_.s.redundant_experts) / r_.ep;
  const double tokens_ep = s.e_tokens * r_.ep;
  const double used = 1 - std::pow(std::max(0.0, 1 - k / std::max<double>(1, r_.routed_experts)), tokens_ep);
  const double act_mean = local_slots * used;
  const double act_max =
      r_.ep > 1 ? std::min(local_slots, act_mean + std::sqrt(2 * act_mean * std::log(r_.ep))) : act_mean;
  const double routed_flops = pairs * ExpertFlopsPerToken(m);
  const double routed_act = pairs * (2 * D + 3.0 * m.expert_inter) * 2;
  const double on_host = (r_.s.experts_on_host && !r_.device.IsHostOnly()) ? 1 : spill_fraction_;
  const double expert_rate = GemmRate(p.expert_bits, pairs / std::max(1.0, act_max), true);
  if (on_host < 1) {
    // Permuted hidden states, gate/up outputs, the quantized activation and the down outputs pass
    // through memory between the grouped-GEMM kernels: they count with the expert weights in the
    // GEMMs' roofline. A fused MoE kernel (MegaMoE) keeps them on chip.
    const double on_device = 1 - on_host;
    const double permuted = r_.fused_moe ? 0 : pairs * (4 * D + 5.0 * m.expert_inter) * 2;
    AddOp(acc, "moe.routed", routed_flops * on_device, (act_max * wb_.expert_bytes + routed_act + permuted) * on_device,
          r_.fused_moe ? 1 : 4, expert_rate, 1, false);
  }
  if (on_host > 0) {
    const double host_rate = profile_ && profile_->host_gflops > 0 ? profile_->host_gflops * 1e-3 : r_.host_gflops * 1e-3;
    const double host_bw = profile_ && profile_->host_memory_gbps > 0 ? profile_->host_memory_gbps : r_.host_gbps;
    const double bytes = act_max * wb_.expert_bytes * on_host, flops = routed_flops * on_host;
    const double host_s = std::max(flops / (host_rate * 1e12), bytes / (host_bw * kGB));
    // KTransformers-style layerwise prefill: a long enough chunk streams the layer's host experts to
    // the device (overlapped with the previous layer's GEMMs) and runs them there. The engine takes
    // that path when it is the faster one.
    const bool can_stream = s.prefill && r_.gpu_prefill_streaming && !r_.device.IsHostOnly() &&
                            r_.host_link_gbps > 0 && s.g_tokens >= r_.engine.gpu_prefill_tokens;
    const double link_s = can_stream ? bytes / (r_.host_link_gbps * r_.tuning.pcie_stream * kGB) : 0;
    const double gpu_s = can_stream ? flops / (expert_rate * 1e12) : 0;
    if (can_stream && std::max(link_s, gpu_s) < host_s) {
      OpTime& op = acc.Op("moe.routed (streamed to device)");
      op.seconds += std::max(link_s, gpu_s);
      op.flops += flops;
      op.bytes += bytes;
      op.bound = link_s >= gpu_s ? "host link" : "compute";
      acc.by_bound[link_s >= gpu_s ? 4 : 0] += std::max(link_s, gpu_s);
    } else {
      AddOp(acc, "moe.routed (host)", flops, bytes, 0, host_rate, 1, true, 0, host_bw);
      if (!r_.device.IsHostOnly()) acc.host_s += kHostSyncUs * kUs, acc.by_bound[3] += kHostSyncUs * kUs;
    }
  }
}

// Engram: the projection runs on the device; the row gathers stream from host memory, prefetched ahead.
void StepModel::EngramOps(Accum& acc, int64_t l, const Pass& s) const {
  const ModelPreset& m = r_.model;
  if (std::find(m.engram_layers.begin(), m.engram_layers.end(), l) == m.engram_layers.end()) return;
  const double params = EngramProjParams(m);
  AddOp(acc, "engram", 2 * params * s.g_tokens, params * r_.s.precision.dense_bits / 8, 4, s.dense_rate, 1, false);
  const double link = r_.device.unified_memory ? r_.host_gbps : (r_.host_link_gbps > 0 ? r_.host_link_gbps : 25);
  acc.engram_gather_s += s.g_tokens * EngramGatherBytesPerToken(m) / (link * kGB * 0.5);
}

double StepModel::ComputeSeconds(const std::vector<BatchPart>& parts, double fraction, double moe_scale,
                                 Accum& acc) const {
  const ModelPreset& m = r_.model;
  const Precision& p = r_.s.precision;
  const double tp = r_.s.tp, D = m.hidden;
  double group_tokens = 0, logit_tokens = 0, decode_seqs = 0;
  for (const BatchPart& b : parts) {
    group_tokens += b.seqs * b.new_tokens * fraction;
    logit_tokens += b.seqs * (b.prefill ? 1 : b.new_tokens) * fraction;
    if (!b.prefill) decode_seqs += b.seqs * fraction;
  }
  if (group_tokens <= 0) return 0;
  const double attn_bits = (p.kv_bits <= 8 && r_.device.fp8_tflops > r_.device.bf16_tflops) ? 8 : 16;
  Pass pass;
  pass.parts = &parts;
  pass.fraction = fraction;
  for (const BatchPart& b : parts) pass.prefill |= b.prefill;
  pass.dense_rate = GemmRate(p.dense_bits, group_tokens, false);
  pass.bf16_rate = GemmRate(16, group_tokens, false);
  pass.attn_peak = r_.device.IsHostOnly() ? GemmRate(16, group_tokens, false) : r_.device.PeakTflops(attn_bits);
  if (r_.device.IsHostOnly() && profile_ != nullptr && !profile_->product_floor_us.empty())
    acc.serial_floor_s = profile_->product_floor_us.At(group_tokens) * kUs;
  const double before = acc.Device();
  // One layer's operators; a pass with mtp_seqs > 0 is a draft pass (one token per decoding sequence).
  const bool prefill = pass.prefill;
  auto layer = [&](int64_t l, double mtp_seqs) {
    pass.mtp_seqs = mtp_seqs;
    pass.prefill = prefill && mtp_seqs <= 0;
    pass.g_tokens = mtp_seqs > 0 ? mtp_seqs : group_tokens;
    pass.d_tokens = pass.g_tokens / tp;
    pass.e_tokens = pass.d_tokens * moe_scale;
    AddOp(acc, "residual/mHC", MhcFlopsPerToken(m) * pass.g_tokens, ResidualBytesPerToken(m) * pass.g_tokens,
          m.hc_mult > 1 ? 8 : 2, pass.bf16_rate, 1, false);
    AttentionOps(acc, l, pass);
    FfnOps(acc, l, pass);
    EngramOps(acc, l, pass);
  };
  for (int64_t l = 0; l < m.layers; ++l) layer(l, 0);
  // Draft passes of speculative decoding: one MTP layer and head per draft token per decoding sequence.
  const int drafts = speculative_ && decode_seqs > 0 ? drafts_ : 0;
  for (int i = 0; i < drafts; ++i) {
    layer(m.layers - 1, decode_seqs);
    AddOp(acc, "mtp.head", 2.0 * m.vocab * D * decode_seqs / tp, m.vocab * D * 2.0 / tp, 2, pass.bf16_rate, 1, false);
  }
  AddOp(acc, "head", 2.0 * m.vocab * D * logit_tokens / tp, m.vocab * D * 2.0 / tp + logit_tokens * m.vocab * 4 / tp, 4,
        pass.bf16_rate, 1, false);
  // One more pass over every logit row, whole after a vocab-parallel head's gather: the runtime's
  // finite check, as any engine's sampler reads them. On a CPU it does not hide behind the head and
  // is 3-5% of a small model's step at batch 16. On a GPU it is microseconds at device bandwidth,
  // below what the fitted efficiencies resolve, and is left out.
  if (r_.device.IsHostOnly()) AddOp(acc, "logits pass", 0, logit_tokens * m.vocab * 4, 1, 0, 1, false);
  acc.serial_floor_s = 0;
  return acc.Device() - before;
}

Link StepModel::DeviceLink() const {
  Link l = r_.scale_up;
  // Without peer-to-peer (GeForce cards) every transfer is a device-to-host copy and a host-to-device
  // copy through host memory: half the bandwidth and the host-staged step latency.
  if (!r_.p2p && l.host_staged_latency_us > 0) {
    l.gbps /= 2;
    l.latency_us = l.host_staged_latency_us;
  }
  return l;
}

double StepModel::EpAllToAll(double tokens_dev, bool prefill) const {
  const int ep = r_.ep;
  if (ep <= 1 || tokens_dev <= 0) return 0;
  const double k = r_.model.experts_per_token, D = r_.model.hidden;
  // Decode (low-latency kernels) sends one copy per routed expert; prefill (normal kernels) one per
  // destination device, and across nodes one per destination node.
  const double copies = prefill ? ep * (1 - std::pow(1 - 1.0 / ep, k)) : k;
  const double remote = copies * (ep - 1.0) / ep;
  const double per_node = std::min(ep, r_.s.devices_per_node);
  const double intra_share = ep > 1 ? (per_node - 1) / (ep - 1.0) : 1;
  double intra = remote * intra_share, inter = remote - intra;
  const double nodes = ep / per_node;
  if (prefill && nodes > 1) inter = std::min(inter, nodes * (1 - std::pow(1 - 1 / nodes, k)) * (nodes - 1) / nodes);
  const bool fp8 = r_.device.fp8_tflops > r_.device.bf16_tflops;
  const double dispatch = fp8 ? D + D / 128 * 4 : D * 2;
  const double combine = D * 2;
  const double bytes_intra = tokens_dev * intra * (dispatch + combine);
  const double bytes_inter = tokens_dev * inter * (dispatch + combine);
  const Link up = DeviceLink();
  const bool nccl = r_.engine.ep_all_to_all == "nccl";
  double bw_intra = up.gbps * (nccl ? kNcclAllToAllEff : kScaleUpEff);
  double bw_inter = r_.scale_out.gbps * (nccl ? kNcclAllToAllEff : kScaleOutEff);
  double lat = (inter > 0 ? r_.scale_out.latency_us + 10 : up.latency_us + 5) * (nccl ? 3 : 1);
  if (profile_ != nullptr) {
    if (profile_->all_to_all_intra_gbps > 0) bw_intra = profile_->all_to_all_intra_gbps;
    if (profile_->all_to_all_inter_gbps > 0) bw_inter = profile_->all_to_all_inter_gbps;
    if (profile_->all_to_all_latency_us > 0) lat = profile_->all_to_all_latency_us;
  }
  double t = 0;
  if (bytes_intra > 0) t = std::max(t, bw_intra > 0 ? bytes_intra / (bw_intra * kGB) : 1e9);
  if (bytes_inter > 0) t = std::max(t, bw_inter > 0 ? bytes_inter / (bw_inter * kGB) : 1e9);
  return t + 2 * lat * kUs;
}

double StepModel::TpCollectives(double group_tokens) const {
  const int tp = r_.s.tp;
  if (tp <= 1 || group_tokens <= 0) return 0;
  const double bytes = group_tokens * r_.model.hidden * 2;
  const bool intra = tp <= r_.s.devices_per_node;
  const Link link = intra ? DeviceLink() : r_.scale_out;
  double bw = link.gbps * (intra ? kScaleUpEff : kScaleOutEff);
  if (profile_ != nullptr && !profile_->allreduce.empty()) bw = profile_->allreduce.At(bytes);
  if (bw <= 0) return 1e9;
  const double frac = (tp - 1.0) / tp;
  // Attention output all-reduce (one-shot for small messages: two latency steps), then the all-gather of
  // the MoE outputs the TP ranks computed for their share of the tokens.
  const double all_reduce = 2 * link.latency_us * kUs + 2 * frac * bytes / (bw * kGB);
  const double all_gather = link.latency_us * kUs + frac * bytes / (bw * kGB);
  return all_reduce + all_gather;
}

double StepModel::CommSeconds(const std::vector<BatchPart>& parts, double fraction, double moe_scale,
                              Accum& acc) const {
  double group_tokens = 0;
  bool prefill = false;
  for (const BatchPart& b : parts) {
    group_tokens += b.seqs * b.new_tokens * fraction;
    prefill |= b.prefill;
  }
  const double dev_tokens = group_tokens / r_.s.tp;
  const double moe_layers = r_.model.layers - r_.model.dense_layers;
  // A device sends its own tokens and receives the EP group's mean; the larger sets the time.
  const double ep = EpAllToAll(dev_tokens * std::max(1.0, moe_scale), prefill) * moe_layers;
  const double tp = TpCollectives(group_tokens) * r_.model.layers;
  // Pipeline stages hand the hidden states of the pass to the next stage.
  double pp = 0;
  if (r_.pp > 1) {
    const Link link = r_.s.devices_per_node >= r_.pp ? DeviceLink() : r_.scale_out;
    const double bw = link.gbps > 0 ? link.gbps * kScaleUpEff : r_.host_link_gbps * 0.5;
    pp = (r_.pp - 1) * (link.latency_us * kUs + group_tokens * r_.model.hidden * 2 / (bw * kGB));
  }
  if (ep > 0) acc.Op("ep dispatch/combine") = {"ep dispatch/combine", ep, 0, 0, "network"};
  if (tp > 0) acc.Op("tp all-reduce/gather") = {"tp all-reduce/gather", tp, 0, 0, "network"};
  if (pp > 0) acc.Op("pipeline hand-off") = {"pipeline hand-off", pp, 0, 0, "network"};
  return ep + tp + pp;
}

StepTime StepModel::Step(const std::vector<BatchPart>& parts, double moe_group_tokens) const {
  if (r_.s.micro_batches > 0 || r_.ep <= 1) return StepWith(parts, moe_group_tokens, r_.s.micro_batches);
  // Two micro-batches hide communication but read the weights twice; engines turn the overlap on
  // where it pays (SGLang's two-batch overlap, DeepSeek's serving), so take the faster.
  StepTime one = StepWith(parts, moe_group_tokens, 1);
  StepTime two = StepWith(parts, moe_group_tokens, 2);
  return two.seconds < one.seconds ? two : one;
}

StepTime StepModel::StepWith(const std::vector<BatchPart>& parts, double moe_group_tokens, int micro_batches) const {
  StepTime st;
  double group_tokens = 0;
  bool prefill = false;
  for (const BatchPart& b : parts) {
    group_tokens += b.seqs * b.new_tokens;
    prefill |= b.prefill;
  }
  const double dev_tokens = group_tokens / r_.s.tp;
  // Two micro-batches need at least a few tokens per device each.
  const int mb = micro_batches == 2 && dev_tokens >= 2 ? 2 : 1;
  st.micro_batches = mb;
  const double fraction = 1.0 / mb;
  Accum acc;
  const double moe_scale = moe_group_tokens >= 0 && group_tokens > 0 ? moe_group_tokens / group_tokens : 1;
  const double compute_one = ComputeSeconds(parts, fraction, moe_scale, acc);
  const double comm_one = CommSeconds(parts, fraction, moe_scale, acc);
  st.compute_s = compute_one * mb;
  st.host_s = acc.host_s * mb;
  st.comm_s = comm_one * mb;
  // Two micro-batches overlap communication with computation; so does a fused MoE kernel that
  // dispatches and combines from inside the expert GEMMs (MegaMoE), with one batch.
  const bool overlapped = mb >= 2 || (r_.fused_moe && r_.ep > 1);
  if (mb >= 2 && prefill && r_.ep > 1) st.compute_s *= kPrefillCommSmPenalty;
  const double work = st.compute_s + st.host_s;
  if (overlapped) {
    st.seconds = std::max(work, st.comm_s) + r_.tuning.overlap_loss * std::min(work, st.comm_s);
    st.exposed_comm_s = std::max(0.0, st.seconds - work);
  } else {
    st.seconds = work + st.comm_s;
    st.exposed_comm_s = st.comm_s;
  }
  st.seconds = std::max(st.seconds, acc.engram_gather_s * mb);
  st.imbalance = Imbalance(dev_tokens * fraction * moe_scale * r_.model.experts_per_token);
  for (OpTime& op : acc.ops) {
    if (op.bound != "network") op.seconds *= mb;
    st.ops.push_back(op);
  }
  // Bottleneck: the largest of the time shares.
  const bool inter = r_.world > r_.s.devices_per_node;
  std::vector<std::pair<double, std::string>> shares = {
      {acc.by_bound[0] * mb, "compute"},
      {acc.by_bound[1] * mb, "memory bandwidth"},
      {acc.by_bound[2] * mb, "launch overhead"},
      {acc.by_bound[3] * mb, "host memory"},
      {acc.by_bound[4] * mb, "host link"},
      {st.exposed_comm_s, inter ? "scale-out network" : "scale-up network"},
  };
  st.bottleneck = std::max_element(shares.begin(), shares.end())->second;
  return st;
}

}  // namespace dsv4::cluster
