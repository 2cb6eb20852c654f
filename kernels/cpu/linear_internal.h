// Shared by the files of Linear (linear.cc: planning, the scalar path and the references;
// linear_avx2.cc, linear_avx512.cc, amx.cc: the vector paths). Not part of the kernels' API.
//
// Every (weight row, token) result of a vector path comes out of one canonical order per
// instruction-set level and weight format, whichever path runs and however many token rows come
// together, so a token's output does not depend on its batch and prefill agrees with decode to the
// bit. At the amx level, FP8, FP4 and BF16 weights take the tile path (amx.cc), in the tiles' own
// order, stated there; F32 weights the avx512_bf16 paths. The streaming and GEMM paths:
//   * The full chunks of a row (32 bytes of storage on AVX2, 64 on AVX-512; 128 for F32 weights on
//     AVX-512) are decoded into vectors in a fixed order; the position of a column within the
//     decoded sequence of its chunk is fixed by the level's LaneColumn.
//   * AVX2: 16 lane sums (8 lanes x two accumulators taking the chunk's vectors alternately), each
//     a chain of FMAs in order, added pairwise into 8 and then in the fixed tree of Hsum.
//   * AVX-512: 16 lane sums, each a chain over pairs of columns (the two halves of a BF16 pair
//     register: first the high half, then the low half, as vdpbf16ps adds them), folded into 8 (lane
//     i + lane i + 8) and then Hsum's tree.
//   * Then the columns after the last full chunk, one by one, as FMAs.
// Both paths multiply their operands by powers of two, which changes no rounding as long as every
// product and sum stays in the normal range: each normalizes a token row of FP8 or FP4 products
// to a largest |x| near 1 (so tiny activations do not underflow under flush-to-zero), and takes
// the power back out of the sum.
#pragma once

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "kernels/cpu/formats.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/scratch.h"

