// The leader's KV blocks and the scheduler that uses them, with tiny blocks (4 positions, a
// window of 3) so every rule shows in a few tokens: prefix sharing through the chain of blocks,
// salts, the last block recomputed, window parts given back and kept, LRU eviction (and no stale
// chain through a reused id), admission by blocks, preemption of the newest sequence and its
// recompute, dp groups.
#include "runtime/serving/kv_blocks.h"

#include <gtest/gtest.h>

#include <numeric>

#include "runtime/serving/scheduler.h"

namespace dsv4 {
namespace {

constexpr int64_t B = 4;

KvBlockOptions Pool(int64_t blocks, int64_t windows) {
  KvBlockOptions o;
  o.num_blocks = blocks, o.num_window_blocks = windows, o.block_tokens = B, o.window = 3;
  return o;
}

std::vector<int32_t> Tokens(int n, int salt = 0) {
  std::vector<int32_t> t(n);
  for (int i = 0; i < n; ++i) t[i] = 1000 * salt + i;
  return t;
}

// Runs `seq` over `tokens` from `start` in steps of at most B positions, as the scheduler would.
void RunSteps(KvBlockManager& m, int64_t seq, const std::vector<int32_t>& tokens, int64_t start, int64_t end,
         std::vector<BlockOp>* ops = nullptr) {
  std::vector<BlockOp> local;
  for (int64_t at = start; at < end;) {
    const int64_t to = std::min(end, (at / B + 1) * B);
    ASSERT_TRUE(m.Extend(seq, 0, static_cast<int32_t>(seq), at, to, ops ? ops : &local)) << "at " << at;
    m.Computed(seq, tokens, to);
    at = to;
  }
}

TEST(KvBlocks, PromptsWithACommonPrefixShareItsBlocks) {
  KvBlockManager m(Pool(16, 16));
  const std::vector<int32_t> a = Tokens(10);
  int64_t start = -1;
  ASSERT_TRUE(m.Admit(1, a, "", B, &start));
  EXPECT_EQ(start, 0);
  RunSteps(m, 1, a, 0, 10);
  const std::vector<int32_t> table = m.Table(1);
  ASSERT_EQ(table.size(), 3u);
  m.Release(1);
  EXPECT_EQ(m.stats().blocks_cached, 2);  // the two full blocks; the partial one is free again
  EXPECT_EQ(m.stats().blocks_used, 0);

  // The same first 8 tokens: both blocks reused, the sequence starts at 8.
  std::vector<int32_t> b = a;
  b.push_back(77);
  ASSERT_TRUE(m.Admit(2, b, "", B, &start));
  EXPECT_EQ(start, 8);
  EXPECT_EQ(m.Table(2), std::vector<int32_t>(table.begin(), table.begin() + 2));
  EXPECT_EQ(m.stats().blocks_used, 2);
  EXPECT_EQ(m.stats().blocks_cached, 0);
  // Differing at position 5: only the first block.
  std::vector<int32_t> c = a;
  c[5] = -5;
  ASSERT_TRUE(m.Admit(3, c, "", B, &start));
  EXPECT_EQ(start, 4);
  EXPECT_EQ(m.Table(3), std::vector<int32_t>({table[0]}));
  EXPECT_EQ(m.stats().blocks_used, 2);  // shared, counted once
  // Another salt shares nothing.
  ASSERT_TRUE(m.Admit(4, a, "tenant-b", B, &start));
  EXPECT_EQ(start, 0);
  // Exactly the cached tokens: the last block is recomputed (its logits are needed).
  ASSERT_TRUE(m.Admit(5, std::vector<int32_t>(a.begin(), a.begin() + 8), "", B, &start));
  EXPECT_EQ(start, 4);
  const KvBlockStats s = m.stats();
  EXPECT_EQ(s.prefix_queries, 10 + 11 + 10 + 10 + 8);
  EXPECT_EQ(s.prefix_hits, 8 + 4 + 4);
  EXPECT_EQ(m.CachedPrefix(b, ""), 8);
  EXPECT_EQ(m.CachedPrefix(b, "other"), 0);
}

TEST(KvBlocks, WindowPartsGoBackOutOfTheWindowUnlessCached) {
  KvBlockOptions o = Pool(16, 16);
  o.prefix_cache = false;
  KvBlockManager m(o);
  const std::vector<int32_t> t = Tokens(20);
  int64_t start;
  ASSERT_TRUE(m.Admit(1, t, "", B, &start));
  std::vector<BlockOp> ops;
  RunSteps(m, 1, t, 0, 20, &ops);
  // At 20 the window reads [18, 20): blocks 4 (and the next); the rest gave their windows back.
  m.Computed(1, t, 20);
  std::vector<BlockOp> more;
  ASSERT_TRUE(m.Extend(1, 0, 1, 20, 21, &more));
  EXPECT_LE(m.stats().window_blocks_used, 2);
  bool dropped = false;
  for (const BlockOp& op : ops) dropped = dropped || op.window < 0;
  EXPECT_TRUE(dropped) << "the ranks are told of dropped window parts";
  m.Release(1);
  EXPECT_EQ(m.stats().window_blocks_used, 0);
  EXPECT_EQ(m.stats().blocks_used, 0);

  // With the prefix cache, full blocks keep their window parts after the sequence moves on...
  KvBlockManager c(Pool(16, 16));
  ASSERT_TRUE(c.Admit(1, t, "", B, &start));
  RunSteps(c, 1, t, 0, 20);
  EXPECT_EQ(c.stats().window_blocks_used, 5);
  c.Release(1);
  EXPECT_EQ(c.stats().window_blocks_used, 5);
  // ...so a prompt sharing 12 tokens resumes at 12, reading the window keys of block 2.
  std::vector<int32_t> u(t.begin(), t.begin() + 12);
  u.push_back(-1);
  ASSERT_TRUE(c.Admit(2, u, "", B, &start));
  EXPECT_EQ(start, 12);
}

TEST(KvBlocks, WindowPartsAreDroppedUnderPressureAndThenNotResumedAfter) {
  KvBlockManager m(Pool(16, 3));
  const std::vector<int32_t> t = Tokens(12);
  int64_t start;
  ASSERT_TRUE(m.Admit(1, t, "", B, &start));
  RunSteps(m, 1, t, 0, 12);
  m.Release(1);  // blocks 0..2 cached with their windows: every window part is taken
  EXPECT_EQ(m.stats().window_blocks_used, 3);
  // Another sequence needs a window part: the least recently used droppable one goes (block 0's).
  const std::vector<int32_t> other = Tokens(3, 7);
  ASSERT_TRUE(m.Admit(2, other, "", B, &start));
  RunSteps(m, 2, other, 0, 3);
  // Resuming after block 0 would read its window keys: not possible now; after block 2 still is.
  std::vector<int32_t> p(t.begin(), t.begin() + 4);
  p.push_back(5);
  EXPECT_EQ(m.CachedPrefix(p, ""), 0);
  std::vector<int32_t> q = t;
  q.push_back(5);
  EXPECT_EQ(m.CachedPrefix(q, ""), 12);
}

TEST(KvBlocks, LeastRecentlyUsedBlocksAreEvictedAndTheirChainsEnd) {
  KvBlockManager m(Pool(4, 8));
  const std::vector<int32_t> a = Tokens(8, 1);
  int64_t start;
  ASSERT_TRUE(m.Admit(1, a, "", B, &start));
  RunSteps(m, 1, a, 0, 8);
  m.Release(1);  // a0, a1 cached (a0 least recent)
  // A new 12-token sequence needs 3 blocks: 2 free, then a0 is evicted and its id reused.
  const std::vector<int32_t> c = Tokens(12, 2);
  ASSERT_TRUE(m.Admit(2, c, "", B, &start));
  RunSteps(m, 2, c, 0, 12);
  EXPECT_EQ(m.stats().blocks_cached, 1);  // a1 only
  std::vector<int32_t> again = a;
  again.push_back(9);
  EXPECT_EQ(m.CachedPrefix(again, ""), 0) << "a0 is gone, so is the way to a1";
  // a1 was registered after a0's old id: a chain through the id's new owner must not reach it.
  std::vector<int32_t> forged(c.begin(), c.begin() + 4);
  forged.insert(forged.end(), a.begin() + 4, a.end());
  forged.push_back(9);
  EXPECT_EQ(m.CachedPrefix(forged, ""), 4);
}

TEST(KvBlocks, AdmissionAndGrowthAreRefusedWithoutChangingAnything) {
  KvBlockManager m(Pool(3, 8));
  const std::vector<int32_t> t = Tokens(13);  // 4 blocks: never all at once
  int64_t start;
  EXPECT_FALSE(m.Admit(1, t, "", B, &start));
  ASSERT_TRUE(m.Admit(2, Tokens(8, 3), "", B, &start));
  const KvBlockStats before = m.stats();
  std::vector<BlockOp> ops;
  ASSERT_TRUE(m.Extend(2, 0, 0, 0, 4, &ops));
  ASSERT_TRUE(m.Extend(2, 0, 0, 4, 8, &ops));
  ASSERT_TRUE(m.Extend(2, 0, 0, 8, 12, &ops));
  ops.clear();
  EXPECT_FALSE(m.Extend(2, 0, 0, 12, 13, &ops));
  EXPECT_TRUE(ops.empty());
  EXPECT_EQ(m.stats().blocks_used, 3);
  EXPECT_EQ(before.blocks_used, 0);
}

// ---- scheduler ----------------------------------------------------------------------------------

SchedulerOptions Small(int64_t blocks, int64_t windows = 64) {
  SchedulerOptions o;
  o.max_batch_tokens = 16;
  o.max_running = 4;
  o.max_queued = 8;
  o.prefill_chunk = 2;  // divides B = 4
  o.kv = Pool(blocks, windows);
  return o;
}

TEST(Scheduler, ValidatesChunksAgainstBlocksAndTheBudget) {
  SchedulerOptions o = Small(8);
  ASSERT_TRUE(o.Validate().ok());
  o.prefill_chunk = 3;
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
  o = Small(8);
  o.max_batch_tokens = 4;  // 4 running - 1 + 2
  EXPECT_EQ(o.Validate().code(), absl::StatusCode::kInvalidArgument);
}

TEST(Scheduler, ChunksEndAtBlockBoundariesAndDecodesComeFirst) {
  Scheduler s(Small(16));
  ASSERT_TRUE(s.Add(1, Tokens(5), 16).ok());
  ASSERT_TRUE(s.Add(2, Tokens(3, 1), 16).ok());
  auto step = s.Schedule();
  ASSERT_EQ(step.work.size(), 2u);
  EXPECT_EQ(step.work[0].seq, 1);
  EXPECT_EQ(step.work[0].end, 2);
  EXPECT_EQ(step.work[1].seq, 2);
  EXPECT_EQ(step.work[1].end, 2);
  EXPECT_FALSE(step.work[1].last);
  EXPECT_FALSE(step.block_ops.empty());  // the first blocks of both
  for (const auto& w : step.work) s.Done(w);
  step = s.Schedule();
  ASSERT_EQ(step.work.size(), 2u);
  EXPECT_EQ(step.work[1].seq, 2);
  EXPECT_EQ(step.work[1].end, 3);
  EXPECT_TRUE(step.work[1].last);
  for (const auto& w : step.work) s.Done(w);
  s.Append(2, 42);  // seq 2 sampled: it decodes next, before seq 1's chunk
  step = s.Schedule();
  ASSERT_EQ(step.work.size(), 2u);
  EXPECT_EQ(step.work[0].seq, 2);
  EXPECT_EQ(step.work[0].begin, 3);
  EXPECT_EQ(step.work[1].seq, 1);
  EXPECT_EQ(step.work[1].begin, 4);
  EXPECT_EQ(step.work[1].end, 5);
}

TEST(Scheduler, AQueueLimitAndRequestsThatCanNeverFit) {
  Scheduler s(Small(4));
  EXPECT_EQ(s.Add(1, Tokens(3), 17).code(), absl::StatusCode::kInvalidArgument);  // 5 blocks > 4
  for (int64_t i = 2; i < 10; ++i) ASSERT_TRUE(s.Add(i, Tokens(1, i), 4).ok());
  EXPECT_EQ(s.Add(10, Tokens(1), 4).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.Remove(2), -1);  // waiting: no slot
  EXPECT_EQ(s.queued(), 7);
}

// Blocks run out while two sequences decode: the newest is preempted, released, and later
// recomputed over everything it had (from a block boundary: what survived of its blocks in the
// prefix cache; here the older sequence took them all); the chunk that reaches its last token
// samples.
TEST(Scheduler, TheNewestIsPreemptedAndRecomputedWhenBlocksRunOut) {
  Scheduler s(Small(4));
  ASSERT_TRUE(s.Add(1, Tokens(2, 1), 16).ok());
  ASSERT_TRUE(s.Add(2, Tokens(2, 2), 16).ok());
  std::vector<int32_t> all2 = Tokens(2, 2);
  int32_t next = 100;
  int preempted_at = -1;
  for (int step_no = 0; step_no < 40 && preempted_at < 0; ++step_no) {
    auto step = s.Schedule();
    if (!step.preempted.empty()) {
      EXPECT_EQ(step.preempted, std::vector<int64_t>({2}));
      EXPECT_EQ(step.freed_slots.size(), 1u);
      for (const auto& w : step.work) EXPECT_NE(w.seq, 2) << "a preempted sequence runs nothing";
      preempted_at = step_no;
    }
    for (const auto& w : step.work) {
      s.Done(w);
      if (!w.last) continue;
      s.Append(w.seq, next);
      if (w.seq == 2) all2.push_back(next);
      ++next;
    }
  }
  ASSERT_GE(preempted_at, 0) << "4 blocks cannot hold two sequences growing without end";
  EXPECT_EQ(s.preemptions(), 1);
  EXPECT_EQ(s.queued(), 1);
  EXPECT_EQ(s.running(), 1);
  // Sequence 1 ends; sequence 2 comes back with every token it had.
  s.Remove(1);
  int64_t resumed_at = -1, last_end = -1;
  for (int i = 0; i < 20 && last_end < 0; ++i) {
    auto step = s.Schedule();
    for (const auto& w : step.work) {
      ASSERT_EQ(w.seq, 2);
      if (resumed_at < 0) resumed_at = w.begin;
      s.Done(w);
      if (w.last) last_end = w.end;
    }
  }
  EXPECT_EQ(last_end, static_cast<int64_t>(all2.size()));
  EXPECT_EQ(resumed_at % B, 0);
}

TEST(Scheduler, DpGroupsTakeTheLongestCachedPrefixElseTheLeastLoaded) {
  SchedulerOptions o = Small(16);
  o.dp_groups = 2;
  Scheduler s(o);
  auto group_of = [](const Scheduler::Step& step, int64_t seq) {
    for (const auto& w : step.work)
      if (w.seq == seq) return std::pair<int32_t, int64_t>(w.group, w.begin);
    return std::pair<int32_t, int64_t>(-1, -1);
  };
  for (int64_t seq = 1; seq <= 3; ++seq) ASSERT_TRUE(s.Add(seq, Tokens(1, seq), 8).ok());
  auto step = s.Schedule();
  EXPECT_EQ(group_of(step, 1).first, 0);
  EXPECT_EQ(group_of(step, 2).first, 1);
  EXPECT_EQ(group_of(step, 3).first, 0);
  for (int64_t seq = 1; seq <= 3; ++seq) s.Remove(seq);
  // A 9-token prompt computed in group 0 leaves its two full blocks cached there.
  const std::vector<int32_t> p = Tokens(9, 9);
  ASSERT_TRUE(s.Add(4, p, 12).ok());
  for (int i = 0; i < 10; ++i)
    for (const auto& w : s.Schedule().work) s.Done(w);
  s.Remove(4);
  // Two sequences in group 0, one in group 1: a prompt starting with those 8 tokens still goes to
  // group 0, where they are, and starts after them.
  ASSERT_TRUE(s.Add(5, Tokens(1, 5), 8).ok());
  ASSERT_TRUE(s.Add(6, Tokens(1, 6), 8).ok());
  ASSERT_TRUE(s.Add(7, Tokens(1, 7), 8).ok());
  step = s.Schedule();
  EXPECT_EQ(group_of(step, 5).first, 0);
  EXPECT_EQ(group_of(step, 6).first, 1);
  EXPECT_EQ(group_of(step, 7).first, 0);
  std::vector<int32_t> q = p;
  q.push_back(1);
  ASSERT_TRUE(s.Add(8, q, 12).ok());
  step = s.Schedule();
  EXPECT_EQ(group_of(step, 8), std::make_pair(0, int64_t{8}));
}

}  // namespace
}  // namespace dsv4
