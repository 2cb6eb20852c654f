// dsv4 bench sample: the per-token sampler (runtime/serving/sampler.h) on one thread, over rows of
// synthetic logits, against one vector pass over the same rows (a read of the row and its
// largest value: the least any sampler that reads its input does). A serving step samples one row
// per sequence after the forward pass, so this is the cost the engine adds to a batched step.
//
// Cases: Gaussian logits of the standard deviations asked for (V4-tiny's random weights give about
// 1), and "peaked" rows, sd 1 with four tokens raised far above the rest, as a trained model's
// distribution is. Each case samples `rows` distinct rows (so that they come from memory, as the
// head's fresh logits do), five times after a warm-up; the median per-row time is reported.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "base/status.h"
#include "bench/comm_bench.h"
#include "bench/commands.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/sampling.h"
#include "runtime/serving/sampler.h"

namespace dsv4::bench {
namespace {

using Clock = std::chrono::steady_clock;

struct Case {
  std::string name;
  double sd = 1;
  bool peaked = false;
};

std::vector<std::vector<float>> Rows(const Case& c, int64_t rows, int64_t V, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.f, static_cast<float>(c.sd));
  std::uniform_int_distribution<int64_t> any(0, V - 1);
  std::vector<std::vector<float>> out(rows, std::vector<float>(V));
  for (std::vector<float>& row : out) {
    for (float& x : row) x = normal(rng);
    if (c.peaked)
      for (float lift : {9.f, 7.f, 6.5f, 5.f}) row[any(rng)] += lift;
  }
  return out;
}

// Median over 5 timed repetitions (after one untimed) of `per_row` over every row, in microseconds
// per row.
template <typename F>
double MedianUsPerRow(const std::vector<std::vector<float>>& rows, F per_row) {
  std::vector<double> us;
  for (int rep = 0; rep < 6; ++rep) {
    const auto t0 = Clock::now();
    for (const std::vector<float>& row : rows) per_row(row);
    const double t = std::chrono::duration<double, std::micro>(Clock::now() - t0).count();
    if (rep > 0) us.push_back(t / static_cast<double>(rows.size()));
  }
  std::nth_element(us.begin(), us.begin() + us.size() / 2, us.end());
  return us[us.size() / 2];
}

}  // namespace

void SampleFlags(Flags& flags) {
  flags.Int("vocab", 129280, "logits per row (V4's vocabulary: 129280)", 2, int64_t{1} << 24)
      .Int("rows", 32, "distinct rows per case", 1, 1 << 16)
      .Double("temperature", 0.8, "sampling temperature (0 = greedy)")
      .Double("top-p", 0.95, "nucleus mass (1 = off)")
      .Int("top-k", 0, "top-k (0 = off)")
      .String("sd", "0.5,1,2,4,8", "standard deviations of the Gaussian cases' logits, comma-separated")
      .Int("seed", 1, "the rows are drawn from this seed", 0)
      .Bool("json", false, "print one JSON object");
}

absl::Status Sample(const Flags& flags) {
  const int64_t V = flags.GetInt("vocab"), rows = flags.GetInt("rows");
  SamplingParams params;
  params.temperature = flags.GetDouble("temperature");
  params.top_p = flags.GetDouble("top-p");
  params.top_k = flags.GetInt("top-k");
  SamplingLimits limits;
  limits.vocab_size = V;
  DSV4_RETURN_IF_ERROR(ValidateSamplingParams(params, limits));
  std::vector<Case> cases;
  for (const absl::string_view part : absl::StrSplit(flags.GetString("sd"), ',', absl::SkipWhitespace())) {
    double sd = 0;
    if (!absl::SimpleAtod(part, &sd) || !std::isfinite(sd) || sd <= 0)
      return absl::InvalidArgumentError(
          absl::StrCat("--sd: '", part, "' is not a positive standard deviation (comma-separated numbers)"));
    cases.push_back({absl::StrCat("sd ", part), sd, false});
  }
  cases.push_back({"peaked", 1, true});
  const uint64_t seed = static_cast<uint64_t>(flags.GetInt("seed"));

  struct Figures {
    double sample_us, pass_us;
  };
  std::vector<Figures> figures;
  for (size_t i = 0; i < cases.size(); ++i) {
    const std::vector<std::vector<float>> data = Rows(cases[i], rows, V, seed + i);
    Sampler sampler(params, seed, {});
    int64_t sink = 0;
    const double sample_us = MedianUsPerRow(data, [&](const std::vector<float>& row) { sink += sampler.Sample(row); });
    bool nan = false;
    float top = 0;
    const double pass_us = MedianUsPerRow(
        data, [&](const std::vector<float>& row) { top = std::max(top, kernels::MaxAndNaN(row.data(), V, &nan)); });
    if (sink < 0 || nan) return absl::InternalError("bench sample: a sampled id or a logit is out of range");
    figures.push_back({sample_us, pass_us});
  }

  const std::string cpu = CpuModel(), isa = kernels::IsaName(kernels::ActiveIsa());
  if (flags.GetBool("json")) {
    std::string list;
    for (size_t i = 0; i < cases.size(); ++i)
      absl::StrAppendFormat(&list, "%s{\"logits\": \"%s\", \"us_per_row\": %.3f, \"pass_us\": %.3f, "
                            "\"ratio_to_pass\": %.3f}",
                            i ? ", " : "", cases[i].name, figures[i].sample_us, figures[i].pass_us,
                            figures[i].sample_us / figures[i].pass_us);
    std::printf(
        "{\"vocab\": %lld, \"rows\": %lld, \"temperature\": %g, \"top_p\": %g, \"top_k\": %lld, \"threads\": 1, "
        "\"isa\": \"%s\", \"cpu\": \"%s\", \"cases\": [%s]}\n",
        static_cast<long long>(V), static_cast<long long>(rows), params.temperature, params.top_p,
        static_cast<long long>(params.top_k), isa.c_str(), cpu.c_str(), list.c_str());
    return absl::OkStatus();
  }
  std::printf("sampling %lld logits per row, T %g, top-p %g, top-k %lld; one thread, %s, %s\n",
              static_cast<long long>(V), params.temperature, params.top_p, static_cast<long long>(params.top_k),
              isa.c_str(), cpu.c_str());
  std::printf("%-10s %12s %14s %14s\n", "logits", "us per row", "one pass (us)", "ratio to pass");
  for (size_t i = 0; i < cases.size(); ++i)
    std::printf("%-10s %12.1f %14.1f %14.2f\n", cases[i].name.c_str(), figures[i].sample_us, figures[i].pass_us,
                figures[i].sample_us / figures[i].pass_us);
  return absl::OkStatus();
}

}  // namespace dsv4::bench
