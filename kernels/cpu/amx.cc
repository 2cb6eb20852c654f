// The GEMM's AMX tile kernel (linear_internal.h: AmxLane), its plain C++ model for testing the
// path's data layout on machines without AMX, and the check that a CPU's tiles follow the model.
//
// What TDPBF16PS computes, measured (a Xeon with AMX, 2026-12; 51200 of 51200 random elements at
// two exponent ranges, and crafted cases): for each element c[m][n], the instruction sums the
// products of the even BF16 elements of its 16 pair steps in one FP32 chain from zero, those of
// the odd elements in another, and adds the two chains' sum to c:
//   e = 0; o = 0;  for k in 0..15: e += a[m].bf16[2k] * b[k].bf16[2n]; o += a[m].bf16[2k+1] * b[k].bf16[2n+1]
//   c[m][n] = c[m][n] + (e + o)
// each + rounded to nearest even, products exact, subnormal inputs and results flushed. This is not
// the Intel SDM's pseudo-code, which adds every product to c in turn (that order matched 37% of
// the elements at exponents within +-10). The amx level's canonical order (linear_internal.h) is
// built on it.
#include "kernels/cpu/amx.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "kernels/cpu/linear_internal.h"

namespace dsv4::kernels::linear {
namespace {

constexpr int kRows = 32, kCols = 32;  // one call: 2 x 2 tiles of 16 rows x 16 tokens

#define DSV4_AMX __attribute__((target("amx-tile,amx-bf16")))

// Tiles 0-3 C, 4-5 A, 6-7 B, each 16 rows of 64 bytes.
DSV4_AMX void BeginHw() { LoadTileConfig(FullTiles(8)); }

DSV4_AMX void EndHw() { _tile_release(); }

DSV4_AMX void LaneHw(const uint32_t* a, int64_t lda, const uint32_t* b, int64_t steps, int64_t ldb, float* c,
                     bool accumulate) {
  constexpr int64_t ldc = kCols * 4;  // bytes per row of C
  asm volatile("" ::: "memory");      // GCC's tile loads do not name the memory they read
  if (accumulate) {
    _tile_loadd(0, c, ldc);
    _tile_loadd(1, c + 16, ldc);
    _tile_loadd(2, c + 16 * kCols, ldc);
    _tile_loadd(3, c + 16 * kCols + 16, ldc);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  for (int64_t k = 0; k < steps; k += 16) {
    _tile_loadd(4, a + k, lda * 4);
    _tile_loadd(5, a + 16 * lda + k, lda * 4);
    _tile_loadd(6, b + k * ldb, ldb * 4);
    _tile_loadd(7, b + k * ldb + 16, ldb * 4);
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, c, ldc);
  _tile_stored(1, c + 16, ldc);
  _tile_stored(2, c + 16 * kCols, ldc);
  _tile_stored(3, c + 16 * kCols + 16, ldc);
}

float Bf16Half(uint32_t pair, int half) { return Bf16ToFloat(static_cast<uint16_t>(half ? pair >> 16 : pair)); }

// The model above, tile by tile, on the same memory.
void LaneEmulated(const uint32_t* a, int64_t lda, const uint32_t* b, int64_t steps, int64_t ldb, float* c,
                  bool accumulate) {
  for (int m = 0; m < kRows; ++m)
    for (int n = 0; n < kCols; ++n) {
      float acc = accumulate ? c[m * kCols + n] : 0.f;
      for (int64_t k0 = 0; k0 < steps; k0 += 16) {
        float even = 0.f, odd = 0.f;
        for (int64_t k = k0; k < k0 + 16; ++k) {
          const uint32_t ap = a[m * lda + k], bp = b[k * ldb + n];
          even = std::fma(Bf16Half(ap, 0), Bf16Half(bp, 0), even);
          odd = std::fma(Bf16Half(ap, 1), Bf16Half(bp, 1), odd);
        }
        acc += even + odd;
      }
      c[m * kCols + n] = acc;
    }
}

}  // namespace

void AmxBeginTask() {
  if (!AmxEmulated()) BeginHw();
}

void AmxEndTask() {
  if (!AmxEmulated()) EndHw();
}

void AmxLane(const uint32_t* a, int64_t lda, const uint32_t* b, int64_t steps, int64_t ldb, float* c,
             bool accumulate) {
  if (AmxEmulated()) return LaneEmulated(a, lda, b, steps, ldb, c, accumulate);
  LaneHw(a, lda, b, steps, ldb, c, accumulate);
}

bool AmxTilesFollowTheModel(std::string* why) {
  // Random BF16 pairs of exponents within +-12 (sums that round at every step) against C of both
  // signs, and one call that accumulates; then C = 1 against sixteen products of 2^-24 in the even
  // halves, which the model adds exactly (1 + 2^-20) and the SDM's order loses entirely.
  constexpr int64_t kSteps = 32, kLd = 32;
  std::vector<uint32_t> a(kRows * kLd), b(kSteps * kLd);
  std::vector<float> hw(kRows * kCols), model(kRows * kCols);
  std::mt19937 rng(20261206);
  auto bf16 = [&] {
    const uint32_t sign = rng() & 1, exp = 127 - 12 + rng() % 25, mant = rng() & 127;
    return (sign << 15) | (exp << 7) | mant;
  };
  for (auto* v : {&a, &b})
    for (uint32_t& w : *v) w = bf16() | (bf16() << 16);
  for (int64_t i = 0; i < kRows * kCols; ++i)
    hw[i] = model[i] = std::ldexp(static_cast<float>(static_cast<int32_t>(rng() % 2000001) - 1000000), -20);
  auto same = [&](const char* what) {
    for (int64_t i = 0; i < kRows * kCols; ++i)
      if (std::memcmp(&hw[i], &model[i], sizeof(float)) != 0) {
        *why = std::string(what) + ": element " + std::to_string(i) + " is " + std::to_string(hw[i]) +
               " on the tiles, " + std::to_string(model[i]) + " in the model";
        return false;
      }
    return true;
  };
  BeginHw();
  LaneHw(a.data(), kLd, b.data(), kSteps, kLd, hw.data(), /*accumulate=*/true);
  EndHw();
  LaneEmulated(a.data(), kLd, b.data(), kSteps, kLd, model.data(), true);
  if (!same("random pairs")) return false;
  std::fill(a.begin(), a.end(), 0u);
  std::fill(b.begin(), b.end(), 0u);
  for (int64_t k = 0; k < 16; ++k) a[k] = 0x3380u, b[k * kLd] = 0x3F80u;  // 2^-24 x 1, even halves
  std::fill(hw.begin(), hw.end(), 1.f);
  std::fill(model.begin(), model.end(), 1.f);
  BeginHw();
  LaneHw(a.data(), kLd, b.data(), 16, kLd, hw.data(), true);
  EndHw();
  LaneEmulated(a.data(), kLd, b.data(), 16, kLd, model.data(), true);
  return same("sixteen products of 2^-24 added to 1");
}

}  // namespace dsv4::kernels::linear
