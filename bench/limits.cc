#include "bench/limits.h"

#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <vector>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"

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

// Independent FMA chains per thread: 12 accumulators, each in its own register (an array could
// live in memory and add a store-to-load delay to every chain), hide the latency of both FMA pipes.
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

__attribute__((noinline)) double FmaLoopScalar(int64_t iters) {
  float acc[8];
  for (int i = 0; i < 8; ++i) acc[i] = 0.001f * i;
  for (int64_t it = 0; it < iters; ++it)
    for (int i = 0; i < 8; ++i) acc[i] = acc[i] * 0.999999f + 1e-7f;
  return acc[0] + acc[7];
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

PeakRate MeasurePeakGflops(int reps) {
  PeakRate p;
  const kernels::Isa isa = kernels::ActiveIsa();
  // The matrix kernels run their AVX2 code on AVX-512 machines too (kernels/cpu/linear.cc).
  const int lanes = isa == kernels::Isa::kScalar ? 1 : 8;
  const int chains = isa == kernels::Isa::kScalar ? 8 : 12;
  p.kind = isa == kernels::Isa::kScalar ? "fp32_fma_scalar" : "fp32_fma_avx2";
  const int threads = kernels::NumThreads();
  const int64_t iters = 20'000'000 / lanes;
  const double flops = 2.0 * lanes * chains * static_cast<double>(iters);
  // Each thread's loop is timed on its own and the best of `reps` kept, so a thread another
  // process delays does not lower the figure: the peak is the sum of the threads' best rates.
  std::vector<double> best(threads, 0.0), sink(threads * 8);
  for (int r = 0; r < reps; ++r) {
    kernels::ParallelFor(threads, 1, [&](int64_t lo, int64_t hi) {
      for (int64_t t = lo; t < hi; ++t) {
        const auto t0 = Clock::now();
        sink[t * 8] = isa == kernels::Isa::kScalar ? FmaLoopScalar(iters) : FmaLoopAvx2(iters);
        best[t] = std::max(best[t], flops / Seconds(t0, Clock::now()) / 1e9);
      }
    });
  }
  for (double b : best) p.gflops += b;
  return p;
}

}  // namespace dsv4::bench
