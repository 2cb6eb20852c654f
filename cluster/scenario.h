// A planner scenario: the JSON contract of shared/planner/README.md, parsed and validated once.
//
// Parsing checks types and ranges; Resolve() checks the scenario against the model and the catalog
// (known device, a layout that divides the devices, context within the model's). Every error names
// the field, e.g. "scenario.parallel.tp: ...".
#pragma once

#include <cstdint>
#include <string>

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

  int tp = 1;
  int ep = 0;            // 0 = the whole world
  int dp_attention = 0;  // 0 = world / tp
  bool experts_on_host = false;
  int redundant_experts = 0;
  Disaggregation disaggregated = Disaggregation::kNone;
  int micro_batches = 0;  // 0 = two where the layout allows overlap (EP > 1), else one

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
  double host_gbps = 0;    // host memory bandwidth, this device's share
  int host_cores = 0;      // host cores, this device's share
  double host_gb = 0;      // host memory, this device's share
  bool host_gb_given = false;
  double price_per_hour = 0;
};

absl::StatusOr<Resolved> Resolve(const Scenario& s, const Catalog& catalog);

const char* QuestionName(Question q);

}  // namespace dsv4::cluster
