// Engram table layout and hash multipliers (MODEL.md section 2.7).
//
// Each Engram layer hashes every position into (max_ngram - 1) * n_heads columns: column
// (n - 2) * n_heads + h is the n-gram of size n taken modulo its own prime p[n][h], shifted by that
// column's offset, so the columns own disjoint row ranges of the layer's table. The primes are the
// consecutive primes >= engram_vocab_size dealt out in (layer, n, head) order, never reused; a
// layer's table has exactly the sum of its primes rows.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv4 {

struct EngramLayout {
  std::vector<int64_t> layer_ids;  // model layers with an Engram module, in config order
  int64_t max_ngram = 0;           // n-grams of size 2..max_ngram
  int64_t n_heads = 0;
  std::vector<std::vector<int64_t>> primes;   // [engram layer][col], col = (n - 2) * n_heads + head
  std::vector<std::vector<int64_t>> offsets;  // [engram layer][col]: exclusive prefix sums of primes
  std::vector<int64_t> num_rows;              // [engram layer]: sum of the layer's primes

  int64_t num_layers() const { return static_cast<int64_t>(layer_ids.size()); }
  int64_t num_cols() const { return (max_ngram - 1) * n_heads; }
  // Position of `layer` in layer_ids, or -1.
  int64_t IndexOf(int64_t layer) const;
};

// Deterministic primality test for any 64-bit value (Miller-Rabin with a fixed witness set).
bool IsPrime(uint64_t n);

// The layout for a config; fails on sizes whose row counts would overflow int64.
absl::StatusOr<EngramLayout> BuildEngramLayout(int64_t engram_vocab_size, const std::vector<int64_t>& layer_ids,
                                               int64_t max_ngram, int64_t n_heads);

// mult[engram layer][k] for k < max_ngram: 2 r + 1 with r = default_rng(10007 * layer).integers(0,
// bound, size=max_ngram, dtype=int64), bound = max(1, (2^63 - 1) // compressed_vocab // 2). Odd, and
// small enough that compressed_id * mult cannot overflow int64.
std::vector<std::vector<int64_t>> EngramHashMultipliers(const std::vector<int64_t>& layer_ids, int64_t max_ngram,
                                                        int64_t compressed_vocab_size);
int64_t EngramMultiplierBound(int64_t compressed_vocab_size);

}  // namespace dsv4
