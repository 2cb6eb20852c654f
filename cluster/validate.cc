#include "cluster/validate.h"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace dsv4::cluster {
namespace {

using nlohmann::json;

absl::Status Bad(const std::string& where, const std::string& what) {
  return absl::InvalidArgumentError(absl::StrCat(where, " ", what));
}

// An optional string field; null is "not given".
absl::Status OptionalString(const json& j, const char* key, const std::string& where, std::string* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_string()) return Bad(absl::StrCat(where, ".", key), "must be a string (or null when unknown)");
  *out = it->get<std::string>();
  return absl::OkStatus();
}

absl::StatusOr<ValidationSource> ParseSource(const json& j, const std::string& where, bool need_url) {
  ValidationSource s;
  if (!j.is_object()) return Bad(where, "must be an object");
  for (auto it = j.begin(); it != j.end(); ++it) {
    static const std::set<std::string> kKnown = {"id", "title", "url", "date", "publisher", "note"};
    if (!kKnown.count(it.key()) && it.key().rfind('_', 0) != 0)
      return Bad(absl::StrCat(where, ".", it.key()), "is not a known field (known: id, title, url, date, publisher, note)");
  }
  for (auto [key, out] : {std::pair{"id", &s.id}, std::pair{"title", &s.title}, std::pair{"url", &s.url},
                          std::pair{"date", &s.date}, std::pair{"publisher", &s.publisher}})
    if (auto st = OptionalString(j, key, where, out); !st.ok()) return st;
  if (need_url && s.url.empty()) return Bad(absl::StrCat(where, ".url"), "is missing (every source needs its citation)");
  if (!s.date.empty())
    if (auto d = ParseDate(s.date, absl::StrCat(where, ".date")); !d.ok()) return d.status();
  return s;
}

