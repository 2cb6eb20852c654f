#include "runtime/serving/sampler.h"

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <optional>

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
  sampling_internal::TopPScratch topp;  // also the draw's block sums
};

// Adds the kept ones of the weights (ids[i], weights[i]), i < count (ids increasing, all above 0,
// the cutoff among them) to their draw blocks' sums. Without branches (KeepRule's test is
// bitwise): around the cutoff, kept or not is a coin toss. Each block's run is summed in four
// interleaved partial sums (one chain would wait on each add), added in a fixed order.
void AddKept(const int32_t* ids, const float* weights, int64_t count, const kernels::KeepRule& keep, double* sums) {
  const auto kept = [&](int64_t j) {
    return static_cast<double>(weights[j] * static_cast<float>(keep(weights[j], ids[j])));
  };
  for (int64_t i = 0; i < count;) {
    const int64_t b = ids[i] / sampling_internal::kDrawBlock;
    const int64_t end = std::partition_point(ids + i, ids + count,
                                             [b](int32_t id) { return id / sampling_internal::kDrawBlock == b; }) -
                        ids;
    double p0 = 0, p1 = 0, p2 = 0, p3 = 0;
    for (; i + 4 <= end; i += 4) p0 += kept(i), p1 += kept(i + 1), p2 += kept(i + 2), p3 += kept(i + 3);
    for (; i < end; ++i) p0 += kept(i);
    sums[b] += (p0 + p2) + (p1 + p3);
  }
}

Scratch& ThreadScratch() {
  thread_local Scratch scratch;
  return scratch;
}

}  // namespace

