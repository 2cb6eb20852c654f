// Matrix products with weights dequantized on the fly.
//
// Each output row of W is dequantized once into a thread-local buffer and dotted with every row of
// x, so in decode (m = 1) a weight byte is read once and in prefill the dequantization cost is
// amortized over m tokens. Threads split the output rows.
#include <immintrin.h>

#include <algorithm>
#include <cstring>
#include <vector>

#include "kernels/cpu/formats.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/thread_pool.h"

namespace dsv4::kernels {

void DequantRow(const WeightMatrix& w, int64_t r, float* out) {
  const int64_t row = w.row_begin + r;
  const int64_t n = w.cols();
  switch (w.type) {
    case WeightType::kF32: {
      const float* src = static_cast<const float*>(w.data) + row * w.ld + w.col_begin;
      std::memcpy(out, src, n * sizeof(float));
      return;
    }
    case WeightType::kBF16: {
      const uint16_t* src = static_cast<const uint16_t*>(w.data) + row * w.ld + w.col_begin;
      for (int64_t c = 0; c < n; ++c) out[c] = Bf16ToFloat(src[c]);
      return;
    }
    case WeightType::kFP8: {
      const uint8_t* src = static_cast<const uint8_t*>(w.data) + row * w.ld;
      const uint8_t* srow = w.scales + (row / w.block_rows) * w.scale_ld;
      for (int64_t c0 = w.col_begin; c0 < w.col_end;) {
        const int64_t blk = c0 / w.block_cols;
        const int64_t c1 = std::min<int64_t>(w.col_end, (blk + 1) * w.block_cols);
        const float s = E8m0ToFloat(srow[blk]);
        for (int64_t c = c0; c < c1; ++c) out[c - w.col_begin] = Fp8E4m3ToFloat(src[c]) * s;
        c0 = c1;
      }
      return;
    }
    case WeightType::kFP4: {
      const uint8_t* src = static_cast<const uint8_t*>(w.data) + row * w.ld;
      const uint8_t* srow = w.scales + row * w.scale_ld;
      for (int64_t c = w.col_begin; c < w.col_end; ++c) {
        const uint8_t byte = src[c >> 1];
        const uint8_t code = (c & 1) ? (byte >> 4) : (byte & 0xf);
        out[c - w.col_begin] = kFp4E2m1[code] * E8m0ToFloat(srow[c / w.block_cols]);
      }
      return;
    }
  }
}

namespace {

float DotScalar(const float* a, const float* b, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0.f;
  for (; i < n; ++i) s += a[i] * b[i];
  return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

__attribute__((target("avx2,fma"))) float DotAvx2(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  acc0 = _mm256_add_ps(acc0, acc1);
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(acc0), _mm256_extractf128_ps(acc0, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  float r = _mm_cvtss_f32(s);
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

__attribute__((target("avx512f"))) float DotAvx512(const float* a, const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
  }
  for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
  float r = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

using DotFn = float (*)(const float*, const float*, int64_t);

DotFn SelectDot() {
  switch (ActiveIsa()) {
    case Isa::kAvx512:
      return DotAvx512;
    case Isa::kAvx2:
      return DotAvx2;
    default:
      return DotScalar;
  }
}

}  // namespace

float Dot(const float* a, const float* b, int64_t n) {
  static const DotFn fn = SelectDot();
  return fn(a, b, n);
}

void Linear(const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, float* y, int64_t ldy) {
  const int64_t rows = w.rows(), cols = w.cols();
  if (rows == 0 || m == 0) return;
  const int64_t grain = std::max<int64_t>(1, 16384 / std::max<int64_t>(1, cols * m));
  ParallelFor(rows, grain, [&](int64_t r0, int64_t r1) {
    thread_local std::vector<float> buf;
    if (static_cast<int64_t>(buf.size()) < cols) buf.resize(cols);
    for (int64_t r = r0; r < r1; ++r) {
      const float* wr;
      if (w.type == WeightType::kF32) {
        wr = static_cast<const float*>(w.data) + (w.row_begin + r) * w.ld + w.col_begin;
      } else {
        DequantRow(w, r, buf.data());
        wr = buf.data();
      }
      for (int64_t t = 0; t < m; ++t) y[t * ldy + r] = Dot(x + t * ldx, wr, cols);
    }
  });
}

namespace ref {

void Linear(const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, float* y, int64_t ldy) {
  std::vector<float> wr(w.cols());
  for (int64_t r = 0; r < w.rows(); ++r) {
    DequantRow(w, r, wr.data());
    for (int64_t t = 0; t < m; ++t) {
      double s = 0;
      for (int64_t c = 0; c < w.cols(); ++c) s += static_cast<double>(x[t * ldx + c]) * wr[c];
      y[t * ldy + r] = static_cast<float>(s);
    }
  }
}

}  // namespace ref
}  // namespace dsv4::kernels