// Mean |log(p / m)| of a set of rows; a missing prediction counts as a factor of 100.
double LogError(double predicted, double measured) {
  if (!(predicted > 0)) return std::log(100.0);
  return std::min(std::abs(std::log(predicted / measured)), std::log(100.0));
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// Predictions of one point: one value per measured key (0 when the answer has none).
absl::StatusOr<std::vector<double>> Predict(const ValidationPoint& p, const Catalog& catalog,
                                            const PlanOptions& options) {
  auto answer = Plan(p.scenario, catalog, options);
  if (!answer.ok()) return absl::Status(answer.status().code(), absl::StrCat(p.where, " (", p.id, "): ", answer.status().message()));
  std::vector<double> out;
  for (const auto& [key, value] : p.measured) {
    auto it = answer->find(key);
    if (it == answer->end() || !it->is_number())
      return absl::InvalidArgumentError(absl::StrCat(p.where, ".measured.", key, " (", p.id, "): '", key, "' is not in the answer of ",
                                                     QuestionName(p.scenario.question)));
    out.push_back(it->get<double>());
  }
  return out;
}

ValidationRow MakeRow(const ValidationPoint& p, size_t k, double predicted) {
  ValidationRow row;
  row.point = p.id;
  row.name = p.name;
  row.source = p.source;
  row.category = p.category;
  row.metric = p.measured[k].first;
  row.measured = p.measured[k].second;
  row.predicted = predicted;
  row.error = (predicted - row.measured) / row.measured;
  return row;
}

ErrorSummary SummarizeRows(const std::string& group, const std::vector<const ValidationRow*>& rows) {
  ErrorSummary s;
  s.group = group;
  s.rows = static_cast<int>(rows.size());
  std::vector<double> errors;
  for (const ValidationRow* r : rows) {
    errors.push_back(std::abs(r->error));
    if (r->Ratio() > s.worst_ratio) {
      s.worst_ratio = r->Ratio();
      s.worst = absl::StrCat(r->point, " / ", r->metric);
    }
  }
  s.median_abs_error = Median(errors);
  return s;
}

// The fit's working state: training points, their current predictions, and which points each
// parameter moves.
class Fitter {
 public:
  Fitter(const ValidationSet& set, const std::vector<bool>& train, const Catalog& catalog, const PlanOptions& options)
      : set_(set), train_(train), catalog_(catalog), options_(options) {}

  // Sum over the rows of `points` of |log(p/m)| with tuning `t`.
  absl::StatusOr<double> Objective(const std::vector<size_t>& points, const Tuning& t) {
    double sum = 0;
    PlanOptions o = options_;
    o.tuning = &t;
    o.brief = true;
    for (size_t i : points) {
      auto pred = Predict(set_.points[i], catalog_, o);
      if (!pred.ok()) return pred.status();
      for (size_t k = 0; k < pred->size(); ++k) sum += LogError((*pred)[k], set_.points[i].measured[k].second);
    }
    return sum;
  }

  // Training points whose prediction changes when parameter `p` moves away from its value in `t`.
  absl::StatusOr<std::vector<size_t>> Informed(const TuningParameter& p, const Tuning& t) {
    Tuning moved = t;
    const double v = t.*(p.field);
    moved.*(p.field) = v * 1.25 <= p.hi ? v * 1.25 : std::max(p.lo, v * 0.8);
    if (moved.*(p.field) == v) moved.*(p.field) = (p.lo + p.hi) / 2;
    PlanOptions a = options_, b = options_;
    a.tuning = &t, b.tuning = &moved;
    a.brief = b.brief = true;
    std::vector<size_t> out;
    for (size_t i = 0; i < set_.points.size(); ++i) {
      if (!train_[i]) continue;
      auto pa = Predict(set_.points[i], catalog_, a);
      auto pb = Predict(set_.points[i], catalog_, b);
      if (!pa.ok()) return pa.status();
      if (!pb.ok()) return pb.status();
      for (size_t k = 0; k < pa->size(); ++k)
        if (std::abs((*pa)[k] - (*pb)[k]) > 1e-4 * std::max(1e-12, std::abs((*pa)[k]))) {
          out.push_back(i);
          break;
        }
    }
    return out;
  }

  // One-dimensional search of parameter `p` over `points`: a grid over the bounds (logarithmic
  // when the lower bound is positive), then golden-section search around the best grid point.
  absl::StatusOr<double> Search(const TuningParameter& p, Tuning* t, const std::vector<size_t>& points) {
    const bool log_scale = p.lo > 0;
    auto to_x = [&](double v) { return log_scale ? std::log(v) : v; };
    auto to_v = [&](double x) { return std::clamp(log_scale ? std::exp(x) : x, p.lo, p.hi); };
    auto f = [&](double x) -> absl::StatusOr<double> {
      Tuning trial = *t;
      trial.*(p.field) = to_v(x);
      return Objective(points, trial);
    };
    const double lo = to_x(p.lo), hi = to_x(p.hi);
    constexpr int kGrid = 8;
    double best_x = to_x(t->*(p.field));
    auto best = f(best_x);
    if (!best.ok()) return best.status();
    double best_f = *best;
    for (int g = 0; g <= kGrid; ++g) {
      const double x = lo + (hi - lo) * g / kGrid;
      auto y = f(x);
      if (!y.ok()) return y.status();
      if (*y < best_f - 1e-12) best_f = *y, best_x = x;
    }
    double a = std::max(lo, best_x - (hi - lo) / kGrid), b = std::min(hi, best_x + (hi - lo) / kGrid);
    constexpr double kPhi = 0.6180339887498949;
    double c = b - kPhi * (b - a), d = a + kPhi * (b - a);
    auto fc = f(c), fd = f(d);
    if (!fc.ok()) return fc.status();
    if (!fd.ok()) return fd.status();
    double yc = *fc, yd = *fd;
    for (int it = 0; it < 14 && b - a > 1e-3; ++it) {
      if (yc < yd) {
        b = d, d = c, yd = yc, c = b - kPhi * (b - a);
        auto y = f(c);
        if (!y.ok()) return y.status();
        yc = *y;
      } else {
        a = c, c = d, yc = yd, d = a + kPhi * (b - a);
        auto y = f(d);
        if (!y.ok()) return y.status();
        yd = *y;
      }
    }
    if (std::min(yc, yd) < best_f - 1e-12) best_x = yc < yd ? c : d, best_f = std::min(yc, yd);
    t->*(p.field) = to_v(best_x);
    return best_f;
  }

 private:
  const ValidationSet& set_;
  const std::vector<bool>& train_;
  const Catalog& catalog_;
  const PlanOptions& options_;
};

}  // namespace

double ValidationRow::Ratio() const {
  if (!(predicted > 0)) return 1e9;
  return std::max(predicted / measured, measured / predicted);
}

