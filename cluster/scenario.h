// A planner scenario: the JSON contract of shared/planner/README.md, parsed and validated once.
//
// Parsing checks types and ranges; Resolve() checks the scenario against the model and the catalog
// (known device, a layout that divides the devices, context within the model's). Every error names
// the field, e.g. "scenario.parallel.tp: ...".
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cluster/hardware.h"
#include "cluster/model_cost.h"
#include "cluster/model_preset.h"

namespace dsv4::cluster {

enum class Question { kPrefillThroughput, kDecodeThroughput, kSingleStream, kCapacity };
enum class Disaggregation { kNone, kPrefill, kDecode };
enum class LengthDistribution { kFixed, kExponential, kUniform };

struct Scenario {
  std::string name;
  std::string model = "deepseek-v4-flash";
  Precision precision;
  int64_t pruned_experts_per_layer = 0;  // 0 = all experts kept

  std::string device;
  int devices_per_node = 1;
  int nodes = 1;
  double host_memory_bandwidth_gbps = 0;  // 0 = the device's catalog host
  double host_memory_gb = 0;              // 0 = not stated (host experts: reported as a requirement)
  int host_cores = 0;                     // 0 = the device's catalog host
  std::string scale_out;                  // "" = the device's default NIC
  double price_per_hour = 0;              // 0 = the catalog's
  std::string host_cpu;                   // catalog host CPU ("" = the device's catalog host figures)
  int host_sockets = 0;                   // 0 = one (host_cpu) or as the figures say
  double host_stream_gbps = 0;            // measured STREAM triad of the whole host; 0 = from the peak
  std::string host_isa;                   // "" | "amx" | "avx512" | "avx2" | "neon" (hosts not in the catalog)
  int p2p = -1;                           // devices reach each other's memory over PCIe; -1 = class default

  int tp = 1;
  int ep = 0;            // 0 = the whole world
  int dp_attention = 0;  // 0 = world / tp
  bool experts_on_host = false;
  int redundant_experts = 0;
  Disaggregation disaggregated = Disaggregation::kNone;
  int micro_batches = 0;  // 0 = two where the layout allows overlap (EP > 1), else one
  int pp = 0;             // pipeline stages (devices that each hold whole layers, run in turn); 0 = engine default
  int eplb = -1;          // expert-parallel load balancing stated on (1) / off (0); -1 = on iff redundant experts
  bool layout_given = false;  // parallel.tp, ep or dp_attention stated

  // Software: the engine and its date select efficiency profiles (cluster/software.h).
  std::string engine;          // "" = the device class's usual engine
  std::string engine_version;  // free text (reported)
  std::string software_date;   // YYYY-MM-DD of the software or of the measurement; "" = unknown
  std::string maturity;        // "" = from the dates | "day0" | "early" | "mature"
  int fused_moe = -1;          // -1 = engine default; 0 / 1 forced

  double input_tokens = 1024;
  double output_tokens = 256;
  double batch_per_device = 0;     // sequences per device; 0 = the most that fits (throughput questions)
  double concurrency = 0;          // 0 = not set
  double prefix_cache_hit = 0;     // fraction of input tokens found in the prefix cache
  double speculative_accept = -1;  // per-draft-token acceptance; < 0 = not set (engine default)
  int speculative_tokens = -1;     // drafts per step; < 0 = not set
  LengthDistribution lengths = LengthDistribution::kFixed;

  Question question = Question::kDecodeThroughput;
  double qps = 0;
  double slo_ttft_ms = 0;
  double slo_tpot_ms = 0;
  double slo_percentile = 99;
  int64_t requests = 0;  // simulated requests per run; 0 = automatic
  uint64_t seed = 1;
  double token_budget = 0;  // tokens per step per attention group; 0 = 8192

  int World() const { return devices_per_node * nodes; }
};

// Parses scenario JSON (the contract's layout). `source` prefixes errors.
absl::StatusOr<Scenario> ParseScenario(const std::string& json_text, const std::string& source);
absl::StatusOr<Scenario> LoadScenario(const std::string& path);

// A scenario checked against its model and the catalog, with defaults filled in.
struct Resolved {
  Scenario s;
  ModelPreset model;
  Device device;
  Link scale_up;
  Link scale_out;
  Efficiency eff;
  int world = 1;           // devices the layout uses (dp x tp)
  int unused_devices = 0;  // devices of the hardware the layout leaves out
  int dp = 1;              // attention data-parallel groups
  int ep = 1;              // expert-parallel group size
  int routed_experts = 0;  // after pruning
  double host_gbps = 0;    // host memory bandwidth the engine's expert kernels reach, this device's share
  int host_cores = 0;      // host cores, this device's share
  double host_gb = 0;      // host memory, this device's share
  bool host_gb_given = false;
  double price_per_hour = 0;
  int pp = 1;                 // pipeline stages; world = dp x tp x pp
  bool p2p = true;            // peer-to-peer between the devices of a node
  // Software.
  EngineProfile engine;
  bool engine_assumed = false;  // not stated: the device class's usual engine
  Maturity maturity = Maturity::kMature;
  double maturity_factor = 1;   // multiplies the device (and host kernel) efficiencies
  std::string maturity_reason;
  bool fused_moe = false;
  bool gpu_prefill_streaming = false;  // host experts streamed to the GPU for long prefill chunks
  bool untuned_device = false;  // the engine has no kernels tuned for this device (see EngineProfile::tuned_for)
  Tuning tuning;
  // The host, whole (not per device).
  struct Host {
    std::string cpu;              // catalog name, or "" when only figures were given
    int sockets = 1;
    int cores = 0;
    double peak_gbps = 0;         // DRAM peak
    double stream_gbps = 0;       // STREAM triad: measured, or peak x stream fraction
    double ghz = 0;               // clock with the engine's cores at work (0: figures given per core)
    double simd_gflops_per_core = 0;
    double amx_gflops_per_core = 0;  // 0 = no AMX
  } host;
  double host_gflops = 0;        // host expert GEMM rate, this device's share (fitted efficiency applied)
  double host_link_gbps = 0;     // host-to-device link, peak per direction
  std::vector<std::string> notes;  // assumptions taken while resolving (reported as warnings)
};

// `tuning` replaces the catalog's fitted parameters when given (fitting and cross-validation).
absl::StatusOr<Resolved> Resolve(const Scenario& s, const Catalog& catalog, const Tuning* tuning = nullptr);

const char* QuestionName(Question q);

}  // namespace dsv4::cluster
