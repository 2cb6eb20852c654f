// The model of one engine step on one device of a layout: memory per device, and the time of a
// forward step from a roofline per operator, the collectives the layout sends, expert load imbalance,
// communication/computation overlap, host-memory experts and speculative decoding.
//
// Every operator's time is max(FLOPs / (peak x gemm or attention efficiency),
// bytes / (bandwidth x memory efficiency)), and at least `kernels x kernel_floor_us`; on device "cpu"
// with a measured product floor, plus `kernels x` that floor (a CPU operator's fixed time does not
// overlap its work). Efficiencies come from the catalog's device class, or from a measured Profile.
// All times are seconds, sizes bytes.
#pragma once

#include <string>
#include <vector>

#include "cluster/profile.h"
#include "cluster/scenario.h"

namespace dsv4::cluster {

// Memory of one device, in GB (10^9 bytes). The rows weights..free sum to `total`.
struct MemoryBreakdown {
  double total = 0;              // device memory (host memory for device "cpu")
  double weights_attention = 0;  // attention, mHC, norms, router
  double weights_dense = 0;      // dense FFN layers and shared experts
  double weights_experts = 0;    // routed experts kept on the device (redundant copies included)
  double weights_embed_head = 0;
  double weights_mtp = 0;  // MTP / draft layers (only when speculative decoding is on)
  double engram = 0;       // Engram projections on the device (tables live in host memory)
  double kv_cache = 0;     // window, KV and compressed caches of the resident sequences
  double activations = 0;  // activations and communication buffers of one step
  double reserve = 0;      // runtime context (CUDA context, allocator slack)
  double free = 0;         // what is left (negative: does not fit)
  // Outside the device:
  double experts_on_host = 0;          // routed experts in host memory (hybrid or spilled), GB per device
  double engram_tables_host = 0;       // Engram tables, GB per device's share of host memory
  double spilled_expert_fraction = 0;  // share of routed experts that did not fit and run from host
  double Weights() const {
    return weights_attention + weights_dense + weights_experts + weights_embed_head + weights_mtp;
  }
  double SumRows() const { return Weights() + engram + kv_cache + activations + reserve + free; }
};

// One part of a step's batch, per attention (DP) group.
struct BatchPart {
  double seqs = 0;        // sequences in the group
  double new_tokens = 1;  // tokens per sequence this step (1 in decode, a chunk in prefill, 1 + drafts)
  double context = 0;     // tokens per sequence already cached before the step
  bool prefill = false;   // prefill form of attention; logits only for the last token
};

// Time of one operator summed over layers.
struct OpTime {
  std::string name;
  double seconds = 0;
  double flops = 0;
  double bytes = 0;
  std::string bound;  // compute | memory | launch | network | host
};

struct StepTime {
  double seconds = 0;         // wall time of the step
  double compute_s = 0;       // device operators (all micro-batches)
  double host_s = 0;          // host-memory experts
  double comm_s = 0;          // collectives (all micro-batches)
  double exposed_comm_s = 0;  // collective time not hidden behind computation
  int micro_batches = 1;
  double imbalance = 1;  // busiest device's routed-expert load / mean
  std::vector<OpTime> ops;
  std::string
      bottleneck;  // compute | memory bandwidth | launch overhead | scale-up network | scale-out network | host memory
};

class StepModel {
 public:
  // `profile` may be null. `speculative` turns on MTP weights in memory.
  StepModel(const Resolved& r, const Profile* profile, bool speculative);

  // Memory with `kv_bytes` of cache resident per device and `step_tokens` tokens per device per step.
  MemoryBreakdown Memory(double kv_bytes, double step_tokens) const;
  // Weights and fixed costs alone fit on the device.
  bool WeightsFit() const { return fits_; }
  // Step time for a batch of parts on an attention group. The other DP groups carry the same batch,
  // unless `moe_group_tokens` >= 0 gives the mean tokens per group across the EP group (the routed
  // experts and the all-to-all see that load; attention sees this group's).
  StepTime Step(const std::vector<BatchPart>& parts, double moe_group_tokens = -1) const;
  // Expected output tokens per sequence per decode step with speculation (1 without).
  double TokensPerDecodeStep() const;
  // Drafts per step (0 without speculation).
  int Drafts() const { return drafts_; }
  const Resolved& resolved() const { return r_; }

 private:
  struct Accum;
  struct Pass;
  void AttentionOps(Accum& acc, int64_t layer, const Pass& pass) const;
  void FfnOps(Accum& acc, int64_t layer, const Pass& pass) const;
  void EngramOps(Accum& acc, int64_t layer, const Pass& pass) const;
  void AddOp(Accum& acc, const char* name, double flops, double bytes, double kernels, double tflops_peak,
             double flop_eff, bool on_host, double mem_eff = 0, double host_gbps = 0) const;
  Link DeviceLink() const;  // the scale-up link as collectives see it (host-staged without P2P)
  double ComputeSeconds(const std::vector<BatchPart>& parts, double fraction, double moe_scale, Accum& acc) const;
  double CommSeconds(const std::vector<BatchPart>& parts, double fraction, double moe_scale, Accum& acc) const;
  double EpAllToAll(double tokens_dev, bool prefill) const;
  double TpCollectives(double group_tokens) const;
  double Imbalance(double pairs_per_device) const;
  StepTime StepWith(const std::vector<BatchPart>& parts, double moe_group_tokens, int micro_batches) const;
  double GemmRate(double bits, double tokens, bool grouped) const;  // TFLOP/s achieved

  Resolved r_;
  const Profile* profile_;
  WeightBytes wb_;
  ParamCounts pc_;
  double spill_fraction_ = 0;
  bool fits_ = true;
  bool speculative_ = false;
  int drafts_ = 0;
  double accept_ = 0;
};

}  // namespace dsv4::cluster
