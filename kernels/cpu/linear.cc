// Matrix products with weights read in their checkpoint formats and decoded in registers: the
// planning of a grouped call, the scalar path and the plain-loop references. The vector paths are
// in linear_avx2.cc (AVX2), linear_avx512.cc (AVX-512, AVX-512 BF16) and amx.cc (AMX tiles);
// linear_internal.h states the canonical summation order they share.
//
// Decode (up to 24 token rows; AVX-512: 28): every weight row is streamed once and decoded in
// registers into normal floats (never subnormal ones: see isa.h), against token rows permuted once
// per call into the order the decoded lanes come out in. Prefill (more rows): a thread decodes
// panels of weight rows into a cache-resident buffer, lane by lane, and multiplies them with blocks
// of the transposed input in a register-blocked micro-kernel. On the avx512_bf16 and amx levels, a
// job whose inputs are all exact in BF16 (the reference rounds activations to FP8 before every
// FP8/FP4 linear) takes its products in BF16 with FP32 sums: the same products, the same order, the
// same bits.
//
// The scalar path (DSV4_CPU_ISA=scalar, or a view the fast paths do not cover) dequantizes a row into
// a buffer and takes dot products.
#include <immintrin.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/avx2.h"
#include "kernels/cpu/avx512.h"
#include "kernels/cpu/linear_internal.h"
#include "kernels/cpu/scratch.h"
#include "kernels/cpu/thread_pool.h"

// GCC 12 reports the _mm512_undefined_* placeholders inside its own intrinsics as uninitialized
// wherever a 512-bit intrinsic is inlined into this file's functions.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace dsv4::kernels {

void DequantRow(const WeightMatrix& w, int64_t r, float* out) {
  EnsureFlushDenormals();
  const int64_t row = w.row_begin + r;
  const int64_t n = w.cols();
  if (w.tiled) {
    for (int64_t c = 0; c < n; ++c) out[c] = linear::Element(w, row, w.col_begin + c);
    return;
  }
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
        for (int64_t c = c0; c < c1; ++c) out[c - w.col_begin] = linear::ScaleE8m0(Fp8E4m3ToFloat(src[c]), srow[blk]);
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
        out[c - w.col_begin] = linear::ScaleE8m0(kFp4E2m1[code], srow[c / w.block_cols]);
      }
      return;
    }
  }
}

namespace {

using linear::Plan;
using linear::Task;

float DotScalar(const float* a, const float* b, int64_t n) {
  float acc[8] = {};
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    for (int j = 0; j < 8; ++j) acc[j] += a[i + j] * b[i + j];
  float s = 0.f;
  for (; i < n; ++i) s += a[i] * b[i];
  return s + ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]));
}

DSV4_AVX2 float DotAvx2(const float* a, const float* b, int64_t n) {
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps(), acc2 = _mm256_setzero_ps(),
         acc3 = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    acc2 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 16), _mm256_loadu_ps(b + i + 16), acc2);
    acc3 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 24), _mm256_loadu_ps(b + i + 24), acc3);
  }
  for (; i + 8 <= n; i += 8) acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
  float r = Hsum(_mm256_add_ps(_mm256_add_ps(acc0, acc1), _mm256_add_ps(acc2, acc3)));
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

DSV4_AVX512 float DotAvx512(const float* a, const float* b, int64_t n) {
  __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps(), acc2 = _mm512_setzero_ps(),
         acc3 = _mm512_setzero_ps();
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) {
    acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
    acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
    acc2 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 32), _mm512_loadu_ps(b + i + 32), acc2);
    acc3 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 48), _mm512_loadu_ps(b + i + 48), acc3);
  }
  for (; i + 16 <= n; i += 16) acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
  const __m512 s = _mm512_add_ps(_mm512_add_ps(acc0, acc1), _mm512_add_ps(acc2, acc3));
  float r = Hsum16(s);
  for (; i < n; ++i) r += a[i] * b[i];
  return r;
}

using DotFn = float (*)(const float*, const float*, int64_t);

DotFn SelectDot() {
  const Isa isa = ActiveIsa();
  if (isa >= Isa::kAvx512) return DotAvx512;
  if (isa == Isa::kAvx2) return DotAvx2;
  return DotScalar;
}

