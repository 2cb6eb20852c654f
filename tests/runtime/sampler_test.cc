// The serving pieces that need no model: sampling parameters and the sampler, and the streamed
// output text with stop strings. (The scheduler and the KV blocks: kv_blocks_test.cc.)
#include "runtime/serving/sampler.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "kernels/cpu/sampling.h"
#include "runtime/serving/output_text.h"
#include "runtime/tokenizer/utf8.h"

namespace dsv4 {
namespace {

constexpr int64_t kVocab = 1000;

absl::Status Check(SamplingParams p) {
  SamplingLimits lim;
  lim.vocab_size = kVocab;
  return ValidateSamplingParams(p, lim);
}

// Each bad value (rows RQ-02, RQ-04 to RQ-07) is INVALID_ARGUMENT naming its field.
TEST(SamplingParams, RejectsEachBadValueNamingTheField) {
  const double nan = std::nan(""), inf = INFINITY;
  struct Case {
    const char* field;
    void (*set)(SamplingParams&, double);
    std::vector<double> bad, good;
  };
  const std::vector<Case> cases = {
      {"temperature",
       [](SamplingParams& p, double v) { p.temperature = v; },
       {nan, inf, -inf, -0.1, 2.1, 999999},
       {0, 0.7, 2}},
      {"top_p", [](SamplingParams& p, double v) { p.top_p = v; }, {0, -1, 1.5, nan, inf}, {1e-6, 0.5, 1}},
      {"top_k",
       [](SamplingParams& p, double v) { p.top_k = static_cast<int64_t>(v); },
       {-2, 1e12, kVocab + 1},
       {-1, 0, 1, kVocab}},
      {"min_p", [](SamplingParams& p, double v) { p.min_p = v; }, {-0.1, 1.1, nan}, {0, 0.5, 1}},
      {"repetition_penalty",
       [](SamplingParams& p, double v) { p.repetition_penalty = v; },
       {0, -1, nan, inf, 11},
       {0.5, 1, 10}},
      {"presence_penalty",
       [](SamplingParams& p, double v) { p.presence_penalty = v; },
       {-2.1, 2.1, nan, inf},
       {-2, 0, 2}},
      {"frequency_penalty",
       [](SamplingParams& p, double v) { p.frequency_penalty = v; },
       {-2.1, 2.1, nan, -inf},
       {-2, 0, 2}},
      {"seed", [](SamplingParams& p, double v) { p.seed = static_cast<int64_t>(v); }, {-2, -1e9}, {-1, 0, 1e18}},
      {"logprobs",
       [](SamplingParams& p, double v) { p.logprobs = static_cast<int32_t>(v); },
       {-1, 21, 1e6},
       {0, 5, 20}},
  };
  for (const Case& c : cases) {
    for (double v : c.bad) {
      SamplingParams p;
      c.set(p, v);
      const absl::Status st = Check(p);
      EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << c.field << " = " << v;
      EXPECT_NE(st.message().find(std::string("sampling.") + c.field), std::string::npos) << st;
    }
    for (double v : c.good) {
      SamplingParams p;
      c.set(p, v);
      EXPECT_TRUE(Check(p).ok()) << c.field << " = " << v << ": " << Check(p);
    }
  }
}

TEST(SamplingParams, StopStringsTokenIdsAndLogitBias) {
  auto code = [](SamplingParams p) { return Check(std::move(p)).code(); };
  SamplingParams p;
  p.stop = {""};
  EXPECT_EQ(code(p), absl::StatusCode::kInvalidArgument);
  p.stop = {std::string(1 << 20, 'x')};
  EXPECT_EQ(code(p), absl::StatusCode::kInvalidArgument);
  p.stop = std::vector<std::string>(100000, "x");
  EXPECT_EQ(code(p), absl::StatusCode::kInvalidArgument);
  p.stop = {"\xff\xfe"};
  EXPECT_EQ(code(p), absl::StatusCode::kInvalidArgument);
  p.stop = {"</s>", "\n\n"};
  EXPECT_EQ(code(p), absl::StatusCode::kOk);
  p = {};
  p.stop_token_ids = {kVocab};
  EXPECT_EQ(code(p), absl::StatusCode::kInvalidArgument);
  p.stop_token_ids = {-1};
  EXPECT_EQ(code(p), absl::StatusCode::kInvalidArgument);
  p.stop_token_ids = {0, kVocab - 1};
  EXPECT_EQ(code(p), absl::StatusCode::kOk);
  p = {};
  p.logit_bias = {{kVocab, 1.0}};
  EXPECT_EQ(code(p), absl::StatusCode::kInvalidArgument);
  p.logit_bias = {{5, std::nan("")}};
  EXPECT_EQ(code(p), absl::StatusCode::kInvalidArgument);
  for (int i = 0; i < 2000; ++i) p.logit_bias.emplace_back(i % kVocab, 1.0);
  EXPECT_EQ(code(p), absl::StatusCode::kInvalidArgument);
  // Values are clamped to [-100, 100].
  p = {};
  p.logit_bias = {{1, 1e9}, {2, -1e9}};
  SamplingLimits lim;
  lim.vocab_size = kVocab;
  ASSERT_TRUE(ValidateSamplingParams(p, lim).ok());
  EXPECT_EQ(p.logit_bias[0].second, 100.0);
  EXPECT_EQ(p.logit_bias[1].second, -100.0);
}

std::vector<float> Logits(std::vector<double> probs) {
  std::vector<float> l;
  for (double p : probs) l.push_back(static_cast<float>(std::log(p)));
  return l;
}

TEST(Sampler, GreedyIsArgmaxWithLowestIdOnTies) {
  SamplingParams p;
  p.temperature = 0;
  Sampler s(p, 1, {});
  EXPECT_EQ(s.Sample(std::vector<float>{0.f, 3.f, 1.f, 3.f}), 1);
  SamplingParams k1;
  k1.top_k = 1;
  Sampler s1(k1, 1, {});
  EXPECT_EQ(s1.Sample(std::vector<float>{0.f, 2.f, 5.f, 5.f}), 2);
}

TEST(Sampler, SameSeedSameTokensDifferentSeedDiffers) {
  SamplingParams p;
  p.temperature = 1.0;
  std::vector<float> logits(kVocab, 0.f);  // uniform: every draw is the generator's choice
  auto draw = [&](uint64_t seed) {
    Sampler s(p, seed, {});
    std::vector<int32_t> out;
    for (int i = 0; i < 32; ++i) out.push_back(s.Sample(logits));
    return out;
  };
  EXPECT_EQ(draw(42), draw(42));
  EXPECT_NE(draw(42), draw(43));
}

// Frequencies of draws follow the distribution after top-k / top-p / min-p truncation.
TEST(Sampler, DrawsFollowTheTruncatedDistribution) {
  const std::vector<float> logits = Logits({0.5, 0.3, 0.15, 0.05});
  auto freq = [&](SamplingParams p) {
    Sampler s(p, 7, {});
    std::vector<double> f(4, 0);
    const int n = 20000;
    for (int i = 0; i < n; ++i) f[s.Sample(logits)] += 1.0 / n;
    return f;
  };
  auto expect_near = [](const std::vector<double>& got, const std::vector<double>& want) {
    for (size_t i = 0; i < want.size(); ++i) EXPECT_NEAR(got[i], want[i], 0.015) << "token " << i;
  };
  SamplingParams p;
  expect_near(freq(p), {0.5, 0.3, 0.15, 0.05});
  p.top_k = 2;
  expect_near(freq(p), {0.5 / 0.8, 0.3 / 0.8, 0, 0});
  p = {};
  p.top_p = 0.75;  // 0.5 + 0.3 reaches it
  expect_near(freq(p), {0.5 / 0.8, 0.3 / 0.8, 0, 0});
  p = {};
  p.min_p = 0.25;  // keeps p >= 0.125
  expect_near(freq(p), {0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0});
  p = {};
  p.temperature = 0.5;  // p^2, renormalized
  const double z = 0.25 + 0.09 + 0.0225 + 0.0025;
  expect_near(freq(p), {0.25 / z, 0.09 / z, 0.0225 / z, 0.0025 / z});
}

TEST(Sampler, TopPNeedsOnlyThePrefixItSorts) {
  // A large vocabulary with one dominant token: top_p 0.5 must return it every time.
  std::vector<float> logits(129280, 0.f);
  logits[77777] = 20.f;
  SamplingParams p;
  p.top_p = 0.5;
  Sampler s(p, 3, {});
  for (int i = 0; i < 10; ++i) EXPECT_EQ(s.Sample(logits), 77777);
}

TEST(Sampler, PenaltiesAndBias) {
  const std::vector<float> logits = {1.f, 2.f, 3.f, 2.9f};
  SamplingParams p;
  p.temperature = 0;
  p.repetition_penalty = 2.0;  // token 2 is in the prompt: 3 / 2 = 1.5 < 2.9
  EXPECT_EQ(Sampler(p, 0, std::vector<int32_t>{2}).Sample(logits), 3);
  p = {};
  p.temperature = 0;
  p.frequency_penalty = 0.2;  // each repeat of the best costs 0.2: 3, then 2.9 wins, then 3 - 0.2 ...
  Sampler f(p, 0, {});
  EXPECT_EQ(f.Sample(logits), 2);
  EXPECT_EQ(f.Sample(logits), 3);
  p = {};
  p.temperature = 0;
  p.presence_penalty = 0.5;
  Sampler pr(p, 0, {});
  EXPECT_EQ(pr.Sample(logits), 2);
  EXPECT_EQ(pr.Sample(logits), 3);
  EXPECT_EQ(pr.Sample(logits), 2);  // once per token, not per repeat: 2.5 beats 2.4
  p = {};
  p.temperature = 0;
  p.logit_bias = {{0, 100.0}};
  EXPECT_EQ(Sampler(p, 0, {}).Sample(logits), 0);
}

TEST(Sampler, LogprobsAreTheRawLogSoftmax) {
  const std::vector<float> logits = Logits({0.5, 0.3, 0.2});
  const TokenLogprobs lp = Sampler::Logprobs(logits, 1, 2);
  EXPECT_NEAR(lp.logprob, std::log(0.3), 1e-6);
  ASSERT_EQ(lp.top.size(), 2u);
  EXPECT_EQ(lp.top[0].first, 0);
  EXPECT_EQ(lp.top[1].first, 1);
  EXPECT_NEAR(lp.top[0].second, std::log(0.5), 1e-6);
}

// The weights kernel: the vector path and the plain loop agree to the bit, and both agree with
// std::exp in double within 3e-7 + 2.4e-7 |ln e| relative: the degree-6 polynomial's 1.2e-7 on
// [-1/2, 1/2] and a few float roundings, plus the float argument (x - shift) * scale, rounded twice
// (about 1.2e-7 |t| absolute), which exp turns into ln 2 times that relative. Below 2^-126, and
// for -inf, the weight is exactly 0.
TEST(SamplerKernels, ExpShiftedSumMatchesStdExpAndTheScalarPath) {
  std::vector<float> x(129280 + 5);
  uint64_t s = 12345;
  for (float& v : x) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    v = static_cast<float>(static_cast<int64_t>(s >> 40) % 4000) / 100.f - 30.f;  // [-30, 10)
  }
  x[3] = -std::numeric_limits<float>::infinity();
  x[7] = -1e30f;
  const float shift = *std::max_element(x.begin(), x.end());
  for (float scale : {1.0f, 1.25f, 0.5f, 8.0f}) {
    std::vector<float> e(x.size()), r(x.size());
    const double sum = kernels::ExpShiftedSum(x.data(), static_cast<int64_t>(x.size()), shift, scale, e.data());
    const double ref = kernels::ref::ExpShiftedSum(x.data(), static_cast<int64_t>(x.size()), shift, scale, r.data());
    EXPECT_EQ(sum, ref) << "scale " << scale;
    double want_sum = 0;
    for (size_t i = 0; i < x.size(); ++i) {
      ASSERT_EQ(std::bit_cast<uint32_t>(e[i]), std::bit_cast<uint32_t>(r[i])) << i;
      const double want = std::exp((static_cast<double>(x[i]) - shift) * scale);
      if (want < std::ldexp(1.0, -125)) {
        EXPECT_LE(e[i], std::ldexp(1.0f, -125)) << i;  // at the cutoff: 0 or the smallest normals
        continue;
      }
      want_sum += want;
      ASSERT_NEAR(e[i], want, (3e-7 + 2.4e-7 * std::fabs(std::log(want))) * want) << "x " << x[i] << " scale " << scale;
    }
    EXPECT_EQ(e[3], 0.f);
    EXPECT_EQ(e[7], 0.f);
    EXPECT_NEAR(sum, want_sum, 3e-7 * want_sum);  // dominated by the weights near 1
  }
}

// The draw's other kernels against their definitions, and the vector path against ref:: to the
// bit: the largest logit and NaN detection, the ids of one weight range in order with the mass
// above it, and the kept weight per block under every rule (no cutoff, a cutoff inside a run of ties, min-p, both).
TEST(SamplerKernels, MaxSplitAtRangeAndKeptBlockSums) {
  const int64_t n = 129280 + 5;
  std::vector<float> e(n);
  uint64_t s = 7;
  for (float& v : e) {
    s = s * 6364136223846793005ull + 1442695040888963407ull;
    v = static_cast<float>(static_cast<int64_t>(s >> 40) % 64) / 64.f;  // [0, 1) with many ties and zeros
  }
  e[n - 1] = 0.984375f;  // in the scalar tail
  bool nan = true;
  EXPECT_EQ(kernels::MaxAndNaN(e.data(), n, &nan), *std::max_element(e.begin(), e.end()));
  EXPECT_FALSE(nan);
  for (int64_t at : {int64_t{5}, n - 2}) {
    std::vector<float> x = e;
    x[at] = std::numeric_limits<float>::quiet_NaN();
    kernels::MaxAndNaN(x.data(), n, &nan);
    EXPECT_TRUE(nan) << at;
    kernels::ref::MaxAndNaN(x.data(), n, &nan);
    EXPECT_TRUE(nan) << at;
  }
  EXPECT_EQ(kernels::MaxAndNaN(e.data(), 0, &nan), -std::numeric_limits<float>::infinity());

  // SplitAtRange: the weights in [0.25, 0.265625) in id order, and those above summed per block.
  const int64_t block = 2048, blocks = (n + block - 1) / block;
  std::vector<int32_t> want;
  std::vector<double> want_sums(blocks);
  int64_t want_above_count = 0;
  for (int64_t i = 0; i < n; ++i) {
    if (e[i] >= 0.265625f) want_sums[i / block] += e[i], ++want_above_count;
    if (e[i] >= 0.25f && e[i] < 0.265625f) want.push_back(static_cast<int32_t>(i));
  }
  const auto split = [&](auto fn) {
    std::vector<int32_t> ids(n);
    std::vector<float> weights(n);
    std::vector<double> sums(blocks);
    const kernels::RangeSplit r = fn(e.data(), n, 0.25f, 0.265625f, block, sums.data(), ids.data(), weights.data());
    ids.resize(r.count);
    EXPECT_EQ(ids, want);
    for (int64_t i = 0; i < r.count; ++i) EXPECT_EQ(weights[i], e[ids[i]]) << i;
    EXPECT_EQ(r.above_count, want_above_count);
    double total = 0;
    for (int64_t b = 0; b < blocks; ++b) {
      // Weights are multiples of 1/64 and a block's sum is below 2^11: every order sums exactly.
      EXPECT_EQ(sums[b], want_sums[b]) << "block " << b;
      total += sums[b];
    }
    EXPECT_EQ(r.above, total);  // the blocks added in order
    return sums;
  };
  const std::vector<double> got_sums = split(kernels::SplitAtRange), ref_sums = split(kernels::ref::SplitAtRange);
  for (int64_t b = 0; b < blocks; ++b)
    EXPECT_EQ(std::bit_cast<uint64_t>(got_sums[b]), std::bit_cast<uint64_t>(ref_sums[b])) << "block " << b;

  const int32_t tie = static_cast<int32_t>(want[want.size() / 2]);  // a cutoff inside a run of equal weights
  for (const kernels::KeepRule keep : {kernels::KeepRule{}, kernels::KeepRule{0.f, e[tie], tie},
                                       kernels::KeepRule{0.5f, 0.f, -1}, kernels::KeepRule{0.2f, e[tie], tie}}) {
    std::vector<double> got(blocks), ref(blocks);
    kernels::KeptBlockSums(e.data(), n, keep, block, got.data());
    kernels::ref::KeptBlockSums(e.data(), n, keep, block, ref.data());
    for (int64_t b = 0; b < blocks; ++b) {
      ASSERT_EQ(got[b], ref[b]) << "block " << b;
      double direct = 0;
      for (int64_t i = b * block; i < std::min(n, (b + 1) * block); ++i) {
        const bool kept =
            e[i] > 0 && e[i] >= keep.floor &&
            (keep.cut_id < 0 ||
             sampling_internal::Before(e.data(), static_cast<int32_t>(i), static_cast<int32_t>(keep.cut_id)) ||
             i == keep.cut_id);
        if (kept) direct += e[i];
      }
      ASSERT_EQ(got[b], direct) << "block " << b << " floor " << keep.floor << " cut " << keep.cut_id;
    }
  }
}

// NaN logits rank below everything when sampling too: the draw never picks one, and a request
// sampling from NaN-free logits draws the same tokens whether or not it had to copy them.
TEST(Sampler, NaNLogitsAreNeverDrawn) {
  std::vector<float> logits(4096, 0.f);
  for (int i = 0; i < 4096; i += 2) logits[i] = std::numeric_limits<float>::quiet_NaN();
  SamplingParams p;
  p.top_p = 0.9;
  Sampler s(p, 5, {});
  for (int i = 0; i < 200; ++i) EXPECT_EQ(s.Sample(logits) % 2, 1);
  std::vector<float> clean(4096);
  for (int i = 0; i < 4096; ++i) clean[i] = static_cast<float>(i % 13) / 4;
  p.logit_bias = {{0, 0.0}};  // a bias of 0 forces the copy and changes nothing
  SamplingParams plain;
  plain.top_p = 0.9;
  Sampler copied(p, 9, {}), in_place(plain, 9, {});
  for (int i = 0; i < 200; ++i) EXPECT_EQ(copied.Sample(clean), in_place.Sample(clean)) << i;
}

// Top-p's cutoff against the definition: sort every candidate best first (weight, then id), take
// the shortest prefix whose running sum reaches the target. Weights with many exact ties and a
// flat distribution (most of the vocabulary kept) as well as a peaked one; and weights the
// search's sample (the first 8 ids of every 128) misrepresents, so each of its steps answers some
// of the cases.
TEST(SamplerKernels, TopPCutoffIsTheShortestBestFirstPrefix) {
  const int32_t V = 129280;
  sampling_internal::TopPScratch scratch;
  std::map<int, int> steps;  // how many cutoffs each step of the search found
  uint64_t s = 99;
  for (int trial = 0; trial < 28; ++trial) {
    std::vector<float> e(V);
    for (int32_t i = 0; i < V; ++i) {
      s = s * 6364136223846793005ull + 1442695040888963407ull;
      const double u = static_cast<double>(s >> 11) / 9007199254740992.0;
      const bool sampled = i % 128 < 8;
      switch (trial % 7) {
        case 0:
          e[i] = static_cast<float>(std::round(u * 8) / 8);
          break;  // ties
        case 1:
          e[i] = static_cast<float>(std::exp(-2 * u));
          break;  // flat
        case 2:
          e[i] = static_cast<float>(std::exp(-40 * u * u * u));
          break;  // peaked
        case 3:
          e[i] = static_cast<float>(1e-11 * (1 + u));
          break;  // below 2^-32: the shared bucket
        case 4:
          e[i] = static_cast<float>(sampled ? 0.01 * (1 + u) : 0.5 * (1 + u));
          break;  // sample too low
        case 5:
          e[i] = static_cast<float>(sampled ? 0.5 * (1 + u) : 0.01 * (1 + u));
          break;  // sample too high
        default:  // a few heavy tokens the sample misses
          e[i] = static_cast<float>(i % 128 == 77 && i < 128 * 50 ? 0.9 + 0.1 * u : 1e-3 * (1 + u));
      }
      if (i % 97 == 0) e[i] = 0.f;  // not a candidate
    }
    if (trial % 7 == 3) e[5] = 1.f;  // one token holds all but 2e-6 of the mass
    std::vector<int32_t> order(V);
    for (int32_t i = 0; i < V; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return sampling_internal::Before(e.data(), a, b); });
    double z = 0;
    for (float v : e) z += v;
    for (double top_p : {0.05, 0.3, 0.5, 0.9, 0.95, 0.999, 1 - 1e-6}) {
      const double target = top_p * z;
      double acc = 0;
      int32_t want = -1;
      for (int32_t id : order) {
        if (e[id] == 0.f) break;
        if ((acc += e[id]) >= target) {
          want = id;
          break;
        }
      }
      const sampling_internal::TopPCut got = sampling_internal::TopPCutoff(e.data(), V, z, top_p, scratch);
      ++steps[got.step];
      // The two sums run in different orders; where they straddle the target within rounding
      // the cutoff may move by one position, so compare ranks within 1.
      const auto rank = [&](int32_t id) { return std::find(order.begin(), order.end(), id) - order.begin(); };
      ASSERT_NE(got.id, -1) << "trial " << trial << " top_p " << top_p;
      ASSERT_NE(want, -1);
      EXPECT_LE(std::abs(rank(got.id) - rank(want)), 1) << "trial " << trial << " top_p " << top_p;
      if (got.window_hi > 0) {  // the weights above the window, summed per draw block
        double above = 0, blocks = 0;
        for (float v : e)
          if (v >= got.window_hi) above += v;
        for (double b : scratch.block_sums) blocks += b;
        EXPECT_NEAR(blocks, above, 1e-9 * z) << "trial " << trial << " top_p " << top_p;
      }
    }
  }
  for (int step = 1; step <= 3; ++step) EXPECT_GT(steps[step], 0) << "step " << step << " never found the cutoff";
}

