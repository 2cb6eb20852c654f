// The SPMD step protocol: the leader (world rank 0) decides each step and broadcasts its plan;
// every rank runs the same step. A rank that receives an unexpected step number stops the job.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "parallel/communicator.h"

namespace dsv4 {

// One sequence's share of a batched step (the serving engine): run its next `num_tokens` tokens
// on cache slot `slot`, whose cache holds `start` tokens. A slot without a cache starts one: at 0,
// or at a block end when it begins with blocks another sequence computed (a shared prompt
// prefix). Only the ranks of data-parallel attention group `group` run it (and hold its cache).
struct StepSeq {
  int64_t request = 0;     // the leader's sequence id (for errors and logs)
  int32_t slot = 0;
  int64_t start = 0;
  int32_t num_tokens = 0;  // >= 1; its ids are the next num_tokens of StepPlan::tokens
  bool logits = false;     // the leader samples after this chunk: its group computes the logits
  int32_t group = 0;       // the dp group (parallel/layout.h) that runs it, in [0, dp)
};

// A change to a sequence's block table (runtime/model/cache.h) on the ranks of dp group `group`:
// entry `index` of the table of cache slot `slot` becomes (block, window); window -1 drops it.
struct BlockOp {
  int32_t group = 0, slot = 0, index = 0, block = -1, window = -1;
};

struct StepPlan {
  int64_t step = 0;
  int64_t start = 0;               // position of the first token (the sequence's cache length)
  std::vector<int32_t> tokens;     // token ids of this step
  bool stop = false;               // the leader ends the loop
  // Batched steps: the sequences to run, in this order, with `tokens` holding their chunks back to
  // back (`start` unused). Empty in single-sequence loops.
  std::vector<StepSeq> seqs;
  std::vector<int32_t> free_slots;  // cache slots every rank drops before running the step
  // A new expert placement (ModelPlacement::Encode) every rank switches to before running the step,
  // so all ranks switch at the same step; empty: unchanged.
  std::vector<int32_t> placement;
  std::vector<BlockOp> block_ops;   // then these block-table changes, in order
  // The leader's KV pool (blocks, window blocks): every rank's must be the same.
  int64_t pool_blocks = 0, pool_window_blocks = 0;
};

// On the leader, sends `plan`; elsewhere, receives into `plan` and checks that its step number
// is `expected_step`. Every rank must call it once per step.
absl::Status BroadcastStep(Communicator& world, int64_t expected_step, StepPlan& plan);

// Honours DSV4_FAULT_INJECT (base/env.h) for fault tests: may kill or stop this process.
void MaybeInjectFault(int world_rank, int64_t step);

}  // namespace dsv4
