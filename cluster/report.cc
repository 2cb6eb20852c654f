#include "cluster/report.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/file.h"
#include "base/status.h"
#include "absl/strings/str_join.h"

namespace dsv4::cluster {
namespace {

using nlohmann::json;

const char* kColors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b",
                         "#17becf", "#7f7f7f", "#bcbd22", "#e377c2", "#393b79"};

double Num(const json& j, const char* key, double fallback = 0) {
  auto it = j.find(key);
  return it != j.end() && it->is_number() ? it->get<double>() : fallback;
}

std::string Escape(const std::string& s) {
  std::string out;
  for (char c : s) {
    if (c == '<')
      out += "&lt;";
    else if (c == '>')
      out += "&gt;";
    else if (c == '&')
      out += "&amp;";
    else
      out += c;
  }
  return out;
}

std::string Fmt(double v) {
  if (v == 0) return "0";
  const double a = std::abs(v);
  if (a >= 1e6) return absl::StrFormat("%.3gM", v / 1e6);
  if (a >= 1e4) return absl::StrFormat("%.3gk", v / 1e3);
  if (a >= 100) return absl::StrFormat("%.0f", v);
  if (a >= 1) return absl::StrFormat("%.3g", v);
  return absl::StrFormat("%.3g", v);
}

// A plot area with axes; maps data to pixels.
struct Frame {
  double x0 = 80, y0 = 50, w = 560, h = 320;
  double xmin = 0, xmax = 1, ymin = 0, ymax = 1;
  bool logx = false;
  double X(double x) const {
    const double f =
        logx ? (std::log(x) - std::log(xmin)) / (std::log(xmax) - std::log(xmin)) : (x - xmin) / (xmax - xmin);
    return x0 + f * w;
  }
  double Y(double y) const { return y0 + h - (y - ymin) / (ymax - ymin) * h; }
};

std::string Header(double width, double height, const std::string& title) {
  return absl::StrFormat(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" viewBox=\"0 0 %.0f %.0f\" "
      "font-family=\"Helvetica, Arial, sans-serif\" font-size=\"12\">\n<rect width=\"100%%\" height=\"100%%\" "
      "fill=\"white\"/>\n<text x=\"%.0f\" y=\"24\" font-size=\"15\" text-anchor=\"middle\" "
      "font-weight=\"bold\">%s</text>\n",
      width, height, width, height, width / 2, Escape(title));
}

// A tick step of 1, 2 or 5 x 10^k giving about five ticks over `range`.
double NiceStep(double range) {
  const double raw = range / 5, mag = std::pow(10, std::floor(std::log10(raw)));
  const double f = raw / mag;
  return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * mag;
}

std::string Axes(const Frame& f, const std::string& xlabel, const std::string& ylabel, bool xticks = true) {
  std::string s =
      absl::StrFormat("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#444\"/>\n",
                      f.x0, f.y0, f.w, f.h);
  const double ystep = NiceStep(f.ymax - f.ymin);
  for (double v = f.ymin; v <= f.ymax + 1e-9; v += ystep) {
    const double y = f.Y(v);
    absl::StrAppend(
        &s,
        absl::StrFormat("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", f.x0, y,
                        f.x0 + f.w, y),
        absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", f.x0 - 6, y + 4, Fmt(v)));
  }
  if (xticks) {
    const double xstep = NiceStep(f.xmax - f.xmin);
    for (double v = std::ceil(f.xmin / xstep) * xstep; v <= f.xmax + 1e-9; v += xstep) {
      absl::StrAppend(&s, absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", f.X(v),
                                          f.y0 + f.h + 16, Fmt(v)));
    }
  }
  absl::StrAppend(
      &s,
      absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%s</text>\n", f.x0 + f.w / 2, f.y0 + f.h + 36,
                      Escape(xlabel)),
      absl::StrFormat("<text transform=\"translate(%.1f,%.1f) rotate(-90)\" text-anchor=\"middle\">%s</text>\n",
                      f.x0 - 58, f.y0 + f.h / 2, Escape(ylabel)));
  return s;
}

