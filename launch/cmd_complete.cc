// dsv4 complete --model M --prompt-ids 1,2,3 [--max-tokens N]
//
// Greedy generation on this machine: prefill, then one decode step per token. Prints the
// generated ids and the prefill / decode timing.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "absl/strings/str_join.h"
#include "base/status.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"
#include "launch/commands.h"
#include "runtime/runtime.h"
#include "runtime/step.h"

namespace dsv4 {

void CompleteFlags(Flags& flags) {
  AddRuntimeFlags(flags);
  flags.IntList("prompt-ids", "0,4095,100,2024,7", "comma-separated prompt token ids")
      .Int("max-tokens", 16, "number of tokens to generate", 1, 1 << 20);
}

absl::Status Complete(const Flags& flags) {
  const std::vector<int32_t>& prompt = flags.GetIntList("prompt-ids");
  const int64_t max_tokens = flags.GetInt("max-tokens");
  if (prompt.empty()) return absl::InvalidArgumentError("--prompt-ids must not be empty");

  using Clock = std::chrono::steady_clock;
  const auto t_load = Clock::now();
  DSV4_ASSIGN_OR_RETURN(const RuntimeOptions options, RuntimeOptionsFromFlags(flags));
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<Runtime> rt, Runtime::Open(options));
  const Model& m = rt->model();
  DSV4_RETURN_IF_ERROR(CheckTokenIds(prompt, m, "--prompt-ids"));
  const auto t_prefill = Clock::now();

  const int64_t V = m.config().vocab_size;
  std::vector<float> logits(V);
  SequenceCache cache = m.NewCache();
  // SPMD: the leader picks each step's tokens (greedy argmax) and broadcasts the plan.
  std::vector<int32_t> out;
  auto t_decode = Clock::now();
  for (int64_t step = 0; step < max_tokens; ++step) {
    StepPlan plan;
    if (rt->leader()) {
      plan.step = step, plan.start = cache.length;
      plan.tokens = step == 0 ? prompt : std::vector<int32_t>{out.back()};
    }
    DSV4_RETURN_IF_ERROR(BroadcastStep(rt->world(), step, plan));
    DSV4_RETURN_IF_ERROR(m.Forward(plan.tokens, cache, logits.data()));
    if (step == 0) t_decode = Clock::now();
    out.push_back(static_cast<int32_t>(std::max_element(logits.begin(), logits.end()) - logits.begin()));
  }
  const auto t_end = Clock::now();
  if (!rt->leader()) return absl::OkStatus();
  auto ms = [](auto a, auto b) { return std::chrono::duration<double, std::milli>(b - a).count(); };
  std::printf("model: %s (%s kernels, %d threads, %s)\n", options.model.c_str(), kernels::IsaName(kernels::ActiveIsa()),
              kernels::NumThreads(), rt->layout().ToString().c_str());
  std::printf("prompt ids: %s\n", absl::StrJoin(prompt, ",").c_str());
  std::printf("generated ids: %s\n", absl::StrJoin(out, ",").c_str());
  const double decode_ms = ms(t_decode, t_end);
  std::printf("load %.1f ms, prefill %zu tokens %.1f ms, decode %lld tokens %.1f ms (%.2f ms/token)\n",
              ms(t_load, t_prefill), prompt.size(), ms(t_prefill, t_decode), static_cast<long long>(max_tokens - 1),
              decode_ms, max_tokens > 1 ? decode_ms / (max_tokens - 1) : 0.0);
  return absl::OkStatus();
}

}  // namespace dsv4
