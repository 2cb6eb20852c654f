#include "launch/common.h"

#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "kernels/cpu/thread_pool.h"

namespace dsv4 {

void AddModelFlags(Flags& flags) {
  flags.Add("model", "builtin:v4-tiny", "checkpoint directory or built-in model name")
      .Add("qdq", "on", "reproduce the reference's quantization simulation (on|off)")
      .Add("threads", "0", "CPU threads (0 = one per core)")
      .Add("tp", "1", "tensor-parallel ranks for attention")
      .Add("ep", "0", "expert-parallel ranks (0 = the whole world)");
}

absl::StatusOr<std::unique_ptr<Model>> OpenModel(const Flags& flags) {
  auto qdq = flags.OnOff("qdq");
  if (!qdq.ok()) return qdq.status();
  auto threads = flags.Int("threads");
  if (!threads.ok()) return threads.status();
  if (*threads < 0) return absl::InvalidArgumentError("--threads must be >= 0");
  auto tp = flags.Int("tp");
  auto ep = flags.Int("ep");
  if (!tp.ok()) return tp.status();
  if (!ep.ok()) return ep.status();
  if (*tp != 1 || (*ep != 0 && *ep != 1))
    return absl::InvalidArgumentError(absl::StrCat("--tp ", *tp, " --ep ", *ep,
                                                   ": this process is a world of 1 (launch ranks with mpirun)"));
  if (*threads > 0) kernels::SetNumThreads(static_cast<int>(*threads));
  auto weights = LoadModel(flags.Str("model"));
  if (!weights.ok()) return weights.status();
  ForwardOptions opt;
  opt.qdq = *qdq;
  return std::make_unique<Model>(std::shared_ptr<const ModelWeights>(std::move(*weights)), opt);
}

absl::Status CheckTokenIds(std::span<const int32_t> ids, const ModelConfig& config, const std::string& flag) {
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= config.vocab_size)
      return absl::InvalidArgumentError(
          absl::StrCat(flag, ": token id ", ids[i], " at index ", i, " is outside [0, ", config.vocab_size, ")"));
  return absl::OkStatus();
}

bool WantsHelp(int argc, char** argv) {
  for (int i = 2; i < argc; ++i)
    if (!std::strcmp(argv[i], "--help") || !std::strcmp(argv[i], "-h")) return true;
  return false;
}

int PrintHelp(const std::string& command, const Flags& flags) {
  std::printf("usage: dsv4 %s [flags]\n%s", command.c_str(), flags.Help().c_str());
  return 0;
}

int Fail(const absl::Status& status) {
  std::fprintf(stderr, "dsv4: %s\n", std::string(status.message()).c_str());
  return status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

}  // namespace dsv4