struct Series {
  std::string name;
  std::vector<std::pair<double, double>> points;
};

std::string LineChart(const std::string& title, const std::string& xlabel, const std::string& ylabel,
                      const std::vector<Series>& series, bool logx) {
  Frame f;
  f.logx = logx;
  f.xmin = 1e300, f.xmax = -1e300, f.ymax = 0;
  for (const Series& s : series)
    for (auto [x, y] : s.points) {
      f.xmin = std::min(f.xmin, x), f.xmax = std::max(f.xmax, x), f.ymax = std::max(f.ymax, y);
    }
  if (f.xmin >= f.xmax) f.xmin = f.xmin * 0.5, f.xmax = f.xmax * 2 + 1;
  f.logx = false;  // linear axes read better; `logx` kept for callers that want it later
  (void)logx;
  f.xmin = 0;
  f.ymax = f.ymax > 0 ? f.ymax * 1.1 : 1;
  f.ymax = std::ceil(f.ymax / NiceStep(f.ymax)) * NiceStep(f.ymax);
  f.xmax = std::ceil(f.xmax * 1.05 / NiceStep(f.xmax)) * NiceStep(f.xmax);
  std::string svg = Header(760, 430, title) + Axes(f, xlabel, ylabel);
  for (size_t i = 0; i < series.size(); ++i) {
    const char* color = kColors[i % 11];
    std::string path;
    for (auto [x, y] : series[i].points) absl::StrAppend(&path, path.empty() ? "M" : " L", f.X(x), ",", f.Y(y));
    absl::StrAppend(&svg, "<path d=\"", path, "\" fill=\"none\" stroke=\"", color, "\" stroke-width=\"2\"/>\n");
    for (auto [x, y] : series[i].points)
      absl::StrAppend(
          &svg, absl::StrFormat("<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"%s\"/>\n", f.X(x), f.Y(y), color));
    absl::StrAppend(&svg, absl::StrFormat("<rect x=\"652\" y=\"%.0f\" width=\"12\" height=\"12\" fill=\"%s\"/>"
                                          "<text x=\"668\" y=\"%.0f\">%s</text>\n",
                                          56 + 18 * i, color, 66 + 18 * i, Escape(series[i].name)));
  }
  return svg + "</svg>\n";
}

// Grouped vertical bars: one group per category, one bar per series.
std::string BarChart(const std::string& title, const std::string& ylabel, const std::vector<std::string>& categories,
                     const std::vector<Series>& series) {
  Frame f;
  f.ymax = 0;
  for (const Series& s : series)
    for (auto [x, y] : s.points) f.ymax = std::max(f.ymax, y);
  f.ymax = f.ymax > 0 ? f.ymax * 1.15 : 1;
  f.ymax = std::ceil(f.ymax / NiceStep(f.ymax)) * NiceStep(f.ymax);
  std::string svg = Header(760, 460, title) + Axes(f, "", ylabel, false);
  const double group = f.w / std::max<size_t>(1, categories.size());
  const double bar = group * 0.8 / std::max<size_t>(1, series.size());
  for (size_t c = 0; c < categories.size(); ++c) {
    for (size_t i = 0; i < series.size(); ++i) {
      if (c >= series[i].points.size()) continue;
      const double y = series[i].points[c].second;
      const double x = f.x0 + group * c + group * 0.1 + bar * i;
      absl::StrAppend(&svg,
                      absl::StrFormat("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n", x,
                                      f.Y(y), bar * 0.92, f.Y(0) - f.Y(y), kColors[i % 11]),
                      absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"10\">%s</text>\n",
                                      x + bar * 0.46, f.Y(y) - 3, Fmt(y)));
    }
    absl::StrAppend(&svg,
                    absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"11\">%s</text>\n",
                                    f.x0 + group * (c + 0.5), f.y0 + f.h + 16, Escape(categories[c])));
  }
  for (size_t i = 0; i < series.size(); ++i)
    absl::StrAppend(&svg, absl::StrFormat("<rect x=\"652\" y=\"%.0f\" width=\"12\" height=\"12\" fill=\"%s\"/>"
                                          "<text x=\"668\" y=\"%.0f\">%s</text>\n",
                                          56 + 18 * i, kColors[i % 11], 66 + 18 * i, Escape(series[i].name)));
  return svg + "</svg>\n";
}

