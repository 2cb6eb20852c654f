#include "runtime/engram/layout.h"

#include <limits>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "runtime/engram/numpy_random.h"

namespace dsv4 {
namespace {

uint64_t MulMod(uint64_t a, uint64_t b, uint64_t m) { return static_cast<uint64_t>(static_cast<uint128>(a) * b % m); }

uint64_t PowMod(uint64_t base, uint64_t exp, uint64_t m) {
  uint64_t result = 1;
  base %= m;
  for (; exp != 0; exp >>= 1) {
    if (exp & 1) result = MulMod(result, base, m);
    base = MulMod(base, base, m);
  }
  return result;
}

// The smallest prime > `after`; fails instead of overflowing int64.
absl::StatusOr<int64_t> NextPrime(int64_t after) {
  for (int64_t c = after + 1; c > after; ++c)
    if (IsPrime(static_cast<uint64_t>(c))) return c;
  return absl::InvalidArgumentError(absl::StrCat("no prime above ", after, " fits in int64"));
}

}  // namespace

int64_t EngramLayout::IndexOf(int64_t layer) const {
  for (size_t i = 0; i < layer_ids.size(); ++i)
    if (layer_ids[i] == layer) return static_cast<int64_t>(i);
  return -1;
}

bool IsPrime(uint64_t n) {
  if (n < 2) return false;
  static constexpr uint64_t kSmall[] = {2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31, 37};
  for (uint64_t p : kSmall)
    if (n % p == 0) return n == p;
  uint64_t d = n - 1;
  int s = 0;
  while ((d & 1) == 0) d >>= 1, ++s;
  // These 12 witnesses decide primality for every n < 3.3e24, so for all of uint64.
  for (uint64_t a : kSmall) {
    uint64_t x = PowMod(a, d, n);
    if (x == 1 || x == n - 1) continue;
    bool composite = true;
    for (int r = 1; r < s && composite; ++r) {
      x = MulMod(x, x, n);
      composite = x != n - 1;
    }
    if (composite) return false;
  }
  return true;
}

absl::StatusOr<EngramLayout> BuildEngramLayout(int64_t engram_vocab_size, const std::vector<int64_t>& layer_ids,
                                               int64_t max_ngram, int64_t n_heads) {
  if (engram_vocab_size < 1 || max_ngram < 2 || n_heads < 1)
    return absl::InvalidArgumentError(absl::StrCat("Engram layout needs engram_vocab_size >= 1, max_ngram >= 2 and ",
                                                   "n_heads >= 1; got ", engram_vocab_size, ", ", max_ngram, ", ",
                                                   n_heads));
  EngramLayout out;
  out.layer_ids = layer_ids;
  out.max_ngram = max_ngram;
  out.n_heads = n_heads;
  // Consecutive primes >= engram_vocab_size, dealt in (layer, n, head) order (the reference restarts
  // its search at engram_vocab_size - 1 for every (layer, n) but skips primes already taken).
  int64_t last = engram_vocab_size - 1;
  for (size_t l = 0; l < layer_ids.size(); ++l) {
    std::vector<int64_t> primes, offsets;
    int64_t sum = 0;
    for (int64_t col = 0; col < out.num_cols(); ++col) {
      DSV4_ASSIGN_OR_RETURN(last, NextPrime(last));
      if (sum > std::numeric_limits<int64_t>::max() - last)
        return absl::InvalidArgumentError("Engram table row count overflows int64");
      offsets.push_back(sum);
      primes.push_back(last);
      sum += last;
    }
    out.primes.push_back(std::move(primes));
    out.offsets.push_back(std::move(offsets));
    out.num_rows.push_back(sum);
  }
  return out;
}

int64_t EngramMultiplierBound(int64_t compressed_vocab_size) {
  DSV4_CHECK(compressed_vocab_size > 0);
  return std::max<int64_t>(1, std::numeric_limits<int64_t>::max() / compressed_vocab_size / 2);
}

std::vector<std::vector<int64_t>> EngramHashMultipliers(const std::vector<int64_t>& layer_ids, int64_t max_ngram,
                                                        int64_t compressed_vocab_size) {
  const int64_t bound = EngramMultiplierBound(compressed_vocab_size);
  std::vector<std::vector<int64_t>> out;
  for (int64_t layer : layer_ids) {
    Pcg64 rng(static_cast<uint64_t>(10007 * layer));
    std::vector<int64_t> m = NumpyIntegers(rng, 0, bound, max_ngram);
    for (int64_t& v : m) v = 2 * v + 1;
    out.push_back(std::move(m));
  }
  return out;
}

}  // namespace dsv4
