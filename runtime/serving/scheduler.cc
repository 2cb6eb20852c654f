#include "runtime/serving/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace dsv4 {

absl::Status SchedulerOptions::Validate() const {
  if (max_running < 1) return absl::InvalidArgumentError("max_running must be >= 1");
  if (max_queued < 0) return absl::InvalidArgumentError("max_queued must be >= 0");
  if (prefill_chunk < 1) return absl::InvalidArgumentError("prefill_chunk must be >= 1");
  if (num_blocks < 1) return absl::InvalidArgumentError("num_blocks must be >= 1");
  if (dp_groups < 1) return absl::InvalidArgumentError("dp_groups must be >= 1");
  if (max_batch_tokens < max_running - 1 + prefill_chunk)
    return absl::InvalidArgumentError(absl::StrCat("max_batch_tokens (", max_batch_tokens,
                                                   ") must be at least max_running - 1 + prefill_chunk (",
                                                   max_running - 1 + prefill_chunk, ")"));
  return absl::OkStatus();
}

absl::Status Scheduler::Add(int64_t seq, int64_t prompt_len, int64_t blocks) {
  DSV4_CHECK(prompt_len >= 1 && blocks >= 0 && !seqs_.contains(seq), "bad sequence ", seq);
  if (blocks > opt_.num_blocks)
    return absl::InvalidArgumentError(
        absl::StrCat("the request needs ", blocks, " cache blocks but the server has ", opt_.num_blocks));
  if (queued() >= opt_.max_queued)
    return absl::ResourceExhaustedError(
        absl::StrCat("the request queue is full (", queued(), " waiting); retry later"));
  Seq& s = seqs_[seq];
  s.prompt_len = s.num_tokens = prompt_len;
  s.blocks = blocks;
  waiting_.push_back(seq);
  return absl::OkStatus();
}

int32_t Scheduler::Remove(int64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return -1;
  const int32_t slot = it->second.slot;
  if (slot >= 0) {
    running_.erase(std::find(running_.begin(), running_.end(), seq));
    free_slots_.push_back(slot);
    --group_running_[it->second.group];
    blocks_used_ -= it->second.blocks;
  } else {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), seq));
  }
  seqs_.erase(it);
  return slot;
}

std::vector<Scheduler::Work> Scheduler::Schedule() {
  // Admission, first come first served (no overtaking, so a large request is not starved).
  while (!waiting_.empty() && running() < opt_.max_running) {
    Seq& s = seqs_[waiting_.front()];
    if (blocks_used_ + s.blocks > opt_.num_blocks) break;
    blocks_used_ += s.blocks;
    if (!free_slots_.empty()) {
      // Lowest free slot first: slot numbers stay small and reuse is predictable.
      auto lowest = std::min_element(free_slots_.begin(), free_slots_.end());
      s.slot = *lowest;
      free_slots_.erase(lowest);
    } else {
      s.slot = next_slot_++;
    }
    s.group = static_cast<int32_t>(std::min_element(group_running_.begin(), group_running_.end()) -
                                   group_running_.begin());
    ++group_running_[s.group];
    running_.push_back(waiting_.front());
    waiting_.pop_front();
  }
  std::vector<Work> work;
  int64_t budget = opt_.max_batch_tokens;
  for (int64_t id : running_) {  // decodes
    const Seq& s = seqs_[id];
    if (s.num_computed >= s.prompt_len && s.num_computed < s.num_tokens) {
      work.push_back({id, s.slot, s.num_computed, s.num_tokens, true, s.group});
      budget -= s.num_tokens - s.num_computed;
    }
  }
  for (int64_t id : running_) {  // prompt chunks
    const Seq& s = seqs_[id];
    if (s.num_computed >= s.prompt_len) continue;
    const int64_t end = std::min(s.prompt_len, s.num_computed + opt_.prefill_chunk);
    if (end - s.num_computed > budget) break;  // keep arrival order: no overtaking here either
    work.push_back({id, s.slot, s.num_computed, end, end == s.num_tokens, s.group});
    budget -= end - s.num_computed;
  }
  return work;
}

void Scheduler::Done(const Work& work) {
  auto it = seqs_.find(work.seq);
  if (it != seqs_.end()) it->second.num_computed = work.end;
}

void Scheduler::Append(int64_t seq) {
  auto it = seqs_.find(seq);
  if (it != seqs_.end()) ++it->second.num_tokens;
}

}  // namespace dsv4