std::string Slug(const std::string& s, size_t index) {
  std::string out;
  for (char c : s) out += std::isalnum(static_cast<unsigned char>(c)) ? static_cast<char>(std::tolower(c)) : '-';
  while (out.find("--") != std::string::npos) out.erase(out.find("--"), 1);
  if (out.empty()) out = absl::StrCat("scenario-", index);
  return out.substr(0, 60);
}

void AppendKeys(std::string* out, const json& a, std::initializer_list<const char*> keys) {
  for (const char* k : keys)
    if (a.contains(k) && !a[k].is_null()) absl::StrAppend(out, absl::StrFormat("  %-38s %s\n", k, a[k].dump()));
}

}  // namespace

std::string TextReport(const json& a) {
  std::string out;
  const json& m = a["model"];
  const json& hw = a["hardware"];
  const json& l = a["layout"];
  absl::StrAppend(&out, "scenario: ", a.value("scenario", std::string()),
                  "  (question: ", a["question"].get<std::string>(), ")\n");
  absl::StrAppend(
      &out, absl::StrFormat("model:    %s  %.1fB total, %.1fB active, %.1f GB of weights, %.0f cache B/token/layer\n",
                            m["name"].get<std::string>(), Num(m, "total_params_b"), Num(m, "active_params_b"),
                            Num(m, "weights_gb"), Num(m, "cache_bytes_per_token_per_layer")));
  absl::StrAppend(&out,
                  absl::StrFormat("hardware: %d x %s (%d nodes x %d), scale-up %s, scale-out %s, $%.2f/device-hour\n",
                                  hw["devices"].get<int>(), hw["device"].get<std::string>(), hw["nodes"].get<int>(),
                                  hw["devices_per_node"].get<int>(), hw["scale_up"].get<std::string>(),
                                  hw["scale_out"].get<std::string>(), Num(hw, "price_per_device_hour")));
  absl::StrAppend(&out, absl::StrFormat("layout:   TP%d x DP%d attention, EP%d, experts on %s, %d redundant, "
                                        "speculative %s\n",
                                        l["tp"].get<int>(), l["dp_attention"].get<int>(), l["ep"].get<int>(),
                                        l["experts_on"].get<std::string>(), l["redundant_experts"].get<int>(),
                                        a["speculative"]["enabled"].get<bool>() ? "on" : "off"));
  // The host's figures where it does the experts' work (experts on the host, or a host-only device).
  if (const auto h = a.find("host"); h != a.end() && h->value("runs_experts", false)) {
    const std::string cpu = h->value("cpu", std::string());
    const std::string clock = Num(*h, "ghz") > 0 ? absl::StrFormat(" at %.2f GHz", Num(*h, "ghz")) : "";
    absl::StrAppend(&out, absl::StrFormat("host:     %s%d socket(s), %d cores%s, STREAM %.0f GB/s; experts get %.0f "
                                          "GFLOP/s and %.0f GB/s per device\n",
                                          cpu.empty() ? "" : cpu + ", ", h->value("sockets", 1), h->value("cores", 0),
                                          clock, Num(*h, "stream_gbps"), Num(*h, "expert_gflops_per_device"),
                                          Num(*h, "expert_gbps_per_device")));
  }
  absl::StrAppend(&out, absl::StrFormat("\none decoded token at %s tokens of context (batch 1, all layers):\n",
                                        Fmt(Num(a["workload"], "input_tokens"))));
  absl::StrAppend(&out, absl::StrFormat("  %-32s %10s %12s\n", "component", "GFLOP", "MB moved"));
  for (const auto& row : m["decode_token_costs_at_input_context"])
    absl::StrAppend(&out, absl::StrFormat("  %-32s %10.3f %12.2f\n", row["component"].get<std::string>(),
                                          Num(row, "gflop"), Num(row, "mb_moved")));
  absl::StrAppend(&out, "\nanswer:\n");
  AppendKeys(&out, a,
             {"prefill_tokens_per_s_per_device",
              "prefill_tokens_per_s_per_node",
              "decode_tokens_per_s_per_device",
              "decode_tokens_per_s_per_node",
              "single_stream_decode_tokens_per_s",
              "single_stream_prefill_tokens_per_s",
              "devices_needed",
              "units",
              "max_qps_per_unit",
              "prefill_units",
              "decode_units",
              "ttft_ms_p50",
              "ttft_ms_p99",
              "tpot_ms_p50",
              "tpot_ms_p99",
              "ttft_ms",
              "tpot_ms",
              "decode_batch_per_device",
              "prefill_batch_per_device",
              "cost_per_million_output_tokens",
              "cost_per_million_input_tokens"});
  absl::StrAppend(&out, "  feasible                               ", a["feasible"].get<bool>() ? "yes" : "NO", "\n");
  for (const auto& r : a["reasons"]) absl::StrAppend(&out, "    reason: ", r.get<std::string>(), "\n");
  for (const auto& w : a["warnings"]) absl::StrAppend(&out, "    note: ", w.get<std::string>(), "\n");
  if (a.contains("memory_per_device_gb")) {
    absl::StrAppend(&out, "\nmemory per device (GB):\n");
    for (auto it = a["memory_per_device_gb"].begin(); it != a["memory_per_device_gb"].end(); ++it) {
      if (it.key() == "host") continue;
      absl::StrAppend(&out, absl::StrFormat("  %-28s %10.2f\n", it.key(), it.value().get<double>()));
    }
    const json& host = a["memory_per_device_gb"]["host"];
    absl::StrAppend(&out, absl::StrFormat("  host: routed experts %.2f GB, Engram tables %.2f GB\n",
                                          Num(host, "routed_experts"), Num(host, "engram_tables")));
  }
  for (const char* phase : {"prefill", "decode"}) {
    if (!a.contains(phase)) continue;
    const json& p = a[phase];
    absl::StrAppend(
        &out, absl::StrFormat("\n%s step: %.3f ms (compute %.3f, host %.3f, comm %.3f of which exposed %.3f; "
                              "%d micro-batch(es), expert imbalance %.2f) bottleneck: %s\n",
                              phase, Num(p, "step_ms"), Num(p, "compute_ms"), Num(p, "host_ms"), Num(p, "comm_ms"),
                              Num(p, "exposed_comm_ms"), p["micro_batches"].get<int>(), Num(p, "expert_imbalance"),
                              p["bottleneck"].get<std::string>()));
    absl::StrAppend(&out, absl::StrFormat("  %-28s %12s %10s %12s %10s\n", "operator", "ms", "bound", "GFLOP", "GB"));
    for (const auto& op : p["ops"])
      absl::StrAppend(&out,
                      absl::StrFormat("  %-28s %12.4f %10s %12.3f %10.4f\n", op["op"].get<std::string>(), Num(op, "ms"),
                                      op["bound"].get<std::string>(), Num(op, "gflop"), Num(op, "gb")));
  }
  return out;
}

