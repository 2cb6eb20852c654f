// dsv4 logits --model DIR --prompt-ids 1,2,3 [--decode-ids 4,5] --out FILE.npy [--qdq on|off]
//                [--tp N] [--ep M]
//
// Writes float32 [1 + n_decode, vocab]: the last-position logits after prefilling the prompt (at
// position 0), then after each single-token decode step. Under mpirun every rank runs every step
// (the leader broadcasts each step's plan) and only rank 0 writes the file.
#include <cstdio>
#include <vector>

#include "launch/commands.h"
#include "launch/common.h"
#include "runtime/npy.h"
#include "runtime/step.h"

namespace dsv4 {

int RunLogits(int argc, char** argv) {
  Flags flags;
  AddModelFlags(flags);
  flags.Add("prompt-ids", "", "comma-separated prompt token ids (required)")
      .Add("decode-ids", "", "comma-separated token ids fed one at a time after the prompt")
      .Add("out", "", "output .npy file (required; written by rank 0)");
  if (WantsHelp(argc, argv)) return PrintHelp("logits", flags);
  if (auto st = flags.Parse(argc, argv, 2); !st.ok()) return Fail(st);
  auto prompt = flags.IntList("prompt-ids");
  auto decode = flags.IntList("decode-ids");
  if (!prompt.ok()) return Fail(prompt.status());
  if (!decode.ok()) return Fail(decode.status());
  if (prompt->empty()) return Fail(absl::InvalidArgumentError("--prompt-ids is required and must not be empty"));
  if (flags.Str("out").empty()) return Fail(absl::InvalidArgumentError("--out is required"));
  auto rt = OpenRuntime(flags);
  if (!rt.ok()) return Fail(rt.status());
  const Model& m = *(*rt)->model;
  if (auto st = CheckTokenIds(*prompt, m, "--prompt-ids"); !st.ok()) return Fail(st);
  if (auto st = CheckTokenIds(*decode, m, "--decode-ids"); !st.ok()) return Fail(st);

  const int64_t V = m.config().vocab_size;
  const int64_t steps = 1 + static_cast<int64_t>(decode->size());
  std::vector<float> logits(steps * V);
  SequenceCache cache = m.NewCache();
  for (int64_t step = 0; step < steps; ++step) {
    StepPlan plan;
    if ((*rt)->leader()) {
      plan.step = step, plan.start = cache.length;
      plan.tokens = step == 0 ? *prompt : std::vector<int32_t>{(*decode)[step - 1]};
    }
    if (auto st = BroadcastStep((*rt)->world(), step, plan); !st.ok()) return Fail(st);
    MaybeInjectFault((*rt)->world().rank(), step);
    if (auto st = m.Forward(plan.tokens, cache, &logits[step * V]); !st.ok()) return Fail(st);
  }
  if ((*rt)->leader())
    if (auto st = WriteNpyF32(flags.Str("out"), {steps, V}, logits.data()); !st.ok()) return Fail(st);
  return 0;
}

}  // namespace dsv4