const linear::Paths* SelectPaths() {
  switch (ActiveIsa()) {
    case Isa::kAmx:  // for F32 weights; the others take the tile path
    case Isa::kAvx512Bf16:
      return &linear::Avx512Bf16Paths();
    case Isa::kAvx512:
      return &linear::Avx512Paths();
    case Isa::kAvx2:
      return &linear::Avx2Paths();
    default:
      return nullptr;
  }
}

std::atomic<bool> g_emulate_amx{false};
std::atomic<linear::Products> g_products{linear::Products::kAuto};

int64_t StorageBytes(const WeightMatrix& w) {
  const int64_t rows = w.rows(), cols = w.cols();
  switch (w.type) {
    case WeightType::kF32:
      return rows * cols * 4;
    case WeightType::kBF16:
      return rows * cols * 2;
    case WeightType::kFP8:
      return rows * cols + ((rows + w.block_rows - 1) / w.block_rows) * ((cols + w.block_cols - 1) / w.block_cols);
    case WeightType::kFP4:
      return rows * cols / 2 + rows * ((cols + w.block_cols - 1) / w.block_cols);
  }
  return 0;
}

// Views the fast paths take (any other runs the scalar path, for every m): a chunk of FP8 columns
// must lie in one block of scales.
bool FastPathCovers(const linear::Paths* paths, const WeightMatrix& w) {
  if (paths == nullptr || w.tiled) return false;  // stored for the tiles: the tile path or none
  if (w.type == WeightType::kFP4) return w.col_begin % 32 == 0 && w.block_cols == 32;
  const int64_t a = paths->fp8_col_align;
  if (w.type == WeightType::kFP8)
    return w.block_rows > 0 && w.block_cols > 0 && w.col_begin % a == 0 && w.block_cols % a == 0;
  return true;
}

// Largest |x| of a row; false when the row holds a NaN or Inf (std::max alone would step over a
// NaN, and an all-NaN row would pass for a zero row).
// Four independent 4-lane chains (SSE2, every x86-64): one chain of dependent maxss would take four
// cycles an element, and every streaming job's input passes here before its threads start.
bool RowAmax(const float* x, int64_t n, float* amax) {
  const __m128 abs_mask = _mm_castsi128_ps(_mm_set1_epi32(0x7fffffff));
  const __m128 fmax = _mm_set1_ps(std::numeric_limits<float>::max());
  __m128 a[4], ok[4];
  for (int k = 0; k < 4; ++k) a[k] = _mm_setzero_ps(), ok[k] = _mm_castsi128_ps(_mm_set1_epi32(-1));
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int k = 0; k < 4; ++k) {
      const __m128 v = _mm_and_ps(_mm_loadu_ps(x + i + 4 * k), abs_mask);
      ok[k] = _mm_and_ps(ok[k], _mm_cmple_ps(v, fmax));  // false for NaN and Inf
      a[k] = _mm_max_ps(a[k], v);
    }
  const __m128 all_ok = _mm_and_ps(_mm_and_ps(ok[0], ok[1]), _mm_and_ps(ok[2], ok[3]));
  bool finite = _mm_movemask_ps(all_ok) == 0xf;
  alignas(16) float lanes[4];
  _mm_store_ps(lanes, _mm_max_ps(_mm_max_ps(a[0], a[1]), _mm_max_ps(a[2], a[3])));
  float m = std::max(std::max(lanes[0], lanes[1]), std::max(lanes[2], lanes[3]));
  for (; i < n; ++i) {
    const float v = std::fabs(x[i]);
    finite &= v <= std::numeric_limits<float>::max();
    m = std::max(m, v);
  }
  *amax = m;  // meaningful only when finite (the vector max may have kept a NaN)
  return finite;
}

// Whether every element of x[m, n] (row stride ldx) is exactly a BF16 number: the low 16 bits of
// each float are zero.
bool ExactInBf16(const float* x, int64_t m, int64_t ldx, int64_t n) {
  for (int64_t t = 0; t < m; ++t) {
    const uint32_t* row = reinterpret_cast<const uint32_t*>(x + t * ldx);
    uint32_t low = 0;
    for (int64_t i = 0; i < n; ++i) low |= row[i];
    if ((low & 0xffffu) != 0) return false;
  }
  return true;
}

