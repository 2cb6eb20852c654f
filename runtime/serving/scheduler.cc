#include "runtime/serving/scheduler.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace dsv4 {

absl::Status SchedulerOptions::Validate() const {
  if (max_running < 1) return absl::InvalidArgumentError("max_running must be >= 1");
  if (max_queued < 0) return absl::InvalidArgumentError("max_queued must be >= 0");
  if (prefill_chunk < 1) return absl::InvalidArgumentError("prefill_chunk must be >= 1");
  if (dp_groups < 1) return absl::InvalidArgumentError("dp_groups must be >= 1");
  if (kv.num_blocks < 1 || kv.num_window_blocks < 1)
    return absl::InvalidArgumentError("the KV pool must hold at least one block of each kind");
  if (kv.block_tokens % prefill_chunk != 0)
    return absl::InvalidArgumentError(absl::StrCat("prefill_chunk (", prefill_chunk,
                                                   ") must divide the KV block size (", kv.block_tokens,
                                                   " positions) so that every block ends at a step's end"));
  if (max_batch_tokens < max_running - 1 + prefill_chunk)
    return absl::InvalidArgumentError(absl::StrCat("max_batch_tokens (", max_batch_tokens,
                                                   ") must be at least max_running - 1 + prefill_chunk (",
                                                   max_running - 1 + prefill_chunk, ")"));
  return absl::OkStatus();
}

Scheduler::Scheduler(SchedulerOptions options) : opt_(std::move(options)), group_running_(opt_.dp_groups, 0) {
  for (int32_t g = 0; g < opt_.dp_groups; ++g) pools_.emplace_back(opt_.kv);
}

absl::Status Scheduler::Add(int64_t seq, std::span<const int32_t> prompt, int64_t max_len, std::string salt) {
  DSV4_CHECK(!prompt.empty() && !seqs_.contains(seq), "bad sequence ", seq);
  const int64_t B = opt_.kv.block_tokens;
  const int64_t blocks = (max_len + B - 1) / B;
  if (blocks > opt_.kv.num_blocks)
    return absl::InvalidArgumentError(absl::StrCat("the request needs up to ", blocks, " KV blocks of ", B,
                                                   " positions but a pool holds ", opt_.kv.num_blocks));
  if (queued() >= opt_.max_queued)
    return absl::ResourceExhaustedError(
        absl::StrCat("the request queue is full (", queued(), " waiting); retry later"));
  Seq& s = seqs_[seq];
  s.tokens.assign(prompt.begin(), prompt.end());
  s.prefill_end = static_cast<int64_t>(prompt.size());
  s.salt = std::move(salt);
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
    pools_[it->second.group].Release(seq);
  } else {
    waiting_.erase(std::find(waiting_.begin(), waiting_.end(), seq));
  }
  seqs_.erase(it);
  return slot;
}

bool Scheduler::AdmitHead(Step& step) {
  const int64_t id = waiting_.front();
  Seq& s = seqs_[id];
  const std::span<const int32_t> known(s.tokens.data(), s.prefill_end);
  // The group with the longest cached prefix, else the fewest running, else the lowest.
  int32_t group = 0;
  int64_t best = -1;
  for (int32_t g = 0; g < opt_.dp_groups; ++g) {
    const int64_t cached = pools_[g].CachedPrefix(known, s.salt);
    if (cached > best || (cached == best && group_running_[g] < group_running_[group])) best = cached, group = g;
  }
  int64_t start = 0;
  if (!pools_[group].Admit(id, known, s.salt, opt_.prefill_chunk, &start)) return false;
  s.group = group;
  s.num_computed = start;
  s.order = next_order_++;
  if (!free_slots_.empty()) {
    // Lowest free slot first: slot numbers stay small and reuse is predictable.
    auto lowest = std::min_element(free_slots_.begin(), free_slots_.end());
    s.slot = *lowest;
    free_slots_.erase(lowest);
  } else {
    s.slot = next_slot_++;
  }
  ++group_running_[group];
  running_.push_back(id);
  waiting_.pop_front();
  pools_[group].TableOps(id, group, s.slot, &step.block_ops);
  return true;
}

void Scheduler::Preempt(int64_t seq, Step& step) {
  Seq& s = seqs_[seq];
  pools_[s.group].Release(seq);
  // Table changes queued for it this step (it was admitted in this very step) would outlive the
  // slot's freeing on the ranks: drop them.
  std::erase_if(step.block_ops, [&](const BlockOp& op) { return op.group == s.group && op.slot == s.slot; });
  running_.erase(std::find(running_.begin(), running_.end(), seq));
  --group_running_[s.group];
  step.freed_slots.push_back(s.slot);
  free_slots_.push_back(s.slot);
  s.slot = -1;
  // Everything it has is recomputed as one prompt; the chunk that ends at its last token samples.
  s.prefill_end = static_cast<int64_t>(s.tokens.size());
  s.num_computed = 0;
  // Ahead of every waiting sequence admitted after it, and of every one never admitted.
  auto at = waiting_.begin();
  while (at != waiting_.end() && seqs_[*at].order >= 0 && seqs_[*at].order < s.order) ++at;
  waiting_.insert(at, seq);
  step.preempted.push_back(seq);
  ++preemptions_;
}

