#include "kernels/cpu/isa.h"

#include <string>

#include "base/env.h"

namespace dsv4::kernels {

Isa ActiveIsa() {
  static const Isa isa = [] {
    __builtin_cpu_init();
    Isa best = Isa::kScalar;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) best = Isa::kAvx2;
    if (__builtin_cpu_supports("avx512f")) best = Isa::kAvx512;
    const std::string want = env::Str(env::Knob::kCpuIsa);
    Isa forced = best;
    if (want == "scalar") forced = Isa::kScalar;
    if (want == "avx2") forced = Isa::kAvx2;
    if (want == "avx512") forced = Isa::kAvx512;
    return forced < best ? forced : best;  // never above what the CPU supports
  }();
  return isa;
}

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

}  // namespace dsv4::kernels
