// The /metrics exposition: histograms against plain counting, number and label formatting, and a
// whole rendering read back by the strict parser (tests/rpc/prometheus_text.h).
#include "rpc/metrics.h"

#include <gtest/gtest.h>

#include <cmath>

#include "tests/rpc/prometheus_text.h"

namespace dsv4 {
namespace {

TEST(Histogram, BucketsCountValuesAtOrBelowEachBound) {
  Histogram h({0.1, 0.5, 1.0});
  const std::vector<double> values = {0.05, 0.1, 0.2, 0.5, 0.7, 1.0, 3.0, 0.0};
  for (double v : values) h.Observe(v);
  const Histogram::Counts c = h.Read();
  ASSERT_EQ(c.cumulative.size(), 4u);
  const std::vector<double> bounds = {0.1, 0.5, 1.0, INFINITY};
  double sum = 0;
  for (double v : values) sum += v;
  for (size_t b = 0; b < bounds.size(); ++b) {
    uint64_t want = 0;
    for (double v : values) want += v <= bounds[b] ? 1 : 0;  // le: less than or equal
    EXPECT_EQ(c.cumulative[b], want) << "le " << bounds[b];
  }
  EXPECT_DOUBLE_EQ(c.sum, sum);
}

TEST(PrometheusText, NumbersAndEscapes) {
  EXPECT_EQ(PrometheusText::Number(0.001), "0.001");
  EXPECT_EQ(PrometheusText::Number(2560), "2560");
  EXPECT_EQ(PrometheusText::Number(INFINITY), "+Inf");
  EXPECT_EQ(PrometheusText::Number(-INFINITY), "-Inf");
  EXPECT_EQ(PrometheusText::Number(NAN), "NaN");
  EXPECT_EQ(std::stod(PrometheusText::Number(0.1 + 0.2)), 0.1 + 0.2);  // round-trips
  EXPECT_EQ(PrometheusText::Escape("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
}

TEST(ServingMetrics, RenderingParsesStrictlyAndCarriesTheFigures) {
  ServingMetrics m("a \"quoted\" model\\name", /*num_layers=*/3, /*num_experts=*/4);
  m.FirstToken(0.002, 0.03);
  m.FirstToken(0.5, 1.2);
  for (double itl : {0.02, 0.02, 0.3}) m.NextToken(itl);
  m.Finished(4.0);
  EngineStats s;
  s.active = 3, s.queued = 2, s.blocks_total = 100, s.blocks_used = 25;
  s.finished_stop = 7, s.finished_length = 5, s.aborted = 2, s.failed = 1, s.rejected = 4;
  s.prompt_tokens = 1000, s.tokens_generated = 250, s.prefix_queries = 800, s.prefix_hits = 200;
  std::vector<RankFigures> ranks(2);
  ranks[0].rank = 0, ranks[0].steps = 10, ranks[0].step_seconds = 1.5, ranks[0].cache_bytes = 4096;
  ranks[1].rank = 1, ranks[1].steps = 10, ranks[1].step_seconds = 1.25;
  ranks[0].expert_layer_load.assign(12, 1);
  ranks[1].expert_layer_load.assign(12, 2);
  ranks[1].expert_layer_load[4 * 2 + 3] = 10;  // layer 2, expert 3
  const std::string text = m.Render(s, ranks);
  auto p = testing::ParsePrometheusText(text);
  ASSERT_TRUE(p.ok()) << p.status() << "\n" << text;
  const std::vector<std::pair<std::string, std::string>> model = {{"model_name", "a \"quoted\" model\\name"}};
  auto value = [&](const std::string& name, std::vector<std::pair<std::string, std::string>> match = {}) {
    match.insert(match.end(), model.begin(), model.end());
    auto v = p->Value(name, match);
    EXPECT_TRUE(v.ok()) << name << ": " << v.status();
    return v.value_or(-1);
  };
  EXPECT_EQ(p->types.at("dsv4:num_requests_running"), "gauge");
  EXPECT_EQ(p->types.at("dsv4:time_to_first_token_seconds"), "histogram");
  EXPECT_EQ(p->types.at("dsv4:generation_tokens_total"), "counter");
  EXPECT_EQ(value("dsv4:num_requests_running"), 3);
  EXPECT_EQ(value("dsv4:num_requests_waiting"), 2);
  EXPECT_EQ(value("dsv4:request_success_total", {{"finished_reason", "stop"}}), 7);
  EXPECT_EQ(value("dsv4:request_success_total", {{"finished_reason", "length"}}), 5);
  EXPECT_EQ(value("dsv4:request_success_total", {{"finished_reason", "abort"}}), 2);
  EXPECT_EQ(value("dsv4:request_failure_total", {{"reason", "rejected"}}), 4);
  EXPECT_EQ(value("dsv4:kv_cache_usage_perc"), 0.25);
  EXPECT_EQ(value("dsv4:prefix_cache_hit_rate"), 0.25);
  EXPECT_EQ(value("dsv4:generation_tokens_total"), 250);
  EXPECT_EQ(value("dsv4:time_to_first_token_seconds_count"), 2);
  EXPECT_EQ(value("dsv4:time_to_first_token_seconds_bucket", {{"le", "0.04"}}), 1);
  EXPECT_EQ(value("dsv4:time_to_first_token_seconds_bucket", {{"le", "2.5"}}), 2);
  EXPECT_EQ(value("dsv4:inter_token_latency_seconds_bucket", {{"le", "0.025"}}), 2);
  EXPECT_DOUBLE_EQ(value("dsv4:inter_token_latency_seconds_sum"), 0.34);
  EXPECT_EQ(value("dsv4:e2e_request_latency_seconds_count"), 1);
  EXPECT_EQ(value("dsv4:request_queue_time_seconds_bucket", {{"le", "0.3"}}), 1);
  EXPECT_EQ(*p->Value("dsv4:step_duration_seconds_sum", {{"rank", "1"}}), 1.25);
  EXPECT_EQ(*p->Value("dsv4:step_duration_seconds_count", {{"rank", "0"}}), 10);
  EXPECT_EQ(*p->Value("dsv4:kv_cache_bytes", {{"rank", "0"}}), 4096);
  // Experts: summed over the ranks, one series per (layer, expert).
  EXPECT_EQ(*p->Value("dsv4:expert_routed_tokens_total", {{"layer", "2"}, {"expert", "3"}}), 11);
  EXPECT_EQ(*p->Value("dsv4:expert_routed_tokens_total", {{"layer", "0"}, {"expert", "0"}}), 3);
  EXPECT_EQ(p->Sum("dsv4:expert_routed_tokens_total"), 12 * 3 + 8);
}

TEST(PrometheusTextParser, RefusesWhatAScraperWould) {
  const std::vector<std::string> bad = {
      "",                                                      // empty
      "# TYPE a counter\na 1",                                 // no final newline
      "a 1\n",                                                 // sample before TYPE
      "# TYPE a counter\nb 1\n",                               // not of the family
      "# TYPE a gauge\na{x=\"1\"} 1\na{x=\"1\"} 2\n",          // a series twice
      "# TYPE a gauge\na{x=\"\\q\"} 1\n",                      // unknown escape
      "# TYPE a gauge\na{1x=\"1\"} 1\n",                       // bad label name
      "# TYPE a gauge\na one\n",                               // bad value
      "# TYPE h histogram\nh_bucket{le=\"1\"} 2\nh_bucket{le=\"+Inf\"} 1\nh_sum 1\nh_count 1\n",  // not cumulative
      "# TYPE h histogram\nh_bucket{le=\"1\"} 1\nh_sum 1\nh_count 1\n",                          // no +Inf
      "# TYPE h histogram\nh_bucket{le=\"+Inf\"} 2\nh_sum 1\nh_count 1\n",                       // count differs
  };
  for (const std::string& t : bad) EXPECT_FALSE(testing::ParsePrometheusText(t).ok()) << t;
  EXPECT_TRUE(testing::ParsePrometheusText("# HELP a x\n# TYPE a gauge\na{l=\"v\\\"\"} -Inf\n").ok());
}

}  // namespace
}  // namespace dsv4
