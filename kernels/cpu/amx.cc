// The GEMM's AMX tile kernel (linear_internal.h: AmxLane), and its plain C++ emulation for testing
// the path's data layout on machines without AMX.
//
// TDPBF16PS, per the Intel SDM: for each row m of C and each pair step k in order,
//   c[m][n] += a[m].bf16[2k] * b[k].bf16[2n];  c[m][n] += a[m].bf16[2k+1] * b[k].bf16[2n+1]
// in FP32 (products of BF16 numbers are exact), subnormals flushed. The GEMM packs each pair with
// its first column in the low half, so a tile continues a canonical lane's chain exactly as the
// FMAs and vdpbf16ps do; tests/kernels/cpu_kernels_test.cc checks the bits on machines with AMX.
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>

#include "kernels/cpu/linear_internal.h"

namespace dsv4::kernels::linear {
namespace {

constexpr int kRows = 32, kCols = 32;  // one call: 2 x 2 tiles of 16 rows x 16 tokens

// The tile configuration (palette 1): tiles 0-3 C, 4-5 A, 6-7 B, each 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

#define DSV4_AMX __attribute__((target("amx-tile,amx-bf16")))

DSV4_AMX void BeginHw() {
  TileConfig cfg;
  for (int i = 0; i < 8; ++i) cfg.colsb[i] = 64, cfg.rows[i] = 16;
  _tile_loadconfig(&cfg);
}

DSV4_AMX void EndHw() { _tile_release(); }

DSV4_AMX void LaneHw(const uint32_t* a, int64_t lda, const uint32_t* b, int64_t steps, int64_t ldb, float* c,
                     bool accumulate) {
  constexpr int64_t ldc = kCols * 4;  // bytes per row of C
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

// The SDM's pseudo-code, tile by tile, on the same memory.
void LaneEmulated(const uint32_t* a, int64_t lda, const uint32_t* b, int64_t steps, int64_t ldb, float* c,
                  bool accumulate) {
  for (int m = 0; m < kRows; ++m)
    for (int n = 0; n < kCols; ++n) {
      float acc = accumulate ? c[m * kCols + n] : 0.f;
      for (int64_t k = 0; k < steps; ++k) {
        const uint32_t ap = a[m * lda + k], bp = b[k * ldb + n];
        acc = std::fma(Bf16Half(ap, 0), Bf16Half(bp, 0), acc);
        acc = std::fma(Bf16Half(ap, 1), Bf16Half(bp, 1), acc);
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

}  // namespace dsv4::kernels::linear
