#include "runtime/serving/sampler.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "runtime/tokenizer/utf8.h"

namespace dsv4 {
namespace {

absl::Status Bad(const char* field, const char* rule, double got) {
  return absl::InvalidArgumentError(absl::StrCat("sampling.", field, " must be ", rule, ", got ", got));
}

bool In(double v, double lo, double hi) { return std::isfinite(v) && v >= lo && v <= hi; }

// Candidate order: higher value first, then lower id (a total order, so results are reproducible).
struct ByValue {
  const float* v;
  bool operator()(int32_t a, int32_t b) const { return v[a] > v[b] || (v[a] == v[b] && a < b); }
};

}  // namespace

absl::Status ValidateSamplingParams(SamplingParams& p, const SamplingLimits& lim) {
  if (!In(p.temperature, 0, 2)) return Bad("temperature", "in [0, 2]", p.temperature);
  if (!std::isfinite(p.top_p) || p.top_p <= 0 || p.top_p > 1) return Bad("top_p", "in (0, 1]", p.top_p);
  if (p.top_k < -1 || p.top_k > lim.vocab_size)
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.top_k must be -1, 0 (off) or in [1, ", lim.vocab_size, "], got ", p.top_k));
  if (!In(p.min_p, 0, 1)) return Bad("min_p", "in [0, 1]", p.min_p);
  if (!std::isfinite(p.repetition_penalty) || p.repetition_penalty <= 0 || p.repetition_penalty > 10)
    return Bad("repetition_penalty", "in (0, 10]", p.repetition_penalty);
  if (!In(p.presence_penalty, -2, 2)) return Bad("presence_penalty", "in [-2, 2]", p.presence_penalty);
  if (!In(p.frequency_penalty, -2, 2)) return Bad("frequency_penalty", "in [-2, 2]", p.frequency_penalty);
  if (p.seed < -1)
    return absl::InvalidArgumentError(absl::StrCat("sampling.seed must be -1 (random) or >= 0, got ", p.seed));
  if (static_cast<int64_t>(p.stop.size()) > lim.max_stop)
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.stop has ", p.stop.size(), " strings; at most ", lim.max_stop, " are allowed"));
  for (size_t i = 0; i < p.stop.size(); ++i) {
    const std::string& s = p.stop[i];
    if (s.empty()) return absl::InvalidArgumentError(absl::StrCat("sampling.stop[", i, "] is empty"));
    if (static_cast<int64_t>(s.size()) > lim.max_stop_bytes)
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.stop[", i, "] is ", s.size(), " bytes; at most ", lim.max_stop_bytes, " are allowed"));
    if (!utf8::IsValid(s)) return absl::InvalidArgumentError(absl::StrCat("sampling.stop[", i, "] is not UTF-8"));
  }
  if (static_cast<int64_t>(p.stop_token_ids.size()) > lim.max_stop_token_ids)
    return absl::InvalidArgumentError(absl::StrCat("sampling.stop_token_ids has ", p.stop_token_ids.size(),
                                                   " ids; at most ", lim.max_stop_token_ids, " are allowed"));
  for (size_t i = 0; i < p.stop_token_ids.size(); ++i)
    if (p.stop_token_ids[i] < 0 || p.stop_token_ids[i] >= lim.vocab_size)
      return absl::InvalidArgumentError(absl::StrCat("sampling.stop_token_ids[", i, "] = ", p.stop_token_ids[i],
                                                     " is outside [0, ", lim.vocab_size, ")"));
  if (static_cast<int64_t>(p.logit_bias.size()) > lim.max_logit_bias)
    return absl::InvalidArgumentError(absl::StrCat("sampling.logit_bias has ", p.logit_bias.size(),
                                                   " entries; at most ", lim.max_logit_bias, " are allowed"));
  for (auto& [id, bias] : p.logit_bias) {
    if (id < 0 || id >= lim.vocab_size)
      return absl::InvalidArgumentError(
          absl::StrCat("sampling.logit_bias: token id ", id, " is outside [0, ", lim.vocab_size, ")"));
    if (std::isnan(bias)) return absl::InvalidArgumentError(absl::StrCat("sampling.logit_bias[", id, "] is NaN"));
    bias = std::clamp(bias, -100.0, 100.0);
  }
  if (p.logprobs < 0 || p.logprobs > lim.max_logprobs)
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.logprobs must be in [0, ", lim.max_logprobs, "], got ", p.logprobs));
  return absl::OkStatus();
}

Sampler::Sampler(const SamplingParams& params, uint64_t seed, std::span<const int32_t> prompt)
    : p_(params), state_(seed) {
  if (p_.repetition_penalty != 1.0)
    for (int32_t t : prompt) ++seen_[t];
}

double Sampler::Uniform() {
  // splitmix64: fixed by its definition, so a seed means the same stream on every platform.
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  z ^= z >> 31;
  return static_cast<double>(z >> 11) * (1.0 / 9007199254740992.0);
}

void Sampler::ApplyPenalties(std::vector<float>& l) const {
  for (const auto& [id, bias] : p_.logit_bias) l[id] += static_cast<float>(bias);
  if (p_.repetition_penalty != 1.0) {
    const float rp = static_cast<float>(p_.repetition_penalty);
    for (const auto& [id, n] : seen_) l[id] = l[id] > 0 ? l[id] / rp : l[id] * rp;
  }
  if (p_.presence_penalty != 0.0 || p_.frequency_penalty != 0.0)
    for (const auto& [id, n] : output_) l[id] -= static_cast<float>(p_.frequency_penalty * n + p_.presence_penalty);
}

int32_t Sampler::Sample(std::span<const float> logits, TokenLogprobs* logprobs) {
  const int32_t V = static_cast<int32_t>(logits.size());
  work_.assign(logits.begin(), logits.end());
  ApplyPenalties(work_);
  // NaN logits (a broken model) must not poison the choice: they rank below everything.
  for (float& v : work_)
    if (std::isnan(v)) v = -std::numeric_limits<float>::infinity();
  const float* w = work_.data();
  int32_t chosen = 0;
  const float best = *std::max_element(work_.begin(), work_.end());
  if (p_.temperature == 0 || p_.top_k == 1 || !std::isfinite(best)) {
    for (int32_t i = 1; i < V; ++i)
      if (w[i] > w[chosen]) chosen = i;
  } else {
    // Candidates: the top-k (all tokens when k is off), then the smallest best-first prefix that
    // holds top_p of their probability mass. Only as much is sorted as top-p needs.
    const int64_t k = p_.top_k > 0 ? std::min<int64_t>(p_.top_k, V) : V;
    order_.resize(V);
    for (int32_t i = 0; i < V; ++i) order_[i] = i;
    const ByValue by{w};
    if (k < V) std::nth_element(order_.begin(), order_.begin() + k, order_.end(), by);
    const double inv_t = 1.0 / p_.temperature;
    const float mx = best;
    // Unnormalized probability of a token; the best candidate's is exp(0) = 1.
    auto weight = [&](int32_t id) { return std::exp((static_cast<double>(w[id]) - mx) * inv_t); };
    int64_t keep = k;
    if (p_.top_p < 1) {
      double z = 0;
      for (int64_t i = 0; i < k; ++i) z += weight(order_[i]);
      for (int64_t sorted = std::min<int64_t>(k, 64);; sorted = std::min<int64_t>(k, sorted * 8)) {
        std::partial_sort(order_.begin(), order_.begin() + sorted, order_.begin() + k, by);
        double mass = 0;
        for (keep = 0; keep < sorted;) {
          mass += weight(order_[keep++]) / z;
          if (mass >= p_.top_p) break;
        }
        if (mass >= p_.top_p || sorted == k) break;
      }
    }
    // min-p: keep candidates whose probability is at least min_p times the best one's.
    if (p_.min_p > 0) {
      int64_t m = 0;
      for (int64_t i = 0; i < keep; ++i)
        if (weight(order_[i]) >= p_.min_p) order_[m++] = order_[i];
      keep = m;
    }
    double total = 0;
    for (int64_t i = 0; i < keep; ++i) total += weight(order_[i]);
    const double u = Uniform() * total;
    double acc = 0;
    chosen = order_[keep - 1];
    for (int64_t i = 0; i < keep; ++i) {
      acc += weight(order_[i]);
      if (u < acc) {
        chosen = order_[i];
        break;
      }
    }
  }
  if (p_.repetition_penalty != 1.0) ++seen_[chosen];
  if (p_.presence_penalty != 0.0 || p_.frequency_penalty != 0.0) ++output_[chosen];
  if (logprobs != nullptr) *logprobs = Logprobs(logits, chosen, p_.logprobs);
  return chosen;
}

TokenLogprobs Sampler::Logprobs(std::span<const float> logits, int32_t token, int32_t n) {
  const int32_t V = static_cast<int32_t>(logits.size());
  float mx = -std::numeric_limits<float>::infinity();
  for (float v : logits)
    if (v > mx) mx = v;
  double z = 0;
  for (float v : logits) z += std::exp(static_cast<double>(v) - mx);
  const double lz = std::log(z) + mx;
  TokenLogprobs out;
  out.token_id = token;
  out.logprob = logits[token] - lz;
  n = std::clamp(n, 0, V);
  if (n > 0) {
    std::vector<int32_t> idx(V);
    for (int32_t i = 0; i < V; ++i) idx[i] = i;
    std::partial_sort(idx.begin(), idx.begin() + n, idx.end(), ByValue{logits.data()});
    for (int32_t i = 0; i < n; ++i) out.top.emplace_back(idx[i], logits[idx[i]] - lz);
  }
  return out;
}

}  // namespace dsv4