// The exponent of the largest |x| of a token row of n values: 0 for a zero row and for a row
// with a NaN or Inf (computed as it is: the products carry the NaN or Inf into y, never skipped as
// a zero row); *zero tells a zero row.
int AmaxExp(const float* x, int64_t n, bool* zero) {
  float amax = 0.f;
  const bool finite = RowAmax(x, n, &amax);
  *zero = finite && amax == 0.f;
  return finite && amax > 0.f ? std::ilogb(amax) : 0;
}

// The power of two that brings a token row's largest |x| into [1, 2).
int NormalizingExp(int amax_exp) { return std::clamp(-amax_exp, -126, 126); }

// Prepares the lane-ordered token rows of a streaming job (in the caller's scratch).
void PrepareGemv(Plan& p, const linear::Paths& paths, float* xp) {
  const LinearJob& job = *p.job;
  const WeightMatrix& w = *job.w;
  const int64_t main = p.nchunks * p.cc;
  p.xp = xp;
  for (int64_t t = 0; t < job.m; ++t) {
    const float* x = job.x + t * job.ldx;
    p.amax_exp[t] = AmaxExp(x, w.cols(), &p.zero_row[t]);
    // FP4: x * 2^kx is in [1, 2) at its largest (the chunk's scales are applied in the kernel).
    p.kx[t] = NormalizingExp(p.amax_exp[t]);
    if (w.type == WeightType::kF32) continue;  // read in place
    const float f = w.type == WeightType::kFP4 ? linear::Pow2(p.kx[t]) : 1.0f;
    float* dst = xp + t * main;
    int64_t lane_col[128];
    for (int64_t l = 0; l < p.cc; ++l) lane_col[l] = paths.lane_column(w.type, l);
    for (int64_t c = 0; c < main; c += p.cc)
      for (int64_t l = 0; l < p.cc; ++l) dst[c + l] = x[c + lane_col[l]] * f;
  }
}

void ScalarRows(const LinearJob& job, int64_t r0, int64_t r1) {
  const WeightMatrix& w = *job.w;
  const int64_t cols = w.cols();
  Scratch<float> buf(cols, NoInit{});
  static const DotFn dot = SelectDot();
  for (int64_t r = r0; r < r1; ++r) {
    const float* wr;
    if (w.type == WeightType::kF32) {
      wr = static_cast<const float*>(w.data) + (w.row_begin + r) * w.ld + w.col_begin;
    } else {
      DequantRow(w, r, buf.data());
      wr = buf.data();
    }
    for (int64_t t = 0; t < job.m; ++t) job.y[t * job.ldy + r] = dot(job.x + t * job.ldx, wr, cols);
  }
}

// Rows per streaming task: about 128 KB of weights, at least 4 tasks per thread, and (FP8) never
// across a block of rows that shares scales. An FP8 task scales its token rows by its block's
// scales first (a pass over the columns), so long FP8 rows take a whole block per task where that
// leaves 2 tasks per thread: for 8192 columns, 16-row tasks spent a quarter of their cache traffic
// on that pass.
int64_t RowsPerTask(const WeightMatrix& w) {
  const int64_t row_bytes = std::max<int64_t>(1, StorageBytes(w) / std::max<int64_t>(1, w.rows()));
  int64_t rows = std::max<int64_t>(1, (128 << 10) / row_bytes);
  rows = std::min(rows, std::max<int64_t>(1, w.rows() / (4 * NumThreads())));
  if (w.type == WeightType::kFP8) rows = std::max(rows, std::min<int64_t>(w.block_rows, w.rows() / (2 * NumThreads())));
  return rows;
}

// fn(job, unit) for every unit of the jobs list[0, n), units(job) each, shared out among the threads.
template <typename Units, typename Fn>
void ForEachUnit(const int64_t* list, int64_t n, Units units, Fn fn) {
  int64_t total = 0;
  for (int64_t i = 0; i < n; ++i) total += units(list[i]);
  ParallelForDynamic(total, 1, [&](int64_t b, int64_t e) {
    for (int64_t u = b; u < e; ++u) {
      int64_t rest = u, i = 0;
      while (rest >= units(list[i])) rest -= units(list[i++]);
      fn(list[i], rest);
    }
  });
}

}  // namespace

