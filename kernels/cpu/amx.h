// AMX tile configuration, shared by the GEMM's tile kernel (amx.cc) and the peak measurement
// (bench/limits.cc). Include only from code compiled for, or marked with, target("amx-tile").
#pragma once

#include <cstdint>

namespace dsv4::kernels {

// The 64-byte operand of LDTILECFG (palette 1): each tile's rows and bytes per row.
struct alignas(64) TileConfig {
  uint8_t palette_id = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64);

// Palette 1 with tiles [0, tiles) of 16 rows x 64 bytes, the rest unused.
inline TileConfig FullTiles(int tiles) {
  TileConfig cfg;
  for (int i = 0; i < tiles; ++i) cfg.colsb[i] = 64, cfg.rows[i] = 16;
  return cfg;
}

// LDTILECFG with the whole configuration as the instruction's operand. GCC 12's _tile_loadconfig
// names only its first 8 bytes, so the compiler drops the stores of the tile shapes as dead and the
// instruction reads a configuration it rejects (#GP, seen on a Xeon with AMX).
__attribute__((target("amx-tile"), always_inline)) inline void LoadTileConfig(const TileConfig& cfg) {
  asm volatile("ldtilecfg %0" ::"m"(cfg));
}

}  // namespace dsv4::kernels
