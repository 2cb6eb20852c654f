#include "runtime/serving/kv_blocks.h"

#include <algorithm>

#include "absl/hash/hash.h"
#include "base/status.h"

namespace dsv4 {

KvBlockManager::KvBlockManager(KvBlockOptions options) : opt_(options) {
  DSV4_CHECK(opt_.num_blocks > 0 && opt_.num_window_blocks > 0 && opt_.block_tokens > 0 && opt_.window > 0,
             "bad KV pool options");
  blocks_.resize(opt_.num_blocks);
  for (int64_t b = opt_.num_blocks - 1; b >= 0; --b) free_.push_back(static_cast<int32_t>(b));
  for (int64_t w = opt_.num_window_blocks - 1; w >= 0; --w) free_windows_.push_back(static_cast<int32_t>(w));
}

KvBlockStats KvBlockManager::stats() const {
  KvBlockStats s;
  s.blocks_total = opt_.num_blocks;
  s.blocks_cached = static_cast<int64_t>(lru_.size());
  s.blocks_used = opt_.num_blocks - static_cast<int64_t>(free_.size()) - s.blocks_cached;
  s.window_blocks_total = opt_.num_window_blocks;
  s.window_blocks_used = opt_.num_window_blocks - static_cast<int64_t>(free_windows_.size());
  s.prefix_queries = prefix_queries_;
  s.prefix_hits = prefix_hits_;
  return s;
}

uint64_t KvBlockManager::KeyOf(int32_t parent, uint32_t parent_generation, uint64_t salt,
                               std::span<const int32_t> tokens) const {
  return absl::HashOf(parent, parent_generation, salt, absl::MakeSpan(tokens.data(), tokens.size()));
}

int32_t KvBlockManager::Find(int32_t parent, uint64_t salt, std::span<const int32_t> tokens) const {
  const uint32_t gen = parent >= 0 ? blocks_[parent].generation : 0;
  auto it = by_key_.find(KeyOf(parent, gen, salt, tokens));
  if (it == by_key_.end()) return -1;
  for (int32_t b : it->second) {  // equal keys: compare what they stand for
    const Block& k = blocks_[b];
    if (k.parent == parent && k.parent_generation == gen && k.salt == salt &&
        std::equal(tokens.begin(), tokens.end(), k.tokens.begin(), k.tokens.end()))
      return b;
  }
  return -1;
}

void KvBlockManager::UpdateWindowLru(int32_t b) {
  Block& k = blocks_[b];
  const bool droppable = k.registered && k.window >= 0 && k.window_users == 0;
  if (droppable && !k.in_window_lru) {
    k.window_lru = window_lru_.insert(window_lru_.end(), b);
    k.in_window_lru = true;
  } else if (!droppable && k.in_window_lru) {
    window_lru_.erase(k.window_lru);
    k.in_window_lru = false;
  }
}

void KvBlockManager::AddUser(int32_t b) {
  ++blocks_[b].window_users;
  UpdateWindowLru(b);
}

void KvBlockManager::RemoveUser(int32_t b) {
  Block& k = blocks_[b];
  --k.window_users;
  if (k.window_users == 0 && k.window >= 0 && !k.registered) {  // no one will read it again
    free_windows_.push_back(k.window);
    k.window = -1;
  }
  UpdateWindowLru(b);
}

void KvBlockManager::Evict(int32_t b) {
  Block& k = blocks_[b];
  DSV4_CHECK(k.refs == 0, "evicting block ", b, " that sequences hold");
  if (k.in_lru) lru_.erase(k.lru), k.in_lru = false;
  if (k.window >= 0) free_windows_.push_back(k.window), k.window = -1;
  UpdateWindowLru(b);
  if (k.registered) {
    auto it = by_key_.find(k.key);
    std::erase(it->second, b);
    if (it->second.empty()) by_key_.erase(it);
    k.registered = false;
    k.tokens.clear();
  }
  ++k.generation;  // children registered under the old id no longer chain to it
}

int32_t KvBlockManager::TakeBlock() {
  if (free_.empty()) {
    DSV4_CHECK(!lru_.empty(), "no block to take");
    const int32_t victim = lru_.front();
    Evict(victim);
    free_.push_back(victim);
  }
  const int32_t b = free_.back();
  free_.pop_back();
  return b;
}

int32_t KvBlockManager::TakeWindow() {
  if (free_windows_.empty()) {
    DSV4_CHECK(!window_lru_.empty(), "no window block to take");
    Block& k = blocks_[window_lru_.front()];
    free_windows_.push_back(k.window);
    k.window = -1;
    UpdateWindowLru(window_lru_.front());
  }
  const int32_t w = free_windows_.back();
  free_windows_.pop_back();
  return w;
}

void KvBlockManager::Unref(int32_t b) {
  Block& k = blocks_[b];
  if (--k.refs > 0) return;
  if (k.registered) {  // kept for reuse, least recently used last
    k.lru = lru_.insert(lru_.end(), b);
    k.in_lru = true;
    return;
  }
  if (k.window >= 0) free_windows_.push_back(k.window), k.window = -1;
  ++k.generation;
  free_.push_back(b);
}

uint64_t KvBlockManager::SaltKey(const std::string& salt) { return salt.empty() ? 0 : absl::HashOf(salt) | 1; }

std::vector<int32_t> KvBlockManager::Chain(std::span<const int32_t> tokens, uint64_t salt) const {
  const int64_t B = opt_.block_tokens, T = static_cast<int64_t>(tokens.size());
  std::vector<int32_t> chain;
  if (!opt_.prefix_cache) return chain;
  // Whole blocks, leaving at least one token to compute.
  int32_t parent = -1;
  for (int64_t i = 0; i < (T - 1) / B; ++i) {
    const int32_t b = Find(parent, salt, tokens.subspan(i * B, B));
    if (b < 0) break;
    chain.push_back(b);
    parent = b;
  }
  // Resuming at the chain's end reads the window keys just before it: their blocks must still
  // hold their window parts.
  auto usable = [&](int64_t m) {
    for (int64_t b = std::max<int64_t>(0, m * B - opt_.window + 1) / B; b < m; ++b)
      if (blocks_[chain[b]].window < 0) return false;
    return true;
  };
  int64_t m = static_cast<int64_t>(chain.size());
  while (m > 0 && !usable(m)) --m;
  chain.resize(m);
  return chain;
}

int64_t KvBlockManager::CachedPrefix(std::span<const int32_t> tokens, const std::string& salt) const {
  return static_cast<int64_t>(Chain(tokens, SaltKey(salt)).size()) * opt_.block_tokens;
}

bool KvBlockManager::Admit(int64_t seq, std::span<const int32_t> tokens, const std::string& salt, int64_t first_step,
                           int64_t* start) {
  DSV4_CHECK(!seqs_.contains(seq) && !tokens.empty(), "bad admission of sequence ", seq);
  const int64_t B = opt_.block_tokens, T = static_cast<int64_t>(tokens.size());
  const uint64_t salt_key = SaltKey(salt);
  const std::vector<int32_t> chain = Chain(tokens, salt_key);
  const int64_t m = static_cast<int64_t>(chain.size());
  // Room for the rest: every remaining block of the tokens, and the window parts of the first
  // step. Cached blocks about to be held do not count as available.
  int64_t held_cached = 0, held_droppable = 0;
  for (int32_t b : chain) held_cached += blocks_[b].in_lru, held_droppable += blocks_[b].in_window_lru;
  const int64_t need = (T + B - 1) / B - m;
  const int64_t step_end = std::min(T, m * B + std::max<int64_t>(first_step, 1));
  const int64_t first_window_block = std::max<int64_t>(0, m * B - opt_.window + 1) / B;
  const int64_t windows_new = (step_end - 1) / B + 1 - m;  // new blocks of the first step
  if (Available() - held_cached < need || WindowsAvailable() - held_droppable < windows_new) return false;

  Seq& s = seqs_[seq];
  s.salt = salt_key;
  s.table = chain;
  s.registered = m;
  s.chain_parent = m > 0 ? chain[m - 1] : -1;
  s.window_first = first_window_block;
  for (int64_t i = 0; i < m; ++i) {
    Block& k = blocks_[chain[i]];
    if (k.refs++ == 0 && k.in_lru) lru_.erase(k.lru), k.in_lru = false;
    if (i >= first_window_block) AddUser(chain[i]);
  }
  prefix_queries_ += T;
  prefix_hits_ += m * B;
  *start = m * B;
  return true;
}

bool KvBlockManager::Extend(int64_t seq, int32_t group, int32_t slot, int64_t from, int64_t to,
                            std::vector<BlockOp>* ops) {
  Seq& s = seqs_.at(seq);
  const int64_t B = opt_.block_tokens;
  const int64_t window_first = std::max<int64_t>(0, from - opt_.window + 1) / B;
  const int64_t last = (to - 1) / B;
  const int64_t have = static_cast<int64_t>(s.table.size());
  // What the step needs, and what leaving the window frees, before changing anything.
  int64_t need_blocks = std::max<int64_t>(0, last + 1 - have), need_windows = need_blocks, freed_windows = 0;
  for (int64_t b = std::max(window_first, s.window_first); b < have && b <= last; ++b)
    need_windows += blocks_[s.table[b]].window < 0;
  for (int64_t b = s.window_first; b < std::min(window_first, have); ++b) {
    const Block& k = blocks_[s.table[b]];
    freed_windows += k.window >= 0 && k.window_users == 1 && !k.registered;
  }
  if (Available() < need_blocks || WindowsAvailable() + freed_windows < need_windows) return false;

  for (int64_t b = s.window_first; b < std::min(window_first, have); ++b) {
    const int32_t id = s.table[b];
    RemoveUser(id);
    if (blocks_[id].window < 0) ops->push_back({group, slot, static_cast<int32_t>(b), id, -1});
  }
  for (int64_t b = have; b <= last; ++b) {
    const int32_t id = TakeBlock();
    Block& k = blocks_[id];
    k.refs = 1;
    s.table.push_back(id);
    if (b >= window_first) AddUser(id);
  }
  // Window parts for the window's blocks (new blocks have none yet; blocks in a running
  // sequence's window never lose theirs).
  for (int64_t b = std::max(window_first, s.window_first); b <= last; ++b) {
    const int32_t id = s.table[b];
    Block& k = blocks_[id];
    if (k.window >= 0) continue;
    k.window = TakeWindow();
    UpdateWindowLru(id);
    ops->push_back({group, slot, static_cast<int32_t>(b), id, k.window});
  }
  s.window_first = std::max(s.window_first, window_first);
  return true;
}

void KvBlockManager::Computed(int64_t seq, std::span<const int32_t> tokens, int64_t length) {
  Seq& s = seqs_.at(seq);
  const int64_t B = opt_.block_tokens;
  if (!opt_.prefix_cache) return;
  for (int64_t i = s.registered; i < length / B && i < static_cast<int64_t>(s.table.size()); ++i) {
    const int32_t parent = s.chain_parent;
    const std::span<const int32_t> t = tokens.subspan(i * B, B);
    s.registered = i + 1;
    if (const int32_t found = Find(parent, s.salt, t); found >= 0) {
      s.chain_parent = found;  // another sequence registered the same block first: chain through it
      continue;
    }
    Block& k = blocks_[s.table[i]];
    s.chain_parent = s.table[i];
    k.registered = true;
    k.parent = parent;
    k.parent_generation = parent >= 0 ? blocks_[parent].generation : 0;
    k.salt = s.salt;
    k.tokens.assign(t.begin(), t.end());
    k.key = KeyOf(parent, k.parent_generation, s.salt, t);
    by_key_[k.key].push_back(s.table[i]);
    UpdateWindowLru(s.table[i]);
  }
}

void KvBlockManager::Release(int64_t seq) {
  auto it = seqs_.find(seq);
  if (it == seqs_.end()) return;
  const Seq& s = it->second;
  for (int64_t b = 0; b < static_cast<int64_t>(s.table.size()); ++b) {
    if (b >= s.window_first) RemoveUser(s.table[b]);
    Unref(s.table[b]);
  }
  seqs_.erase(it);
}

void KvBlockManager::TableOps(int64_t seq, int32_t group, int32_t slot, std::vector<BlockOp>* ops) const {
  const Seq& s = seqs_.at(seq);
  for (size_t b = 0; b < s.table.size(); ++b)
    ops->push_back({group, slot, static_cast<int32_t>(b), s.table[b], blocks_[s.table[b]].window});
}

std::vector<int32_t> KvBlockManager::Table(int64_t seq) const {
  auto it = seqs_.find(seq);
  return it == seqs_.end() ? std::vector<int32_t>() : it->second.table;
}

}  // namespace dsv4