std::string ValidationText(const Validation& v) {
  std::string out = absl::StrFormat("%s: ", v.mode);
  absl::StrAppend(&out, v.mode == "in-sample"
                            ? "the catalog's fitted parameters, fitted on these points where they inform them\n\n"
                            : "every row predicted with parameters refitted without its group\n\n");
  absl::StrAppend(&out, absl::StrFormat("%-52s %-34s %-34s %11s %11s %8s\n", "point", "source", "metric",
                                        "predicted", "measured", "error"));
  for (const ValidationRow& r : v.rows)
    absl::StrAppend(&out, absl::StrFormat("%-52s %-34s %-34s %11.2f %11.2f %+7.1f%%\n", r.point.substr(0, 52),
                                          r.source.substr(0, 34), r.metric.substr(0, 34), r.predicted, r.measured,
                                          r.error * 100));
  auto table = [&](const char* title, const std::vector<ErrorSummary>& groups) {
    absl::StrAppend(&out, absl::StrFormat("\n%-52s %5s %14s %8s  %s\n", title, "rows", "median |error|", "worst",
                                          "worst point"));
    for (const ErrorSummary& g : groups)
      absl::StrAppend(&out, absl::StrFormat("%-52s %5d %13.1f%% %7.2fx  %s\n", g.group.substr(0, 52), g.rows,
                                            g.median_abs_error * 100, g.worst_ratio, g.worst));
  };
  table("by source", v.by_source);
  table("by category", v.by_category);
  absl::StrAppend(&out, absl::StrFormat("\n%s median absolute error: %.1f%% over %d measurements from %zu sources%s; "
                                        "worst: %.2fx (%s)\n",
                                        v.mode, v.median_abs_error * 100, v.overall.rows, v.by_source.size(),
                                        v.folds > 0 ? absl::StrFormat(" (%d folds)", v.folds) : "", v.worst_ratio,
                                        v.worst));
  return out;
}

