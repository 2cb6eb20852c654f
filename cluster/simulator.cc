#include "cluster/simulator.h"

#include <algorithm>
#include <cmath>
#include <deque>
#include <limits>
#include <map>
#include <random>
#include <tuple>

namespace dsv4::cluster {
namespace {

// Uniform in [0, 1) from the top 53 bits: the same sequence on every standard library.
double Uniform(std::mt19937_64& rng) { return static_cast<double>(rng() >> 11) * (1.0 / 9007199254740992.0); }

double Exponential(std::mt19937_64& rng, double mean) { return -std::log(1 - Uniform(rng)) * mean; }

double DrawLength(std::mt19937_64& rng, double mean, LengthDistribution d) {
  switch (d) {
    case LengthDistribution::kFixed:
      return std::max(1.0, std::round(mean));
    case LengthDistribution::kExponential:
      return std::max(1.0, std::round(Exponential(rng, mean)));
    case LengthDistribution::kUniform:
      return std::max(1.0, std::round(mean * (0.5 + Uniform(rng))));
  }
  return mean;
}

struct Request {
  double arrival = 0;
  double input = 0;   // tokens to prefill (after prefix-cache hits)
  double cached = 0;  // tokens found in the prefix cache
  double output = 0;
  double prefilled = 0;
  double generated = 0;
  double first_token = -1;
  double finish = -1;
  double kv_bytes = 0;
  bool admitted = false;
};

// Step times memoized on a coarse key: batch sizes exact, lengths rounded.
class StepCache {
 public:
  explicit StepCache(const StepModel& m) : m_(m) {}
  // `moe_tokens` < 0: all DP groups carry this batch.
  double Seconds(const std::vector<BatchPart>& parts, double moe_tokens) {
    Key key{};
    key.moe = moe_tokens < 0 ? -1 : std::llround(std::log2(1 + moe_tokens) * 8);
    for (const BatchPart& b : parts) {
      auto& k = b.prefill ? key.prefill : key.decode;
      k = {std::llround(b.seqs), std::llround(b.new_tokens / (b.prefill ? 32.0 : 1.0)), std::llround(b.context / 128)};
    }
    auto it = memo_.find(key);
    if (it != memo_.end()) return it->second;
    const double s = m_.Step(parts, moe_tokens < 0 ? -1 : std::exp2(key.moe / 8.0) - 1).seconds;
    memo_.emplace(key, s);
    return s;
  }

 private:
  struct Key {
    std::tuple<int64_t, int64_t, int64_t> decode{0, 0, 0}, prefill{0, 0, 0};
    int64_t moe = -1;  // log-bucketed mean tokens per group across the EP group
    bool operator<(const Key& o) const { return std::tie(decode, prefill, moe) < std::tie(o.decode, o.prefill, o.moe); }
  };
  const StepModel& m_;
  std::map<Key, double> memo_;
};

std::vector<Request> MakeRequests(const SimConfig& c) {
  std::mt19937_64 rng(c.seed);
  std::vector<Request> reqs(c.requests);
  double t = 0;
  for (Request& r : reqs) {
    t += Exponential(rng, 1.0 / c.qps);
    r.arrival = t;
    const double input = DrawLength(rng, c.input_tokens, c.lengths);
    r.output = DrawLength(rng, c.output_tokens, c.lengths);
    r.cached = std::floor(input * c.prefix_cache_hit);
    r.input = std::max(1.0, input - r.cached);
  }
  return reqs;
}

Percentiles Summarize(const std::vector<double>& v) {
  Percentiles p;
  if (v.empty()) return p;
  p.p50 = Percentile(v, 50);
  p.p90 = Percentile(v, 90);
  p.p99 = Percentile(v, 99);
  double sum = 0;
  for (double x : v) sum += x;
  p.mean = sum / v.size();
  return p;
}

}  // namespace

double Percentile(std::vector<double> values, double q) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const double rank = std::ceil(q / 100.0 * values.size());
  const size_t i = static_cast<size_t>(std::clamp(rank, 1.0, static_cast<double>(values.size()))) - 1;
  return values[i];
}

