// Software as a planner input: engine profiles, software maturity, and the planner's fitted
// parameters.
//
// An engine profile (cluster/catalog/software.json "engines") says how an inference engine runs a
// model: which collectives carry expert parallelism (DeepEP or NCCL), whether routed experts run as
// one fused kernel (MegaMoE-style), which CPU kernels run host experts (AMX or plain SIMD), whether
// several GPUs split the layers (llama.cpp) or the tensors, and how 4-bit weights run on devices
// without FP4 tensor cores. Maturity says how far the kernels for a model on a device have been
// tuned: "day0" and "early" scale the device efficiencies by fitted factors; "mature" is the
// default. The fitted parameters (Tuning) are the efficiencies and overheads no datasheet gives;
// cluster/fit.h fits them on a validation set and cluster/README.md lists what each was fitted on.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv4::cluster {

// Days since 1970-01-01 of "YYYY-MM-DD" or "YYYY-MM" (the 15th). Errors name `field`.
absl::StatusOr<int64_t> ParseDate(const std::string& text, const std::string& field);

struct EngineProfile {
  std::string name;                  // canonical name, e.g. "sglang"
  std::vector<std::string> aliases;  // other spellings accepted in scenarios
  // "server": a batching server (SGLang, vLLM, TensorRT-LLM, DeepSeek's own); "local": a
  // single-user engine (llama.cpp, ds4, MLX, KTransformers' local server).
  std::string kind = "server";
  std::string ep_all_to_all = "deepep";  // expert-parallel dispatch/combine: "deepep" | "nccl"
  std::string fused_moe_since;           // date from which dispatch + expert GEMMs + combine run as one
                                        // kernel (MegaMoE); "" = never
  std::string host_experts = "simd";     // CPU expert kernels: "amx" (AMX tiles when the host has them) | "simd"
  std::string host_kernels = "tuned";    // host weight-streaming kernel family: "tuned" | "llamacpp" (fitted separately)
  std::string host_compute_kernels;      // host GEMM kernel family ("" = host_kernels)
  bool numa_aware = false;               // experts placed per socket (the second socket adds bandwidth)
  double gpu_prefill_tokens = 0;  // > 0: prefill chunks of at least this many tokens stream host experts
                                  // to the GPU layer by layer (KTransformers layerwise prefill) ...
  std::string gpu_prefill_since;  // ... in software dated from this day on ("" = always)
  std::string multi_gpu = "tensor";   // several devices split "tensor"s (TP/EP) or "layer"s (pipeline)
  std::string fp4_without_fp4 = "fp8";  // 4-bit weights on devices without FP4 tensor cores run at the
                                        // "fp8" rate (converted) or the "bf16" rate (dequantized, W4A16)
  // How a decode step picks the indexer's top-k compressed rows (V3.2, V4): "parallel" (top-k kernels
  // spread over the device: DeepGEMM / FlashMLA sparse decode) or "sort" (every visible row's score
  // sorted by one thread group per token: ds4's Metal argsort and CUDA block sorts). A sort's time
  // grows with the context and does not shrink on a larger device (Tuning::select_sort_ns).
  std::string indexer_topk = "parallel";
  // Engines DeepSeek worked with before a release ship tuned single-node kernels on release day: a
  // new model on datacenter parts, on one node, without disaggregation, is "mature" from day 0
  // (LMSYS DeepSeek-V4 day-0 figures); multi-node, disaggregated and desk-side paths are not.
  bool launch_partner = false;
  // An engine written for one model family (ds4 for DeepSeek V4): its first release is its tuned
  // state, so the model's release date does not make it immature (the device's still can).
  bool dedicated = false;
  // Devices (names or classes) the engine's kernels were tuned for; on others its software counts as
  // "early" (ds4: Metal and the DGX Spark; its CUDA build for other GPUs is generic). Empty: all.
  std::vector<std::string> tuned_for;
  // Profiles of versions that differ (KTransformers 0.2 ran host experts on llamafile SIMD kernels,
  // 0.3 on AMX): engine_version prefix -> the profile fields that version changes. The longest
  // matching prefix applies.
  std::map<std::string, std::map<std::string, std::string>> versions;
  // Profiles of the engine's software from a date on (YYYY-MM-DD -> fields): the latest date not
  // after the scenario's software date applies, before any version profile.
  std::map<std::string, std::map<std::string, std::string>> eras;
  std::map<std::string, std::string> sources;  // property -> why
};

enum class Maturity { kDay0, kEarly, kMature };
const char* MaturityName(Maturity m);

// The fitted parameters. Each has a name, bounds, the mechanism it scales, and (in the catalog) the
// points it was fitted on. Values are fractions of a peak unless the name ends in _us.
struct Tuning {
  double gpu_memory_hbm = 0.65;      // weight streaming in small-M GEMMs, of HBM peak (datacenter)
  double gpu_memory_gddr = 0.7;      // the same on GDDR6/6X/7 (workstation and GeForce cards)
  double gpu_memory_lpddr = 0.7;     // the same on LPDDR unified memory (Apple, DGX Spark)
  double gpu_gemm_datacenter = 0.62;  // large GEMMs, of the tensor-core peak (datacenter parts)
  double gpu_gemm_desk = 0.5;         // large GEMMs on workstation, GeForce and GB10 parts
  double gpu_gemm_apple = 0.35;       // large GEMMs of Metal kernels, of the GPU's FP16 peak
  double host_memory_tuned = 0.6;     // host expert matvec of tuned engines, of STREAM bandwidth
  double host_memory_llamacpp = 0.45;  // the same for llama.cpp's CPU backend
  double host_numa_gain = 0.5;        // bandwidth a second socket adds, as a share of one socket (NUMA-aware)
  double host_compute_amx = 0.1;      // host expert GEMMs with AMX tiles, of the AMX peak
  double host_compute_simd = 0.3;     // host expert GEMMs with AVX-512/AVX2/NEON (tuned kernels), of the FMA peak
  double host_compute_llamacpp = 0.08;  // the same for llama.cpp's CPU backend
  double pcie_stream = 0.5;           // host-to-device streaming of expert weights, of PCIe peak
  double maturity_day0 = 0.4;         // device efficiencies of day-0 software, as a share of mature
  double maturity_early = 0.7;        // the same in the first quarter after a release
  double overlap_loss = 0.1;          // share of the shorter of computation and communication that two
                                      // micro-batches (or a fused MoE kernel) fail to hide
  double select_sort_ns = 10;         // decode top-k by a one-thread-group sort ("sort" engines): ns per
                                      // compressed row per indexed layer per step
};

struct TuningParameter {
  const char* name;     // catalog key, e.g. "gpu.memory.hbm"
  double Tuning::*field;
  double lo, hi;        // search bounds
  const char* what;     // the mechanism it scales
};
// Every fitted parameter, in a stable order.
const std::vector<TuningParameter>& TuningParameters();
const TuningParameter* FindTuningParameter(const std::string& name);

// Maturity of software dated `date_days` for a model released on `model_days` running on a device
// first sold on `device_days` (any may be < 0 = unknown): day0 within 21 days of the later release,
// early within 90 days, mature after (or when any date is unknown). `reason` says why.
Maturity MaturityFromDates(int64_t date_days, int64_t model_days, int64_t device_days, std::string* reason);
double MaturityFactor(Maturity m, const Tuning& t);

}  // namespace dsv4::cluster
