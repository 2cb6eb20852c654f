// The limits a CPU benchmark figure is a ratio to, measured on this machine in the same run.
#pragma once

#include <cstdint>
#include <string>

namespace dsv4::bench {

// STREAM triad (a[i] = b[i] + q * c[i] over arrays of doubles far larger than the last-level cache,
// 24 bytes counted per element, no write-allocate traffic counted, best of `reps`), with the CPU
// kernels' thread pool at its current size.
double MeasureStreamTriadGBps(int reps = 10);

// The same triad with its arrays kept, so a benchmark can measure the bandwidth right next to each
// step it times: on a shared host the bandwidth drifts over seconds, and a ratio of two figures
// taken far apart measures the drift as much as the kernels.
class StreamTriad {
 public:
  explicit StreamTriad(int64_t n = int64_t{32} << 20);  // doubles per array (3 x 256 MB)
  ~StreamTriad();
  StreamTriad(const StreamTriad&) = delete;
  StreamTriad& operator=(const StreamTriad&) = delete;
  double BestGBps(int reps);  // best of `reps` passes

 private:
  int64_t n_;
  double *a_, *b_, *c_;
};

// Peak rates of the arithmetic the kernels use at the active instruction-set level, each the sum
// over the pool threads of each thread's best rate in `reps` tries, per second of the thread's CPU
// time (a core another process shares does not lower it), from independent chains of the
// instruction kept in registers:
//   fp32  FP32 FMAs at the level's widest vector (fp32_fma_avx512 / fp32_fma_avx2 / fp32_fma_scalar)
//   bf16  vdpbf16ps, BF16 pair products with FP32 sums (bf16_dp_avx512; avx512_bf16 and amx levels)
//   amx   TDPBF16PS on tiles (amx_bf16; amx level)
// A kind the level lacks has gflops 0. A multiply-add is 2 flops.
struct PeakRate {
  double gflops = 0;
  std::string kind;
};
struct PeakRates {
  PeakRate fp32, bf16, amx;
};
PeakRates MeasurePeakRates(int reps = 20);

// The peak that applies to a mix of work: `fp32`, `bf16` and `amx` flops (per token, say) take
// fp32 / P_fp32 + bf16 / P_bf16 + amx / P_amx at the peaks, so the mix's peak is their sum over that
// time. `kind` names the kinds in the mix, the largest share first, joined by '+'.
struct MixedPeak {
  double gflops = 0;
  std::string kind;
  double fp32_share = 0, bf16_share = 0, amx_share = 0;  // of the flops
};
MixedPeak PeakOfMix(const PeakRates& peaks, double fp32_flops, double bf16_flops, double amx_flops);

}  // namespace dsv4::bench
