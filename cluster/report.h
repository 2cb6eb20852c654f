// Reports of planner answers: a plain-text table, and SVG charts (throughput against latency across
// batch sizes, cost per million tokens across layouts, the memory breakdown, and a comparison of
// several scenarios).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "cluster/planner.h"
#include "cluster/validate.h"

namespace dsv4::cluster {

std::string TextReport(const nlohmann::json& answer);
std::string ValidationText(const Validation& v);
nlohmann::json ValidationJson(const Validation& v);
// The fitted parameters and what each was fitted on; FitJson's "parameters" is the catalog's layout.
std::string FitText(const FitResult& f);
nlohmann::json FitJson(const FitResult& f);
// One line per scenario: devices, throughput, latency, cost.
std::string ComparisonText(const std::vector<nlohmann::json>& answers);

// SVG documents.
std::string ThroughputLatencySvg(const nlohmann::json& answer);  // needs "sweeps"
std::string LayoutCostSvg(const nlohmann::json& answer);         // needs "sweeps"
std::string MemorySvg(const nlohmann::json& answer);
std::string ComparisonSvg(const std::vector<nlohmann::json>& answers, const std::string& title);

// Writes the charts of `answers` into `dir` (created if missing); returns the file names written.
absl::StatusOr<std::vector<std::string>> WritePlots(const std::vector<nlohmann::json>& answers, const std::string& dir);

}  // namespace dsv4::cluster
