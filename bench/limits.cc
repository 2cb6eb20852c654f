#include "bench/limits.h"

#include <immintrin.h>
#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <vector>

#include "kernels/cpu/amx.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"

// GCC 12 reports the _mm512_undefined_* placeholders inside its own intrinsics as uninitialized
// wherever a 512-bit intrinsic is inlined into this file's functions.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace dsv4::bench {
namespace {

using Clock = std::chrono::steady_clock;

double Seconds(Clock::time_point a, Clock::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// One thread's share of the triad, vectorized the way a compiler does for stream.c at -O3.
__attribute__((target("avx2"))) void TriadAvx2(double* a, const double* b, const double* c, double q, int64_t n) {
  const __m256d vq = _mm256_set1_pd(q);
  int64_t i = 0;
  for (; i + 4 <= n; i += 4)
    _mm256_storeu_pd(a + i, _mm256_add_pd(_mm256_loadu_pd(b + i), _mm256_mul_pd(vq, _mm256_loadu_pd(c + i))));
  for (; i < n; ++i) a[i] = b[i] + q * c[i];
}

void TriadPlain(double* a, const double* b, const double* c, double q, int64_t n) {
  for (int64_t i = 0; i < n; ++i) a[i] = b[i] + q * c[i];
}

// Independent chains per thread: 12 accumulators, each in its own register (an array could live in
// memory and add a store-to-load delay to every chain), hide the latency of both FMA pipes.
__attribute__((target("avx2,fma"), noinline)) double FmaLoopAvx2(int64_t iters) {
  __m256 a0 = _mm256_set1_ps(0.1f), a1 = _mm256_set1_ps(0.2f), a2 = _mm256_set1_ps(0.3f), a3 = _mm256_set1_ps(0.4f);
  __m256 a4 = _mm256_set1_ps(0.5f), a5 = _mm256_set1_ps(0.6f), a6 = _mm256_set1_ps(0.7f), a7 = _mm256_set1_ps(0.8f);
  __m256 a8 = _mm256_set1_ps(0.9f), a9 = _mm256_set1_ps(1.0f), a10 = _mm256_set1_ps(1.1f), a11 = _mm256_set1_ps(1.2f);
  const __m256 m = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
    a0 = _mm256_fmadd_ps(a0, m, c), a1 = _mm256_fmadd_ps(a1, m, c), a2 = _mm256_fmadd_ps(a2, m, c);
    a3 = _mm256_fmadd_ps(a3, m, c), a4 = _mm256_fmadd_ps(a4, m, c), a5 = _mm256_fmadd_ps(a5, m, c);
    a6 = _mm256_fmadd_ps(a6, m, c), a7 = _mm256_fmadd_ps(a7, m, c), a8 = _mm256_fmadd_ps(a8, m, c);
    a9 = _mm256_fmadd_ps(a9, m, c), a10 = _mm256_fmadd_ps(a10, m, c), a11 = _mm256_fmadd_ps(a11, m, c);
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                           _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  s = _mm256_add_ps(s, _mm256_add_ps(_mm256_add_ps(a8, a9), _mm256_add_ps(a10, a11)));
  float out[8];
  _mm256_storeu_ps(out, s);
  return out[0];
}

#define DSV4_BENCH_AVX512 __attribute__((target("avx512f,avx2,fma"), noinline))
DSV4_BENCH_AVX512 double FmaLoopAvx512(int64_t iters) {
  __m512 a0 = _mm512_set1_ps(0.1f), a1 = _mm512_set1_ps(0.2f), a2 = _mm512_set1_ps(0.3f), a3 = _mm512_set1_ps(0.4f);
  __m512 a4 = _mm512_set1_ps(0.5f), a5 = _mm512_set1_ps(0.6f), a6 = _mm512_set1_ps(0.7f), a7 = _mm512_set1_ps(0.8f);
  __m512 a8 = _mm512_set1_ps(0.9f), a9 = _mm512_set1_ps(1.0f), a10 = _mm512_set1_ps(1.1f), a11 = _mm512_set1_ps(1.2f);
  const __m512 m = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-7f);
  for (int64_t it = 0; it < iters; ++it) {
    a0 = _mm512_fmadd_ps(a0, m, c), a1 = _mm512_fmadd_ps(a1, m, c), a2 = _mm512_fmadd_ps(a2, m, c);
    a3 = _mm512_fmadd_ps(a3, m, c), a4 = _mm512_fmadd_ps(a4, m, c), a5 = _mm512_fmadd_ps(a5, m, c);
    a6 = _mm512_fmadd_ps(a6, m, c), a7 = _mm512_fmadd_ps(a7, m, c), a8 = _mm512_fmadd_ps(a8, m, c);
    a9 = _mm512_fmadd_ps(a9, m, c), a10 = _mm512_fmadd_ps(a10, m, c), a11 = _mm512_fmadd_ps(a11, m, c);
  }
  const __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                                               _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7))),
                                 _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
  return _mm512_reduce_add_ps(s);
}