// A z a little above the weights' sum (the caller's rounding) puts the target out of reach: every
// range falls short, the whole histogram has the last word, and every candidate is kept.
TEST(SamplerKernels, TopPCutoffOutOfReachKeepsEveryCandidate) {
  const int32_t V = 4096;
  std::vector<float> e(V);
  double z = 0;
  for (int32_t i = 0; i < V; ++i) z += (e[i] = 1.f / static_cast<float>(1 + i % 61));
  sampling_internal::TopPScratch scratch;
  const sampling_internal::TopPCut got = sampling_internal::TopPCutoff(e.data(), V, z * (1 + 1e-9), 1 - 1e-12, scratch);
  EXPECT_EQ(got.id, -1);
  EXPECT_EQ(got.step, 4);
}

// ---- output text --------------------------------------------------------------------------------

std::unique_ptr<Tokenizer> LoadTokenizer() {
  auto path = FindTokenizerJson("builtin:v4-tiny");
  if (!path.ok()) return nullptr;
  auto t = Tokenizer::Load(*path);
  return t.ok() ? std::move(*t) : nullptr;
}

// Streams `text` token by token through OutputText; returns the released text and the stop.
std::pair<std::string, std::string> Stream(const Tokenizer& tok, const std::string& text, std::vector<std::string> stop,
                                           std::vector<std::string>* pieces) {
  OutputText out(&tok, true, std::move(stop));
  std::string all;
  for (int32_t id : tok.Encode(text)) {
    OutputText::Delta d = out.Push(id);
    EXPECT_TRUE(utf8::IsValid(d.text)) << "broken UTF-8 released";
    if (pieces) pieces->push_back(d.text);
    all += d.text;
    if (d.stopped) return {all, d.matched};
  }
  return {all + out.Finish(), ""};
}