absl::StatusOr<ValidationSet> ParseValidationSet(const std::string& json_text, const std::string& file) {
  const json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  ValidationSet set;
  set.file = file;
  const json* points = &j;
  std::string prefix = file;
  const bool structured = j.is_object();
  if (j.is_discarded() || (!j.is_array() && !j.is_object()))
    return Bad(absl::StrCat(file, ":"), "must be a JSON array of points or a {\"points\": [...]} object");
  if (structured) {
    for (auto it = j.begin(); it != j.end(); ++it) {
      static const std::set<std::string> kKnown = {"format", "sources", "points"};
      if (!kKnown.count(it.key()) && it.key().rfind('_', 0) != 0)
        return Bad(absl::StrCat(file, ": ", it.key()), "is not a known field (known: format, sources, points)");
    }
    if (!j.contains("format") || !j["format"].is_string() || j["format"].get<std::string>() != "dsv4-validation/1")
      return Bad(absl::StrCat(file, ": format"), "must be \"dsv4-validation/1\"");
    if (!j.contains("points") || !j["points"].is_array())
      return Bad(absl::StrCat(file, ": points"), "must be an array of points");
    points = &j["points"];
    prefix = absl::StrCat(file, ": points");
    if (j.contains("sources")) {
      if (!j["sources"].is_object()) return Bad(absl::StrCat(file, ": sources"), "must be an object of sources by id");
      for (auto it = j["sources"].begin(); it != j["sources"].end(); ++it) {
        if (it.key().rfind('_', 0) == 0) continue;
        auto s = ParseSource(it.value(), absl::StrCat(file, ": sources.", it.key()), true);
        if (!s.ok()) return s.status();
        s->id = it.key();
        set.sources[it.key()] = *s;
      }
    }
  }
  std::set<std::string> ids;
  for (size_t i = 0; i < points->size(); ++i) {
    const json& pt = (*points)[i];
    const std::string where = absl::StrCat(prefix, "[", i, "]");
    if (!pt.is_object()) return Bad(where, "must be an object");
    for (auto it = pt.begin(); it != pt.end(); ++it) {
      static const std::set<std::string> kKnown = {"id",    "name",     "source", "category", "setup",
                                                    "scenario", "measured", "note"};
      if (!kKnown.count(it.key()) && it.key().rfind('_', 0) != 0)
        return Bad(absl::StrCat(where, ".", it.key()),
                   "is not a known field (known: id, name, source, category, setup, scenario, measured, note)");
    }
    ValidationPoint p;
    for (auto [key, out] :
         {std::pair{"id", &p.id}, std::pair{"name", &p.name}, std::pair{"category", &p.category}})
      if (auto st = OptionalString(pt, key, where, out); !st.ok()) return st;
    if (p.id.empty()) p.id = absl::StrCat(file, "[", i, "]");
    if (!ids.insert(p.id).second) return Bad(absl::StrCat(where, ".id"), absl::StrCat("\"", p.id, "\" is used twice"));
    if (p.name.empty()) p.name = p.id;
    p.where = where;
    if (p.category.empty()) p.category = "uncategorized";
    // The source: an id of the file's "sources", an object, or (published_points.json) free text.
    if (!pt.contains("source") || pt["source"].is_null()) {
      if (structured) return Bad(absl::StrCat(where, ".source"), "is missing (every point cites its source)");
      p.source = "unknown";
    } else if (pt["source"].is_string()) {
      p.source = pt["source"].get<std::string>();
      if (structured && !set.sources.count(p.source))
        return Bad(absl::StrCat(where, ".source"), absl::StrCat("= \"", p.source, "\" is not in the file's sources"));
      if (!structured) set.sources[p.source] = ValidationSource{p.source, p.source, "", "", ""};
    } else if (pt["source"].is_object()) {
      auto s = ParseSource(pt["source"], absl::StrCat(where, ".source"), structured);
      if (!s.ok()) return s.status();
      if (s->id.empty()) return Bad(absl::StrCat(where, ".source.id"), "is missing");
      p.source = s->id;
      set.sources[s->id] = *s;
    } else {
      return Bad(absl::StrCat(where, ".source"), "must be a source id or an object");
    }
    if (pt.contains("setup") && !pt["setup"].is_null()) {
      if (!pt["setup"].is_object()) return Bad(absl::StrCat(where, ".setup"), "must be an object");
      for (auto it = pt["setup"].begin(); it != pt["setup"].end(); ++it)
        if (!it->is_string() && !it->is_null() && !it->is_number())
          return Bad(absl::StrCat(where, ".setup.", it.key()), "must be a string, a number or null (unknown)");
    }
    if (!pt.contains("scenario") || !pt["scenario"].is_object())
      return Bad(absl::StrCat(where, ".scenario"), "must be a scenario object");
    if (!pt.contains("measured") || !pt["measured"].is_object())
      return Bad(absl::StrCat(where, ".measured"), "must be an object of answer keys and measured values");
    auto s = ParseScenario(pt["scenario"].dump(), where);
    if (!s.ok()) return s.status();
    p.scenario = *s;
    if (p.scenario.name.empty()) p.scenario.name = p.name;
    for (auto m = pt["measured"].begin(); m != pt["measured"].end(); ++m) {
      if (m.value().is_null()) continue;  // measured by the source but not published
      if (!m.value().is_number() || !(m.value().get<double>() > 0))
        return Bad(absl::StrCat(where, ".measured.", m.key()), "must be a positive number (or null)");
      p.measured.emplace_back(m.key(), m.value().get<double>());
    }
    if (p.measured.empty()) return Bad(absl::StrCat(where, ".measured"), "has no measured value");
    set.points.push_back(std::move(p));
  }
  return set;
}

