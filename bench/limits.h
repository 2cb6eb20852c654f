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

// Peak rate of the arithmetic the matrix kernels use: float32 fused multiply-adds at the widest
// vector width they run (2 flops each), 12 independent chains per pool thread; the sum over the
// threads of each one's best rate in `reps` tries.
struct PeakRate {
  double gflops = 0;
  std::string kind;  // e.g. "fp32_fma_avx2"
};
PeakRate MeasurePeakGflops(int reps = 20);

}  // namespace dsv4::bench