json ValidationJson(const Validation& v) {
  json rows = json::array();
  for (const ValidationRow& r : v.rows)
    rows.push_back({{"point", r.point},
                    {"name", r.name},
                    {"source", r.source},
                    {"category", r.category},
                    {"metric", r.metric},
                    {"predicted", r.predicted},
                    {"measured", r.measured},
                    {"error", r.error}});
  auto groups = [](const std::vector<ErrorSummary>& gs) {
    json out = json::array();
    for (const ErrorSummary& g : gs)
      out.push_back({{"group", g.group},
                     {"rows", g.rows},
                     {"median_abs_error", g.median_abs_error},
                     {"worst_ratio", g.worst_ratio},
                     {"worst", g.worst}});
    return out;
  };
  return {{"mode", v.mode},
          {"folds", v.folds},
          {"points", rows},
          {"by_source", groups(v.by_source)},
          {"by_category", groups(v.by_category)},
          {"median_abs_error", v.median_abs_error},
          {"worst_ratio", v.worst_ratio},
          {"worst", v.worst}};
}

std::string FitText(const FitResult& f) {
  std::string out = absl::StrFormat("%-22s %9s  %s\n", "parameter", "value", "fitted on");
  for (const ParameterFit& p : f.parameters) {
    const std::string on = p.fitted ? absl::StrCat(p.points.size(), " points from ", absl::StrJoin(p.sources, ", "))
                                    : "not fitted: no point informs it (catalog value kept)";
    absl::StrAppend(&out, absl::StrFormat("%-22s %9.4f  %s\n", p.name, p.value, on));
  }
  absl::StrAppend(&out, absl::StrFormat("\nmean |log(predicted / measured)| after the fit: %.3f\n",
                                        f.mean_abs_log_error));
  return out;
}

json FitJson(const FitResult& f) {
  json params = json::object();
  for (const ParameterFit& p : f.parameters) {
    const std::string on = p.fitted ? absl::StrCat("[fit] ", p.points.size(), " points from ",
                                                   absl::StrJoin(p.sources, ", "))
                                    : "[not fitted: no point informs it]";
    params[p.name] = {{"value", std::round(p.value * 1e4) / 1e4}, {"fitted_on", on}};
  }
  return {{"parameters", params}, {"mean_abs_log_error", f.mean_abs_log_error}};
}

