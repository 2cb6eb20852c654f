#include "runtime/step.h"

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstring>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/env.h"
#include "base/log.h"
#include "base/status.h"

namespace dsv4 {

absl::Status BroadcastStep(Communicator& world, int64_t expected_step, StepPlan& plan) {
  if (world.size() == 1) return absl::OkStatus();
  constexpr int64_t kMaxCount = int64_t{1} << 24;
  int64_t header[10] = {plan.step,
                        plan.start,
                        static_cast<int64_t>(plan.tokens.size()),
                        plan.stop ? 1 : 0,
                        static_cast<int64_t>(plan.seqs.size()),
                        static_cast<int64_t>(plan.free_slots.size()),
                        static_cast<int64_t>(plan.placement.size()),
                        static_cast<int64_t>(plan.block_ops.size()),
                        plan.pool_blocks,
                        plan.pool_window_blocks};
  DSV4_RETURN_IF_ERROR(world.Broadcast(header, sizeof(header), 0));
  if (world.rank() != 0) {
    if (header[0] != expected_step)
      return absl::InternalError(absl::StrCat("rank ", world.rank(), " expected step ", expected_step,
                                              " but the leader sent step ", header[0], ": ranks are out of step"));
    if (header[2] < 0 || header[2] > kMaxCount)
      return absl::InternalError(absl::StrCat("step ", header[0], ": implausible token count ", header[2]));
    for (int w = 4; w <= 7; ++w)
      if (header[w] < 0 || header[w] > kMaxCount)
        return absl::InternalError(absl::StrCat("step ", header[0], ": implausible batch of ", header[4],
                                                " sequences, ", header[5], " freed slots, a placement of ",
                                                header[6], " words and ", header[7], " block-table changes"));
    plan.step = header[0], plan.start = header[1], plan.stop = header[3] != 0;
    plan.tokens.resize(header[2]);
    plan.seqs.resize(header[4]);
    plan.free_slots.resize(header[5]);
    plan.placement.resize(header[6]);
    plan.block_ops.resize(header[7]);
    plan.pool_blocks = header[8], plan.pool_window_blocks = header[9];
  }
  // One payload: tokens, then 6 int64 per sequence, then the freed slots, the placement and the
  // block ops.
  constexpr int kSeqWords = 6;
  static_assert(sizeof(BlockOp) == 5 * 4);
  const size_t n_tok = plan.tokens.size(), n_seq = plan.seqs.size(), n_free = plan.free_slots.size(),
               n_place = plan.placement.size(), n_ops = plan.block_ops.size();
  if (n_tok + n_seq + n_free + n_place + n_ops == 0) return absl::OkStatus();
  std::vector<char> payload(n_tok * 4 + n_seq * kSeqWords * 8 + n_free * 4 + n_place * 4 + n_ops * sizeof(BlockOp));
  char* tok = payload.data();
  char* seq_bytes = tok + n_tok * 4;  // not 8-byte aligned in general: memcpy only
  char* free_bytes = seq_bytes + n_seq * kSeqWords * 8;
  char* place_bytes = free_bytes + n_free * 4;
  char* op_bytes = place_bytes + n_place * 4;
  if (world.rank() == 0) {
    std::memcpy(tok, plan.tokens.data(), n_tok * 4);
    for (size_t i = 0; i < n_seq; ++i) {
      const StepSeq& s = plan.seqs[i];
      const int64_t w[kSeqWords] = {s.request, s.slot, s.start, s.num_tokens, s.logits ? 1 : 0, s.group};
      std::memcpy(seq_bytes + i * sizeof(w), w, sizeof(w));
    }
    std::memcpy(free_bytes, plan.free_slots.data(), n_free * 4);
    std::memcpy(place_bytes, plan.placement.data(), n_place * 4);
    std::memcpy(op_bytes, plan.block_ops.data(), n_ops * sizeof(BlockOp));
  }
  DSV4_RETURN_IF_ERROR(world.Broadcast(payload.data(), static_cast<int64_t>(payload.size()), 0));
  if (world.rank() == 0) return absl::OkStatus();
  std::memcpy(plan.tokens.data(), tok, n_tok * 4);
  int64_t total = 0;
  for (size_t i = 0; i < n_seq; ++i) {
    int64_t w[kSeqWords];
    std::memcpy(w, seq_bytes + i * sizeof(w), sizeof(w));
    if (w[1] < 0 || w[1] > kMaxCount || w[2] < 0 || w[3] < 1 || w[3] > static_cast<int64_t>(n_tok) || w[5] < 0 ||
        w[5] >= world.size())
      return absl::InternalError(absl::StrCat("step ", plan.step, ": sequence ", i, " of the batch is malformed (slot ",
                                              w[1], ", start ", w[2], ", ", w[3], " tokens, group ", w[5], ")"));
    plan.seqs[i] = StepSeq{w[0], static_cast<int32_t>(w[1]), w[2], static_cast<int32_t>(w[3]), w[4] != 0,
                           static_cast<int32_t>(w[5])};
    total += w[3];
  }
  if (n_seq > 0 && total != static_cast<int64_t>(n_tok))
    return absl::InternalError(absl::StrCat("step ", plan.step, ": the batch's chunks hold ", total,
                                            " tokens but the step carries ", n_tok));
  std::memcpy(plan.free_slots.data(), free_bytes, n_free * 4);
  std::memcpy(plan.placement.data(), place_bytes, n_place * 4);
  std::memcpy(plan.block_ops.data(), op_bytes, n_ops * sizeof(BlockOp));
  return absl::OkStatus();
}

void MaybeInjectFault(int world_rank, int64_t step) {
  const std::string spec = env::Str(env::Knob::kFaultInject);
  if (spec.empty()) return;
  std::vector<std::string> parts = absl::StrSplit(spec, ':');
  int rank;
  int64_t at;
  if (parts.size() != 3 || !absl::SimpleAtoi(parts[0], &rank) || !absl::SimpleAtoi(parts[1], &at)) return;
  if (rank != world_rank || at != step) return;
  DSV4_LOG(kWarn, "fault injection: ", parts[2], " at step ", step);
  ::kill(::getpid(), parts[2] == "STOP" ? SIGSTOP : SIGKILL);
}

}  // namespace dsv4
