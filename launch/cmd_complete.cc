// dsv4 complete --model M --prompt-ids 1,2,3 [--max-tokens N]
//
// Greedy generation on this machine: prefill, then one decode step per token. Prints the
// generated ids and the prefill / decode timing.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "absl/strings/str_join.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"
#include "launch/commands.h"
#include "launch/common.h"
#include "runtime/step.h"

namespace dsv4 {

int RunComplete(int argc, char** argv) {
  Flags flags;
  AddModelFlags(flags);
  flags.Add("prompt-ids", "0,4095,100,2024,7", "comma-separated prompt token ids")
      .Add("max-tokens", "16", "number of tokens to generate");
  if (WantsHelp(argc, argv)) return PrintHelp("complete", flags);
  if (auto st = flags.Parse(argc, argv, 2); !st.ok()) return Fail(st);
  auto prompt = flags.IntList("prompt-ids");
  auto max_tokens = flags.Int("max-tokens");
  if (!prompt.ok()) return Fail(prompt.status());
  if (!max_tokens.ok()) return Fail(max_tokens.status());
  if (prompt->empty()) return Fail(absl::InvalidArgumentError("--prompt-ids must not be empty"));
  if (*max_tokens < 1 || *max_tokens > 1 << 20)
    return Fail(absl::InvalidArgumentError("--max-tokens must be in [1, 1048576]"));

  using Clock = std::chrono::steady_clock;
  const auto t_load = Clock::now();
  auto rt = OpenRuntime(flags);
  if (!rt.ok()) return Fail(rt.status());
  const Model& m = *(*rt)->model;
  if (auto st = CheckTokenIds(*prompt, m, "--prompt-ids"); !st.ok()) return Fail(st);
  const auto t_prefill = Clock::now();

  const int64_t V = m.config().vocab_size;
  std::vector<float> logits(V);
  SequenceCache cache = m.NewCache();
  // SPMD: the leader picks each step's tokens (greedy argmax) and broadcasts the plan.
  std::vector<int32_t> out;
  auto t_decode = Clock::now();
  for (int64_t step = 0; step < *max_tokens; ++step) {
    StepPlan plan;
    if ((*rt)->leader()) {
      plan.step = step, plan.start = cache.length;
      plan.tokens = step == 0 ? *prompt : std::vector<int32_t>{out.back()};
    }
    if (auto st = BroadcastStep((*rt)->world(), step, plan); !st.ok()) return Fail(st);
    if (auto st = m.Forward(plan.tokens, cache, logits.data()); !st.ok()) return Fail(st);
    if (step == 0) t_decode = Clock::now();
    out.push_back(static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
  }
  const auto t_end = Clock::now();
  if (!(*rt)->leader()) return 0;
  auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  std::printf("model: %s (%s kernels, %d threads, %s)\n", flags.Str("model").c_str(),
              kernels::IsaName(kernels::ActiveIsa()), kernels::NumThreads(),
              (*rt)->groups->ctx.layout.ToString().c_str());
  std::printf("prompt ids: %s\n", absl::StrJoin(*prompt, ",").c_str());
  std::printf("generated ids: %s\n", absl::StrJoin(out, ",").c_str());
  const double decode_ms = ms(t_decode, t_end);
  std::printf("load %.1f ms, prefill %zu tokens %.1f ms, decode %lld tokens %.1f ms (%.2f ms/token)\n",
              ms(t_load, t_prefill), prompt->size(), ms(t_prefill, t_decode), static_cast<long long>(*max_tokens - 1),
              decode_ms, *max_tokens > 1 ? decode_ms / (*max_tokens - 1) : 0.0);
  return 0;
}

}  // namespace dsv4