// vdpbf16ps chains: each adds 16 lanes x 2 BF16 products.
__attribute__((target("avx512f,avx512bf16"), noinline)) double DpLoopBf16(int64_t iters) {
  __m512 a0 = _mm512_set1_ps(0.1f), a1 = _mm512_set1_ps(0.2f), a2 = _mm512_set1_ps(0.3f), a3 = _mm512_set1_ps(0.4f);
  __m512 a4 = _mm512_set1_ps(0.5f), a5 = _mm512_set1_ps(0.6f), a6 = _mm512_set1_ps(0.7f), a7 = _mm512_set1_ps(0.8f);
  __m512 a8 = _mm512_set1_ps(0.9f), a9 = _mm512_set1_ps(1.0f), a10 = _mm512_set1_ps(1.1f), a11 = _mm512_set1_ps(1.2f);
  const __m512bh x = (__m512bh)_mm512_set1_epi32(0x3c003c00), y = (__m512bh)_mm512_set1_epi32(0x3c003c00);
  for (int64_t it = 0; it < iters; ++it) {
    a0 = _mm512_dpbf16_ps(a0, x, y), a1 = _mm512_dpbf16_ps(a1, x, y), a2 = _mm512_dpbf16_ps(a2, x, y);
    a3 = _mm512_dpbf16_ps(a3, x, y), a4 = _mm512_dpbf16_ps(a4, x, y), a5 = _mm512_dpbf16_ps(a5, x, y);
    a6 = _mm512_dpbf16_ps(a6, x, y), a7 = _mm512_dpbf16_ps(a7, x, y), a8 = _mm512_dpbf16_ps(a8, x, y);
    a9 = _mm512_dpbf16_ps(a9, x, y), a10 = _mm512_dpbf16_ps(a10, x, y), a11 = _mm512_dpbf16_ps(a11, x, y);
  }
  const __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                                               _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7))),
                                 _mm512_add_ps(_mm512_add_ps(a8, a9), _mm512_add_ps(a10, a11)));
  return _mm512_reduce_add_ps(s);
}

// TDPBF16PS on four accumulator tiles from two A and two B tiles already loaded: each adds
// 16 x 16 x 32 products.
__attribute__((target("amx-tile,amx-bf16"), noinline)) double AmxLoop(int64_t iters) {
  kernels::LoadTileConfig(kernels::FullTiles(8));
  alignas(64) static thread_local uint16_t data[16 * 32];
  for (auto& v : data) v = 0x3c00;
  asm volatile("" ::: "memory");  // GCC's tile loads do not name the memory they read
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, data, 64);
  _tile_loadd(5, data, 64);
  _tile_loadd(6, data, 64);
  _tile_loadd(7, data, 64);
  for (int64_t it = 0; it < iters; ++it) {
    _tile_dpbf16ps(0, 4, 6);
    _tile_dpbf16ps(1, 4, 7);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  alignas(64) static thread_local float out[16 * 16];
  _tile_stored(0, out, 64);
  _tile_release();
  return out[0];
}

__attribute__((noinline)) double FmaLoopScalar(int64_t iters) {
  float acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = 0.001f * i;
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 8; ++i) acc[i] = acc[i] * 0.999999f + 1e-7f;
  return acc[0] + acc[7];
}

// CPU time of the calling thread: a loop's rate on a core, whatever other processes take of it.
double ThreadSeconds() {
  timespec ts;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return static_cast<double>(ts.tv_sec) + 1e-9 * static_cast<double>(ts.tv_nsec);
}

// Sum over the pool threads of each thread's best rate of `loop(iters)` doing `flops` flops, per
// second of the thread's CPU time (so a core shared with other processes still shows its peak; the
// benches report the share of the cores they got beside).
double BestRateSum(double (*loop)(int64_t), int64_t iters, double flops, int reps) {
  const int threads = kernels::NumThreads();
  std::vector<double> best(threads, 0.0), sink(threads * 8);
  for (int r = 0; r < reps; ++r) {
    kernels::ParallelFor(threads, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t t = lo; t < hi; ++t) {
        const double t0 = ThreadSeconds();
        sink[t * 8] = loop(iters);
        best[t] = std::max(best[t], flops / (ThreadSeconds() - t0) / 1e9);
      }
    });
  }
  double sum = 0;
  for (double b : best) sum += b;
  return sum;
}

}  // namespace

