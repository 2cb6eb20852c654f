// dsv4 logits --model DIR --prompt-ids 1,2,3 [--decode-ids 4,5] --out FILE.npy [--qdq on|off]
//
// Writes float32 [1 + n_decode, vocab]: the last-position logits after prefilling the prompt (at
// position 0), then after each single-token decode step.
#include <chrono>
#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/thread_pool.h"
#include "launch/commands.h"
#include "launch/common.h"
#include "runtime/model/model.h"
#include "runtime/npy.h"

namespace dsv4 {

int RunLogits(int argc, char** argv) {
  Flags flags;
  AddModelFlags(flags);
  flags.Add("prompt-ids", "", "comma-separated prompt token ids (required)")
      .Add("decode-ids", "", "comma-separated token ids fed one at a time after the prompt")
      .Add("out", "", "output .npy file (required)");
  if (WantsHelp(argc, argv)) return PrintHelp("logits", flags);
  if (auto st = flags.Parse(argc, argv, 2); !st.ok()) return Fail(st);
  auto prompt = flags.IntList("prompt-ids");
  auto decode = flags.IntList("decode-ids");
  if (!prompt.ok()) return Fail(prompt.status());
  if (!decode.ok()) return Fail(decode.status());
  if (prompt->empty()) return Fail(absl::InvalidArgumentError("--prompt-ids is required and must not be empty"));
  if (flags.Str("out").empty()) return Fail(absl::InvalidArgumentError("--out is required"));
  auto model = OpenModel(flags);
  if (!model.ok()) return Fail(model.status());
  const Model& m = **model;
  if (auto st = CheckTokenIds(*prompt, m.config(), "--prompt-ids"); !st.ok()) return Fail(st);
  if (auto st = CheckTokenIds(*decode, m.config(), "--decode-ids"); !st.ok()) return Fail(st);

  const int64_t V = m.config().vocab_size;
  std::vector<float> logits((1 + decode->size()) * V);
  SequenceCache cache = m.NewCache();
  m.Forward(*prompt, cache, logits.data());
  for (size_t i = 0; i < decode->size(); ++i)
    m.Forward(std::span<const int32_t>(&(*decode)[i], 1), cache, &logits[(i + 1) * V]);
  const std::vector<int64_t> shape = {static_cast<int64_t>(1 + decode->size()), V};
  if (auto st = WriteNpyF32(flags.Str("out"), shape, logits.data()); !st.ok()) return Fail(st);
  return 0;
}

}  // namespace dsv4