std::string ComparisonText(const std::vector<json>& answers) {
  std::string out = absl::StrFormat("%-44s %8s %12s %12s %12s %14s %9s\n", "scenario", "devices", "TTFT p99 ms",
                                    "TPOT p99 ms", "$/M output", "tok/s/device", "feasible");
  for (const json& a : answers) {
    const double devices = a.contains("devices_needed") ? Num(a, "devices_needed") : Num(a["hardware"], "devices");
    double tps = a.contains("decode_tokens_per_s_per_device") ? Num(a, "decode_tokens_per_s_per_device")
                                                              : Num(a, "single_stream_decode_tokens_per_s");
    if (a.contains("qps_served_output_tokens_per_s") && devices > 0)
      tps = Num(a, "qps_served_output_tokens_per_s") / devices;
    absl::StrAppend(&out,
                    absl::StrFormat("%-44s %8.0f %12.1f %12.2f %12.3f %14.1f %9s\n",
                                    a.value("scenario", std::string()).substr(0, 44), devices, Num(a, "ttft_ms_p99"),
                                    Num(a, "tpot_ms_p99"), Num(a, "cost_per_million_output_tokens"), tps,
                                    a["feasible"].get<bool>() ? "yes" : "NO"));
  }
  return out;
}

std::string ThroughputLatencySvg(const json& a) {
  Series s{a.value("scenario", std::string("scenario")), {}};
  for (const auto& p : a["sweeps"]["decode_batch"])
    s.points.push_back({Num(p, "tokens_per_s_per_user"), Num(p, "tokens_per_s_per_device")});
  std::sort(s.points.begin(), s.points.end());
  return LineChart("Decode throughput against interactivity (batch 1, 2, 4, ...)", "tokens/s per user",
                   "tokens/s per device", {s}, true);
}

std::string LayoutCostSvg(const json& a) {
  std::vector<std::string> cats;
  Series cost{"$/M output", {}};
  for (const auto& l : a["sweeps"]["layouts"]) {
    cats.push_back(l["layout"].get<std::string>());
    cost.points.push_back({cost.points.size(), Num(l, "cost_per_million_output_tokens")});
  }
  return BarChart("Cost per million output tokens across layouts (largest batch that fits)", "USD / M tokens", cats,
                  {cost});
}

std::string MemorySvg(const json& a) {
  const json& mem = a["memory_per_device_gb"];
  std::vector<std::pair<std::string, double>> rows;
  for (auto it = mem.begin(); it != mem.end(); ++it)
    if (it.key() != "host" && it.key() != "total" && it.value().get<double>() > 0)
      rows.push_back({it.key(), it.value()});
  const double total = std::max(1e-9, Num(mem, "total"));
  std::string svg =
      Header(760, 220 + 18 * rows.size(),
             absl::StrCat("Memory per device: ", a.value("scenario", std::string()), " (", Fmt(total), " GB)"));
  double x = 40;
  const double width = 680;
  for (size_t i = 0; i < rows.size(); ++i) {
    const double w = rows[i].second / total * width;
    absl::StrAppend(&svg,
                    absl::StrFormat("<rect x=\"%.1f\" y=\"50\" width=\"%.1f\" height=\"60\" fill=\"%s\"/>\n", x,
                                    std::max(0.0, w), rows[i].first == "free" ? "#dddddd" : kColors[i % 11]),
                    absl::StrFormat("<rect x=\"40\" y=\"%.0f\" width=\"12\" height=\"12\" fill=\"%s\"/>"
                                    "<text x=\"58\" y=\"%.0f\">%s: %.2f GB (%.1f%%)</text>\n",
                                    130 + 18 * i, rows[i].first == "free" ? "#dddddd" : kColors[i % 11], 140 + 18 * i,
                                    Escape(rows[i].first), rows[i].second, rows[i].second / total * 100));
    x += std::max(0.0, w);
  }
  return svg + "</svg>\n";
}

