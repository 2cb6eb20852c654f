#include "cluster/profile.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "base/status.h"

namespace dsv4::cluster {
namespace {

using nlohmann::json;

// The rate at `size` of points[begin, end), one K's points sorted by size.
double AtSize(const std::vector<RatePoint>& points, size_t begin, size_t end, double size) {
  if (size <= points[begin].size) return points[begin].rate;
  if (size >= points[end - 1].size) return points[end - 1].rate;
  for (size_t i = begin + 1; i < end; ++i) {
    if (size > points[i].size) continue;
    const RatePoint& a = points[i - 1];
    const RatePoint& b = points[i];
    const double t = (std::log(size) - std::log(a.size)) / (std::log(b.size) - std::log(a.size));
    return a.rate + t * (b.rate - a.rate);
  }
  return points[end - 1].rate;
}

absl::Status ReadCurve(const json& j, const std::string& field, const char* size_key, const char* rate_key,
                       RateCurve* out) {
  if (!j.is_array()) return absl::InvalidArgumentError(absl::StrCat(field, " must be an array of points"));
  for (size_t i = 0; i < j.size(); ++i) {
    const json& p = j[i];
    const std::string where = absl::StrCat(field, "[", i, "]");
    if (!p.is_object() || !p.contains(size_key) || !p.contains(rate_key))
      return absl::InvalidArgumentError(
          absl::StrCat(where, " must be {\"", size_key, "\": .., \"", rate_key, "\": ..}"));
    if (!p[size_key].is_number() || !p[rate_key].is_number() || p[size_key].get<double>() <= 0 ||
        p[rate_key].get<double>() <= 0)
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", size_key, " and ", rate_key, " must be positive"));
    RatePoint point{p[size_key].get<double>(), p[rate_key].get<double>()};
    if (p.contains("k")) {
      if (!p["k"].is_number() || p["k"].get<double>() <= 0)
        return absl::InvalidArgumentError(absl::StrCat(where, ": k (the reduction size) must be positive"));
      point.k = p["k"].get<double>();
    }
    out->points.push_back(point);
  }
  std::sort(out->points.begin(), out->points.end(),
            [](const RatePoint& a, const RatePoint& b) { return a.k != b.k ? a.k < b.k : a.size < b.size; });
  // A surface needs every point's K: a point without one would be a curve at no known width.
  for (size_t i = 1; i < out->points.size(); ++i) {
    if (out->points[i].k != out->points[0].k && out->points[0].k == 0)
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": give k on every point or on none (points at several k are a surface by k)"));
    if (out->points[i].k == out->points[i - 1].k && out->points[i].size == out->points[i - 1].size)
      return absl::InvalidArgumentError(
          absl::StrCat(field, ": two points at ", size_key, " ", out->points[i].size, " and k ", out->points[i].k));
  }
  return absl::OkStatus();
}

absl::Status ReadPositive(const json& j, const char* key, const std::string& field, double* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return absl::OkStatus();
  if (!it->is_number() || it->get<double>() <= 0)
    return absl::InvalidArgumentError(absl::StrCat(field, ".", key, " must be a positive number"));
  *out = it->get<double>();
  return absl::OkStatus();
}

}  // namespace

double RateCurve::At(double size, double k) const {
  if (points.empty()) return 0;
  // The rate by size among the points measured at K = `at`: a run of the points, which are sorted
  // by k, then by size.
  auto level = [&](double at) {
    const auto [b, e] = std::equal_range(points.begin(), points.end(), RatePoint{0, 0, at},
                                         [](const RatePoint& x, const RatePoint& y) { return x.k < y.k; });
    return AtSize(points, b - points.begin(), e - points.begin(), size);
  };
  const double narrowest = points.front().k, widest = points.back().k;
  if (k <= 0 || k >= widest) return level(widest);
  if (k <= narrowest) return level(narrowest);
  const auto above =
      std::upper_bound(points.begin(), points.end(), k, [](double v, const RatePoint& p) { return v < p.k; });
  const double ka = std::prev(above)->k, kb = above->k;  // the measured K on either side of k
  const double t = (std::log(k) - std::log(ka)) / (std::log(kb) - std::log(ka));
  return level(ka) + t * (level(kb) - level(ka));
}

absl::StatusOr<Profile> ParseProfile(const std::string& json_text, const std::string& source) {
  const json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  const std::string p = source + ": profile";
  if (!j.contains("format") || !j["format"].is_string() || j["format"].get<std::string>() != "dsv4-profile/1")
    return absl::InvalidArgumentError(absl::StrCat(p, ".format must be \"dsv4-profile/1\""));
  Profile prof;
  prof.source = source;
  if (j.contains("device")) {
    if (!j["device"].is_string()) return absl::InvalidArgumentError(absl::StrCat(p, ".device must be a string"));
    prof.device = j["device"].get<std::string>();
  }
  struct CurveKey {
    const char* key;
    const char* size;
    const char* rate;
    RateCurve* out;
  };
  const CurveKey curves[] = {
      {"gemm_fp8", "tokens", "tflops", &prof.gemm_fp8},
      {"gemm_bf16", "tokens", "tflops", &prof.gemm_bf16},
      {"grouped_gemm", "tokens_per_expert", "tflops", &prof.grouped_gemm},
      {"attention_prefill", "context", "tflops", &prof.attention_prefill},
      {"allreduce", "bytes", "gbps", &prof.allreduce},
      {"product_floor_us", "tokens", "us", &prof.product_floor_us},
  };
  for (const CurveKey& c : curves)
    if (j.contains(c.key))
      DSV4_RETURN_IF_ERROR(ReadCurve(j[c.key], absl::StrCat(p, ".", c.key), c.size, c.rate, c.out));
  for (auto [key, out] :
       {std::pair{"memory_gbps", &prof.memory_gbps}, std::pair{"kernel_floor_us", &prof.kernel_floor_us}})
    DSV4_RETURN_IF_ERROR(ReadPositive(j, key, p, out));
  if (j.contains("all_to_all")) {
    const json& a = j["all_to_all"];
    if (!a.is_object()) return absl::InvalidArgumentError(absl::StrCat(p, ".all_to_all must be an object"));
    const std::string f = p + ".all_to_all";
    for (auto [key, out] : {std::pair{"intra_node_gbps", &prof.all_to_all_intra_gbps},
                            std::pair{"inter_node_gbps", &prof.all_to_all_inter_gbps},
                            std::pair{"latency_us", &prof.all_to_all_latency_us}})
      DSV4_RETURN_IF_ERROR(ReadPositive(a, key, f, out));
  }
  if (j.contains("host")) {
    const json& h = j["host"];
    if (!h.is_object()) return absl::InvalidArgumentError(absl::StrCat(p, ".host must be an object"));
    for (auto [key, out] : {std::pair{"memory_gbps", &prof.host_memory_gbps}, std::pair{"gflops", &prof.host_gflops}})
      DSV4_RETURN_IF_ERROR(ReadPositive(h, key, p + ".host", out));
  }
  return prof;
}

absl::StatusOr<Profile> LoadProfile(const std::string& path) {
  DSV4_ASSIGN_OR_RETURN(const std::string text, ReadFile(path), "--profile");
  return ParseProfile(text, path);
}

}  // namespace dsv4::cluster
