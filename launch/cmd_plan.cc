// dsv4 plan --scenario FILE.json[,FILE2.json...] [--json] [--plot DIR] [--profile FILE] [--catalog FILE]
//           [--placement-out FILE]
// dsv4 plan --validate POINTS.json [--cross-validate source|publisher|point] [--fit] [--json]
// dsv4 plan --list
//
// Capacity planning: answers a scenario (shared/planner/README.md) with devices, layout, latency,
// memory and cost; several scenarios are compared side by side. --validate compares the planner with
// published measurements; --cross-validate reports the error of each group predicted with parameters
// refitted without it; --fit prints the fitted parameters and what each was fitted on. See
// cluster/README.md. --placement-out writes the expert placement of
// the planned layout (its EP size, redundant experts and devices per node) in the runtime's
// placement-file format (parallel/placement.h), for `dsv4 serve --placement`.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/file.h"
#include "base/log.h"
#include "base/status.h"
#include "cluster/planner.h"
#include "cluster/report.h"
#include "launch/commands.h"
#include "parallel/placement.h"
#include "runtime/builtin.h"

namespace dsv4 {
namespace {

void List(const cluster::Catalog& catalog) {
  std::printf("model presets: %s\n", absl::StrJoin(cluster::PresetNames(), ", ").c_str());
  std::printf("%-20s %-12s %9s %9s %9s %8s %9s %-13s %-10s %8s\n", "device", "class", "BF16 TF", "FP8 TF", "FP4 TF",
              "mem GB", "GB/s", "scale-up", "scale-out", "$/hour");
  for (const auto& [name, d] : catalog.devices)
    std::printf("%-20s %-12s %9.0f %9.0f %9.0f %8.0f %9.0f %-13s %-10s %8.2f\n", name.c_str(), d.device_class.c_str(),
                d.bf16_tflops, d.fp8_tflops, d.fp4_tflops, d.memory_gb, d.memory_gbps, d.scale_up.c_str(),
                d.scale_out.c_str(), d.price_per_hour);
  std::printf("\n%-28s %6s %6s %6s %10s %10s %9s %6s\n", "host cpu (hardware.host_cpu)", "cores", "GHz", "boost",
              "FMA fl/cy", "AMX fl/cy", "channels", "MT/s");
  for (const auto& [name, h] : catalog.hosts)
    std::printf("%-28s %6d %6.2f %6.2f %10.0f %10.0f %9d %6.0f\n", name.c_str(), h.cores, h.ghz, h.boost_ghz,
                h.simd_flops_per_cycle, h.amx_flops_per_cycle, h.memory_channels, h.memory_mts);
}

absl::Status Validate(const std::string& path, const std::string& cross, bool fit, const cluster::Catalog& catalog,
                      const cluster::PlanOptions& options, bool json) {
  DSV4_ASSIGN_OR_RETURN(const cluster::ValidationSet set, cluster::LoadValidationSet(path), "--validate");
  if (fit) {
    DSV4_ASSIGN_OR_RETURN(const cluster::FitResult f,
                          cluster::Fit(set, std::vector<bool>(set.points.size(), true), catalog, options,
                                       cluster::Tuning{}, 4));
    std::printf("%s", json ? (cluster::FitJson(f).dump(2) + "\n").c_str() : cluster::FitText(f).c_str());
    return absl::OkStatus();
  }
  DSV4_ASSIGN_OR_RETURN(const cluster::Validation v, cross.empty() ? cluster::Validate(set, catalog, options)
                                                                   : cluster::CrossValidate(set, cross, catalog, options));
  std::printf("%s", json ? (cluster::ValidationJson(v).dump(2) + "\n").c_str() : cluster::ValidationText(v).c_str());
  return absl::OkStatus();
}

}  // namespace

void PlanFlags(Flags& flags) {
  flags.String("scenario", "", "scenario JSON file (shared/planner/README.md); several, comma-separated, are compared")
      .String("validate", "", "a validation file (cluster/validation/README.md): predicted against measured per point")
      .String("cross-validate", "", "with --validate: 'source' (or 'publisher', 'point'): refit without each and predict it")
      .Bool("fit", false, "with --validate: fit the parameters on every point and print them")
      .Bool("json", false, "print the answer as JSON")
      .String("plot", "", "directory to write SVG charts into")
      .String("profile", "", "measured profile (cluster/README.md, 'Profile format') in place of catalog efficiencies")
      .String("catalog", "", "extra hardware catalog file that adds or overrides devices")
      .Bool("list", false, "list model presets, catalog devices and host CPUs")
      .String("placement-out", "",
              "write the planned layout's expert placement (the runtime's --placement file) here; one scenario");
}

namespace {

// The expert placement of a planned layout: its EP size and redundant slots, groups kept within a
// node of `devices_per_node`. The planner knows no per-expert load, so the redundant slots copy the
// lowest ids (ModelPlacement::Default) until the running job rebalances from its measured load.
absl::Status WritePlacement(const nlohmann::json& answer, const std::string& path) {
  const nlohmann::json& l = answer["layout"];
  const int ep = l["ep"].get<int>();
  const int64_t experts = l["routed_experts"].get<int64_t>(), redundant = l["redundant_experts"].get<int64_t>();
  const int per_node = answer["hardware"]["devices_per_node"].get<int>();
  const int ranks_per_node = per_node > 0 && per_node < ep && ep % per_node == 0 ? per_node : 0;
  DSV4_ASSIGN_OR_RETURN(const ModelPlacement p, ModelPlacement::Default(0, experts, ep, redundant, ranks_per_node),
                        "--placement-out");
  DSV4_RETURN_IF_ERROR(WriteFileAtomic(path, p.ToJson(absl::StrCat("dsv4 plan ", answer["scenario"].get<std::string>()))));
  DSV4_LOG(kInfo, "wrote the expert placement of EP ", ep, " (", experts, " experts + ", redundant, " redundant) to ",
           path);
  return absl::OkStatus();
}

}  // namespace

absl::Status Plan(const Flags& flags) {
  const bool json = flags.GetBool("json");
  if ((flags.Given("cross-validate") || flags.GetBool("fit")) && !flags.Given("validate"))
    return absl::InvalidArgumentError("--cross-validate and --fit need --validate FILE");
  // The runtime's built-in models ("builtin:v4-tiny", ...) are models a scenario can name.
  for (const std::string& name : BuiltinModelNames())
    if (auto config = BuiltinConfigJson(name); config.ok()) cluster::RegisterModelConfig("builtin:" + name, *config);
  cluster::Catalog catalog = cluster::BuiltinCatalog();
  if (flags.Given("catalog")) DSV4_RETURN_IF_ERROR(cluster::MergeCatalogFile(flags.GetString("catalog"), &catalog));
  if (flags.GetBool("list")) {
    List(catalog);
    return absl::OkStatus();
  }
  cluster::Profile profile;
  cluster::PlanOptions options;
  if (flags.Given("profile")) {
    DSV4_ASSIGN_OR_RETURN(profile, cluster::LoadProfile(flags.GetString("profile")));
    options.profile = &profile;
  }
  options.sweeps = flags.Given("plot");
  if (flags.Given("validate"))
    return Validate(flags.GetString("validate"), flags.GetString("cross-validate"), flags.GetBool("fit"), catalog,
                    options, json);
  if (flags.GetString("scenario").empty())
    return absl::InvalidArgumentError("give --scenario FILE.json, --validate POINTS.json or --list");

  std::vector<nlohmann::json> answers;
  const std::vector<std::string> scenarios = absl::StrSplit(flags.GetString("scenario"), ',', absl::SkipEmpty());
  if (flags.Given("placement-out") && scenarios.size() != 1)
    return absl::InvalidArgumentError("--placement-out takes one --scenario");
  for (absl::string_view path : scenarios) {
    DSV4_ASSIGN_OR_RETURN(const cluster::Scenario s, cluster::LoadScenario(std::string(path)));
    DSV4_ASSIGN_OR_RETURN(nlohmann::json a, cluster::Plan(s, catalog, options), path);
    if (!a.contains("scenario") || a["scenario"].get<std::string>().empty()) a["scenario"] = std::string(path);
    answers.push_back(std::move(a));
  }
  if (json) {
    std::printf("%s\n", (answers.size() == 1 ? answers[0] : nlohmann::json(answers)).dump(2).c_str());
  } else {
    for (size_t i = 0; i < answers.size(); ++i)
      std::printf("%s%s", i ? "\n==========\n\n" : "", cluster::TextReport(answers[i]).c_str());
    if (answers.size() > 1) std::printf("\ncomparison:\n%s", cluster::ComparisonText(answers).c_str());
  }
  if (flags.Given("placement-out")) DSV4_RETURN_IF_ERROR(WritePlacement(answers[0], flags.GetString("placement-out")));
  if (flags.Given("plot")) {
    DSV4_ASSIGN_OR_RETURN(const std::vector<std::string> written,
                          cluster::WritePlots(answers, flags.GetString("plot")));
    for (const auto& w : written) DSV4_LOG(kInfo, "wrote ", w);
  }
  return absl::OkStatus();
}

}  // namespace dsv4