namespace linear {
void EmulateAmxForTesting(bool on) { g_emulate_amx.store(on); }
void SetProductsForTesting(Products p) { g_products.store(p); }
bool AmxEmulated() { return g_emulate_amx.load(std::memory_order_relaxed); }
bool AmxTiles() { return ActiveIsa() == Isa::kAmx || (AmxEmulated() && ActiveIsa() == Isa::kAvx512Bf16); }
int64_t StreamBlockChunks(int64_t nchunks, int64_t x_chunk_bytes, int64_t multiple) {
  static const int64_t budget = [] {
    const long l1 = sysconf(_SC_LEVEL1_DCACHE_SIZE);
    return (l1 > 0 ? static_cast<int64_t>(l1) : int64_t{32} << 10) * 2 / 3;
  }();
  const int64_t nblocks = std::max<int64_t>(1, (nchunks * x_chunk_bytes + budget - 1) / budget);
  const int64_t block = (nchunks + nblocks - 1) / nblocks;
  return std::max<int64_t>(multiple, (block + multiple - 1) / multiple * multiple);
}
int TokenExp(const float* x, int64_t n) {
  bool zero;
  return NormalizingExp(AmaxExp(x, n, &zero));
}
}  // namespace linear

float Dot(const float* a, const float* b, int64_t n) {
  EnsureFlushDenormals();
  static const DotFn fn = SelectDot();
  return fn(a, b, n);
}