absl::StatusOr<ValidationSet> LoadValidationSet(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("--validate: cannot open '", path, "'"));
  std::ostringstream ss;
  ss << in.rdbuf();
  return ParseValidationSet(ss.str(), path);
}

void Summarize(Validation* v) {
  std::vector<const ValidationRow*> all;
  std::map<std::string, std::vector<const ValidationRow*>> by_source, by_category;
  for (const ValidationRow& r : v->rows) {
    all.push_back(&r);
    by_source[r.source].push_back(&r);
    by_category[r.category].push_back(&r);
  }
  v->overall = SummarizeRows("all", all);
  v->by_source.clear();
  v->by_category.clear();
  for (const auto& [g, rows] : by_source) v->by_source.push_back(SummarizeRows(g, rows));
  for (const auto& [g, rows] : by_category) v->by_category.push_back(SummarizeRows(g, rows));
  v->median_abs_error = v->overall.median_abs_error;
  v->worst_ratio = v->overall.worst_ratio;
  v->worst = v->overall.worst;
}

absl::StatusOr<Validation> Validate(const ValidationSet& set, const Catalog& catalog, const PlanOptions& options) {
  Validation v;
  v.mode = "in-sample";
  PlanOptions o = options;
  o.brief = true;
  for (const ValidationPoint& p : set.points) {
    auto pred = Predict(p, catalog, o);
    if (!pred.ok()) return pred.status();
    for (size_t k = 0; k < pred->size(); ++k) v.rows.push_back(MakeRow(p, k, (*pred)[k]));
  }
  Summarize(&v);
  return v;
}

absl::StatusOr<Validation> Validate(const std::string& json_text, const std::string& source, const Catalog& catalog,
                                    const PlanOptions& options) {
  auto set = ParseValidationSet(json_text, source);
  if (!set.ok()) return set.status();
  return Validate(*set, catalog, options);
}

