#include "runtime/step.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "kernels/env.h"

namespace dsv4 {

absl::Status BroadcastStep(Communicator& world, int64_t expected_step, StepPlan& plan) {
  if (world.size() == 1) return absl::OkStatus();
  int64_t header[4] = {plan.step, plan.start, static_cast<int64_t>(plan.tokens.size()), plan.stop ? 1 : 0};
  if (auto st = world.Broadcast(header, sizeof(header), 0); !st.ok()) return st;
  if (world.rank() != 0) {
    if (header[0] != expected_step)
      return absl::InternalError(absl::StrCat("rank ", world.rank(), " expected step ", expected_step,
                                              " but the leader sent step ", header[0], ": ranks are out of step"));
    if (header[2] < 0 || header[2] > (int64_t{1} << 24))
      return absl::InternalError(absl::StrCat("step ", header[0], ": implausible token count ", header[2]));
    plan.step = header[0], plan.start = header[1], plan.stop = header[3] != 0;
    plan.tokens.resize(header[2]);
  }
  if (plan.tokens.empty()) return absl::OkStatus();
  return world.Broadcast(plan.tokens.data(), static_cast<int64_t>(plan.tokens.size() * sizeof(int32_t)), 0);
}

void MaybeInjectFault(int world_rank, int64_t step) {
  const std::string spec = FaultInjectParam();
  if (spec.empty()) return;
  std::vector<std::string> parts = absl::StrSplit(spec, ':');
  int rank;
  int64_t at;
  if (parts.size() != 3 || !absl::SimpleAtoi(parts[0], &rank) || !absl::SimpleAtoi(parts[1], &at)) return;
  if (rank != world_rank || at != step) return;
  std::fprintf(stderr, "dsv4 (rank %d): fault injection: %s at step %lld\n", world_rank, parts[2].c_str(),
               static_cast<long long>(step));
  std::fflush(stderr);
  ::kill(::getpid(), parts[2] == "STOP" ? SIGSTOP : SIGKILL);
}

}  // namespace dsv4
