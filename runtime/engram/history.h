// The per-sequence state of Engram hashing, kept in the sequence cache between steps.
#pragma once

#include <cstdint>
#include <vector>

namespace dsv4 {

// The compressed ids of the last max_ngram - 1 positions, oldest first; kDead for masked positions
// and for positions before the sequence start (both block n-grams the same way).
struct EngramHistory {
  static constexpr int64_t kDead = -1;
  std::vector<int64_t> tail;
};

}  // namespace dsv4
