// The avx512 and avx512_bf16 levels' matrix paths: one source (linear_avx512.inc) compiled twice
// with different target attributes, so that the avx512 copy, which Skylake-SP and Cascade Lake
// run, contains no VBMI or BF16 instruction.
// GCC 12 reports its own AVX-512 headers' deliberately undefined pass-through operands as
// uninitialized.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>
#include <time.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "kernels/cpu/avx512.h"
#include "kernels/cpu/linear_internal.h"
#include "kernels/cpu/scratch.h"
#include "kernels/cpu/thread_pool.h"

namespace dsv4::kernels::linear {

namespace avx512 {
#define DSV4_L512_BF16 0
#define DSV4_L512_TARGET DSV4_AVX512_TARGET
#include "kernels/cpu/linear_avx512.inc"
#undef DSV4_L512_TARGET
#undef DSV4_L512_BF16
}  // namespace avx512

namespace avx512_bf16 {
#define DSV4_L512_BF16 1
#define DSV4_L512_TARGET DSV4_AVX512_BF16_TARGET
#include "kernels/cpu/linear_avx512.inc"
#undef DSV4_L512_TARGET
#undef DSV4_L512_BF16
}  // namespace avx512_bf16

const Paths& Avx512Paths() { return avx512::GetPaths(); }
const Paths& Avx512Bf16Paths() { return avx512_bf16::GetPaths(); }

}  // namespace dsv4::kernels::linear
