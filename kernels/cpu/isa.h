// Runtime choice of the CPU instruction set, overridable with DSV4_CPU_ISA (base/env.h) so
// the AVX2 and scalar paths can be tested on an AVX-512 machine.
#pragma once

#include <cstdint>

namespace dsv4::kernels {

enum class Isa { kScalar, kAvx2, kAvx512 };

// The best path this CPU supports, lowered by DSV4_CPU_ISA. Fixed for the process's lifetime.
Isa ActiveIsa();
const char* IsaName(Isa isa);

// Vectorized dot product of two float rows (dispatches on ActiveIsa()).
float Dot(const float* a, const float* b, int64_t n);

}  // namespace dsv4::kernels