namespace dsv4::kernels::linear {

// Token rows taken by the streaming path at most, on any level (Paths::max_gemv_rows says how many
// on each): in passes of up to 4 (AVX-512: 8) over a task's cache-resident weight rows.
constexpr int kMaxGemvRows = 32;

// The chunks [begin, end) of rows of `nchunks` full chunks that one streaming call sums. Where the
// token rows of a pass take more than the L1 budget (StreamBlockChunks), each row is summed a block
// of columns at a time, every row of the pass taking the block before the next block starts, so
// that the block's token rows stay in L1 while each weight is still decoded once per pass. `lanes`
// carries each (row, token)'s lane sums from one block to the next, which continues every lane's
// chain exactly where it stopped: the bits are those of whole rows. (Emerald Rapids, 2 threads,
// weights from DRAM, m = 8, 4096 columns: FP8 131 -> 174, FP4 114 -> 173, BF16 78 -> 147 GFLOP/s.)
struct ChunkSpan {
  int64_t begin = 0, end = 0, nchunks = 0;
  float* lanes = nullptr;  // the call's lane sums, 64-byte aligned, where begin > 0 or end < nchunks
};
// Passes of fewer token rows lean on memory, which streams whole rows best (AVX-512, m = 1, 2 at
// 7168 columns: up to 10% slower in blocks); from this many on, they go in blocks.
constexpr int kGemvBlockedRows = 4;
// Chunks per column block of a streaming pass whose token rows take `x_chunk_bytes` per chunk:
// equal blocks (a multiple of `multiple` chunks, but the last), each within two thirds of the L1
// data cache (32 of 48 KB measured best on Emerald Rapids); all of them where they fit. At least 1.
int64_t StreamBlockChunks(int64_t nchunks, int64_t x_chunk_bytes, int64_t multiple = 1);
constexpr int64_t kKc = 2048;  // GEMM: columns per block (a multiple of every chunk width)
// How the tile path takes a job of m tokens:
//   kFmas (up to kTileFmaRows): FMAs, each weight decoded in registers;
//   kStream (up to 32, one or two blocks of 16 tokens): each tile of weights (16 pair steps of 16
//     rows) decoded into L1 and multiplied against the blocks at once;
//   kPanels (more): panels of weights decoded into L2, multiplied against pairs of token blocks.
// All give the same bits. Measured on the AMX Xeon (2 threads, 2048-column rows from DRAM, GB/s of
// weights), FP8 / FP4 / BF16: m = 8: 14.7-15.1 / 9.7-9.9 / 20.2-20.8 streamed, 9.6-9.8 / 7.4-7.7 /
// 15.3-16.9 in panels; m = 20: 15.1-15.5 / 9.3-9.4 / 18.9-20.0 against 10.1-10.2 / 7.7-7.8 /
// 17.4-17.6; m = 32: 13.9-14.1 / 8.6-8.9 / 18.4-19.9 against 9.3-9.5 / 7.4 / 15.9-16.2. On FMAs
// m = 4 reads 18.2 against 15.1 streamed; m = 6, 8 are faster streamed. m = 1 against inputs not
// exact in BF16 (three parts): FP8 19.7-20.1 on FMAs, 13.5-14.2 streamed, where decoding to L1
// costs more than the FMAs' three chains per weight.
constexpr int64_t kTileFmaRows = 4;
enum class TileMode { kFmas, kStream, kPanels };
constexpr TileMode TileModeOf(int64_t m) {
  return m <= kTileFmaRows ? TileMode::kFmas : m <= 32 ? TileMode::kStream : TileMode::kPanels;
}

// How one job runs, decided before the parallel pass.
struct Plan {
  const LinearJob* job = nullptr;
  enum Path { kScalar, kGemv, kGemm, kTile } path = kScalar;
  // Products taken in BF16 (vdpbf16ps, AMX) instead of FP32 FMAs: the level has them, the weights
  // are FP8, FP4 or BF16 (exact in BF16 by their format, times power-of-two scales) and every input
  // element of the job was checked to be exact in BF16 (its low 16 bits are zero, as after the
  // reference's FP8 rounding). BF16 products are then the exact products the FP32 FMAs take, added
  // in the same order: the results are the same bits either way.
  bool bf16 = false;
  int64_t cc = 0;       // columns per chunk
  int64_t nchunks = 0;  // full chunks of the view's columns; the rest are tail columns
  // Streaming path: the token rows in lane order [m][nchunks * cc], pre-scaled for FP4 (by 2^kx)
  // but not yet for FP8 (block scales differ per row block); kx and the amax exponent per token.
  float* xp = nullptr;
  int kx[kMaxGemvRows] = {};
  int amax_exp[kMaxGemvRows] = {};
  bool zero_row[kMaxGemvRows] = {};
  // GEMM path: the input packed per column block, token block and canonical lane (layout: the
  // level's file); ntb token blocks, nkb column blocks.
  void* xt = nullptr;
  // GEMM path, FP8 and FP4 weights: token t is packed times 2^xexp[t] (its largest |x| in [1, 2)),
  // and its sums are multiplied back by 2^-xexp[t]. The weights are decoded as true values times
  // their scales, so without it the products of a token of tiny activations (1e-30) and small
  // weights would fall below the normal range and flush to zero, while the streaming path, which
  // normalizes its token rows the same way, keeps them: prefill and decode would differ. Null for
  // BF16 and F32 weights (neither path scales those token rows).
  int* xexp = nullptr;
  int64_t ntb = 0, nkb = 0;
  // Tile path: the input in `parts` BF16 parts (1 where it is exact in BF16, else 3), the columns
  // padded to k32 (a multiple of 32), ntb blocks of 16 tokens (FMAs: 1, all the tokens); xt holds
  // TileInputWords(p) words, xexp each token's power of two.
  int64_t parts = 1, k32 = 0;
  // Tasks: GEMM and tile path, row panels (of panel_rows) x token-block splits; otherwise rows per
  // task.
  int64_t panels = 0, splits = 0, rows_per_task = 0, panel_rows = 0;
};

struct Task {
  int32_t plan;
  int64_t r0, r1;    // rows of the view
  int64_t tb0, tb1;  // GEMM token blocks
};

// The vector paths of one instruction-set level.
struct Paths {
  int64_t (*chunk_cols)(WeightType t);
  // The column (within its chunk) of position p of the decoded chunk, in the order the streaming
  // path's token rows are laid out.
  int64_t (*lane_column)(WeightType t, int64_t p);
  // FP8 views must start at a multiple of this column, and blocks of scales span a multiple of it:
  // the columns of a chunk that share one scale (32 on both levels: AVX-512 takes a scale per pair
  // register, so V4.1's 32 x 32 tiles stream like V4's 128 x 128).
  int64_t fp8_col_align;
  int64_t gemm_nt;          // tokens per GEMM token block
  int64_t gemm_task_rows;   // rows per GEMM task (whole 64-byte lines of float outputs)
  // Token blocks per GEMM task at most when a row spans several column blocks (the lane sums of
  // every token block of a task stay live across the column blocks); 0: no limit.
  int64_t gemm_max_task_tbs;
  // 4-byte words of packed input per (column block, token block), for FP32 or BF16 products.
  int64_t (*xt_block_words)(bool bf16);
  // Packs token block tb of column block kb into xt_block (its xt_block_words words): one unit of
  // the pack, which the threads share.
  void (*pack_gemm_block)(const Plan& p, int64_t kb, int64_t tb, void* xt_block);
  void (*gemm_task)(const Plan& p, int64_t r0, int64_t r1, int64_t tb0, int64_t tb1);
  void (*gemv)(const Plan& p, int64_t r0, int64_t r1);
  // Whether BF16 products beat FP32 FMAs on this core in the streaming path (FP8 rows) and in the
  // GEMM's micro-kernel, timed once on the kernels themselves; null: the level has none. The choice
  // changes no result bit.
  bool (*bf16_gemv_pays)();
  bool (*bf16_gemm_pays)();
  // Jobs of up to this many token rows stream (gemv), more take the GEMM: the GEMM pays for whole
  // blocks of tokens (AVX2: 16, AVX-512: 32), the streaming path per pass of 4 (AVX-512: 8).
  // Emerald Rapids, 2 threads, 4096-column rows from DRAM, GFLOP/s streamed against the GEMM, FP8 /
  // FP4 / BF16: AVX-512 m = 17: 165 / 168 / 137 against 95 / 105 / 85, m = 24: 179 / 183 / 156
  // against 133 / 147 / 120, m = 32: 182 / 185 / 157 against 177 / 195 / 160; AVX2 m = 17: 97 / 95
  // / 97 against 65 / 72 / 65, m = 24: 103 / 101 / 102 against 90 / 101 / 91, m = 32: 104 / 101 /
  // 103 against 106 / 121 / 108. Hence 28 and 24: with 2048 columns, AVX-512 m = 30 and 32 ran 160
  // / 158 / 149 and 156 / 180 / 154 streamed against 166 / 179 / 145 and 176 / 190 / 159.
  int64_t max_gemv_rows;
};
const Paths& Avx2Paths();
const Paths& Avx512Paths();      // AVX-512 F/BW/DQ/VL
const Paths& Avx512Bf16Paths();  // + VBMI, BF16

// Testing only: the amx level's tile path with the tile instructions emulated in plain C++ as
// amx.cc models them, on machines whose CPU lacks AMX; requires the avx512_bf16 level.
void EmulateAmxForTesting(bool on);
bool AmxEmulated();
// Testing only: jobs whose inputs are exact in BF16 take FP32 products (kFp32), or BF16 products
// where the level has them (kBf16), whichever is faster; kAuto: the faster. The tile path ignores it.
enum class Products { kAuto, kFp32, kBf16 };
void SetProductsForTesting(Products p);
bool AmxTiles();  // weights are stored for the tiles at this level (real or emulated tiles)

// amx.cc: the tile path, for weights stored for the tiles (WeightMatrix::tiled) in views that start
// on a group of 16 rows and a step of 32 columns. Packed input words of a plan; the packing of
// token block tb (decode: all tokens; and the powers of two of its tokens); the products of rows
// [r0, r1) of the view (at most panel_rows; r0 a multiple of 32) with token blocks [tb0, tb1).
bool TiledCovers(const WeightMatrix& w);
int64_t TileInputWords(const Plan& p);
void TilePackBlock(const Plan& p, int64_t tb);
void TileTask(const Plan& p, int64_t r0, int64_t r1, int64_t tb0, int64_t tb1);
// Whether this CPU's TDPBF16PS computes what amx.cc models (tile data must be granted); if not, why.
// The amx level is only offered where it does.
bool AmxTilesFollowTheModel(std::string* why);

// The power of two that brings the largest |x| of a token row of n values into [1, 2) (0 for a
// zero row and for one with a NaN or Inf), clamped to [-126, 126].
int TokenExp(const float* x, int64_t n);

// ---- helpers shared by the paths -----------------------------------------------------------------

// The high and low bytes of the BF16 value of each E2M1 code (0, .5, 1, 1.5, 2, 3, 4, 6, then the
// negatives), as 16-entry vpshufb tables.
#define DSV4_FP4_BF16_HI 0x00, 0x3F, 0x3F, 0x3F, 0x40, 0x40, 0x40, 0x40, 0x80, 0xBF, 0xBF, 0xBF, 0xC0, 0xC0, 0xC0, 0xC0
#define DSV4_FP4_BF16_LO 0x00, 0x00, 0x80, 0xC0, 0x00, 0x40, 0x80, 0xC0, 0x00, 0x00, 0x80, 0xC0, 0x00, 0x40, 0x80, 0xC0

// Bytes of one stored element (FP4: 1, its `ld` counts bytes).
inline int64_t ElementBytes(WeightType t) { return t == WeightType::kF32 ? 4 : t == WeightType::kBF16 ? 2 : 1; }

inline int64_t RowStride(const WeightMatrix& w) { return w.ld * ElementBytes(w.type); }

// Bytes of `cols` stored columns (FP4: two to a byte; cols even).
inline int64_t ColumnBytes(WeightType t, int64_t cols) {
  return t == WeightType::kFP4 ? cols / 2 : cols * ElementBytes(t);
}

inline const uint8_t* RowBytes(const WeightMatrix& w, int64_t row) {
  return static_cast<const uint8_t*>(w.data) + row * RowStride(w) + ColumnBytes(w.type, w.col_begin);
}

// Lane sums per (weight row, token) of a streaming call on every level (ChunkSpan::lanes).
constexpr int64_t kStreamLanes = 16;

// The canonical sums (before the tail) of the view's rows [row0, row0 + rows) (absolute) against M
// token rows, into sums[r * M + t], where each level's streaming call is
//   call(std::integral_constant<int, RR>{}, first, rstride, span, next, out):
// the RR rows first, first + rstride / RowStride(w), ... (relative to row0) over span's chunks,
// prefetching the rows at `next` (the same offsets), the sums into out[rr * M + t]. R rows at once,
// one from each of R regions of the range (R streams far apart keep more of memory busy than R
// neighbours), the next row of each region prefetched meanwhile; the rows after the last whole
// group of R one at a time. Where `block` < nchunks (the token rows do not fit in L1,
// StreamBlockChunks), the columns go in blocks, each over all the rows, the last rows of a block
// prefetching the first of the next, the lane sums carried in between; one block where every column
// is a tail column (the sums are then 0). `chunk_bytes`: bytes of a row's chunk.
template <int R, int M, typename Call>
inline void StreamRowRange(const WeightMatrix& w, int64_t row0, int64_t rows, int64_t nchunks, int64_t block,
                           int64_t chunk_bytes, float* sums, Call call) {
  const int64_t stride = RowStride(w);
  const int64_t q = rows / R;
  Scratch<float> lanes(block < nchunks ? rows * M * kStreamLanes : 0, NoInit{});
  float part[R * M];
  auto run = [&](auto rows_at_once, int64_t first, int64_t rstride, ChunkSpan span, const uint8_t* next, float* out) {
    constexpr int RR = decltype(rows_at_once)::value;
    if (span.lanes != nullptr) span.lanes += first * RR * M * kStreamLanes;  // group i's R rows, or tail row i
    call(rows_at_once, first, rstride, span, next, out);
  };
  for (int64_t c0 = 0; c0 == 0 || c0 < nchunks; c0 += block) {
    const ChunkSpan span{c0, std::min(nchunks, c0 + block), nchunks, block < nchunks ? lanes.data() : nullptr};
    const bool last = span.end == nchunks;
    const uint8_t* wrap = last ? nullptr : RowBytes(w, row0) + block * chunk_bytes;
    for (int64_t i = 0; i < q; ++i) {
      const uint8_t* next = i + 1 < q ? RowBytes(w, row0 + i + 1) : q * R < rows ? nullptr : wrap;
      run(std::integral_constant<int, R>{}, i, q * stride, span, next, part);
      if (last)
        for (int r = 0; r < R; ++r)
          for (int t = 0; t < M; ++t) sums[(i + r * q) * M + t] = part[r * M + t];
    }
    for (int64_t r = q * R; r < rows; ++r)
      run(std::integral_constant<int, 1>{}, r, stride, span, r + 1 < rows ? nullptr : wrap, sums + r * M);
  }
}

// 2^e as a normal float, or 0 below the normal range (never a subnormal: under DAZ one would read
// as 0 anyway, and without it every operation on it costs a microcode assist).
inline float Pow2(int e) {
  if (e < -126) return 0.f;
  if (e > 127) return std::ldexp(1.0f, e);  // inf
  return std::bit_cast<float>(static_cast<uint32_t>(e + 127) << 23);
}

// FP8 row `row` (absolute), columns [c0, c0 + kc) of the view: fn(q, e) for each 32-column group q
// with its block's scale code e. Walks the row's scale blocks instead of dividing per group; the
// view and its blocks start at multiples of 32 columns.
template <typename Fn>
inline void ForFp8Groups(const WeightMatrix& w, int64_t row, int64_t c0, int64_t kc, Fn fn) {
  const uint8_t* srow = w.scales + (row / w.block_rows) * w.scale_ld;
  const int64_t col = w.col_begin + c0;
  int64_t block = col / w.block_cols, left = w.block_cols - col % w.block_cols;
  for (int64_t q = 0; q < kc / 32; ++q, left -= 32) {
    if (left <= 0) ++block, left = w.block_cols;
    fn(q, srow[block]);
  }
}

// The factor of each 32-column group, 2^(e - 119) for its block's scale code e (the decoders'
// values carry 2^-8: the product is the true value, a normal factor for every code), into
// mult[kc / 32].
inline void Fp8GroupFactors(const WeightMatrix& w, int64_t row, int64_t c0, int64_t kc, float* mult) {
  ForFp8Groups(w, row, c0, kc, [&](int64_t q, uint8_t e) { mult[q] = Pow2(e - 119); });
}

// A streaming task's FP8 rows (one block of rows, from absolute row `row`): the scale code of each
// 32-column group of the view's first `main` columns into codes[main / 32]; returns the largest
// code over all the view's blocks, which the token rows are normalized against.
inline int Fp8TaskCodes(const WeightMatrix& w, int64_t row, int64_t main, uint8_t* codes) {
  ForFp8Groups(w, row, 0, main, [&](int64_t q, uint8_t e) { codes[q] = e; });
  const uint8_t* srow = w.scales + (row / w.block_rows) * w.scale_ld;
  int max_es = 0;
  for (int64_t cb = w.col_begin / w.block_cols; cb <= (w.col_end - 1) / w.block_cols; ++cb)
    max_es = std::max<int>(max_es, srow[cb]);
  return max_es;
}

// v * 2^e in at most two multiplications by normal powers of two (e in [-252, 254]); a subnormal
// result flushes to zero. Made once for many v.
class Pow2Multiplier {
 public:
  explicit Pow2Multiplier(int e) : two_(e < -126 || e > 127) {
    const int h = two_ ? e / 2 : e;
    a_ = Pow2(h), b_ = Pow2(e - h);
  }
  float operator()(float v) const { return two_ ? v * a_ * b_ : v * a_; }