StreamTriad::StreamTriad(int64_t n) : n_(n) {
  // 3 arrays x 256 MB by default: 24x a 32 MB last-level cache.
  a_ = static_cast<double*>(std::aligned_alloc(64, n * sizeof(double)));
  b_ = static_cast<double*>(std::aligned_alloc(64, n * sizeof(double)));
  c_ = static_cast<double*>(std::aligned_alloc(64, n * sizeof(double)));
  // First touch by the thread that later streams each part.
  kernels::ParallelFor(n, 1 << 16, [&](int64_t lo, int64_t hi) {
    for (int64_t i = lo; i < hi; ++i) a_[i] = 0.0, b_[i] = 1.0, c_[i] = 2.0;
  });
}

StreamTriad::~StreamTriad() { std::free(a_), std::free(b_), std::free(c_); }

double StreamTriad::BestGBps(int reps) {
  const bool avx2 = kernels::ActiveIsa() != kernels::Isa::kScalar;
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = Clock::now();
    kernels::ParallelFor(n_, 1 << 16, [&](int64_t lo, int64_t hi) {
      if (avx2) TriadAvx2(a_ + lo, b_ + lo, c_ + lo, 3.0, hi - lo);
      else TriadPlain(a_ + lo, b_ + lo, c_ + lo, 3.0, hi - lo);
    });
    best = std::min(best, Seconds(t0, Clock::now()));
  }
  return 24.0 * static_cast<double>(n_) / best / 1e9;
}

double MeasureStreamTriadGBps(int reps) { return StreamTriad().BestGBps(reps); }

PeakRates MeasurePeakRates(int reps) {
  PeakRates p;
  const kernels::Isa isa = kernels::ActiveIsa();
  constexpr int64_t kIters = 2'000'000;
  if (isa >= kernels::Isa::kAvx512) {
    p.fp32 = {BestRateSum(FmaLoopAvx512, kIters, 2.0 * 16 * 12 * kIters, reps), "fp32_fma_avx512"};
  } else if (isa == kernels::Isa::kAvx2) {
    p.fp32 = {BestRateSum(FmaLoopAvx2, kIters, 2.0 * 8 * 12 * kIters, reps), "fp32_fma_avx2"};
  } else {
    p.fp32 = {BestRateSum(FmaLoopScalar, 8 * kIters, 2.0 * 8 * 8 * kIters, reps), "fp32_fma_scalar"};
  }
  p.bf16.kind = "bf16_dp_avx512";
  // A quarter of the iterations: some cores issue vdpbf16ps once per 2 cycles or more.
  if (isa >= kernels::Isa::kAvx512Bf16)
    p.bf16.gflops = BestRateSum(DpLoopBf16, kIters / 4, 4.0 * 16 * 12 * (kIters / 4), reps);
  p.amx.kind = "amx_bf16";
  if (isa == kernels::Isa::kAmx) p.amx.gflops = BestRateSum(AmxLoop, kIters / 16, 4 * 2.0 * 16 * 16 * 32 * (kIters / 16), reps);
  return p;
}

MixedPeak PeakOfMix(const PeakRates& peaks, double fp32_flops, double bf16_flops, double amx_flops) {
  MixedPeak m;
  const double total = fp32_flops + bf16_flops + amx_flops;
  if (total <= 0) {
    m.gflops = peaks.fp32.gflops, m.kind = peaks.fp32.kind;
    return m;
  }
  struct Part {
    double flops;
    const PeakRate* peak;
  } parts[3] = {{amx_flops, &peaks.amx}, {bf16_flops, &peaks.bf16}, {fp32_flops, &peaks.fp32}};
  std::sort(std::begin(parts), std::end(parts), [](const Part& a, const Part& b) { return a.flops > b.flops; });
  double seconds = 0;  // the mix at the peaks (flops / GFLOP/s)
  for (const Part& part : parts) {
    if (part.flops <= 0) continue;
    if (part.peak->gflops <= 0) return {};  // work of a kind the level has no peak for
    seconds += part.flops / part.peak->gflops;
    m.kind += (m.kind.empty() ? "" : "+") + part.peak->kind;
  }
  m.gflops = total / seconds;
  m.fp32_share = fp32_flops / total, m.bf16_share = bf16_flops / total, m.amx_share = amx_flops / total;
  return m;
}

}  // namespace dsv4::bench

#pragma GCC diagnostic pop