SimResult Simulate(const StepModel& model, const SimConfig& c) {
  std::vector<Request> reqs = MakeRequests(c);
  const ModelPreset& m = model.resolved().model;
  const Precision& p = model.resolved().s.precision;
  const double per_step_tokens = c.mode == SimConfig::Mode::kDecodeOnly ? 0 : c.token_budget;
  const double drafts = model.Drafts();
  const double tokens_per_step = model.TokensPerDecodeStep();
  StepCache cache(model);
  std::deque<int64_t> waiting;
  std::vector<int64_t> running;
  double now = 0, kv_used = 0, running_time = 0, tokens_so_far = 0;
  const double dp = model.resolved().dp;
  int64_t next = 0, completed = 0;
  SimResult res;
  const int64_t n = static_cast<int64_t>(reqs.size());
  const int64_t max_steps = 4000000;
  for (Request& r : reqs) r.kv_bytes = SequenceCacheBytes(m, r.cached + r.input + r.output, p);

  while (completed < n && res.steps < max_steps) {
    while (next < n && reqs[next].arrival <= now) waiting.push_back(next++);
    if (running.empty() && waiting.empty()) {
      now = reqs[next].arrival;
      continue;
    }
    // Decode first: every running sequence takes 1 + drafts tokens of the budget.
    double decode_ctx = 0;
    for (int64_t i : running) decode_ctx += reqs[i].cached + reqs[i].input + reqs[i].generated;
    const double n_dec = static_cast<double>(running.size());
    double budget = per_step_tokens - n_dec * (1 + drafts);
    // Then prefill chunks in arrival order while the budget and the cache allow.
    std::vector<std::pair<int64_t, double>> chunks;
    bool limited = false;
    for (int64_t i : waiting) {
      Request& r = reqs[i];
      if (!r.admitted) {
        if (kv_used + r.kv_bytes > c.kv_capacity_bytes && !(running.empty() && chunks.empty())) {
          limited = true;
          break;
        }
        r.admitted = true;
        kv_used += r.kv_bytes;
      }
      if (c.mode == SimConfig::Mode::kDecodeOnly) {
        chunks.push_back({i, 0});
        continue;
      }
      if (budget <= 0) break;
      const double chunk = std::min(r.input - r.prefilled, budget);
      chunks.push_back({i, chunk});
      budget -= chunk;
    }
    if (limited) ++res.cache_limited_steps;
    std::vector<BatchPart> parts;
    if (n_dec > 0) parts.push_back({n_dec, 1 + drafts, decode_ctx / n_dec, false});
    double pre_tokens = 0, pre_ctx = 0, pre_seqs = 0;
    for (auto [i, chunk] : chunks)
      if (chunk > 0) {
        pre_tokens += chunk;
        pre_ctx += reqs[i].cached + reqs[i].prefilled;
        pre_seqs += 1;
      }
    if (pre_seqs > 0) parts.push_back({pre_seqs, pre_tokens / pre_seqs, pre_ctx / pre_seqs, true});
    // The other DP groups are statistically like this one but not in step with it: over this step they
    // bring this group's long-run token rate times the step's duration (estimated without them first).
    const double tokens = n_dec * (1 + drafts) + pre_tokens;
    double dt = 0;
    if (!parts.empty() && dp > 1) {
      const double rate = now > reqs.front().arrival ? tokens_so_far / (now - reqs.front().arrival) : 0;
      const double alone = cache.Seconds(parts, tokens / dp);
      dt = cache.Seconds(parts, (tokens + (dp - 1) * rate * alone) / dp);
    } else if (!parts.empty()) {
      dt = cache.Seconds(parts, -1);
    }
    tokens_so_far += tokens;
    if (parts.empty() && c.mode != SimConfig::Mode::kDecodeOnly) {
      // Nothing admitted (cache full) and nothing running cannot happen: the first request always fits.
      dt = 1e-3;
    }
    now += dt;
    running_time += n_dec * dt;
    ++res.steps;
    // Decodes that ran in this step advance by the expected accepted tokens per step (before the
    // prompts that finish in this step join them).
    for (size_t j = 0; j < running.size();) {
      Request& r = reqs[running[j]];
      r.generated += tokens_per_step;
      if (r.generated >= r.output) {
        r.finish = now;
        kv_used -= r.kv_bytes;
        ++completed;
        running[j] = running.back();
        running.pop_back();
      } else {
        ++j;
      }
    }
    // Apply the step: prefills advance, finished prompts emit their first token.
    for (auto [i, chunk] : chunks) {
      Request& r = reqs[i];
      r.prefilled += chunk;
      if (c.mode == SimConfig::Mode::kDecodeOnly) r.prefilled = r.input;
      if (r.prefilled + 1e-9 < r.input) continue;
      waiting.erase(std::find(waiting.begin(), waiting.end(), i));
      r.first_token = c.mode == SimConfig::Mode::kDecodeOnly ? r.arrival : now;
      r.generated = 1;
      if (c.mode == SimConfig::Mode::kPrefillOnly || r.generated >= r.output) {
        r.finish = now;
        kv_used -= r.kv_bytes;
        ++completed;
      } else {
        running.push_back(i);
      }
    }
  }
  std::vector<double> ttft, tpot, e2e;
  double out_tokens = 0, in_tokens = 0, last = 0;
  for (const Request& r : reqs) {
    if (r.finish < 0) {
      ttft.push_back(std::numeric_limits<double>::infinity());
      tpot.push_back(std::numeric_limits<double>::infinity());
      continue;
    }
    ttft.push_back((r.first_token - r.arrival) * 1e3);
    if (r.output > 1) tpot.push_back((r.finish - r.first_token) / (r.output - 1) * 1e3);
    e2e.push_back((r.finish - r.arrival) * 1e3);
    out_tokens += r.output;
    in_tokens += r.input;
    last = std::max(last, r.finish);
  }
  res.ttft_ms = Summarize(ttft);
  res.tpot_ms = Summarize(tpot);
  res.e2e_ms = Summarize(e2e);
  res.completed = completed;
  res.duration_s = last - (reqs.empty() ? 0 : reqs.front().arrival);
  if (res.duration_s > 0) {
    res.output_tokens_per_s = out_tokens / res.duration_s;
    res.input_tokens_per_s = in_tokens / res.duration_s;
    res.mean_running = running_time / std::max(now, 1e-12);
  }
  return res;
}

}  // namespace dsv4::cluster