namespace sampling_internal {
namespace {

// Buckets of weights by their float bits (weights are in [0, 1], so their bits order them): 1/16
// of a binade each from 2^-32 up; every weight below 2^-32 shares bucket 0 (all of them together
// weigh less than V 2^-32 of the best token's 1).
constexpr int kShift = 19;                               // 8 exponent and 4 mantissa bits
constexpr uint32_t kBase = (127u - 32) << 23 >> kShift;  // the raw bucket of 2^-32
constexpr int kBuckets = (0x3F800000 >> kShift) - kBase + 2;

inline int Bucket(float w) {
  const uint32_t raw = std::bit_cast<uint32_t>(w) >> kShift;
  return raw >= kBase ? static_cast<int>(raw - kBase + 1) : 0;
}

// The smallest weight of bucket b (b = kBuckets: above every weight); bucket 0 starts above 0.
inline float BucketStart(int b) {
  return b == 0 ? std::numeric_limits<float>::denorm_min()
                : std::bit_cast<float>((kBase + static_cast<uint32_t>(b) - 1) << kShift);
}

// The mass of the weights by bucket, h[0, kBuckets): of all of them, or of a sixteenth, the first 8
// of every 128 (whole cache lines, where a stride would read one line per weight). Four
// interleaved histograms, added at the end, keep neighbours in one bucket off one store-to-load
// chain. Returns how many weights it read.
int32_t Histogram(const float* e, int32_t V, bool sample, std::vector<double>& hist) {
  hist.assign(4 * kBuckets, 0.0);
  double* h = hist.data();
  const int32_t run = sample ? 8 : V, every = sample ? 128 : V;
  int32_t read = 0;
  for (int32_t start = 0; start < V; start += every) {
    const int32_t end = std::min(V, start + run);
    read += end - start;
    int32_t i = start;
    for (; i + 4 <= end; i += 4)
      for (int j = 0; j < 4; ++j) h[j * kBuckets + Bucket(e[i + j])] += e[i + j];
    for (; i < end; ++i) h[Bucket(e[i])] += e[i];
  }
  for (int b = 0; b < kBuckets; ++b) h[b] += h[kBuckets + b] + h[2 * kBuckets + b] + h[3 * kBuckets + b];
  return read;
}

// Where a sample of the weights puts the cutoff, with its uncertainty: the buckets [lo, hi] where
// the mass below the cutoff, z - target, is reached counting up from bucket 0, when the sample's
// mass h below each bucket is scaled to the whole (times `scale`, the weights per weight read) and
// moved by `spread` standard deviations either way.
//
// The mass below the cutoff is what is estimated, not the mass above it: below lie many light
// weights, which a sample measures well; above, a few heavy ones decide, which a sample of a
// sixteenth hits or misses. (At Gaussian logits of standard deviation 2 and temperature 0.8, an
// estimate from above missed a three-bucket window in 27 of 40 rows.) The scaled sum of a random
// 1/scale of the weights has a standard deviation of about scale sqrt(sum of the sample's squared
// weights); a weight of bucket b is below BucketStart(b + 1), so h[b] BucketStart(b + 1) bounds
// its bucket's squares without a second histogram.
struct Bracket {
  int lo, hi;
};
Bracket EstimateBracket(const std::vector<double>& h, double scale, double below, double spread) {
  Bracket r{-1, kBuckets - 1};
  double mass = 0, squares = 0;
  for (int b = 0; b < kBuckets; ++b) {
    mass += h[b], squares += h[b] * BucketStart(b + 1);
    const double est = scale * mass, sd = scale * std::sqrt(squares);
    if (r.lo < 0 && est + spread * sd >= below) r.lo = b;
    if (est - spread * sd >= below) {
      r.hi = b;
      break;
    }
  }
  if (r.lo < 0) r.lo = kBuckets - 1;
  return r;
}

// The bucket where the mass, added from the top bucket down, reaches `target`; `above` is the
// mass of the buckets over it. -1 when no bucket does.
int FindBucket(const std::vector<double>& h, double target, double* above) {
  double acc = 0;
  for (int b = kBuckets - 1; b >= 0; --b) {
    if (acc + h[b] >= target) {
      *above = acc;
      return b;
    }
    acc += h[b];
  }
  return -1;
}

// Among the candidates (ids[i], weights[i]) for i < count, all in [lo, hi): the first in best-first
// order at which acc plus the weights so far reaches `target`; -1 when all of them together do not.
// A histogram by float bits at most 1024 sub-buckets wide finds the sub-bucket where the mass
// ends; only its few candidates are sorted.
int32_t SelectInRange(const float* e, const int32_t* ids, const float* weights, int64_t count, float lo, float hi,
                      double acc, double target, TopPScratch& s) {
  const uint32_t base = std::bit_cast<uint32_t>(lo), span = std::bit_cast<uint32_t>(hi) - base;
  const int shift = std::max(0, static_cast<int>(std::bit_width(span)) - 10);
  const auto key = [&](float w) { return (std::bit_cast<uint32_t>(w) - base) >> shift; };
  s.sub.assign((span >> shift) + 1, 0.0);
  for (int64_t i = 0; i < count; ++i) s.sub[key(weights[i])] += weights[i];
  int64_t k = static_cast<int64_t>(s.sub.size()) - 1;
  for (; k >= 0; --k) {
    if (acc + s.sub[k] >= target) break;
    acc += s.sub[k];
  }
  if (k < 0) return -1;
  s.candidates.clear();
  for (int64_t i = 0; i < count; ++i)
    if (key(weights[i]) == static_cast<uint32_t>(k)) s.candidates.push_back(ids[i]);
  std::sort(s.candidates.begin(), s.candidates.end(), [e](int32_t a, int32_t b) { return Before(e, a, b); });
  for (const int32_t id : s.candidates)
    if ((acc += e[id]) >= target) return id;
  return s.candidates.back();  // rounding: the sub-bucket's whole mass was needed
}

}  // namespace

// Linear time, in one vector pass over the weights where it can:
// 1. The buckets where the mass ends are bracketed from a sixteenth of the weights' histogram
//    (EstimateBracket; the whole histogram's scattered adds cost more than all the vector passes
//    together). One pass sums the weights above the bracket, per block of the draw, and collects
//    the weights inside it; where the mass ends in the bracket, the cutoff is selected among them,
//    and the draw's block sums need only the bracket's kept weights added.
// 2. Where it ends above the bracket, among the weights above it.
// 3. Where it ends below the bracket, among the weights between the lightest the cutoff can be and
//    the bracket: the cutoff weighs at least (z - target) / V, since the cutoff and the weights
//    after it hold more than z - target and are fewer than V, none heavier than the cutoff. (A
//    sample that never reaches the mass below the cutoff, as when a few heavy tokens it missed
//    hold all but a little of the mass, brackets the top bucket alone, and the answer is here.)
// 4. Where rounding leaves the mass short of the target in the range searched (the sums run in
//    different orders), from the histogram of every weight.
// Every step is exact on its own: the estimate only decides how much work the answer takes.
TopPCut TopPCutoff(const float* e, int32_t V, double z, double top_p, TopPScratch& s) {
  // Standard deviations of the sample's estimate the bracket spans: a missed bracket costs a second
  // pass and a larger selection, a wider one only more candidates to select among.
  constexpr double kSpread = 4;
  // A selection of more candidates than this leaves the draw's block sums to a vector pass of their
  // own, which is faster than adding so many kept weights one by one.
  const int64_t window_max = V / 8;
  const double target = top_p * z;
  if (s.ids.size() < static_cast<size_t>(V)) s.ids.resize(V), s.weights.resize(V);  // grow once, never cleared
  s.block_sums.resize((V + kDrawBlock - 1) / kDrawBlock);
  // The cutoff among the weights [lo, hi) (step `step`): none where the mass ends above them, id -1
  // where it ends below.
  const auto split = [&](float lo, float hi) {
    return kernels::SplitAtRange(e, V, lo, hi, kDrawBlock, s.block_sums.data(), s.ids.data(), s.weights.data());
  };
  const auto search = [&](float lo, float hi, int step) -> std::optional<TopPCut> {
    const kernels::RangeSplit in = split(lo, hi);
    if (in.above >= target) return std::nullopt;
    const int32_t cut = SelectInRange(e, s.ids.data(), s.weights.data(), in.count, lo, hi, in.above, target, s);
    if (cut < 0) return TopPCut{-1, 0, 0, step};  // the mass ends below lo
    return in.count <= window_max ? TopPCut{cut, hi, in.count, step} : TopPCut{cut, 0, 0, step};
  };
  const int32_t read = Histogram(e, V, /*sample=*/true, s.hist);
  const Bracket guess = EstimateBracket(s.hist, static_cast<double>(V) / read, z - target, kSpread);
  const float lo = BucketStart(guess.lo), hi = BucketStart(guess.hi + 1);
  std::optional<TopPCut> cut = search(lo, hi, 1);
  if (!cut) {
    cut = search(hi, BucketStart(kBuckets), 2);
  } else if (cut->id < 0) {
    // Half the bound, rounded down: z and the target carry rounding of their own.
    const float lightest = std::nextafter(static_cast<float>(0.5 * (z - target) / V), 0.f);
    if (lightest < lo) cut = search(std::max(lightest, BucketStart(0)), lo, 3);
  }
  if (cut && cut->id >= 0) return *cut;
  Histogram(e, V, /*sample=*/false, s.hist);
  double above = 0;
  const int b = FindBucket(s.hist, target, &above);
  if (b < 0) return TopPCut{-1, 0, 0, 4};  // the mass is reached only with every candidate (rounding): keep them all
  const float blo = BucketStart(b), bhi = BucketStart(b + 1);
  const int64_t count = split(blo, bhi).count;
  // -1: all of the bucket short of the mass by rounding; keep them all.
  return TopPCut{SelectInRange(e, s.ids.data(), s.weights.data(), count, blo, bhi, above, target, s), 0, 0, 4};
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
    const sampling_internal::TopPCut cut =
        p_.top_p < 1 ? sampling_internal::TopPCutoff(e, V, z, p_.top_p, s.topp) : sampling_internal::TopPCut{};
    keep.cut_id = cut.id;
    if (cut.id >= 0) keep.cut_value = e[cut.id];
    // Draw over the kept tokens in id order (any fixed order draws the same distribution): find
    // the block by the blocks' sums, then the token inside it. Top-p's pass may have summed every
    // weight above its window already (all kept, unless min-p's floor is above them).
    constexpr int64_t kBlock = sampling_internal::kDrawBlock;
    std::vector<double>& block_sums = s.topp.block_sums;
    if (cut.window_hi > 0 && keep.floor <= cut.window_hi) {
      AddKept(s.topp.ids.data(), s.topp.weights.data(), cut.window, keep, block_sums.data());
    } else {
      block_sums.resize((V + kBlock - 1) / kBlock);
      kernels::KeptBlockSums(e, V, keep, kBlock, block_sums.data());
    }
    double total = 0;
    for (double sum : block_sums) total += sum;
    const double u = Uniform() * total;
    double acc = 0;
    size_t b = 0;
    for (; b + 1 < block_sums.size(); ++b) {
      if (block_sums[b] > 0 && u < acc + block_sums[b]) break;
      acc += block_sums[b];
    }
    bool past = false;  // rounding carried u past the last kept block: its last kept token
    while (b > 0 && block_sums[b] == 0) --b, past = true;
    chosen = -1;
    for (int64_t i = static_cast<int64_t>(b) * kBlock; i < std::min<int64_t>(V, (b + 1) * kBlock); ++i) {
      // Without a branch on the kept test (as good as a coin toss inside the window).
      const bool kept = keep(e[i], i);
      chosen = kept ? static_cast<int32_t>(i) : chosen;
      acc += kept ? e[i] : 0.0;
      if (kept && !past && u < acc) break;
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
