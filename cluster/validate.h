// The planner against published measurements: a validation set, its errors, the fit of the
// planner's free parameters, and cross-validation by source.
//
// A validation file is either an array of points (shared/planner/published_points.json) or an
// object {"format": "dsv4-validation/1", "sources": {id: {...}}, "points": [...]} whose points cite
// a source by id (cluster/validation/README.md describes every field). Each point is a scenario
// and the answer keys that were measured.
//
// Fit() chooses the fitted parameters (Tuning) that minimize the mean |log(predicted / measured)|
// over the points it is given, one parameter at a time (a coarse grid, then golden-section search),
// each over the points whose prediction it changes. CrossValidate() refits without each source in
// turn and predicts that source's points: the held-out error is the planner's honest figure.
#pragma once

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "cluster/hardware.h"
#include "cluster/planner.h"
#include "cluster/scenario.h"

namespace dsv4::cluster {

struct ValidationSource {
  std::string id;
  std::string title, url, date, publisher;  // "" = not given
};

struct ValidationPoint {
  std::string id;
  std::string name;
  std::string source;    // a ValidationSource id
  std::string category;  // "uncategorized" when not given
  std::string where;     // "file: points[i]", for errors found when it is planned
  Scenario scenario;
  std::vector<std::pair<std::string, double>> measured;  // answer key -> measured value
};

struct ValidationSet {
  std::string file;
  std::map<std::string, ValidationSource> sources;
  std::vector<ValidationPoint> points;
};

// Parses a validation file; errors name the file and the field ("p.json: points[3].measured...").
absl::StatusOr<ValidationSet> ParseValidationSet(const std::string& json_text, const std::string& file);
absl::StatusOr<ValidationSet> LoadValidationSet(const std::string& path);

struct ValidationRow {
  std::string point;  // point id
  std::string name;
  std::string source;
  std::string category;
  std::string metric;
  double predicted = 0;
  double measured = 0;
  double error = 0;  // (predicted - measured) / measured
  double Ratio() const;  // max(p/m, m/p); large when nothing was predicted
};

// Median |error| and worst ratio of a group of rows (a source, a category, everything).
struct ErrorSummary {
  std::string group;
  int rows = 0;
  double median_abs_error = 0;
  double worst_ratio = 1;
  std::string worst;  // "point / metric"
};

struct Validation {
  std::string mode;  // "in-sample" | "held out by source" | "held out by publisher" | "held out by point"
  int folds = 0;     // groups held out in turn (0 in-sample)
  std::vector<ValidationRow> rows;
  ErrorSummary overall;
  std::vector<ErrorSummary> by_source;
  std::vector<ErrorSummary> by_category;
  double median_abs_error = 0;  // = overall (kept for callers of the old interface)
  double worst_ratio = 1;
  std::string worst;
};

// Predicts every point with the catalog's parameters (or options.tuning) and compares.
absl::StatusOr<Validation> Validate(const ValidationSet& set, const Catalog& catalog, const PlanOptions& options);
// The same from a file's text (the interface `dsv4 plan --validate` started with).
absl::StatusOr<Validation> Validate(const std::string& json_text, const std::string& source, const Catalog& catalog,
                                    const PlanOptions& options);

struct ParameterFit {
  std::string name;
  double value = 0;
  bool fitted = false;              // false: no training point's prediction depends on it (catalog value kept)
  std::vector<std::string> points;  // training points whose prediction it changes
  std::vector<std::string> sources;  // their sources
};

struct FitResult {
  Tuning tuning;
  std::vector<ParameterFit> parameters;  // in TuningParameters() order
  double mean_abs_log_error = 0;         // over the training rows, after the fit
};

// Fits the parameters on the points whose `train` flag is set, starting from `start`.
absl::StatusOr<FitResult> Fit(const ValidationSet& set, const std::vector<bool>& train, const Catalog& catalog,
                              const PlanOptions& options, const Tuning& start, int sweeps = 3);

// Group "source": refit without each source and predict it; "point": without each point.
absl::StatusOr<Validation> CrossValidate(const ValidationSet& set, const std::string& group, const Catalog& catalog,
                                         const PlanOptions& options);

// Summaries of rows by group (used by Validate and CrossValidate).
void Summarize(Validation* v);

}  // namespace dsv4::cluster
