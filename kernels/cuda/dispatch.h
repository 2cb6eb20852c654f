// The one place that lists what the CUDA kernels support: dtypes, head dims, group sizes, k. Every
// launcher in kernels/cuda/*.cu calls its Check* first and returns cudaErrorInvalidValue when the
// answer is not null; callers may ask the same question ahead of time (plain C++, no CUDA).
//
// Runtime-to-compile-time dispatch is the DSV4_DISPATCH_* macros below: adding a variant is one line
// here and nowhere else.
#pragma once

#include <cstdint>

#include "kernels/cpu/kernels.h"

namespace dsv4::kernels::cuda {

// Each returns null when supported, else a static string saying why not.

// Weights: kF32 / kBF16 (block 1x1), kFP8 (any block_rows x block_cols >= 1: 128x128 in V4), kFP4
// (block_rows 1, even block_cols: 32 in V4). Non-empty view, ld covering the view.
const char* CheckWeight(const WeightMatrix& w);
// y[m, w.rows()] = x[m, w.cols()] W^T: ldx >= cols, ldy >= rows.
const char* CheckLinear(int64_t m, const WeightMatrix& w, int64_t ldx, int64_t ldy);
// QDQ rows of n in groups of `group` (any group >= 1; a short last group is its own).
const char* CheckQdq(int64_t n, int64_t ld, int group);
// Walsh-Hadamard: n a power of two in [2, 8192].
const char* CheckHadamard(int64_t n);
// mHC: 1 <= hc <= 4 (V4: 4).
const char* CheckHc(int hc);
// Sparse attention: 1 <= d <= 512 (any d, awkward ones included), H >= 1, k >= 0.
const char* CheckAttention(int64_t H, int64_t d, int64_t k);
// Indexer: queries [H, d] of one token must fit in 48 KiB of shared memory (V4: 64 x 128).
const char* CheckIndexer(int64_t H, int64_t d);
// Top-k: 0 <= k <= 2048 and k <= n < 2^31.
const char* CheckTopK(int64_t n, int64_t k);
// Router: 1 <= K <= 32 experts per token, K <= E <= 4096 routed experts (the scores of a token sit
// in shared memory).
const char* CheckRoute(int64_t E, int64_t K);
// Compressor pooling: ratio >= 1, hd >= 1.
const char* CheckCompress(int64_t ratio, int64_t hd);

}  // namespace dsv4::kernels::cuda

// ---- compile-time dispatch (used in .cu files) ----------------------------------------------------

// Runs the body with `kType` a constexpr WeightType equal to `type`.
#define DSV4_DISPATCH_WEIGHT_TYPE(type, kType, ...)                                   \
  switch (type) {                                                                     \
    case ::dsv4::kernels::WeightType::kF32: {                                         \
      constexpr ::dsv4::kernels::WeightType kType = ::dsv4::kernels::WeightType::kF32; \
      __VA_ARGS__;                                                                    \
    } break;                                                                          \
    case ::dsv4::kernels::WeightType::kBF16: {                                        \
      constexpr ::dsv4::kernels::WeightType kType = ::dsv4::kernels::WeightType::kBF16; \
      __VA_ARGS__;                                                                    \
    } break;                                                                          \
    case ::dsv4::kernels::WeightType::kFP8: {                                         \
      constexpr ::dsv4::kernels::WeightType kType = ::dsv4::kernels::WeightType::kFP8; \
      __VA_ARGS__;                                                                    \
    } break;                                                                          \
    case ::dsv4::kernels::WeightType::kFP4: {                                         \
      constexpr ::dsv4::kernels::WeightType kType = ::dsv4::kernels::WeightType::kFP4; \
      __VA_ARGS__;                                                                    \
    } break;                                                                          \
  }

// Runs the body with `kR` a constexpr int: registers per head dim slice (AttnDimsPerThread).
#define DSV4_DISPATCH_DIMS_PER_THREAD(r, kR, ...) \
  switch (r) {                                    \
    case 1: {                                     \
      constexpr int kR = 1;                       \
      __VA_ARGS__;                                \
    } break;                                      \
    case 2: {                                     \
      constexpr int kR = 2;                       \
      __VA_ARGS__;                                \
    } break;                                      \
    default: {                                    \
      constexpr int kR = 4;                       \
      __VA_ARGS__;                                \
    } break;                                      \
  }

// Runs the body with `kHc` a constexpr int equal to `hc` (mHC streams, CheckHc).
#define DSV4_DISPATCH_HC(hc, kHc, ...) \
  switch (hc) {                        \
    case 1: {                          \
      constexpr int kHc = 1;           \
      __VA_ARGS__;                     \
    } break;                           \
    case 2: {                          \
      constexpr int kHc = 2;           \
      __VA_ARGS__;                     \
    } break;                           \
    case 3: {                          \
      constexpr int kHc = 3;           \
      __VA_ARGS__;                     \
    } break;                           \
    default: {                         \
      constexpr int kHc = 4;           \
      __VA_ARGS__;                     \
    } break;                           \
  }

// Runs the body with `kB` a constexpr bool equal to `b`.
#define DSV4_DISPATCH_BOOL(b, kB, ...) \
  if (b) {                             \
    constexpr bool kB = true;          \
    __VA_ARGS__;                       \
  } else {                             \
    constexpr bool kB = false;         \
    __VA_ARGS__;                       \
  }