void LinearGroup(const LinearJob* jobs, int64_t num_jobs) {
  EnsureFlushDenormals();
  static const linear::Paths* const paths = SelectPaths();
  const linear::Products products = g_products.load(std::memory_order_relaxed);
  // Weights stored for the tiles take the tile path, whatever the number of tokens (the backend
  // stores them so at the amx level).
  auto tile_job = [&](const WeightMatrix& w) { return linear::TiledCovers(w) && ActiveIsa() >= Isa::kAvx512Bf16; };
  // BF16 products where the level has them and they beat FP32 FMAs on this core (the same bits).
  auto bf16_pays = [&](bool gemm) {
    if (ActiveIsa() < Isa::kAvx512Bf16 || products == linear::Products::kFp32) return false;
    static const bool gemv = paths->bf16_gemv_pays(), gemm_micro = paths->bf16_gemm_pays();
    return products == linear::Products::kBf16 || (gemm ? gemm_micro : gemv);
  };
  Scratch<Plan> plans(num_jobs);
  // The earliest job reading the same input as job j (the experts of a decode step share theirs):
  // its input is checked and laid out once.
  Scratch<int64_t> first_reader(num_jobs, NoInit{});
  Scratch<uint8_t> input_finite(num_jobs, NoInit{});  // of first readers: 0, 1, or 2 (not checked)
  for (int64_t j = 0; j < num_jobs; ++j) {
    first_reader[j] = j, input_finite[j] = 2;
    const LinearJob& a = jobs[j];
    for (int64_t i = 0; i < j; ++i) {
      const LinearJob& b = jobs[i];
      if (first_reader[i] == i && b.x == a.x && b.m == a.m && b.ldx == a.ldx && b.w->cols() == a.w->cols()) {
        first_reader[j] = i;
        break;
      }
    }
  }
  // Buffers of the caller: streaming inputs in lane order, GEMM inputs packed.
  int64_t xp_floats = 0, xt_words = 0, xexp_ints = 0, num_gemm = 0, num_tasks = 0, gemm_panels = 0;
  for (int64_t j = 0; j < num_jobs; ++j) {
    const LinearJob& job = jobs[j];
    const WeightMatrix& w = *job.w;
    Plan& p = plans[j];
    p.job = &job;
    if (job.m <= 0 || w.rows() <= 0) continue;
    if (tile_job(w)) {
      // The inputs as they are (NaN and infinities stay whole in the first part), in one part where
      // they are exact in BF16.
      p.path = Plan::kTile;
      p.bf16 = ExactInBf16(job.x, job.m, job.ldx, w.cols());
      p.parts = p.bf16 ? 1 : 3;
      p.k32 = (w.cols() + 31) / 32 * 32;
      const linear::TileMode mode = linear::TileModeOf(job.m);
      const bool panels = mode == linear::TileMode::kPanels;
      // Blocks of 16 tokens: panels take them in pairs.
      p.ntb = mode == linear::TileMode::kFmas ? 1 : panels ? ((job.m + 15) / 16 + 1) / 2 * 2 : (job.m + 15) / 16;
      xt_words += linear::TileInputWords(p);
      xexp_ints += job.m;
      ++num_gemm;
      CountWork(StorageBytes(w), 0, 2 * job.m * w.rows() * w.cols(), FlopKind::kAmxBf16);
      // Panels: up to 128 rows whose B tiles stay in L2 (512 KB), so that the tokens' tiles are read
      // from L3 once for them all. Fewer tokens: about RowsPerTask's rows.
      const int64_t rows32 = (w.rows() + 31) / 32 * 32;
      int64_t pr = 128;
      while (pr > 32 && (pr * p.k32 * 2 > (512 << 10) || pr > rows32)) pr /= 2;
      if (!panels) pr = std::max<int64_t>(32, std::min<int64_t>(rows32, RowsPerTask(w) / 32 * 32));
      p.panel_rows = pr;
      p.panels = (w.rows() + pr - 1) / pr;
      gemm_panels += p.panels;  // split below, with the GEMM jobs' panels
      continue;
    }
    bool finite = true;
    if (FastPathCovers(paths, w) && job.m <= paths->max_gemv_rows) {
      const int64_t f = first_reader[j];
      if (input_finite[f] == 2) {
        for (int64_t t = 0; t < job.m && finite; ++t) {
          float amax;
          finite = RowAmax(job.x + t * job.ldx, w.cols(), &amax);
        }
        input_finite[f] = finite ? 1 : 0;
      }
      finite = input_finite[f] == 1;
    }
    if (!FastPathCovers(paths, w) || !finite) {
      p.path = Plan::kScalar;
    } else {
      p.cc = paths->chunk_cols(w.type);
      p.nchunks = w.cols() / p.cc;
      // BF16 products: the streaming path's FP8 rows and every GEMM of FP8, FP4 or BF16 weights.
      const bool gemv = job.m <= paths->max_gemv_rows;
      p.bf16 = (gemv ? w.type == WeightType::kFP8 : w.type != WeightType::kF32) && bf16_pays(!gemv) &&
               ExactInBf16(job.x, job.m, job.ldx, w.cols());
      if (gemv) {
        p.path = Plan::kGemv;
        if (w.type != WeightType::kF32) xp_floats += job.m * p.nchunks * p.cc;
      } else {
        p.path = Plan::kGemm;
        ++num_gemm;
        p.ntb = (job.m + paths->gemm_nt - 1) / paths->gemm_nt;
        p.nkb = (p.nchunks * p.cc + linear::kKc - 1) / linear::kKc;
        xt_words += p.nkb * p.ntb * paths->xt_block_words(p.bf16);
        if (w.type == WeightType::kFP8 || w.type == WeightType::kFP4) xexp_ints += job.m;
      }
    }
    CountWork(StorageBytes(w), 0, 2 * job.m * w.rows() * w.cols(), p.bf16 ? FlopKind::kBf16 : FlopKind::kFp32);
    if (p.path == Plan::kGemm) {
      p.panels = (w.rows() + paths->gemm_task_rows - 1) / paths->gemm_task_rows;
      gemm_panels += p.panels;  // the tasks are counted below, once the group's panels are known
    } else {
      p.rows_per_task = RowsPerTask(w);
      num_tasks += (w.rows() + p.rows_per_task - 1) / p.rows_per_task +
                   (w.type == WeightType::kFP8 ? w.rows() / w.block_rows + 1 : 0);
    }
  }
  // GEMM and tile tasks: panels of rows, each split over the token blocks (the tiles' in pairs,
  // where they take panels) only as far as the group needs tasks for the threads (about 4 each).
  // Every split decodes its panel again: with a split per job, the 16 experts of a small model's
  // prefill decoded each panel four times over.
  const int64_t group_splits =
      std::max<int64_t>(1, (4 * NumThreads() + gemm_panels - 1) / std::max<int64_t>(1, gemm_panels));
  // What a split takes: token blocks, the tiles' in pairs (their modes without panels have one or
  // two blocks: one pair).
  auto split_unit = [](const Plan& p) -> int64_t { return p.path == Plan::kTile ? 2 : 1; };
  auto split_units = [&](const Plan& p) { return (p.ntb + split_unit(p) - 1) / split_unit(p); };
  for (int64_t j = 0; j < num_jobs; ++j) {
    Plan& p = plans[j];
    if (p.path != Plan::kGemm && p.path != Plan::kTile) continue;
    p.splits = std::min(split_units(p), group_splits);
    if (p.path == Plan::kGemm && p.nkb > 1 && paths->gemm_max_task_tbs > 0)
      p.splits = std::max(p.splits, (p.ntb + paths->gemm_max_task_tbs - 1) / paths->gemm_max_task_tbs);
    num_tasks += p.panels * p.splits;
  }
  Scratch<float> xp(xp_floats, NoInit{});
  Scratch<uint32_t> xt(xt_words, NoInit{});
  Scratch<int> xexp(xexp_ints, NoInit{});
  Scratch<Task> tasks(num_tasks);
  int64_t xp_used = 0, xt_used = 0, xexp_used = 0, nt = 0;
  // The GEMM jobs that pack their input (a job with no full chunk packs nothing, but is one).
  Scratch<int64_t> packs(num_gemm, NoInit{}), tile_packs(num_gemm, NoInit{});
  int64_t num_packs = 0, num_tile_packs = 0;
  // The earlier job whose copy of its input job j takes: the same input and path, and `same` of the
  // earlier job's index; null if none.
  auto earlier_copy = [&](int64_t j, auto same) -> const Plan* {
    for (int64_t i = first_reader[j]; i < j; ++i)
      if (first_reader[i] == first_reader[j] && plans[i].path == plans[j].path && same(i)) return &plans[i];
    return nullptr;
  };
  // The streaming and GEMM paths lay an input out for the weights' format.
  auto same_format = [&](int64_t i, int64_t j) { return jobs[i].w->type == jobs[j].w->type; };
  for (int64_t j = 0; j < num_jobs; ++j) {
    Plan& p = plans[j];
    const LinearJob& job = jobs[j];
    const WeightMatrix& w = *job.w;
    if (job.m <= 0 || w.rows() <= 0) continue;
    if (p.path == Plan::kGemv && w.type != WeightType::kF32) {
      // A job reading the same input in the same lane order takes the earlier one's copy.
      const Plan* shared = earlier_copy(j, [&](int64_t i) { return same_format(i, j) && plans[i].xp != nullptr; });
      if (shared != nullptr) {
        p.xp = shared->xp;
        std::copy_n(shared->kx, job.m, p.kx);
        std::copy_n(shared->amax_exp, job.m, p.amax_exp);
        std::copy_n(shared->zero_row, job.m, p.zero_row);
      } else {
        PrepareGemv(p, *paths, xp.data() + xp_used);
        xp_used += job.m * p.nchunks * p.cc;
      }
    }
    if (p.path == Plan::kGemm) {
      // Jobs reading the same input the same way share one packed copy (w1 and w3 of an expert).
      const Plan* shared = earlier_copy(j, [&](int64_t i) { return same_format(i, j) && plans[i].bf16 == p.bf16; });
      if (shared != nullptr) {
        p.xt = shared->xt, p.xexp = shared->xexp;
      } else {
        p.xt = xt.data() + xt_used;
        xt_used += p.nkb * p.ntb * paths->xt_block_words(p.bf16);
        if (w.type == WeightType::kFP8 || w.type == WeightType::kFP4) {
          p.xexp = xexp.data() + xexp_used;
          xexp_used += job.m;
        }
        packs[num_packs++] = j;
      }
    }
    if (p.path == Plan::kTile) {
      // Every tile job reading the same input packs it the same way, whatever its weight format.
      const Plan* shared = earlier_copy(j, [&](int64_t i) { return plans[i].xt != nullptr; });
      if (shared != nullptr) {
        p.xt = shared->xt, p.xexp = shared->xexp;
      } else {
        p.xt = xt.data() + xt_used, p.xexp = xexp.data() + xexp_used;
        xt_used += linear::TileInputWords(p);
        xexp_used += job.m;
        tile_packs[num_tile_packs++] = j;
      }
    }
    // Tasks: the matrix paths take panels of rows times a share of the token blocks (the tiles' in
    // pairs), the others ranges of rows.
    if (p.path == Plan::kGemm || p.path == Plan::kTile) {
      const int64_t rows = p.path == Plan::kGemm ? paths->gemm_task_rows : p.panel_rows;
      const int64_t unit = split_unit(p), units = split_units(p);
      for (int64_t s = 0; s < p.splits; ++s)
        for (int64_t pi = 0; pi < p.panels; ++pi)
          tasks[nt++] = {static_cast<int32_t>(j), pi * rows, std::min(w.rows(), (pi + 1) * rows),
                         std::min(p.ntb, unit * (units * s / p.splits)),
                         std::min(p.ntb, unit * (units * (s + 1) / p.splits))};
    } else {
      for (int64_t r = 0; r < w.rows();) {
        int64_t e = std::min(w.rows(), r + p.rows_per_task);
        if (p.path == Plan::kGemv && w.type == WeightType::kFP8) {
          const int64_t block_end = ((w.row_begin + r) / w.block_rows + 1) * w.block_rows - w.row_begin;
          e = std::min(e, block_end);
        }
        tasks[nt++] = {static_cast<int32_t>(j), r, e, 0, 0};
        r = e;
      }
    }
  }
  if (num_packs > 0) {
    // The packed tokens' exponents first (a pack reads all of its tokens' for each column block).
    Scratch<int64_t> exp_start(num_packs + 1);
    for (int64_t i = 0; i < num_packs; ++i)
      exp_start[i + 1] = exp_start[i] + (plans[packs[i]].xexp != nullptr ? jobs[packs[i]].m : 0);
    ParallelForDynamic(exp_start[num_packs], 16, [&](int64_t b, int64_t e) {
      int64_t i = std::upper_bound(exp_start.begin(), exp_start.begin() + num_packs + 1, b) - exp_start.begin() - 1;
      for (int64_t u = b; u < e; ++u) {
        while (u >= exp_start[i + 1]) ++i;
        const Plan& p = plans[packs[i]];
        const int64_t t = u - exp_start[i];
        p.xexp[t] = linear::TokenExp(p.job->x + t * p.job->ldx, p.job->w->cols());
      }
    });
    // A unit is a (column block, token block): a dense projection's input is one column block
    // up to 2048 columns, and packed whole it left every thread but one waiting.
    ForEachUnit(
        packs.data(), num_packs, [&](int64_t j) { return plans[j].nkb * plans[j].ntb; },
        [&](int64_t j, int64_t u) {
          const Plan& p = plans[j];  // unit u = kb * ntb + tb is also its block's place in xt
          paths->pack_gemm_block(p, u / p.ntb, u % p.ntb,
                                 static_cast<uint32_t*>(p.xt) + u * paths->xt_block_words(p.bf16));
        });
  }
  // Tile path: a unit is a token block (decode: all the tokens).
  ForEachUnit(tile_packs.data(), num_tile_packs, [&](int64_t j) { return plans[j].ntb; },
              [&](int64_t j, int64_t tb) { linear::TilePackBlock(plans[j], tb); });
  ParallelForDynamic(nt, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) {
      const Task& t = tasks[i];
      const Plan& p = plans[t.plan];
      switch (p.path) {
        case Plan::kScalar:
          ScalarRows(*p.job, t.r0, t.r1);
          break;
        case Plan::kGemv:
          paths->gemv(p, t.r0, t.r1);
          break;
        case Plan::kGemm:
          paths->gemm_task(p, t.r0, t.r1, t.tb0, t.tb1);
          break;
        case Plan::kTile:
          linear::TileTask(p, t.r0, t.r1, t.tb0, t.tb1);
          break;
      }
    }
  });
}

void Linear(const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, float* y, int64_t ldy) {
  LinearJob job;
  job.x = x, job.m = m, job.ldx = ldx, job.w = &w, job.y = y, job.ldy = ldy;
  LinearGroup(&job, 1);
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

#pragma GCC diagnostic pop
