// NumPy's default random stream, bit for bit: `numpy.random.default_rng(seed)` is
// Generator(PCG64(SeedSequence(seed))), and `integers(low, high, dtype=int64)` draws with Lemire's
// bounded method. Engram derives its hash multipliers from this stream (MODEL.md section 2.7), so
// any difference here silently rehashes every table row.
//
// Reproduced from NumPy 1.24's documented algorithms (numpy/random/bit_generator.pyx,
// _pcg64.pyx, distributions.c); golden/engram/multipliers.json checks every stage.
#pragma once

#include <array>
#include <cstdint>
#include <vector>

namespace dsv4 {

using uint128 = unsigned __int128;

// SeedSequence(seed) for a non-negative integer seed: the entropy pool of 4 uint32 words.
std::array<uint32_t, 4> SeedSequencePool(uint64_t seed);
// SeedSequence.generate_state(n, uint64) from a pool (words paired low half first).
std::vector<uint64_t> SeedSequenceGenerateState(const std::array<uint32_t, 4>& pool, int64_t n);

// PCG64 (XSL-RR 128/64) as NumPy seeds and steps it, including the buffered 32-bit draws: a
// 32-bit draw returns the low half of a fresh 64-bit output and keeps the high half for the next.
// Not thread-safe; cheap to copy.
class Pcg64 {
 public:
  // PCG64(SeedSequence(seed)).
  explicit Pcg64(uint64_t seed);
  // Seeded from the raw 128-bit words (initstate, initseq), as PCG64's set_seed does.
  Pcg64(uint128 initstate, uint128 initseq);

  uint64_t NextUint64();
  uint32_t NextUint32();

  uint128 state() const { return state_; }
  uint128 increment() const { return inc_; }

 private:
  void Step();

  uint128 state_ = 0, inc_ = 0;
  bool has_uint32_ = false;
  uint32_t uinteger_ = 0;
};

// Generator.integers(low, high, size=n, dtype=int64) with high exclusive (requires low < high):
// 32-bit Lemire on buffered draws when high - low - 1 < 2^32 - 1, the raw 32-bit draw when it
// equals 2^32 - 1, else 64-bit Lemire. Consumes draws from `rng` exactly as NumPy does.
std::vector<int64_t> NumpyIntegers(Pcg64& rng, int64_t low, int64_t high, int64_t n);

}  // namespace dsv4
