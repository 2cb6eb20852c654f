#include "rpc/metrics.h"

#include <algorithm>
#include <charconv>
#include <cmath>

#include "absl/strings/str_cat.h"

namespace dsv4 {

Histogram::Histogram(std::vector<double> bounds) : bounds_(std::move(bounds)), counts_(bounds_.size() + 1, 0) {}

void Histogram::Observe(double value) {
  const size_t b = std::lower_bound(bounds_.begin(), bounds_.end(), value) - bounds_.begin();  // value <= bound
  absl::MutexLock l(&mu_);
  ++counts_[b];
  sum_ += value;
}

Histogram::Counts Histogram::Read() const {
  Counts c;
  absl::MutexLock l(&mu_);
  c.cumulative.resize(counts_.size());
  uint64_t acc = 0;
  for (size_t i = 0; i < counts_.size(); ++i) c.cumulative[i] = (acc += counts_[i]);
  c.sum = sum_;
  return c;
}

std::string PrometheusText::Number(double v) {
  if (std::isnan(v)) return "NaN";
  if (std::isinf(v)) return v > 0 ? "+Inf" : "-Inf";
  char buf[32];
  const auto r = std::to_chars(buf, buf + sizeof(buf), v);
  return std::string(buf, r.ptr);
}

std::string PrometheusText::Escape(const std::string& v) {
  std::string out;
  out.reserve(v.size());
  for (char c : v) {
    if (c == '\\') {
      out += "\\\\";
    } else if (c == '"') {
      out += "\\\"";
    } else if (c == '\n') {
      out += "\\n";
    } else {
      out += c;
    }
  }
  return out;
}

void PrometheusText::Family(const std::string& name, const char* type, const char* help) {
  absl::StrAppend(&out_, "# HELP ", name, " ", help, "\n# TYPE ", name, " ", type, "\n");
}

void PrometheusText::Sample(const std::string& name, const MetricLabels& labels, double value) {
  out_ += name;
  if (!labels.empty()) {
    out_ += '{';
    for (size_t i = 0; i < labels.size(); ++i)
      absl::StrAppend(&out_, i ? "," : "", labels[i].first, "=\"", Escape(labels[i].second), "\"");
    out_ += '}';
  }
  absl::StrAppend(&out_, " ", Number(value), "\n");
}

void PrometheusText::HistogramSamples(const std::string& name, const MetricLabels& labels, const Histogram& h) {
  const Histogram::Counts c = h.Read();
  MetricLabels with_le = labels;
  with_le.emplace_back("le", "");
  for (size_t i = 0; i < c.cumulative.size(); ++i) {
    with_le.back().second = i < h.bounds().size() ? Number(h.bounds()[i]) : "+Inf";
    Sample(name + "_bucket", with_le, static_cast<double>(c.cumulative[i]));
  }
  Sample(name + "_sum", labels, c.sum);
  Sample(name + "_count", labels, static_cast<double>(c.cumulative.back()));
}

std::vector<double> ServingMetrics::TtftBuckets() {
  return {0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
          2.5,   5.0,   7.5,  10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0};
}

std::vector<double> ServingMetrics::ItlBuckets() {
  return {0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0};
}

std::vector<double> ServingMetrics::E2eBuckets() {
  return {0.3,  0.5,  0.8,  1.0,  1.5,  2.0,   2.5,   5.0,   10.0,  15.0,  20.0,
          30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0};
}

ServingMetrics::ServingMetrics(std::string model_name, int64_t num_layers, int64_t num_experts)
    : model_name_(std::move(model_name)),
      num_layers_(num_layers),
      num_experts_(num_experts),
      ttft_(TtftBuckets()),
      itl_(ItlBuckets()),
      e2e_(E2eBuckets()),
      queue_(E2eBuckets()) {}

void ServingMetrics::FirstToken(double queue_s, double ttft_s) {
  queue_.Observe(queue_s);
  ttft_.Observe(ttft_s);
}

void ServingMetrics::NextToken(double itl_s) { itl_.Observe(itl_s); }

void ServingMetrics::Finished(double e2e_s) { e2e_.Observe(e2e_s); }

std::string ServingMetrics::Render(const EngineStats& s, std::span<const RankFigures> ranks) const {
  PrometheusText t;
  const MetricLabels model = {{"model_name", model_name_}};
  auto with = [&](const char* key, std::string value) {
    MetricLabels l = model;
    l.emplace_back(key, std::move(value));
    return l;
  };
  auto gauge = [&](const char* name, const char* help, double v) {
    t.Family(name, "gauge", help);
    t.Sample(name, model, v);
  };
  auto counter = [&](const char* name, const char* help, double v) {
    t.Family(name, "counter", help);
    t.Sample(name, model, v);
  };
  gauge("dsv4:num_requests_running", "Requests admitted and generating.", static_cast<double>(s.active));
  gauge("dsv4:num_requests_waiting", "Requests waiting for admission.", static_cast<double>(s.queued));
  t.Family("dsv4:request_success_total", "counter", "Requests that ended with a finish reason.");
  t.Sample("dsv4:request_success_total", with("finished_reason", "stop"), static_cast<double>(s.finished_stop));
  t.Sample("dsv4:request_success_total", with("finished_reason", "length"), static_cast<double>(s.finished_length));
  t.Sample("dsv4:request_success_total", with("finished_reason", "abort"), static_cast<double>(s.aborted));
  t.Family("dsv4:request_failure_total", "counter",
           "Requests refused at admission (rejected) or ended by an error (error).");
  t.Sample("dsv4:request_failure_total", with("reason", "rejected"), static_cast<double>(s.rejected));
  t.Sample("dsv4:request_failure_total", with("reason", "error"), static_cast<double>(s.failed));
  gauge("dsv4:kv_cache_usage_perc", "Fraction of KV cache blocks in use (0 to 1).",
        s.blocks_total > 0 ? static_cast<double>(s.blocks_used) / static_cast<double>(s.blocks_total) : 0.0);
  gauge("dsv4:kv_cache_blocks_used", "KV cache blocks in use.", static_cast<double>(s.blocks_used));
  gauge("dsv4:kv_cache_blocks_total", "KV cache blocks in all.", static_cast<double>(s.blocks_total));
  gauge("dsv4:kv_cache_blocks_cached", "Full KV blocks no request holds, kept for reuse.",
        static_cast<double>(s.blocks_cached));
  gauge("dsv4:kv_cache_window_blocks_used", "Window blocks in use.", static_cast<double>(s.window_blocks_used));
  gauge("dsv4:kv_cache_window_blocks_total", "Window blocks in all.", static_cast<double>(s.window_blocks_total));
  counter("dsv4:num_preemptions_total", "Requests preempted when KV blocks ran out (recomputed later).",
          static_cast<double>(s.preemptions));
  counter("dsv4:prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.",
          static_cast<double>(s.prefix_queries));
  counter("dsv4:prefix_cache_hits_total", "Prompt tokens found in the prefix cache.",
          static_cast<double>(s.prefix_hits));
  gauge("dsv4:prefix_cache_hit_rate", "Prefix cache hits over queries since start (0 to 1).",
        s.prefix_queries > 0 ? static_cast<double>(s.prefix_hits) / static_cast<double>(s.prefix_queries) : 0.0);
  counter("dsv4:prompt_tokens_total", "Prompt tokens of admitted requests.", static_cast<double>(s.prompt_tokens));
  counter("dsv4:generation_tokens_total", "Tokens generated.", static_cast<double>(s.tokens_generated));
  t.Family("dsv4:time_to_first_token_seconds", "histogram", "Time from arrival to the first token.");
  t.HistogramSamples("dsv4:time_to_first_token_seconds", model, ttft_);
  t.Family("dsv4:inter_token_latency_seconds", "histogram", "Time between consecutive tokens of a request.");
  t.HistogramSamples("dsv4:inter_token_latency_seconds", model, itl_);
  t.Family("dsv4:e2e_request_latency_seconds", "histogram", "Time from arrival to the last token.");
  t.HistogramSamples("dsv4:e2e_request_latency_seconds", model, e2e_);
  t.Family("dsv4:request_queue_time_seconds", "histogram", "Time from arrival to the first step.");
  t.HistogramSamples("dsv4:request_queue_time_seconds", model, queue_);
  t.Family("dsv4:step_duration_seconds", "summary", "Wall time each rank spent running steps.");
  for (const RankFigures& r : ranks) {
    const MetricLabels rank = {{"rank", absl::StrCat(r.rank)}};
    t.Sample("dsv4:step_duration_seconds_sum", rank, r.step_seconds);
    t.Sample("dsv4:step_duration_seconds_count", rank, static_cast<double>(r.steps));
  }
  t.Family("dsv4:kv_cache_bytes", "gauge", "Bytes each rank's sequence caches hold.");
  for (const RankFigures& r : ranks)
    t.Sample("dsv4:kv_cache_bytes", {{"rank", absl::StrCat(r.rank)}}, static_cast<double>(r.cache_bytes));
  // Routed tokens per (layer, expert), summed over the ranks: each rank counts the tokens its own
  // copies of the experts processed.
  std::vector<int64_t> load(num_layers_ * num_experts_, 0);
  for (const RankFigures& r : ranks)
    if (r.expert_layer_load.size() == load.size())
      for (size_t i = 0; i < load.size(); ++i) load[i] += r.expert_layer_load[i];
  t.Family("dsv4:expert_routed_tokens_total", "counter", "Tokens routed to each expert of each layer.");
  for (int64_t l = 0; l < num_layers_; ++l)
    for (int64_t e = 0; e < num_experts_; ++e)
      t.Sample("dsv4:expert_routed_tokens_total", {{"layer", absl::StrCat(l)}, {"expert", absl::StrCat(e)}},
               static_cast<double>(load[l * num_experts_ + e]));
  return t.Take();
}

}  // namespace dsv4
