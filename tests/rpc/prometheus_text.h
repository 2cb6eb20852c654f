// A strict reader of the Prometheus text exposition format 0.0.4, for tests: what a scraper
// would refuse is an error here, naming the line. It checks the grammar (metric and label names,
// escapes, float values, "\n" endings), that every sample follows its family's TYPE line and
// belongs to it (histograms: _bucket with le, _sum, _count; summaries: quantile, _sum, _count),
// that no series appears twice, and that histogram buckets are cumulative, end at le="+Inf" and
// match _count.
#pragma once

#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv4::testing {

struct PromSample {
  std::string name;
  std::vector<std::pair<std::string, std::string>> labels;  // in the order written
  double value = 0;
};

struct PromExposition {
  std::map<std::string, std::string> types;  // family -> counter, gauge, histogram, summary, untyped
  std::vector<PromSample> samples;

  // The value of the series `name` whose labels include every pair of `match`; NOT_FOUND when
  // none, FAILED_PRECONDITION when several.
  absl::StatusOr<double> Value(const std::string& name,
                               const std::vector<std::pair<std::string, std::string>>& match = {}) const;
  // The sum over every series `name` whose labels include `match`.
  double Sum(const std::string& name, const std::vector<std::pair<std::string, std::string>>& match = {}) const;
};

absl::StatusOr<PromExposition> ParsePrometheusText(const std::string& text);

}  // namespace dsv4::testing
