#include "kernels/cpu/isa.h"

#include <cpuid.h>
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <string>

#include "base/env.h"
#include "kernels/cpu/linear_internal.h"

namespace dsv4::kernels {
namespace {

// Linux's interface to the dynamically enabled AMX tile data state (asm/prctl.h, 5.16+).
constexpr int kArchGetXcompPerm = 0x1022;
constexpr int kArchReqXcompPerm = 0x1023;
constexpr int kXfeatureTileData = 18;

uint64_t Xcr0() {
  uint32_t lo, hi;
  __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
  return (static_cast<uint64_t>(hi) << 32) | lo;
}

struct Features {
  bool avx2 = false, avx512 = false, avx512_bf16 = false, amx = false;
  std::string amx_reason;
};

Features Detect() {
  Features f;
  __builtin_cpu_init();
  unsigned a, b, c, d;
  const bool f16c = __get_cpuid(1, &a, &b, &c, &d) && (c & bit_F16C);
  // __builtin_cpu_supports checks that the OS saves the YMM / ZMM state too.
  f.avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && f16c;
  f.avx512 = f.avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("avx512vl");
  f.avx512_bf16 = f.avx512 && __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bf16");
  if (!f.avx512_bf16) {
    f.amx_reason = "the CPU lacks AVX-512 VBMI/BF16, which the AMX path builds on";
    return f;
  }
  // CPUID.(7,0):EDX bit 22 AMX-BF16, bit 24 AMX-TILE.
  if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !(d & (1u << 22)) || !(d & (1u << 24))) {
    f.amx_reason = "the CPU lacks AMX-TILE/AMX-BF16 (CPUID leaf 7)";
    return f;
  }
  // XCR0 bits 17 (XTILECFG) and 18 (XTILEDATA): the OS manages the tile state.
  if ((Xcr0() & (uint64_t{3} << 17)) != (uint64_t{3} << 17)) {
    f.amx_reason = "the OS does not enable the AMX tile state (XCR0 bits 17/18)";
    return f;
  }
  // Linux hands out the 8 KB tile data state per process on request only; without the grant the
  // first tile instruction faults.
  if (syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureTileData) != 0) {
    f.amx_reason = std::string("the kernel refused AMX tile data (arch_prctl ARCH_REQ_XCOMP_PERM: ") +
                   std::strerror(errno) + ")";
    return f;
  }
  unsigned long granted = 0;
  if (syscall(SYS_arch_prctl, kArchGetXcompPerm, &granted) != 0 || !(granted & (1ul << kXfeatureTileData))) {
    f.amx_reason = "the kernel did not grant AMX tile data (ARCH_GET_XCOMP_PERM)";
    return f;
  }
  // The kernels' canonical order at the amx level is what this CPU's tiles were measured to compute;
  // a CPU whose tiles round otherwise would break the bit-for-bit agreement of prefill and decode.
  std::string why;
  if (!linear::AmxTilesFollowTheModel(&why)) {
    f.amx_reason = "the CPU's AMX tiles do not round as the kernels' model of TDPBF16PS (" + why + ")";
    return f;
  }
  f.amx = true;
  return f;
}

const Features& CpuFeatures() {
  static const Features f = Detect();
  return f;
}

}  // namespace

Isa BestIsa() {
  const Features& f = CpuFeatures();
  if (f.amx) return Isa::kAmx;
  if (f.avx512_bf16) return Isa::kAvx512Bf16;
  if (f.avx512) return Isa::kAvx512;
  if (f.avx2) return Isa::kAvx2;
  return Isa::kScalar;
}

Isa ActiveIsa() {
  static const Isa isa = [] {
    const Isa best = BestIsa();
    const std::string want = env::Str(env::Knob::kCpuIsa);
    Isa forced = best;
    if (want == "scalar") forced = Isa::kScalar;
    if (want == "avx2") forced = Isa::kAvx2;
    if (want == "avx512") forced = Isa::kAvx512;
    if (want == "avx512_bf16") forced = Isa::kAvx512Bf16;
    if (want == "amx") forced = Isa::kAmx;
    return forced < best ? forced : best;  // never above what the CPU supports
  }();
  return isa;
}

const char* IsaName(Isa isa) {
  switch (isa) {
    case Isa::kAmx:
      return "amx";
    case Isa::kAvx512Bf16:
      return "avx512_bf16";
    case Isa::kAvx512:
      return "avx512";
    case Isa::kAvx2:
      return "avx2";
    default:
      return "scalar";
  }
}

const char* AmxUnavailableReason() { return CpuFeatures().amx_reason.c_str(); }

namespace {
constexpr unsigned kFtzDaz = 0x8040;  // MXCSR bit 15: flush to zero; bit 6: denormals are zero
}  // namespace

void SetFlushDenormals() { _mm_setcsr(_mm_getcsr() | kFtzDaz); }

bool FlushesDenormals() { return (_mm_getcsr() & kFtzDaz) == kFtzDaz; }

}  // namespace dsv4::kernels
