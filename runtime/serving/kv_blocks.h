// The leader's allocator of one data-parallel group's KV pool (runtime/model/cache.h): which
// compressed blocks and window blocks are free, which sequences hold which, and which full blocks
// are kept for reuse by requests whose prompts start with the same tokens.
//
// Prefix cache. A full block (B tokens) is registered under its tokens and the block before it
// (with a cache salt for the first block), so a block is found only through the chain of blocks
// before it; a lookup compares the tokens themselves, so no hash collision can give a sequence
// another's keys. Sequences share such blocks and never write them: a sequence's first own block
// is the first one whose tokens differ (or, at the end of its known tokens, the last one, which it
// must recompute to get logits). A block no sequence holds stays cached until its memory is needed
// (least recently used first); a window part no running sequence reads is dropped the same way,
// after which the block still serves inside a chain but not as the last block of a reuse.
//
// Window parts. A sequence at length L reads the window keys of positions [L - window + 1, L):
// blocks that fell out of every running sequence's window give their window part back at once,
// unless they are registered (then it is kept, droppable).
//
// Every id it hands out goes to the ranks through the step plan (BlockOp): the ranks only store.
// Not thread-safe: the engine calls it under its lock.
#pragma once

#include <cstdint>
#include <list>
#include <span>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "runtime/step.h"

namespace dsv4 {

struct KvBlockOptions {
  int64_t num_blocks = 0;         // compressed blocks in the pool
  int64_t num_window_blocks = 0;  // window blocks in the pool
  int64_t block_tokens = 128;     // B
  int64_t window = 128;           // the model's sliding window
  bool prefix_cache = true;
};

struct KvBlockStats {
  int64_t blocks_total = 0, blocks_used = 0, blocks_cached = 0;  // used: held by sequences
  int64_t window_blocks_total = 0, window_blocks_used = 0;        // used: not free
  int64_t prefix_queries = 0, prefix_hits = 0;                    // tokens looked up / found
};

class KvBlockManager {
 public:
  explicit KvBlockManager(KvBlockOptions options);

  const KvBlockOptions& options() const { return opt_; }
  KvBlockStats stats() const;

  // Positions of `tokens` the prefix cache could give a sequence now (a multiple of B).
  int64_t CachedPrefix(std::span<const int32_t> tokens, const std::string& salt) const;
  // Whether sequence `seq` (new) can start on `tokens` (its prompt, or everything it has when it
  // is recomputed) with room for its first `first_step` positions: the longest cached prefix that
  // leaves at least one token to compute, and blocks for the rest of the tokens. On success the
  // sequence holds the prefix's blocks and *start is where it continues (a multiple of B).
  bool Admit(int64_t seq, std::span<const int32_t> tokens, const std::string& salt, int64_t first_step,
             int64_t* start);
  // The whole table of `seq` as changes (a sequence admitted with blocks of the prefix cache:
  // the ranks learn them before its first step).
  void TableOps(int64_t seq, int32_t group, int32_t slot, std::vector<BlockOp>* ops) const;
  // Before a step of positions [from, to) of `seq`: blocks for every position below `to` and window
  // parts for the window its queries read; window parts of blocks out of that window go back.
  // Appends the table changes to `ops` (slot: the sequence's cache slot on the ranks). False
  // when the pool cannot give them without taking blocks from other sequences (nothing changes).
  bool Extend(int64_t seq, int32_t group, int32_t slot, int64_t from, int64_t to, std::vector<BlockOp>* ops);
  // After a step: `seq` has computed `length` positions of `tokens`; its newly full blocks are
  // registered for reuse.
  void Computed(int64_t seq, std::span<const int32_t> tokens, int64_t length);
  // `seq` ends (finished, aborted, or preempted for recompute): its blocks go back (registered ones
  // stay cached).
  void Release(int64_t seq);

  // The blocks `seq` holds, in order of position (tests).
  std::vector<int32_t> Table(int64_t seq) const;

 private:
  struct Block {
    int32_t refs = 0;          // sequences holding it
    int32_t window = -1;       // its window part, or -1
    int32_t window_users = 0;  // sequences whose window overlaps it
    uint32_t generation = 0;   // bumped when the id is reused: children naming the old one no longer match
    bool registered = false;
    uint64_t key = 0;
    int32_t parent = -1;
    uint32_t parent_generation = 0;
    uint64_t salt = 0;
    std::vector<int32_t> tokens;  // registered: its B tokens
    bool in_lru = false, in_window_lru = false;
    std::list<int32_t>::iterator lru, window_lru;
  };
  struct Seq {
    std::vector<int32_t> table;
    uint64_t salt = 0;
    int64_t window_first = 0;  // the first block of its window (blocks from here on count it as a user)
    int64_t registered = 0;    // leading blocks registered (or found registered)
    int32_t chain_parent = -1;  // the registered block at position `registered` - 1 (its own or an equal one)
  };

  // The cached chain of `tokens` a sequence can resume at the end of.
  std::vector<int32_t> Chain(std::span<const int32_t> tokens, uint64_t salt) const;
  static uint64_t SaltKey(const std::string& salt);
  uint64_t KeyOf(int32_t parent, uint32_t parent_generation, uint64_t salt, std::span<const int32_t> tokens) const;
  // The registered block following `parent` with these tokens, or -1.
  int32_t Find(int32_t parent, uint64_t salt, std::span<const int32_t> tokens) const;
  int64_t Available() const { return static_cast<int64_t>(free_.size() + lru_.size()); }
  int64_t WindowsAvailable() const { return static_cast<int64_t>(free_windows_.size() + window_lru_.size()); }
  int32_t TakeBlock();   // a free block, evicting the least recently used cached one if need be
  int32_t TakeWindow();  // a free window part, dropping the least recently used droppable one if need be
  void Evict(int32_t b);
  void Unref(int32_t b);
  void AddUser(int32_t b);
  void RemoveUser(int32_t b);
  void UpdateWindowLru(int32_t b);

  const KvBlockOptions opt_;
  std::vector<Block> blocks_;
  std::vector<int32_t> free_, free_windows_;
  std::list<int32_t> lru_;         // cached blocks no sequence holds, least recently used first
  std::list<int32_t> window_lru_;  // droppable window parts (registered blocks outside every window)
  absl::flat_hash_map<uint64_t, std::vector<int32_t>> by_key_;
  absl::flat_hash_map<int64_t, Seq> seqs_;
  int64_t prefix_queries_ = 0, prefix_hits_ = 0;
};

}  // namespace dsv4
