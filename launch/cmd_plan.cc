// dsv4 plan --scenario FILE.json[,FILE2.json...] [--json] [--plot DIR] [--profile FILE] [--catalog FILE]
// dsv4 plan --validate POINTS.json [--json]
// dsv4 plan --list
//
// Capacity planning: answers a scenario (shared/planner/README.md) with devices, layout, latency,
// memory and cost; several scenarios are compared side by side. --validate compares the planner with
// published measurements. See cluster/README.md.
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "base/file.h"
#include "base/status.h"
#include "cluster/planner.h"
#include "cluster/report.h"
#include "launch/commands.h"
#include "launch/common.h"

namespace dsv4 {
namespace {

// `--json` and `--list` may be given without a value; Flags wants one, so they are rewritten.
std::vector<char*> BareBooleans(int argc, char** argv, std::vector<std::string>* storage) {
  std::vector<char*> out(argv, argv + argc);
  for (auto& a : out) {
    if (!std::strcmp(a, "--json"))
      storage->push_back("--json=on");
    else if (!std::strcmp(a, "--list"))
      storage->push_back("--list=on");
    else
      continue;
    a = storage->back().data();
  }
  return out;
}

int List(const cluster::Catalog& catalog) {
  std::printf("model presets: %s\n", absl::StrJoin(cluster::PresetNames(), ", ").c_str());
  std::printf("%-20s %-12s %9s %9s %9s %8s %9s %-13s %-10s %8s\n", "device", "class", "BF16 TF", "FP8 TF", "FP4 TF",
              "mem GB", "GB/s", "scale-up", "scale-out", "$/hour");
  for (const auto& [name, d] : catalog.devices)
    std::printf("%-20s %-12s %9.0f %9.0f %9.0f %8.0f %9.0f %-13s %-10s %8.2f\n", name.c_str(), d.device_class.c_str(),
                d.bf16_tflops, d.fp8_tflops, d.fp4_tflops, d.memory_gb, d.memory_gbps, d.scale_up.c_str(),
                d.scale_out.c_str(), d.price_per_hour);
  return 0;
}

int Validate(const std::string& path, const cluster::Catalog& catalog, const cluster::PlanOptions& options, bool json) {
  auto text = ReadFile(path);
  if (!text.ok()) return Fail(WithContext(text.status(), "--validate"));
  auto v = cluster::Validate(*text, path, catalog, options);
  if (!v.ok()) return Fail(v.status());
  if (json) {
    std::printf("%s\n", cluster::ValidationJson(*v).dump(2).c_str());
  } else {
    std::printf("%s", cluster::ValidationText(*v).c_str());
  }
  return 0;
}

}  // namespace

int RunPlan(int argc, char** argv) {
  Flags flags;
  flags.Add("scenario", "", "scenario JSON file (shared/planner/README.md); several, comma-separated, are compared")
      .Add("validate", "", "published_points.json: predicted against measured for every point")
      .Add("json", "off", "print the answer as JSON (a bare --json means on)")
      .Add("plot", "", "directory to write SVG charts into")
      .Add("profile", "", "measured profile (cluster/README.md, 'Profile format') in place of catalog efficiencies")
      .Add("catalog", "", "extra hardware catalog file that adds or overrides devices")
      .Add("list", "off", "list model presets and catalog devices");
  if (WantsHelp(argc, argv)) return PrintHelp("plan", flags);
  std::vector<std::string> storage;
  storage.reserve(argc);
  std::vector<char*> args = BareBooleans(argc, argv, &storage);
  if (auto st = flags.Parse(argc, args.data(), 2); !st.ok()) return Fail(st);
  auto json = flags.OnOff("json");
  auto list = flags.OnOff("list");
  if (!json.ok()) return Fail(json.status());
  if (!list.ok()) return Fail(list.status());

  cluster::Catalog catalog = cluster::BuiltinCatalog();
  if (flags.Given("catalog"))
    if (auto st = cluster::MergeCatalogFile(flags.Str("catalog"), &catalog); !st.ok()) return Fail(st);
  if (*list) return List(catalog);
  cluster::Profile profile;
  cluster::PlanOptions options;
  if (flags.Given("profile")) {
    auto p = cluster::LoadProfile(flags.Str("profile"));
    if (!p.ok()) return Fail(p.status());
    profile = *p;
    options.profile = &profile;
  }
  options.sweeps = flags.Given("plot");
  if (flags.Given("validate")) return Validate(flags.Str("validate"), catalog, options, *json);
  if (flags.Str("scenario").empty())
    return Fail(absl::InvalidArgumentError("give --scenario FILE.json, --validate POINTS.json or --list"));

  std::vector<nlohmann::json> answers;
  for (absl::string_view path : absl::StrSplit(flags.Str("scenario"), ',', absl::SkipEmpty())) {
    auto s = cluster::LoadScenario(std::string(path));
    if (!s.ok()) return Fail(s.status());
    auto a = cluster::Plan(*s, catalog, options);
    if (!a.ok())
      return Fail(absl::Status(a.status().code(), std::string(path) + ": " + std::string(a.status().message())));
    if (!a->contains("scenario") || (*a)["scenario"].get<std::string>().empty()) (*a)["scenario"] = std::string(path);
    answers.push_back(*a);
  }
  if (*json) {
    std::printf("%s\n", (answers.size() == 1 ? answers[0] : nlohmann::json(answers)).dump(2).c_str());
  } else {
    for (size_t i = 0; i < answers.size(); ++i)
      std::printf("%s%s", i ? "\n==========\n\n" : "", cluster::TextReport(answers[i]).c_str());
    if (answers.size() > 1) std::printf("\ncomparison:\n%s", cluster::ComparisonText(answers).c_str());
  }
  if (flags.Given("plot")) {
    auto written = cluster::WritePlots(answers, flags.Str("plot"));
    if (!written.ok()) return Fail(written.status());
    for (const auto& w : *written) std::fprintf(stderr, "wrote %s\n", w.c_str());
  }
  return 0;
}

}  // namespace dsv4
