// The planner: answers a scenario's question, validates against published measurements, and sweeps
// batch sizes and layouts for charts. Answers are JSON objects whose keys follow the contract of
// shared/planner/README.md; report.h renders them as text and SVG.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cluster/hardware.h"
#include "cluster/profile.h"
#include "cluster/scenario.h"
#include "cluster/simulator.h"
#include "cluster/step_model.h"

namespace dsv4::cluster {

struct PlanOptions {
  const Profile* profile = nullptr;  // measured rates in place of catalog efficiencies
  bool sweeps = false;               // add "sweeps" (batch and layout) for charts
  const Tuning* tuning = nullptr;    // fitted parameters in place of the catalog's (fitting, cross-validation)
  bool brief = false;                // leave out the model table and per-operator breakdowns (validation)
};

// Answers `s`. Invalid scenarios are errors naming the field; an infeasible one is an answer with
// "feasible": false and the reasons.
absl::StatusOr<nlohmann::json> Plan(const Scenario& s, const Catalog& catalog, const PlanOptions& options);

// Whether a scenario runs with speculative decoding: explicit fields, or the engine default (MTP on for
// single streams of models with MTP layers on datacenter parts, as the SGLang/vLLM low-latency recipes do).
bool UsesSpeculation(const Resolved& r);

// Capacity of one deployment unit (the scenario's devices) under the SLO.
struct CapacityResult {
  double max_qps_per_unit = 0;          // colocated: the unit; disaggregated: see the two below
  double max_qps_per_prefill_unit = 0;  // disaggregated only
  double max_qps_per_decode_unit = 0;
  int units = 0;  // colocated: units needed for the target QPS
  int prefill_units = 0, decode_units = 0;
  int devices_needed = 0;
  SimResult at_target;               // simulation at the target QPS spread over the units
  SimResult prefill_at_target;       // disaggregated only
  double kv_transfer_ms = 0;         // disaggregated: prompt cache sent from prefill to decode
  double token_budget = 0;           // tokens per step per attention group used in the simulation
  std::vector<std::string> reasons;  // why no unit count meets the SLO (empty when one does)
};
CapacityResult Capacity(const Resolved& r, const StepModel& model);
// QPS the given number of devices sustains under the SLO (whole units only).
double CapacityForDevices(const CapacityResult& c, int unit_devices, int devices);

}  // namespace dsv4::cluster