absl::StatusOr<FitResult> Fit(const ValidationSet& set, const std::vector<bool>& train, const Catalog& catalog,
                              const PlanOptions& options, const Tuning& start, int sweeps) {
  if (train.size() != set.points.size()) return absl::InvalidArgumentError("Fit: one train flag per point");
  Fitter fitter(set, train, catalog, options);
  FitResult out;
  out.tuning = start;
  // Which training points each parameter moves, at the starting values (a parameter whose points
  // are all held out keeps its catalog value).
  std::vector<std::vector<size_t>> informed;
  for (const TuningParameter& p : TuningParameters()) {
    auto pts = fitter.Informed(p, start);
    if (!pts.ok()) return pts.status();
    informed.push_back(*pts);
  }
  for (int sweep = 0; sweep < sweeps; ++sweep) {
    for (size_t i = 0; i < TuningParameters().size(); ++i) {
      if (informed[i].empty()) continue;
      auto f = fitter.Search(TuningParameters()[i], &out.tuning, informed[i]);
      if (!f.ok()) return f.status();
    }
  }
  for (size_t i = 0; i < TuningParameters().size(); ++i) {
    ParameterFit pf;
    pf.name = TuningParameters()[i].name;
    pf.value = out.tuning.*(TuningParameters()[i].field);
    pf.fitted = !informed[i].empty();
    std::set<std::string> sources;
    for (size_t k : informed[i]) {
      pf.points.push_back(set.points[k].id);
      sources.insert(set.points[k].source);
    }
    pf.sources.assign(sources.begin(), sources.end());
    out.parameters.push_back(pf);
  }
  std::vector<size_t> all;
  int rows = 0;
  for (size_t i = 0; i < set.points.size(); ++i)
    if (train[i]) all.push_back(i), rows += static_cast<int>(set.points[i].measured.size());
  auto total = fitter.Objective(all, out.tuning);
  if (!total.ok()) return total.status();
  out.mean_abs_log_error = rows > 0 ? *total / rows : 0;
  return out;
}

absl::StatusOr<Validation> CrossValidate(const ValidationSet& set, const std::string& group, const Catalog& catalog,
                                         const PlanOptions& options) {
  if (group != "source" && group != "publisher" && group != "point")
    return absl::InvalidArgumentError(
        absl::StrCat("--cross-validate: unknown grouping '", group, "' (known: source, publisher, point)"));
  // The folds: each source (or publisher: the sources one author or team published, held out
  // together; or point) in turn is held out.
  auto key_of = [&](const ValidationPoint& p) -> std::string {
    if (group == "point") return p.id;
    if (group == "publisher") {
      auto it = set.sources.find(p.source);
      if (it != set.sources.end() && !it->second.publisher.empty()) return it->second.publisher;
    }
    return p.source;
  };
  std::vector<std::string> folds;
  for (const ValidationPoint& p : set.points) {
    const std::string key = key_of(p);
    if (std::find(folds.begin(), folds.end(), key) == folds.end()) folds.push_back(key);
  }
  if (folds.size() < 2) return absl::InvalidArgumentError("--cross-validate: needs points from two sources at least");
  Validation v;
  v.mode = absl::StrCat("held out by ", group);
  v.folds = static_cast<int>(folds.size());
  // Folds are independent: run them on the machine's cores, each writing its own slot.
  std::vector<std::vector<ValidationRow>> rows(folds.size());
  std::vector<absl::Status> status(folds.size());
  auto run_fold = [&](size_t f) {
    std::vector<bool> train(set.points.size());
    for (size_t i = 0; i < set.points.size(); ++i)
      train[i] = key_of(set.points[i]) != folds[f];
    // Every fold starts from the parameters' priors (Tuning's defaults), not from the catalog's values
    // (fitted on every point, the held-out ones included): a parameter that no training point
    // informs keeps its prior.
    auto fit = Fit(set, train, catalog, options, Tuning{}, 3);
    if (!fit.ok()) {
      status[f] = fit.status();
      return;
    }
    PlanOptions o = options;
    o.brief = true;
    o.tuning = &fit->tuning;
    for (size_t i = 0; i < set.points.size(); ++i) {
      if (train[i]) continue;
      auto pred = Predict(set.points[i], catalog, o);
      if (!pred.ok()) {
        status[f] = pred.status();
        return;
      }
      for (size_t k = 0; k < pred->size(); ++k) rows[f].push_back(MakeRow(set.points[i], k, (*pred)[k]));
    }
  };
  const size_t workers = std::max<size_t>(1, std::min<size_t>(folds.size(), std::thread::hardware_concurrency()));
  std::vector<std::thread> pool;
  std::atomic<size_t> next{0};
  for (size_t w = 0; w < workers; ++w)
    pool.emplace_back([&] {
      for (size_t f; (f = next.fetch_add(1)) < folds.size();) run_fold(f);
    });
  for (std::thread& t : pool) t.join();
  for (size_t f = 0; f < folds.size(); ++f) {
    if (!status[f].ok()) return status[f];
    for (ValidationRow& r : rows[f]) v.rows.push_back(std::move(r));
  }
  Summarize(&v);
  return v;
}

}  // namespace dsv4::cluster
