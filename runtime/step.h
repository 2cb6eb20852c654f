// The SPMD step protocol: the leader (world rank 0) decides each step and broadcasts its plan;
// every rank runs the same step. A rank that receives an unexpected step number stops the job.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "parallel/communicator.h"

namespace dsv4 {

struct StepPlan {
  int64_t step = 0;
  int64_t start = 0;               // position of the first token (the sequence's cache length)
  std::vector<int32_t> tokens;     // token ids of this step
  bool stop = false;               // the leader ends the loop
};

// On the leader, sends `plan`; elsewhere, receives into `plan` and checks that its step number
// is `expected_step`. Every rank must call it once per step.
absl::Status BroadcastStep(Communicator& world, int64_t expected_step, StepPlan& plan);

// Honours DSV4_FAULT_INJECT (kernels/env.h) for fault tests: may kill or stop this process.
void MaybeInjectFault(int world_rank, int64_t step);

}  // namespace dsv4
