// Runtime choice of the CPU instruction set, and the floating-point mode every computing thread
// runs in.
//
// The levels form a chain; each includes the ones below it:
//   scalar       plain C++ (any x86-64)
//   avx2         AVX2 + FMA + F16C (Haswell and later, every AMD Zen)
//   avx512       AVX-512 F/BW/DQ/VL (Skylake-SP, Cascade Lake, Ice Lake)
//   avx512_bf16  + AVX-512 VBMI and BF16 (Sapphire Rapids and later, Zen 4 and later)
//   amx          + AMX-TILE/AMX-BF16, with the Linux kernel's permission to use tile data
// ActiveIsa() is the best level the CPU and OS offer, lowered by DSV4_CPU_ISA (base/env.h), never
// raised: the AVX2 and AVX-512 paths can be tested on an AMX machine, and a forced level the
// machine lacks runs the best it has.
#pragma once

#include <cstdint>

namespace dsv4::kernels {

enum class Isa { kScalar, kAvx2, kAvx512, kAvx512Bf16, kAmx };

// The level the kernels run. Fixed for the process's lifetime.
Isa ActiveIsa();
// The best level this CPU and OS offer (whatever DSV4_CPU_ISA says).
Isa BestIsa();
const char* IsaName(Isa isa);
// Why the amx level is unavailable ("" when it is available): no AMX-BF16 in CPUID, tile state not
// enabled by the OS, the kernel refused ARCH_REQ_XCOMP_PERM (with its errno), or the tiles do not
// round as the kernels' model of them (kernels/cpu/amx.cc).
const char* AmxUnavailableReason();

// Vectorized dot product of two float rows (dispatches on ActiveIsa()).
float Dot(const float* a, const float* b, int64_t n);

// Floating-point mode. Intel cores take a microcode assist of ~100 cycles for every subnormal
// operand or result of an FMA, which turns a memory-bound decode step into a compute-bound one, so
// every thread that runs kernels sets flush-to-zero (subnormal results become 0) and
// denormals-are-zero (subnormal inputs read as 0) in MXCSR. The kernels never produce subnormal
// values on purpose (weights are decoded to normal floats, scales never decode to a subnormal), so
// the mode only changes results that fall below 2^-126, which FP32 sums of this model's magnitudes
// do not reach (docs/cpu_kernels.md has the measured effect).
//
// Sets FTZ and DAZ on the calling thread; threads it creates afterwards inherit the mode (the
// process entry calls it before any thread starts).
void SetFlushDenormals();
// Whether the calling thread runs with FTZ and DAZ set.
bool FlushesDenormals();
// Sets the mode on the calling thread the first time it runs a kernel (one thread-local test after
// that). Every kernel entry point and every pool thread calls it.
inline void EnsureFlushDenormals() {
  thread_local bool done = false;
  if (!done) {
    SetFlushDenormals();
    done = true;
  }
}

}  // namespace dsv4::kernels
