// dsv4 logits --model DIR --prompt-ids 1,2,3 [--decode-ids 4,5] --out FILE.npy [--qdq on|off]
//                [--tp N] [--ep M]
//
// Writes float32 [1 + n_decode, vocab]: the last-position logits after prefilling the prompt (at
// position 0), then after each single-token decode step. Under mpirun every rank runs every step
// (the leader broadcasts each step's plan) and only rank 0 writes the file.
#include <vector>

#include "base/status.h"
#include "launch/commands.h"
#include "runtime/npy.h"
#include "runtime/runtime.h"
#include "runtime/step.h"

namespace dsv4 {

void LogitsFlags(Flags& flags) {
  AddRuntimeFlags(flags);
  flags.IntList("prompt-ids", "", "comma-separated prompt token ids (required)")
      .IntList("decode-ids", "", "comma-separated token ids fed one at a time after the prompt")
      .String("out", "", "output .npy file (required; written by rank 0)");
}

absl::Status Logits(const Flags& flags) {
  const std::vector<int32_t>& prompt = flags.GetIntList("prompt-ids");
  const std::vector<int32_t>& decode = flags.GetIntList("decode-ids");
  if (prompt.empty()) return absl::InvalidArgumentError("--prompt-ids is required and must not be empty");
  if (flags.GetString("out").empty()) return absl::InvalidArgumentError("--out is required");
  DSV4_ASSIGN_OR_RETURN(const RuntimeOptions options, RuntimeOptionsFromFlags(flags));
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<Runtime> rt, Runtime::Open(options));
  const Model& m = rt->model();
  DSV4_RETURN_IF_ERROR(CheckTokenIds(prompt, m, "--prompt-ids"));
  DSV4_RETURN_IF_ERROR(CheckTokenIds(decode, m, "--decode-ids"));

  const int64_t V = m.config().vocab_size;
  const int64_t steps = 1 + static_cast<int64_t>(decode.size());
  std::vector<float> logits(steps * V);
  SequenceCache cache = m.NewCache();
  for (int64_t step = 0; step < steps; ++step) {
    StepPlan plan;
    if (rt->leader()) {
      plan.step = step, plan.start = cache.length;
      plan.tokens = step == 0 ? prompt : std::vector<int32_t>{decode[step - 1]};
    }
    DSV4_RETURN_IF_ERROR(BroadcastStep(rt->world(), step, plan));
    MaybeInjectFault(rt->world().rank(), step);
    DSV4_RETURN_IF_ERROR(m.Forward(plan.tokens, cache, &logits[step * V]));
  }
  if (rt->leader()) DSV4_RETURN_IF_ERROR(WriteNpyF32(flags.GetString("out"), {steps, V}, logits.data()));
  return absl::OkStatus();
}

}  // namespace dsv4