Scheduler::Step Scheduler::Schedule() {
  Step step;
  // Admission, first come first served (no overtaking, so a large request is not starved).
  while (!waiting_.empty() && running() < opt_.max_running && AdmitHead(step)) {
  }
  int64_t budget = opt_.max_batch_tokens;
  std::vector<int64_t> scheduled;  // sequences with work this step
  auto extend = [&](int64_t id, int64_t from, int64_t to) {
    const Seq& s = seqs_[id];
    return pools_[s.group].Extend(id, s.group, s.slot, from, to, &step.block_ops);
  };
  // Decodes, oldest first; a decode that finds no block preempts the newest running sequence (which
  // has no work yet: everything newer than this one comes later in this loop), itself included.
  for (size_t i = 0; i < running_.size(); ++i) {
    const int64_t id = running_[i];
    const Seq& s = seqs_[id];
    if (s.num_computed < s.prefill_end || s.num_computed >= static_cast<int64_t>(s.tokens.size())) continue;
    bool preempted_self = false;
    while (!extend(id, s.num_computed, static_cast<int64_t>(s.tokens.size()))) {
      const int64_t victim = running_.back();
      Preempt(victim, step);
      if (victim == id) {
        preempted_self = true;
        break;
      }
    }
    if (preempted_self) break;  // it was the newest: nothing after it runs
    step.work.push_back({id, s.slot, s.num_computed, static_cast<int64_t>(s.tokens.size()), true, s.group});
    budget -= static_cast<int64_t>(s.tokens.size()) - s.num_computed;
    scheduled.push_back(id);
  }
  // Prompt chunks in admission order while the budget allows. One that finds no block preempts
  // the newest sequence that has no work this step and is newer than it; failing that, it waits.
  for (size_t i = 0; i < running_.size(); ++i) {
    const int64_t id = running_[i];
    const Seq& s = seqs_[id];
    if (s.num_computed >= s.prefill_end) continue;
    const int64_t end = std::min(s.prefill_end, s.num_computed + opt_.prefill_chunk);
    if (end - s.num_computed > budget) break;  // keep arrival order: no overtaking here either
    bool ok = extend(id, s.num_computed, end);
    while (!ok) {
      int64_t victim = -1;
      for (size_t j = running_.size(); j-- > i + 1;)
        if (std::find(scheduled.begin(), scheduled.end(), running_[j]) == scheduled.end()) {
          victim = running_[j];
          break;
        }
      if (victim < 0) break;
      Preempt(victim, step);
      ok = extend(id, s.num_computed, end);
    }
    if (!ok) break;  // it waits for blocks (and so do the newer ones: arrival order)
    step.work.push_back({id, s.slot, s.num_computed, end, end == static_cast<int64_t>(s.tokens.size()), s.group});
    budget -= end - s.num_computed;
    scheduled.push_back(id);
  }
  return step;
}

void Scheduler::Done(const Work& work) {
  auto it = seqs_.find(work.seq);
  if (it == seqs_.end() || it->second.slot != work.slot) return;
  it->second.num_computed = work.end;
  pools_[it->second.group].Computed(work.seq, it->second.tokens, work.end);
}

void Scheduler::Append(int64_t seq, int32_t token) {
  auto it = seqs_.find(seq);
  if (it != seqs_.end()) it->second.tokens.push_back(token);
}

KvBlockStats Scheduler::block_stats() const {
  KvBlockStats total;
  for (const KvBlockManager& p : pools_) {
    const KvBlockStats s = p.stats();
    total.blocks_total += s.blocks_total, total.blocks_used += s.blocks_used, total.blocks_cached += s.blocks_cached;
    total.window_blocks_total += s.window_blocks_total, total.window_blocks_used += s.window_blocks_used;
    total.prefix_queries += s.prefix_queries, total.prefix_hits += s.prefix_hits;
  }
  return total;
}

std::vector<int32_t> Scheduler::Table(int64_t seq) const {
  auto it = seqs_.find(seq);
  return it == seqs_.end() || it->second.slot < 0 ? std::vector<int32_t>() : pools_[it->second.group].Table(seq);
}

}  // namespace dsv4
