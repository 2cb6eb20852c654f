#include "runtime/serving/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/sampling.h"
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

namespace {

// Sample's vocabulary-sized buffers, per thread rather than per request: they stay in this core's
// cache from one request's sample to the next (a step's requests are sampled one after another on
// each pool thread), where per-request buffers were cold every time, and a request holds no
// vocabulary-sized memory of its own (1.5 MB each at a 129k vocabulary).
struct Scratch {
  std::vector<float> work;    // the logits after bias and penalties
  std::vector<float> weight;  // their unnormalized probabilities
  std::vector<int32_t> order;
  std::vector<double> hist;
  std::vector<double> block_sums;  // kept weight per block of ids (the draw)
};

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

}  // namespace

namespace sampling_internal {

// Linear time: a histogram of the weights' float bits (weights are in [0, 1], so their bits order
// them) finds the bucket where the mass is reached; only that bucket's ids are then selected by
// mass, partitioning around pivots. Buckets are 1/16 of a binade from 2^-32 up; every weight below
// 2^-32 shares bucket 0 (all of them together weigh less than V 2^-32 of the best token's 1, so
// the cutoff lands there only for a top_p within that of 1, and is then still exact, only slower).
int32_t TopPCutoff(const float* e, int32_t V, double target, std::vector<double>& hist, std::vector<int32_t>& ids) {
  constexpr int kShift = 19;                               // 8 exponent and 4 mantissa bits
  constexpr uint32_t kBase = (127u - 32) << 23 >> kShift;  // the raw bucket of 2^-32
  constexpr int kBuckets = (0x3F800000 >> kShift) - kBase + 2;
  const auto bucket = [](float w) {
    const uint32_t raw = std::bit_cast<uint32_t>(w) >> kShift;
    return raw >= kBase ? raw - kBase + 1 : 0;
  };
  hist.assign(4 * kBuckets, 0.0);  // four interleaved histograms: no store-to-load chains
  double* h = hist.data();
  int32_t i = 0;
  for (; i + 4 <= V; i += 4)
    for (int j = 0; j < 4; ++j) h[j * kBuckets + bucket(e[i + j])] += e[i + j];
  for (; i < V; ++i) h[bucket(e[i])] += e[i];
  double acc = 0;
  int b = kBuckets - 1;
  for (;; --b) {
    const double m = h[b] + h[kBuckets + b] + h[2 * kBuckets + b] + h[3 * kBuckets + b];
    if (acc + m >= target) break;
    acc += m;
    if (b == 0) return -1;  // the mass is reached only with every candidate (rounding): keep them all
  }
  // The bucket's candidates: [2^((raw bucket) - kShift), the next bucket's start), or (0, 2^-32).
  const float from = b == 0 ? std::numeric_limits<float>::denorm_min()
                            : std::bit_cast<float>((kBase + static_cast<uint32_t>(b) - 1) << kShift);
  const float to = std::bit_cast<float>((kBase + static_cast<uint32_t>(b)) << kShift);
  if (ids.size() < static_cast<size_t>(V)) ids.resize(V);  // scratch: grows once, never cleared
  const int64_t count = kernels::IdsInRange(e, V, from, to, ids.data());
  // Select inside the bucket by mass: partition around a pivot, keep the side the mass ends in.
  int64_t lo = 0, hi = count;
  for (;;) {
    if (hi - lo <= 32) {
      std::sort(ids.begin() + lo, ids.begin() + hi, [e](int32_t a, int32_t b) { return Before(e, a, b); });
      for (int64_t i = lo; i < hi; ++i)
        if ((acc += e[ids[i]]) >= target) return ids[i];
      return ids[hi - 1];  // rounding: the bucket's whole mass was needed after all
    }
    const int32_t pivot = ids[lo + (hi - lo) / 2];
    const auto mid = std::partition(ids.begin() + lo, ids.begin() + hi,
                                    [e, pivot](int32_t a) { return Before(e, a, pivot); });
    double upper = 0;
    for (auto it = ids.begin() + lo; it != mid; ++it) upper += e[*it];
    if (acc + upper >= target) {
      hi = mid - ids.begin();
    } else if (acc + upper + e[pivot] >= target) {
      return pivot;
    } else {
      acc += upper + e[pivot];
      // The pivot sits somewhere in [mid, hi): the rest, without it, is the new range.
      auto p = std::find(mid, ids.begin() + hi, pivot);
      std::iter_swap(p, mid);
      lo = (mid - ids.begin()) + 1;
    }
  }
}

}  // namespace sampling_internal

