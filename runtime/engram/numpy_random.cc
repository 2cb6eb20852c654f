#include "runtime/engram/numpy_random.h"

#include "base/status.h"

namespace dsv4 {
namespace {

// SeedSequence's hash constants (numpy/random/bit_generator.pyx).
constexpr uint32_t kInitA = 0x43b0d7e5u, kMultA = 0x931e8875u;
constexpr uint32_t kInitB = 0x8b51f9ddu, kMultB = 0x58f38dedu;
constexpr uint32_t kMixMultL = 0xca01f9ddu, kMixMultR = 0x4973f715u;
constexpr int kXShift = 16;
constexpr int kPoolSize = 4;

// PCG's default 128-bit LCG multiplier.
constexpr uint128 kPcgMultiplier = (static_cast<uint128>(0x2360ed051fc65da4ull) << 64) | 0x4385df649fccf645ull;

uint32_t HashMix(uint32_t value, uint32_t& hash_const) {
  value ^= hash_const;
  hash_const *= kMultA;
  value *= hash_const;
  value ^= value >> kXShift;
  return value;
}

uint32_t Mix(uint32_t x, uint32_t y) {
  uint32_t result = kMixMultL * x - kMixMultR * y;
  result ^= result >> kXShift;
  return result;
}

// The seed as little-endian uint32 words; 0 is one word [0].
std::vector<uint32_t> EntropyWords(uint64_t seed) {
  std::vector<uint32_t> words;
  do {
    words.push_back(static_cast<uint32_t>(seed));
    seed >>= 32;
  } while (seed != 0);
  return words;
}

uint64_t BoundedLemire64(Pcg64& rng, uint64_t range) {
  const uint64_t range_excl = range + 1;
  uint128 m = static_cast<uint128>(rng.NextUint64()) * range_excl;
  uint64_t leftover = static_cast<uint64_t>(m);
  if (leftover < range_excl) {
    const uint64_t threshold = (UINT64_MAX - range) % range_excl;
    while (leftover < threshold) {
      m = static_cast<uint128>(rng.NextUint64()) * range_excl;
      leftover = static_cast<uint64_t>(m);
    }
  }
  return static_cast<uint64_t>(m >> 64);
}

uint32_t BoundedLemire32(Pcg64& rng, uint32_t range) {
  const uint32_t range_excl = range + 1;
  uint64_t m = static_cast<uint64_t>(rng.NextUint32()) * range_excl;
  uint32_t leftover = static_cast<uint32_t>(m);
  if (leftover < range_excl) {
    const uint32_t threshold = (UINT32_MAX - range) % range_excl;
    while (leftover < threshold) {
      m = static_cast<uint64_t>(rng.NextUint32()) * range_excl;
      leftover = static_cast<uint32_t>(m);
    }
  }
  return static_cast<uint32_t>(m >> 32);
}

}  // namespace

std::array<uint32_t, 4> SeedSequencePool(uint64_t seed) {
  const std::vector<uint32_t> entropy = EntropyWords(seed);
  std::array<uint32_t, kPoolSize> pool{};
  uint32_t hash_const = kInitA;
  for (int i = 0; i < kPoolSize; ++i)
    pool[i] = HashMix(i < static_cast<int>(entropy.size()) ? entropy[i] : 0u, hash_const);
  // Every pool word influences every other one.
  for (int src = 0; src < kPoolSize; ++src)
    for (int dst = 0; dst < kPoolSize; ++dst)
      if (src != dst) pool[dst] = Mix(pool[dst], HashMix(pool[src], hash_const));
  // Entropy words beyond the pool size are mixed into every pool word.
  for (size_t src = kPoolSize; src < entropy.size(); ++src)
    for (int dst = 0; dst < kPoolSize; ++dst) pool[dst] = Mix(pool[dst], HashMix(entropy[src], hash_const));
  return pool;
}

std::vector<uint64_t> SeedSequenceGenerateState(const std::array<uint32_t, 4>& pool, int64_t n) {
  std::vector<uint32_t> words(2 * n);
  uint32_t hash_const = kInitB;
  for (size_t i = 0; i < words.size(); ++i) {
    uint32_t v = pool[i % kPoolSize];
    v ^= hash_const;
    hash_const *= kMultB;
    v *= hash_const;
    v ^= v >> kXShift;
    words[i] = v;
  }
  std::vector<uint64_t> out(n);
  for (int64_t i = 0; i < n; ++i) out[i] = static_cast<uint64_t>(words[2 * i]) | (uint64_t{words[2 * i + 1]} << 32);
  return out;
}

Pcg64::Pcg64(uint64_t seed) {
  const std::vector<uint64_t> w = SeedSequenceGenerateState(SeedSequencePool(seed), 4);
  *this = Pcg64((static_cast<uint128>(w[0]) << 64) | w[1], (static_cast<uint128>(w[2]) << 64) | w[3]);
}

Pcg64::Pcg64(uint128 initstate, uint128 initseq) {
  state_ = 0;
  inc_ = (initseq << 1) | 1;
  Step();
  state_ += initstate;
  Step();
}

void Pcg64::Step() { state_ = state_ * kPcgMultiplier + inc_; }

uint64_t Pcg64::NextUint64() {
  Step();
  // XSL-RR: xor the halves, rotate right by the top 6 bits.
  const uint64_t value = static_cast<uint64_t>(state_ >> 64) ^ static_cast<uint64_t>(state_);
  const unsigned rot = static_cast<unsigned>(state_ >> 122);
  return (value >> rot) | (value << ((64 - rot) & 63));
}

uint32_t Pcg64::NextUint32() {
  if (has_uint32_) {
    has_uint32_ = false;
    return uinteger_;
  }
  const uint64_t next = NextUint64();
  has_uint32_ = true;
  uinteger_ = static_cast<uint32_t>(next >> 32);
  return static_cast<uint32_t>(next);
}

std::vector<int64_t> NumpyIntegers(Pcg64& rng, int64_t low, int64_t high, int64_t n) {
  DSV4_CHECK(low < high, "integers: low ", low, " >= high ", high);
  // NumPy works on the closed range [low, high - 1] as unsigned offsets from low.
  const uint64_t range = static_cast<uint64_t>(high) - 1 - static_cast<uint64_t>(low);
  std::vector<int64_t> out(n);
  for (int64_t i = 0; i < n; ++i) {
    uint64_t v;
    if (range == 0) {
      v = 0;
    } else if (range < 0xffffffffull) {
      v = BoundedLemire32(rng, static_cast<uint32_t>(range));
    } else if (range == 0xffffffffull) {
      v = rng.NextUint32();
    } else if (range == UINT64_MAX) {
      v = rng.NextUint64();
    } else {
      v = BoundedLemire64(rng, range);
    }
    out[i] = static_cast<int64_t>(static_cast<uint64_t>(low) + v);
  }
  return out;
}

}  // namespace dsv4
