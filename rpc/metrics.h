// Prometheus metrics of `dsv4 serve` (the /metrics endpoint of the HTTP gateway), in the text
// exposition format 0.0.4, with the names and buckets vLLM and SGLang use under the `dsv4:`
// prefix, so their dashboards carry over:
//
//   dsv4:num_requests_running / _waiting            gauges        requests generating / queued
//   dsv4:request_success_total{finished_reason}     counter       stop, length, abort
//   dsv4:request_failure_total{reason}              counter       error, rejected
//   dsv4:kv_cache_usage_perc, dsv4:kv_cache_blocks_used / _total / _cached,
//   dsv4:kv_cache_window_blocks_used / _total, dsv4:kv_cache_bytes{rank}
//   dsv4:num_preemptions_total                      counter       requests preempted for recompute
//   dsv4:prefix_cache_queries_total / _hits_total   counters      prompt tokens looked up / found
//   dsv4:prefix_cache_hit_rate                      gauge         hits / queries since start
//   dsv4:prompt_tokens_total, dsv4:generation_tokens_total   counters (rate() = tokens/s)
//   dsv4:time_to_first_token_seconds, dsv4:inter_token_latency_seconds,
//   dsv4:e2e_request_latency_seconds, dsv4:request_queue_time_seconds   histograms
//   dsv4:step_duration_seconds{rank}                summary (_sum, _count): per-rank step time
//   dsv4:expert_routed_tokens_total{layer,expert}   counter       summed over the ranks
//
// Engine-level series carry model_name, as vLLM's do. Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "runtime/serving/engine.h"

namespace dsv4 {

using MetricLabels = std::vector<std::pair<std::string, std::string>>;

// A histogram with fixed upper bounds (the +Inf bucket is implicit). Thread-safe.
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void Observe(double value);
  struct Counts {
    std::vector<uint64_t> cumulative;  // [bounds + 1]: observations <= each bound, then all
    double sum = 0;
  };
  Counts Read() const;
  const std::vector<double>& bounds() const { return bounds_; }

 private:
  const std::vector<double> bounds_;
  mutable absl::Mutex mu_;
  std::vector<uint64_t> counts_ ABSL_GUARDED_BY(mu_);  // per bucket, not cumulative
  double sum_ ABSL_GUARDED_BY(mu_) = 0;
};

// Builds a text exposition: each family once (HELP and TYPE lines), then its samples.
class PrometheusText {
 public:
  // `type`: counter, gauge, histogram or summary.
  void Family(const std::string& name, const char* type, const char* help);
  void Sample(const std::string& name, const MetricLabels& labels, double value);
  void HistogramSamples(const std::string& name, const MetricLabels& labels, const Histogram& h);
  std::string Take() { return std::move(out_); }

  // A value as Prometheus writes it: shortest round-trip decimal, +Inf, -Inf, NaN.
  static std::string Number(double v);
  // A label value with \, " and newline escaped.
  static std::string Escape(const std::string& v);

 private:
  std::string out_;
};

// One rank's figures at scrape time (the leader's own, the others' from their heartbeats).
struct RankFigures {
  int rank = 0;
  int64_t steps = 0;        // steps that ran sequences
  double step_seconds = 0;  // their wall time
  int64_t cache_bytes = 0;
  std::vector<int64_t> expert_layer_load;  // [layers, experts] (empty: unknown)
};

class ServingMetrics final : public EngineObserver {
 public:
  ServingMetrics(std::string model_name, int64_t num_layers, int64_t num_experts);

  // EngineObserver
  void FirstToken(double queue_s, double ttft_s) override;
  void NextToken(double itl_s) override;
  void Finished(double e2e_s) override;

  // The exposition: the engine's counters and gauges, this object's histograms, the ranks.
  std::string Render(const EngineStats& stats, std::span<const RankFigures> ranks) const;

  // Buckets (seconds), as vLLM's: TTFT, inter-token latency, end-to-end and queue time.
  static std::vector<double> TtftBuckets();
  static std::vector<double> ItlBuckets();
  static std::vector<double> E2eBuckets();

 private:
  const std::string model_name_;
  const int64_t num_layers_, num_experts_;
  Histogram ttft_, itl_, e2e_, queue_;
};

}  // namespace dsv4