bool Sampler::Penalized() const {
  return !p_.logit_bias.empty() || (p_.repetition_penalty != 1.0 && !seen_.empty()) ||
         ((p_.presence_penalty != 0.0 || p_.frequency_penalty != 0.0) && !output_.empty());
}

int32_t Sampler::Sample(std::span<const float> logits, TokenLogprobs* logprobs) {
  const int32_t V = static_cast<int32_t>(logits.size());
  Scratch& s = ThreadScratch();
  // The logits are read in place unless penalties change them or NaNs (a broken model) must be
  // ranked below everything, which needs a copy.
  bool any_nan = false;
  float best = kernels::MaxAndNaN(logits.data(), V, &any_nan);
  const float* w = logits.data();
  if (any_nan || Penalized()) {
    s.work.assign(logits.begin(), logits.end());
    ApplyPenalties(s.work);
    best = -std::numeric_limits<float>::infinity();
    for (float& v : s.work) {
      if (std::isnan(v)) v = -std::numeric_limits<float>::infinity();
      best = std::max(best, v);
    }
    w = s.work.data();
  }
  int32_t chosen = 0;
  if (p_.temperature == 0 || p_.top_k == 1 || !std::isfinite(best)) {
    // The first id of the largest logit: a search for `best` has no loop-carried dependency, where
    // a running argmax waits on its own previous compare every element (5x slower).
    while (chosen + 1 < V && !(w[chosen] == best)) ++chosen;
  } else {
    // Unnormalized probabilities: the best token's is 1, the others' exp((l - best) / T).
    s.weight.resize(V);
    float* e = s.weight.data();
    double z = kernels::ExpShiftedSum(w, V, best, static_cast<float>(1.0 / p_.temperature), e);
    // top-k: the candidates are the k best logits (lower id first on ties); the others weigh 0.
    const int64_t k = p_.top_k > 0 ? std::min<int64_t>(p_.top_k, V) : V;
    if (k < V) {
      s.order.resize(V);
      for (int32_t i = 0; i < V; ++i) s.order[i] = i;
      std::nth_element(s.order.begin(), s.order.begin() + k, s.order.end(), ByValue{w});
      for (int64_t i = k; i < V; ++i) e[s.order[i]] = 0.f;
      z = 0;
      for (int64_t i = 0; i < k; ++i) z += e[s.order[i]];
    }
    // top-p: the smallest best-first set of candidates holding top_p of their mass; min-p:
    // candidates at least min_p times as likely as the best one (whose weight is 1).
    kernels::KeepRule keep;
    keep.floor = static_cast<float>(p_.min_p);
    keep.cut_id = p_.top_p < 1 ? sampling_internal::TopPCutoff(e, V, p_.top_p * z, s.hist, s.order) : -1;
    if (keep.cut_id >= 0) keep.cut_value = e[keep.cut_id];
    // Draw over the kept tokens in id order (any fixed order draws the same distribution): find
    // the block by the blocks' sums, then the token inside it.
    constexpr int64_t kBlock = 2048;
    s.block_sums.resize((V + kBlock - 1) / kBlock);
    kernels::KeptBlockSums(e, V, keep, kBlock, s.block_sums.data());
    double total = 0;
    for (double sum : s.block_sums) total += sum;
    const double u = Uniform() * total;
    double acc = 0;
    size_t b = 0;
    for (; b + 1 < s.block_sums.size(); ++b) {
      if (s.block_sums[b] > 0 && u < acc + s.block_sums[b]) break;
      acc += s.block_sums[b];
    }
    bool past = false;  // rounding carried u past the last kept block: its last kept token
    while (b > 0 && s.block_sums[b] == 0) --b, past = true;
    chosen = -1;
    for (int64_t i = static_cast<int64_t>(b) * kBlock; i < std::min<int64_t>(V, (b + 1) * kBlock); ++i) {
      if (!keep(e[i], i)) continue;
      chosen = static_cast<int32_t>(i);
      if (!past && u < (acc += e[i])) break;
    }
    if (chosen < 0) chosen = std::max_element(w, w + V) - w;  // unreachable: the best token is kept
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