 private:
  bool two_;
  float a_, b_;
};
inline float MulPow2(float v, int e) { return Pow2Multiplier(e)(v); }

// An FP4 scale code e -> 2^(e - 127 + kFp4ScaleBias): normal for every code up to 204 (scales up
// to 2^77), so that code 0 (2^-127) is no subnormal; the streaming paths take the bias out with
// the token's 2^kx (code 255, NaN, reads as NaN; codes above 204 as infinity).
constexpr int kFp4ScaleBias = 50;
struct Fp4ScaleTable {
  float v[256];
  constexpr explicit Fp4ScaleTable(int bias) : v() {
    for (int e = 0; e < 256; ++e)
      v[e] = std::bit_cast<float>(e == 255                ? 0x7fc00000u
                                  : e + bias <= 0         ? 0u
                                  : e - 127 + bias <= 127 ? static_cast<uint32_t>(e + bias) << 23
                                                          : 0x7f800000u);
  }
};
inline constexpr Fp4ScaleTable kFp4Scale(kFp4ScaleBias);
// The true scales 2^(e - 127), code 0 (2^-127, subnormal) read as 0: the GEMM panels' weights are
// true values, and a weight times 2^-127 is below the float range's normal part anyway.
inline constexpr Fp4ScaleTable kFp4TrueScale(0);

// v * 2^(e - 127) for an E8M0 code e, never with a subnormal operand (code 0 is 2^-127): the scale
// is applied in two normal steps, and a subnormal result flushes to zero.
inline float ScaleE8m0(float v, uint8_t e) {
  if (e == 0) return v * 0x1p-63f * 0x1p-64f;
  return v * E8m0ToFloat(e);
}

// Bytes per pair step of a group of a tiled matrix.
constexpr int64_t TiledStepBytes(WeightType t) {
  return t == WeightType::kBF16 ? 64 : t == WeightType::kFP8 ? 32 : 16;
}

// The stored code of element (row, col) (absolute) of an FP8, FP4 or BF16 matrix, stored by rows or
// for the tiles: a BF16 word, an FP8 byte, an FP4 nibble.
inline uint32_t StoredCode(const WeightMatrix& w, int64_t row, int64_t col) {
  const uint8_t* data = static_cast<const uint8_t*>(w.data);
  if (w.tiled) {
    const uint8_t* step = data + ((row / 16) * (w.ld / 2) + col / 2) * TiledStepBytes(w.type);
    const int64_t r = row % 16, half = col % 2;
    switch (w.type) {
      case WeightType::kBF16: {
        uint16_t v;
        std::memcpy(&v, step + 2 * (16 * half + r), 2);
        return v;
      }
      case WeightType::kFP8:
        return step[16 * half + r];
      default:
        return half ? step[r] >> 4 : step[r] & 0xf;
    }
  }
  switch (w.type) {
    case WeightType::kBF16:
      return static_cast<const uint16_t*>(w.data)[row * w.ld + col];
    case WeightType::kFP8:
      return data[row * w.ld + col];
    default: {
      const uint8_t byte = data[row * w.ld + (col >> 1)];
      return (col & 1) ? byte >> 4 : byte & 0xf;
    }
  }
}

// One weight element, dequantized (for tail columns).
inline float Element(const WeightMatrix& w, int64_t row, int64_t col) {
  switch (w.type) {
    case WeightType::kF32:
      return static_cast<const float*>(w.data)[row * w.ld + col];
    case WeightType::kBF16:
      return Bf16ToFloat(static_cast<uint16_t>(StoredCode(w, row, col)));
    case WeightType::kFP8:
      return ScaleE8m0(Fp8E4m3ToFloat(static_cast<uint8_t>(StoredCode(w, row, col))),
                       w.scales[(row / w.block_rows) * w.scale_ld + col / w.block_cols]);
    case WeightType::kFP4:
      return ScaleE8m0(kFp4E2m1[StoredCode(w, row, col)], w.scales[row * w.scale_ld + col / 32]);
  }
  return 0.f;
}

// v plus the columns of row `row` (absolute) from `from` on, one FMA each: the end of every
// canonical sum (the columns after the last full chunk).
inline float AddTail(float v, const WeightMatrix& w, int64_t row, const float* x, int64_t from) {
  for (int64_t c = from; c < w.cols(); ++c) v = std::fma(x[c], Element(w, row, w.col_begin + c), v);
  return v;
}

// The streaming path's outputs of the view's rows [rb, rb + rows) (absolute: row0 + r) for token
// rows t0 .. t0 + M - 1: sums[r * M + t] times 2^mult_exp[t] (0 for a zero row), then the columns
// after `main`. A token at a time, each writing its outputs in order: a row at a time across the
// tokens would store ldy apart, which at multiples of 4 KB all fall in one set of L1.
template <int M>
inline void StoreGemvSums(const LinearJob& job, int t0, int64_t rb, int64_t row0, int64_t rows, int64_t main,
                          const float* sums, const int* mult_exp, const bool* zero) {
  const WeightMatrix& w = *job.w;
  const bool tail = main < w.cols();
  for (int t = 0; t < M; ++t) {
    float* y = job.y + (t0 + t) * job.ldy + rb;
    const float* x = job.x + (t0 + t) * job.ldx;
    const Pow2Multiplier scale(mult_exp[t]);
    for (int64_t r = 0; r < rows; ++r) y[r] = zero[t] ? 0.f : scale(sums[r * M + t]);
    if (tail)
      for (int64_t r = 0; r < rows; ++r) y[r] = AddTail(y[r], w, row0 + r, x, main);
  }
}

// The sum of 16 lane sums in the canonical tree: lanes i and i + 8 first, then
// ((l0 + l4) + (l2 + l6)) + ((l1 + l5) + (l3 + l7)) (AVX2's lane sums s[i] are accumulator 0's lane
// i for i < 8 and accumulator 1's lane i - 8 after).
inline float CanonicalSum16(const float* s) {
  float l[8];
  for (int i = 0; i < 8; ++i) l[i] = s[i] + s[i + 8];
  return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

}  // namespace dsv4::kernels::linear