// One row per scenario, two panels of horizontal bars: devices needed and $ per million output tokens.
// Scenarios that cannot meet the SLO (or do not fit) say so instead of a bar.
std::string ComparisonSvg(const std::vector<json>& answers, const std::string& title) {
  const double row = 34, top = 70, label_w = 420, panel_w = 200, gap = 80;
  const double height = top + row * answers.size() + 50;
  std::string svg = Header(label_w + 2 * panel_w + 2 * gap + 40, height, title);
  struct Panel {
    const char* name;
    std::function<double(const json&)> value;
  };
  const Panel panels[] = {
      {"devices needed",
       [](const json& a) {
         return a.contains("devices_needed") ? Num(a, "devices_needed") : Num(a["hardware"], "devices");
       }},
      {"$ per million output tokens", [](const json& a) { return Num(a, "cost_per_million_output_tokens"); }},
  };
  for (int p = 0; p < 2; ++p) {
    const double x0 = label_w + p * (panel_w + gap);
    double vmax = 0;
    for (const json& a : answers) vmax = std::max(vmax, panels[p].value(a));
    vmax = vmax > 0 ? vmax * 1.15 : 1;
    absl::StrAppend(&svg,
                    absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-weight=\"bold\">%s "
                                    "(log scale)</text>\n",
                                    x0 + panel_w / 2, top - 12, panels[p].name),
                    absl::StrFormat("<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#444\"/>\n", x0,
                                    top - 4, x0, top + row * answers.size()));
    for (size_t i = 0; i < answers.size(); ++i) {
      const json& a = answers[i];
      const double y = top + row * i;
      const bool ok = a["feasible"].get<bool>();
      if (!ok) {
        absl::StrAppend(&svg, absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" fill=\"#b00\">%s</text>\n", x0 + 6,
                                              y + row / 2 + 4, p == 0 ? "does not meet the SLO" : "-"));
        continue;
      }
      // Log widths: one deployment may need a thousand times the devices of another.
      const double v = panels[p].value(a);
      const double w = std::log10(1 + v) / std::log10(1 + vmax) * panel_w;
      absl::StrAppend(&svg,
                      absl::StrFormat("<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"%s\"/>\n", x0,
                                      y + 6, w, row - 12, kColors[p]),
                      absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", x0 + w + 4, y + row / 2 + 4,
                                      p == 0 ? Fmt(v) : absl::StrFormat("$%.3g", v)));
    }
  }
  for (size_t i = 0; i < answers.size(); ++i)
    absl::StrAppend(&svg, absl::StrFormat("<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%s</text>\n", label_w - 10,
                                          top + row * i + row / 2 + 4,
                                          Escape(answers[i].value("scenario", std::string()).substr(0, 60))));
  return svg + "</svg>\n";
}

absl::StatusOr<std::vector<std::string>> WritePlots(const std::vector<json>& answers, const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::InvalidArgumentError(absl::StrCat("--plot: cannot create '", dir, "': ", ec.message()));
  std::vector<std::string> written;
  auto write = [&](const std::string& name, const std::string& svg) -> absl::Status {
    const std::string path = (std::filesystem::path(dir) / name).string();
    DSV4_RETURN_IF_ERROR(WriteFileAtomic(path, svg), "--plot");
    written.push_back(path);
    return absl::OkStatus();
  };
  for (size_t i = 0; i < answers.size(); ++i) {
    const json& a = answers[i];
    const std::string slug = Slug(a.value("scenario", std::string()), i);
    if (a.contains("sweeps")) {
      DSV4_RETURN_IF_ERROR(write("throughput_latency_" + slug + ".svg", ThroughputLatencySvg(a)));
      if (!a["sweeps"]["layouts"].empty())
        DSV4_RETURN_IF_ERROR(write("layout_cost_" + slug + ".svg", LayoutCostSvg(a)));
    }
    if (a.contains("memory_per_device_gb")) DSV4_RETURN_IF_ERROR(write("memory_" + slug + ".svg", MemorySvg(a)));
  }
  if (answers.size() > 1)
    DSV4_RETURN_IF_ERROR(write("comparison.svg", ComparisonSvg(answers, "Devices and cost per scenario")));
  return written;
}

}  // namespace dsv4::cluster
