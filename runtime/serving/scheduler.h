// The serving scheduler: which sequences run in the next step, and how much of each.
//
// Continuous batching: every step takes one token of each decoding sequence and prompt chunks of
// prefilling ones, within a token budget. Admission is first come, first served: a waiting
// sequence enters when a cache slot and its cache blocks are free; it reserves blocks for its
// whole length up front (prompt + max_tokens), so a running sequence never runs out of cache and
// nothing is ever preempted.
//
// Prompt chunks start at multiples of `prefill_chunk` whatever else is in the batch, so a
// sequence's forward passes — and so its logits — are the same alone or in any batch.
//
// With data-parallel attention (`dp_groups` > 1) each admitted sequence is given to the group
// running the fewest sequences (the lowest on a tie) and stays there: its cache lives on that
// group's ranks.
//
// Not thread-safe: the engine calls it under its own lock.
#pragma once

#include <algorithm>
#include <cstdint>
#include <deque>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"

namespace dsv4 {

struct SchedulerOptions {
  int64_t max_batch_tokens = 256;  // token budget of one step
  int64_t max_running = 32;        // sequences holding a cache slot
  int64_t max_queued = 256;        // waiting sequences; one more is RESOURCE_EXHAUSTED
  int64_t prefill_chunk = 128;     // prompt tokens per forward pass
  int64_t num_blocks = 1024;       // cache blocks in all
  int32_t dp_groups = 1;           // data-parallel attention groups that take different sequences

  // Every decode plus one prompt chunk must fit in a step, so prompts always make progress.
  absl::Status Validate() const;
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerOptions options) : opt_(options), group_running_(std::max(options.dp_groups, 1)) {}

  // Queues sequence `seq` (a new id) with `prompt_len` >= 1 tokens, which will need `blocks`
  // cache blocks at most. RESOURCE_EXHAUSTED when the queue is full; INVALID_ARGUMENT when it can
  // never fit the cache.
  absl::Status Add(int64_t seq, int64_t prompt_len, int64_t blocks);
  // Forgets `seq` wherever it is, freeing its slot and blocks. Returns the slot it held, or -1.
  int32_t Remove(int64_t seq);

  // One step's work on one sequence: run tokens [begin, end) of it on cache slot `slot`.
  struct Work {
    int64_t seq;
    int32_t slot;
    int64_t begin, end;
    bool last;      // the chunk ends at the sequence's last known token: the caller samples after it
    int32_t group;  // the dp group that runs it
  };
  // Admits waiting sequences while slots and blocks allow, then picks the step: one token of each
  // decoding sequence (in admission order), then prompt chunks in admission order while the
  // budget allows. Empty when nothing can run.
  std::vector<Work> Schedule();
  // The step's work ran: the sequences' caches now hold `end` tokens.
  void Done(const Work& work);
  // A sampled token was appended to `seq`: it has one more token to run.
  void Append(int64_t seq);

  int64_t queued() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t running() const { return static_cast<int64_t>(running_.size()); }
  int64_t blocks_used() const { return blocks_used_; }
  const SchedulerOptions& options() const { return opt_; }

 private:
  struct Seq {
    int64_t prompt_len = 0;
    int64_t num_tokens = 0;    // prompt + sampled
    int64_t num_computed = 0;  // in the cache
    int64_t blocks = 0;
    int32_t slot = -1;
    int32_t group = 0;
  };

  SchedulerOptions opt_;
  absl::flat_hash_map<int64_t, Seq> seqs_;
  std::deque<int64_t> waiting_;
  std::vector<int64_t> running_;  // admission order
  std::vector<int32_t> free_slots_;
  int32_t next_slot_ = 0;
  int64_t blocks_used_ = 0;
  std::vector<int64_t> group_running_;  // running sequences per dp group
};

}  // namespace dsv4