TEST(OutputText, StopStringsAcrossTokensAreHonouredOnceAndExcluded) {
  auto tok = LoadTokenizer();
  if (!tok) GTEST_SKIP() << "the builtin tokenizer is missing: run launch/setup.sh";
  auto [text, matched] = Stream(*tok, "Hello world, this is the end. More text", {"the end", "zzz"}, nullptr);
  EXPECT_EQ(text, "Hello world, this is ");
  EXPECT_EQ(matched, "the end");
  // Earliest match wins when two stop strings complete.
  std::tie(text, matched) = Stream(*tok, "abc STOP1 STOP2", {"STOP2", "STOP1"}, nullptr);
  EXPECT_EQ(text, "abc ");
  EXPECT_EQ(matched, "STOP1");
  // A stop string longer than the whole output never matches; everything is released at the end.
  std::tie(text, matched) = Stream(*tok, "short", {"a much longer stop string"}, nullptr);
  EXPECT_EQ(text, "short");
  EXPECT_EQ(matched, "");
}

TEST(OutputText, MultiByteCharactersAreNeverSplit) {
  auto tok = LoadTokenizer();
  if (!tok) GTEST_SKIP() << "the builtin tokenizer is missing: run launch/setup.sh";
  const std::string s = "日本語のテキスト🙂 and emoji 🙂🙂 ok";
  std::vector<std::string> pieces;
  auto [text, matched] = Stream(*tok, s, {}, &pieces);
  EXPECT_EQ(text, s);
  auto [t2, m2] = Stream(*tok, s, {"🙂🙂"}, nullptr);
  EXPECT_EQ(t2, "日本語のテキスト🙂 and emoji ");
  EXPECT_EQ(m2, "🙂🙂");
}

}  // namespace
}  // namespace dsv4
