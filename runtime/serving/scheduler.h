// The serving scheduler: which sequences run in the next step, how much of each, and in which
// KV blocks (runtime/serving/kv_blocks.h).
//
// Continuous batching: every step takes one token of each decoding sequence and prompt chunks of
// prefilling ones, within a token budget. Admission is first come, first served: the sequence at
// the head of the queue enters when a cache slot is free and its data-parallel group's pool can
// hold the blocks its prompt actually needs (after the blocks it finds in the prefix cache); it
// goes to the dp group holding the longest cached prefix of its prompt, else the one running the
// fewest sequences, and stays there (its cache lives on that group's ranks).
//
// Blocks are taken as positions are reached, so a decoding sequence can find the pool empty: then
// the newest running sequence is preempted — its blocks are released (its full ones stay cached)
// and it goes back to the head of the queue with every token it has, to be recomputed when blocks
// are free again (from the prefix cache where they survived). Recomputation gives the same cache
// bit for bit, so a preempted request's tokens are those it would have produced uninterrupted.
// A prefilling sequence that finds no block waits a step instead, unless a newer one can yield.
//
// Prompt chunks start at multiples of `prefill_chunk`, which divides the block size, whatever else
// is in the batch: a sequence's forward passes — and so its logits — are the same alone or in any
// batch, and every block ends at the end of a step.
//
// Not thread-safe: the engine calls it under its own lock.
#pragma once

#include <cstdint>
#include <deque>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "runtime/serving/kv_blocks.h"
#include "runtime/step.h"

namespace dsv4 {

struct SchedulerOptions {
  int64_t max_batch_tokens = 256;  // token budget of one step
  int64_t max_running = 32;        // sequences holding a cache slot
  int64_t max_queued = 256;        // waiting sequences; one more is RESOURCE_EXHAUSTED
  int64_t prefill_chunk = 128;     // prompt tokens per forward pass; divides kv.block_tokens
  int32_t dp_groups = 1;           // data-parallel attention groups, each with its own pool
  KvBlockOptions kv;               // each group's pool

  // Every decode plus one prompt chunk must fit in a step, so prompts always make progress.
  absl::Status Validate() const;
};

class Scheduler {
 public:
  explicit Scheduler(SchedulerOptions options);

  // Queues sequence `seq` (a new id) with its prompt (>= 1 token); it will never hold more than
  // `max_len` positions; `salt` ("" = none) keeps its blocks from being shared with sequences of
  // another salt. RESOURCE_EXHAUSTED when the queue is full; INVALID_ARGUMENT when it can never
  // fit a pool.
  absl::Status Add(int64_t seq, std::span<const int32_t> prompt, int64_t max_len, std::string salt = "");
  // Forgets `seq` wherever it is, releasing its blocks. Returns the slot it held, or -1.
  int32_t Remove(int64_t seq);

  // One step's work on one sequence: run tokens [begin, end) of it on cache slot `slot`.
  struct Work {
    int64_t seq;
    int32_t slot;
    int64_t begin, end;
    bool last;      // the chunk ends at the sequence's last known token: the caller samples after it
    int32_t group;  // the dp group that runs it
  };
  struct Step {
    std::vector<Work> work;
    std::vector<BlockOp> block_ops;    // table changes the ranks apply before the step
    std::vector<int32_t> freed_slots;  // slots of sequences preempted for this step
    std::vector<int64_t> preempted;
  };
  // Admits waiting sequences while slots and blocks allow, then picks the step: one token of each
  // decoding sequence (in admission order), then prompt chunks in admission order while the
  // budget allows. Empty when nothing can run.
  Step Schedule();
  // The step's work ran: the sequence's cache now holds `end` tokens.
  void Done(const Work& work);
  // A sampled token was appended to `seq`: it has one more token to run.
  void Append(int64_t seq, int32_t token);

  int64_t queued() const { return static_cast<int64_t>(waiting_.size()); }
  int64_t running() const { return static_cast<int64_t>(running_.size()); }
  int64_t preemptions() const { return preemptions_; }
  // The pools' figures, summed over the dp groups.
  KvBlockStats block_stats() const;
  const SchedulerOptions& options() const { return opt_; }
  // The blocks sequence `seq` holds (tests).
  std::vector<int32_t> Table(int64_t seq) const;

 private:
  struct Seq {
    std::vector<int32_t> tokens;  // prompt, then sampled
    int64_t prefill_end = 0;      // tokens to run in prompt chunks (all known ones after a preemption)
    int64_t num_computed = 0;     // in the cache
    int32_t slot = -1;
    int32_t group = 0;
    int64_t order = -1;           // admission order (the newest is preempted first); -1: never admitted
    std::string salt;
  };
  // Releases `seq`'s blocks and slot and puts it back at the head of the queue.
  void Preempt(int64_t seq, Step& step);
  // Admits the head of the queue, if a slot and blocks allow; the blocks it starts with go to `step`.
  bool AdmitHead(Step& step);

  SchedulerOptions opt_;
  std::vector<KvBlockManager> pools_;  // by dp group
  absl::flat_hash_map<int64_t, Seq> seqs_;
  std::deque<int64_t> waiting_;
  std::vector<int64_t> running_;  // admission order
  std::vector<int32_t> free_slots_;
  std::vector<int64_t> group_running_;
  int32_t next_slot_ = 0;
  int64_t next_order_ = 0;
  int64_t preemptions_ = 0;
};

}  // namespace dsv4
