// The fast CPU kernels against plain loops over awkward shapes, every weight format and both the
// streaming (m <= 8) and the blocked (m > 8) matrix paths. ctest runs this binary once per
// instruction-set level (DSV4_CPU_ISA=amx, avx512_bf16, avx512, avx2, scalar; a level the machine
// lacks runs the best it has, and the tests that need it skip).
#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "base/page_arena.h"
#include "kernels/cpu/formats.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/linear_internal.h"
#include "kernels/cpu/scratch.h"
#include "kernels/cpu/thread_pool.h"
#include "tests/testutil.h"

namespace dsv4::kernels {
namespace {

using dsv4::testing::AllClose;

// ctest runs this binary once per instruction-set level (DSV4_CPU_ISA); a level the CPU lacks skips.
[[maybe_unused]] ::testing::Environment* const kIsaEnvironment =
    ::testing::AddGlobalTestEnvironment(new dsv4::testing::IsaEnvironment);

// A random weight matrix [rows, cols] in one storage format, with its backing bytes.
struct TestWeight {
  std::vector<uint8_t> data, scales;
  WeightMatrix w;
};

TestWeight MakeWeight(WeightType type, int64_t rows, int64_t cols, std::mt19937& rng) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> nd;
  TestWeight t;
  const int64_t ld = type == WeightType::kFP4 ? cols / 2 : cols;
  const int64_t esize = type == WeightType::kF32 ? 4 : type == WeightType::kBF16 ? 2 : 1;
  t.data.resize(rows * ld * esize);
  if (type == WeightType::kF32) {
    for (int64_t i = 0; i < rows * cols; ++i) reinterpret_cast<float*>(t.data.data())[i] = nd(rng);
  } else if (type == WeightType::kBF16) {
    for (int64_t i = 0; i < rows * cols; ++i) reinterpret_cast<uint16_t*>(t.data.data())[i] = FloatToBf16(nd(rng));
  } else {
    for (auto& b : t.data) {
      b = static_cast<uint8_t>(byte(rng));
      if (type == WeightType::kFP8 && (b & 0x7f) == 0x7f) b ^= 1;  // every code but NaN, subnormals included
    }
  }
  WeightMatrix& w = t.w;
  w.type = type, w.ld = ld, w.row_end = rows, w.col_end = cols;
  if (type == WeightType::kFP8) {
    w.block_rows = w.block_cols = 128, w.scale_ld = (cols + 127) / 128;
    t.scales.resize(((rows + 127) / 128) * w.scale_ld);
  } else if (type == WeightType::kFP4) {
    w.block_cols = 32, w.scale_ld = cols / 32;
    t.scales.resize(rows * w.scale_ld);
  }
  for (auto& s : t.scales) s = static_cast<uint8_t>(110 + byte(rng) % 25);  // 2^-17 .. 2^7
  w.data = t.data.data();
  w.scales = t.scales.data();
  return t;
}

// Inputs of m rows of width n, with a zero row, a tiny row and a large row among normal ones.
std::vector<float> MakeInput(int64_t m, int64_t n, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  std::vector<float> x(m * n);
  for (int64_t t = 0; t < m; ++t) {
    const float scale = t % 4 == 1 ? 1e-30f : t % 4 == 2 ? 3e4f : 1.0f;
    for (int64_t i = 0; i < n; ++i) x[t * n + i] = (t % 7 == 3) ? 0.f : scale * nd(rng);
  }
  return x;
}

// y against the plain loop, element by element within 1e-5 of sum |x_c w_c| (float32 sums of up to
// a few hundred products in another order).
void ExpectMatchesRef(const float* x, int64_t m, int64_t ldx, const WeightMatrix& w, const float* y, int64_t ldy,
                      const std::string& what) {
  std::vector<float> row(w.cols());
  for (int64_t r = 0; r < w.rows(); ++r) {
    DequantRow(w, r, row.data());
    for (int64_t t = 0; t < m; ++t) {
      double s = 0, mag = 0;
      for (int64_t c = 0; c < w.cols(); ++c) {
        s += static_cast<double>(x[t * ldx + c]) * row[c];
        mag += std::fabs(static_cast<double>(x[t * ldx + c]) * row[c]);
      }
      const double got = y[t * ldy + r];
      ASSERT_LE(std::fabs(got - s), 1e-5 * mag + 1e-37)
          << what << ": row " << r << " token " << t << " got " << got << " want " << s;
    }
  }
}

std::string Name(WeightType t) {
  switch (t) {
    case WeightType::kF32:
      return "f32";
    case WeightType::kBF16:
      return "bf16";
    case WeightType::kFP8:
      return "fp8";
    case WeightType::kFP4:
      return "fp4";
  }
  return "?";
}

// AddTo is elementwise: the same bits as the plain loop for every length, in place or not aligned.
TEST(AddTo, EqualsThePlainLoop) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  for (int64_t n : {0, 1, 7, 15, 16, 17, 33, 4096, 4099}) {
    std::vector<float> x(n + 1), y(n + 1);
    for (auto& v : x) v = nd(rng);
    for (auto& v : y) v = nd(rng);
    std::vector<float> want = y;
    for (int64_t i = 0; i < n; ++i) want[i + 1] += x[i];
    AddTo(y.data() + 1, x.data(), n);  // y off a 32-byte boundary
    EXPECT_EQ(std::memcmp(y.data(), want.data(), y.size() * sizeof(float)), 0) << "n = " << n;
  }
}

TEST(FastLinear, MatchesPlainLoopAllFormatsAndPaths) {
  std::mt19937 rng(11);
  for (WeightType type : {WeightType::kF32, WeightType::kBF16, WeightType::kFP8, WeightType::kFP4}) {
    for (auto [rows, cols] : {std::pair{1, 32}, {7, 96}, {25, 160}, {130, 288}, {53, 704}, {9, 4160}}) {
      TestWeight tw = MakeWeight(type, rows, cols, rng);
      for (int m : {1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 40}) {
        if (rows * cols * m > 400000) continue;
        const std::vector<float> x = MakeInput(m, cols, rng);
        // Views: whole; inner rows from column 32 (aligned); odd rows from an unaligned column.
        for (int view = 0; view < 3; ++view) {
          WeightMatrix wv = tw.w;
          if (view == 1) {
            if (rows < 3 || cols < 96) continue;
            wv.row_begin = 1, wv.row_end = rows - 1, wv.col_begin = 32;
          } else if (view == 2) {
            if (rows < 3 || cols < 96) continue;
            wv.row_begin = 2, wv.row_end = rows, wv.col_begin = type == WeightType::kFP4 ? 2 : 5;
            wv.col_end = cols - (type == WeightType::kFP4 ? 30 : 3);
          }
          std::vector<float> y(m * (wv.rows() + 3), -7.f);
          const int64_t ldy = wv.rows() + 3;
          Linear(x.data() + wv.col_begin, m, cols, wv, y.data(), ldy);
          ExpectMatchesRef(x.data() + wv.col_begin, m, cols, wv, y.data(), ldy,
                           Name(type) + " rows " + std::to_string(rows) + " cols " + std::to_string(cols) + " m " +
                               std::to_string(m) + " view " + std::to_string(view));
          for (int64_t t = 0; t < m; ++t)
            for (int64_t r = wv.rows(); r < ldy; ++r) ASSERT_EQ(y[t * ldy + r], -7.f) << "wrote past the row";
        }
      }
    }
  }
}

// FP8 weights in tiles of any shape (V4.1: 32 x 32; others the loader accepts), every path, on
// views like the tensor-parallel slices (rows of one head on, columns of one output group on).
// The reference decodes each element with its own tile's scale here, not through DequantRow.
TEST(FastLinear, Fp8TilesOfAnyShape) {
  std::mt19937 rng(29);
  std::uniform_int_distribution<int> byte(0, 255);
  for (auto [br, bc] : {std::pair{32, 32}, {1, 128}, {32, 64}, {64, 32}, {16, 16}, {128, 128}}) {
    for (auto [rows, cols] : {std::pair{96, 64}, {384, 96}, {64, 192}, {1024, 96}, {70, 160}}) {
      TestWeight t;
      t.data.resize(rows * cols);
      for (auto& b : t.data) b = static_cast<uint8_t>(byte(rng)) & 0xf7;  // no NaN codes (0x7f / 0xff)
      WeightMatrix& w = t.w;
      w.type = WeightType::kFP8, w.ld = cols, w.row_end = rows, w.col_end = cols;
      w.block_rows = br, w.block_cols = bc, w.scale_ld = (cols + bc - 1) / bc;
      t.scales.resize(((rows + br - 1) / br) * w.scale_ld);
      for (auto& sc : t.scales) sc = static_cast<uint8_t>(110 + byte(rng) % 25);
      w.data = t.data.data(), w.scales = t.scales.data();
      auto element = [&](int64_t r, int64_t c) {  // absolute row and column
        return Fp8E4m3ToFloat(t.data[r * cols + c]) * E8m0ToFloat(t.scales[(r / br) * w.scale_ld + c / bc]);
      };
      for (int m : {1, 3, 4, 8, 9, 17, 40}) {
        const std::vector<float> x = MakeInput(m, cols, rng);
        for (int view = 0; view < 3; ++view) {
          WeightMatrix wv = w;
          if (view == 1) wv.row_begin = rows / 4, wv.row_end = rows / 4 + rows / 2;  // rows of a head slice
          if (view == 2) wv.col_begin = 32, wv.col_end = cols - (cols > 64 ? 32 : 0);  // an output group's columns
          const int64_t ldy = wv.rows() + 1;
          std::vector<float> y(m * ldy, -7.f);
          Linear(x.data() + wv.col_begin, m, cols, wv, y.data(), ldy);
          for (int64_t r = 0; r < wv.rows(); ++r)
            for (int64_t tok = 0; tok < m; ++tok) {
              double want = 0, mag = 0;
              for (int64_t c = wv.col_begin; c < wv.col_end; ++c) {
                const double p = static_cast<double>(x[tok * cols + c]) * element(wv.row_begin + r, c);
                want += p, mag += std::fabs(p);
              }
              // float32 sums of at most a few hundred products in another order.
              ASSERT_LE(std::fabs(y[tok * ldy + r] - want), 1e-5 * mag + 1e-37)
                  << br << "x" << bc << " tiles, " << rows << "x" << cols << ", m " << m << ", view " << view
                  << ", row " << r << ", token " << tok;
            }
          for (int64_t tok = 0; tok < m; ++tok) ASSERT_EQ(y[tok * ldy + wv.rows()], -7.f) << "wrote past the row";
        }
      }
      // Decode and prefill give the same bits with these tiles too.
      const int64_t m = 24;
      const std::vector<float> x = MakeInput(m, cols, rng);
      std::vector<float> all(m * rows), one(m * rows);
      Linear(x.data(), m, cols, w, all.data(), rows);
      for (int64_t tok = 0; tok < m; ++tok) Linear(x.data() + tok * cols, 1, cols, w, one.data() + tok * rows, rows);
      for (int64_t i = 0; i < m * rows; ++i)
        ASSERT_EQ(std::bit_cast<uint32_t>(one[i]), std::bit_cast<uint32_t>(all[i]))
            << br << "x" << bc << " tiles, " << rows << "x" << cols << ", element " << i;
    }
  }
}

// FP4 with E4M3 group scales (V4.1's compressed KV) against the definition, element by element:
// every output is a multiple of its group's scale by an E2M1 value, the nearest one to x / scale.
TEST(Qdq, Fp4WithE4m3ScalesMatchesTheDefinition) {
  std::mt19937 rng(31);
  std::normal_distribution<float> nd;
  const float grid[] = {0.f, 0.5f, 1.f, 1.5f, 2.f, 3.f, 4.f, 6.f};
  for (int64_t n : {16, 96, 100}) {
    std::vector<float> x(3 * n);
    for (int64_t i = 0; i < 3 * n; ++i) x[i] = (i / n == 1 ? 1e-4f : i / n == 2 ? 3e3f : 1.f) * nd(rng);
    x[5] = 0.f;
    std::vector<float> y = x;
    QdqFp4E4m3(y.data(), 3, n, n, 16);
    for (int64_t t = 0; t < 3; ++t)
      for (int64_t g = 0; g < n; g += 16) {
        const int64_t len = std::min<int64_t>(16, n - g);
        float amax = 0.f;
        for (int64_t i = 0; i < len; ++i) amax = std::max(amax, std::fabs(x[t * n + g + i]));
        amax = std::max(amax, 6.0f / 512.0f);  // the floor: 6 * 2^-9
        const float s = RoundToFp8E4m3(amax / 6.0f);
        for (int64_t i = 0; i < len; ++i) {
          const float v = x[t * n + g + i] / s;
          float best = 0.f;
          for (float q : grid)  // nearest, ties to the even code (0, 1, 2, 4, 6 have even codes)
            if (std::fabs(std::fabs(v) - q) < std::fabs(std::fabs(v) - best)) best = q;
          EXPECT_FLOAT_EQ(std::fabs(y[t * n + g + i]), std::min(best, 6.f) * s) << "row " << t << " index " << g + i;
        }
      }
  }
}

// A grouped call equals the jobs run one by one, to the bit: mixed formats, inputs shared (checked
// and laid out once for the jobs reading them the same way) or read over fewer columns, an empty
// job, and an input holding a NaN (every job reading it takes the plain path).
TEST(FastLinear, GroupMatchesSingleJobs) {
  std::mt19937 rng(13);
  std::vector<TestWeight> ws;
  ws.push_back(MakeWeight(WeightType::kFP4, 64, 256, rng));
  ws.push_back(MakeWeight(WeightType::kFP4, 64, 256, rng));
  ws.push_back(MakeWeight(WeightType::kFP8, 200, 256, rng));
  ws.push_back(MakeWeight(WeightType::kBF16, 33, 256, rng));
  ws.push_back(MakeWeight(WeightType::kFP4, 256, 64, rng));
  ws.push_back(MakeWeight(WeightType::kFP8, 130, 256, rng));
  for (int m : {1, 3, 8, 12, 33, -1}) {
    const bool nan = m < 0;
    if (nan) m = 2;
    std::vector<float> x = MakeInput(m, 256, rng);
    if (nan) x[256 + 30] = std::numeric_limits<float>::quiet_NaN();
    std::vector<std::vector<float>> ys;
    std::vector<LinearJob> jobs;
    for (size_t i = 0; i < ws.size(); ++i) {
      ys.emplace_back(m * ws[i].w.rows());
      LinearJob j;
      j.x = x.data(), j.m = (i == 3 && m == 12) ? 0 : m, j.ldx = 256, j.w = &ws[i].w, j.y = ys.back().data();
      j.ldy = ws[i].w.rows();
      jobs.push_back(j);
    }
    LinearGroup(jobs.data(), static_cast<int64_t>(jobs.size()));
    for (size_t i = 0; i < ws.size(); ++i) {
      const std::string what = "job " + std::to_string(i) + " m " + std::to_string(m) + (nan ? " (NaN)" : "");
      if (!nan) ExpectMatchesRef(x.data(), jobs[i].m, 256, ws[i].w, ys[i].data(), jobs[i].ldy, what);
      std::vector<float> alone(ys[i].size());
      Linear(x.data(), jobs[i].m, 256, ws[i].w, alone.data(), jobs[i].ldy);
      for (size_t e = 0; e < alone.size(); ++e)
        ASSERT_EQ(std::bit_cast<uint32_t>(alone[e]), std::bit_cast<uint32_t>(ys[i][e])) << what << ", element " << e;
      if (nan && jobs[i].m > 0) {
        EXPECT_TRUE(std::isnan(ys[i][jobs[i].ldy])) << what << ": token 1 carries the NaN";
        EXPECT_FALSE(std::isnan(ys[i][0])) << what << ": token 0 has none";
      }
    }
  }
}

// A group of blocked jobs (m > 8) whose rows are shorter than one chunk (V4.1's FP4 experts of 96
// columns on AVX-512, 32 columns on AVX2): they pack no input but are GEMM jobs all the same, each
// with its own input and its own token exponents: each gives the bits it gives alone, and the
// plain loop's values. Small scales (2^-17) against the inputs' tiny rows (1e-30) bring products
// near the bottom of the normal range, where a wrong token exponent would flush them.
TEST(FastLinear, GroupOfRowsShorterThanAChunk) {
  std::mt19937 rng(41);
  std::vector<TestWeight> ws;
  ws.push_back(MakeWeight(WeightType::kFP4, 64, 96, rng));
  ws.push_back(MakeWeight(WeightType::kFP4, 64, 96, rng));
  ws.push_back(MakeWeight(WeightType::kFP4, 48, 32, rng));
  for (TestWeight& t : ws) std::fill(t.scales.begin(), t.scales.end(), 110);
  for (int m : {14, 40}) {
    std::vector<std::vector<float>> xs, ys;
    std::vector<LinearJob> jobs;
    for (size_t i = 0; i < ws.size(); ++i) {
      xs.push_back(MakeInput(m, ws[i].w.cols(), rng));
      ys.emplace_back(m * ws[i].w.rows());
      LinearJob j;
      j.x = xs.back().data(), j.m = m, j.ldx = ws[i].w.cols(), j.w = &ws[i].w, j.y = ys.back().data();
      j.ldy = ws[i].w.rows();
      jobs.push_back(j);
    }
    LinearGroup(jobs.data(), static_cast<int64_t>(jobs.size()));
    for (size_t i = 0; i < ws.size(); ++i) {
      const std::string what = "job " + std::to_string(i) + " m " + std::to_string(m);
      ExpectMatchesRef(xs[i].data(), m, jobs[i].ldx, ws[i].w, ys[i].data(), jobs[i].ldy, what);
      std::vector<float> alone(ys[i].size());
      Linear(xs[i].data(), m, jobs[i].ldx, ws[i].w, alone.data(), jobs[i].ldy);
      for (size_t e = 0; e < alone.size(); ++e)
        ASSERT_EQ(std::bit_cast<uint32_t>(alone[e]), std::bit_cast<uint32_t>(ys[i][e])) << what << ", element " << e;
    }
  }
}

// A token's output does not depend on the other rows computed with it: the streaming path (m <= 8)
// and the blocked one (m > 8) sum in the same order, so prefill and decode agree to the bit.
TEST(FastLinear, BitwiseIndependentOfBatch) {
  std::mt19937 rng(23);
  for (WeightType type : {WeightType::kF32, WeightType::kBF16, WeightType::kFP8, WeightType::kFP4}) {
    // 4160 columns: 8 and 4 token rows take more than L1, so the streaming path sums them a
    // block of columns at a time (3 or 5 blocks, then the tail columns).
    for (auto [rows, cols] : {std::pair{37, 1056}, {13, 160}, {19, 4160}}) {
      TestWeight tw = MakeWeight(type, rows, cols, rng);
      const int64_t m = 40;
      std::vector<float> x(m * cols);
      std::normal_distribution<float> nd;
      for (auto& v : x) v = nd(rng);
      std::vector<float> all(m * rows);
      Linear(x.data(), m, cols, tw.w, all.data(), rows);
      for (int64_t chunk : {1, 3, 8, 9, 17}) {
        std::vector<float> part(m * rows);
        for (int64_t t = 0; t < m; t += chunk) {
          const int64_t n = std::min(chunk, m - t);
          Linear(x.data() + t * cols, n, cols, tw.w, part.data() + t * rows, rows);
        }
        for (int64_t i = 0; i < m * rows; ++i)
          ASSERT_EQ(std::bit_cast<uint32_t>(part[i]), std::bit_cast<uint32_t>(all[i]))
              << Name(type) << " rows " << rows << " cols " << cols << " chunk " << chunk << " element " << i;
      }
    }
  }
}

// Tiny activations against small scales: 1e-30 x 2^-17 x an FP8 or FP4 value is near the bottom of
// float's normal range (2^-126), and the smaller products fall below it, where flush-to-zero makes
// them 0. Both matrix paths normalize each token row first, so prefill gives decode's bits, and the
// results stay within 1e-5 of sum |x_c w_c| (no absolute slack; every result is a normal float).
// The inputs are rounded to BF16, so the BF16 levels take their BF16 products too (the FP8 rounding
// of --qdq on would make them 0: the reference floors a group's amax at 1e-4).
TEST(FastLinear, TinyActivationsDoNotUnderflow) {
  std::mt19937 rng(37);
  for (WeightType type : {WeightType::kFP8, WeightType::kFP4}) {
    const int64_t rows = 70, cols = 320, m = 24;
    TestWeight tw = MakeWeight(type, rows, cols, rng);
    for (auto& s : tw.scales) s = 110;  // 2^-17
    std::normal_distribution<float> nd;
    std::vector<float> x(m * cols);
    for (auto& v : x) v = Bf16ToFloat(FloatToBf16(1e-30f * nd(rng)));
    std::vector<float> all(m * rows), one(m * rows);
    Linear(x.data(), m, cols, tw.w, all.data(), rows);
    for (int64_t t = 0; t < m; ++t) Linear(x.data() + t * cols, 1, cols, tw.w, one.data() + t * rows, rows);
    std::vector<float> row(cols);
    for (int64_t r = 0; r < rows; ++r) {
      DequantRow(tw.w, r, row.data());
      for (int64_t t = 0; t < m; ++t) {
        double want = 0, mag = 0;
        for (int64_t c = 0; c < cols; ++c) {
          const double p = static_cast<double>(x[t * cols + c]) * row[c];
          want += p, mag += std::fabs(p);
        }
        ASSERT_GT(mag, 0.0) << Name(type) << ": the reference lost the products";
        ASSERT_LE(std::fabs(all[t * rows + r] - want), 1e-5 * mag) << Name(type) << " row " << r << " token " << t;
        ASSERT_EQ(std::bit_cast<uint32_t>(one[t * rows + r]), std::bit_cast<uint32_t>(all[t * rows + r]))
            << Name(type) << " row " << r << " token " << t;
      }
    }
  }
}

// Inputs as the model feeds its FP8/FP4 linears with the quantization simulation on: rounded to FP8
// in groups of 128, so every element is exact in BF16 (and the avx512_bf16 / amx levels take BF16
// products).
std::vector<float> MakeFp8Input(int64_t m, int64_t n, std::mt19937& rng) {
  std::vector<float> x = MakeInput(m, n, rng);
  QdqFp8(x.data(), m, n, n, 128);
  return x;
}

bool ExactInBf16(const std::vector<float>& x) {
  for (float v : x)
    if (std::bit_cast<uint32_t>(v) & 0xffffu) return false;
  return true;
}

// Products of BF16-exact inputs: against the plain loop, and bit for bit the same as FP32 products
// (vdpbf16ps adds a pair of exact products in the order of the FMAs) whatever the batch. Views off
// the first column and rows with tail columns included. (Weights as stored, not for the tiles: the
// amx level multiplies these with the avx512_bf16 paths.)
TEST(FastLinear, Bf16ProductsEqualFp32Products) {
  std::mt19937 rng(43);
  for (WeightType type : {WeightType::kBF16, WeightType::kFP8, WeightType::kFP4}) {
    for (auto [rows, cols] : {std::pair{70, 1024}, {33, 2176}, {9, 320}}) {
      TestWeight tw = MakeWeight(type, rows, cols, rng);
      const int64_t m = 40;
      const std::vector<float> x = MakeFp8Input(m, cols, rng);
      ASSERT_TRUE(ExactInBf16(x));
      for (int view = 0; view < 2; ++view) {
        WeightMatrix wv = tw.w;
        if (view == 1) wv.row_begin = 1, wv.col_begin = 128, wv.col_end = cols - (type == WeightType::kFP4 ? 32 : 5);
        const float* xv = x.data() + wv.col_begin;
        const std::string what = Name(type) + " rows " + std::to_string(rows) + " cols " + std::to_string(cols) +
                                 " view " + std::to_string(view);
        std::vector<float> all(m * wv.rows());
        Linear(xv, m, cols, wv, all.data(), wv.rows());
        ExpectMatchesRef(xv, m, cols, wv, all.data(), wv.rows(), what);
        // Both kinds of products, whichever this core runs faster, in every batch split.
        for (auto products : {linear::Products::kFp32, linear::Products::kBf16}) {
          linear::SetProductsForTesting(products);
          for (int64_t chunk : {1, 3, 8, 9, 40}) {
            std::vector<float> part(m * wv.rows());
            for (int64_t t = 0; t < m; t += chunk)
              Linear(xv + t * cols, std::min(chunk, m - t), cols, wv, part.data() + t * wv.rows(), wv.rows());
            for (int64_t i = 0; i < m * wv.rows(); ++i)
              ASSERT_EQ(std::bit_cast<uint32_t>(part[i]), std::bit_cast<uint32_t>(all[i]))
                  << what << (products == linear::Products::kBf16 ? " bf16" : " fp32") << " chunk " << chunk
                  << " element " << i;
          }
        }
        linear::SetProductsForTesting(linear::Products::kAuto);
      }
    }
  }
}

// w stored for the tiles (PackForTiles) in memory from `arena`.
WeightMatrix Tiled(const WeightMatrix& w, PageArena& arena) {
  const absl::StatusOr<uint8_t*> out = arena.Allocate(TiledBytes(w));
  EXPECT_TRUE(out.ok()) << out.status();
  return out.ok() ? PackForTiles(w, *out) : w;
}

// Weights stored for the tiles (PackForTiles): every element reads back as stored, views included,
// and every byte of the storage is written (packed over zeros and over 0xA5, the bytes agree: the
// storage comes from fresh pages nobody zeroes); a view that does not start on a group of 16 rows
// multiplies as the plain loop does (no fast path may read the stored bytes as rows).
TEST(TiledLinear, PackingKeepsEveryElement) {
  std::mt19937 rng(47);
  PageArena arena;
  for (WeightType type : {WeightType::kBF16, WeightType::kFP8, WeightType::kFP4}) {
    TestWeight tw = MakeWeight(type, 300, 512, rng);
    for (int view = 0; view < 3; ++view) {
      WeightMatrix wv = tw.w;
      if (view == 1) wv.row_begin = 128, wv.row_end = 290, wv.col_begin = 128, wv.col_end = 480;
      if (view == 2) {
        if (type == WeightType::kFP4) continue;  // FP4 pairs are whole bytes: no partial step
        wv.col_end = 505;                        // a partial last step
      }
      const int64_t bytes = TiledBytes(wv);
      ASSERT_GT(bytes, 0) << Name(type);
      const absl::StatusOr<uint8_t*> over_zeros = arena.Allocate(bytes), over_a5 = arena.Allocate(bytes);
      ASSERT_TRUE(over_zeros.ok() && over_a5.ok());
      std::memset(*over_zeros, 0, bytes), std::memset(*over_a5, 0xA5, bytes);
      const WeightMatrix t = PackForTiles(wv, *over_zeros);
      PackForTiles(wv, *over_a5);
      ASSERT_EQ(std::memcmp(*over_zeros, *over_a5, bytes), 0) << Name(type) << " view " << view;
      ASSERT_TRUE(t.tiled) << Name(type);
      ASSERT_EQ(t.rows(), wv.rows());
      ASSERT_EQ(t.cols(), wv.cols());
      std::vector<float> a(wv.cols()), b(wv.cols());
      for (int64_t r = 0; r < wv.rows(); ++r) {
        DequantRow(wv, r, a.data());
        DequantRow(t, r, b.data());
        for (int64_t c = 0; c < wv.cols(); ++c)
          ASSERT_EQ(std::bit_cast<uint32_t>(a[c]), std::bit_cast<uint32_t>(b[c]))
              << Name(type) << " view " << view << " row " << r << " col " << c;
      }
      WeightMatrix tv = t, rv = wv;
      tv.row_begin += 8, rv.row_begin += 8;
      const int64_t m = 5;
      const std::vector<float> x = MakeFp8Input(m, wv.cols(), rng);
      std::vector<float> y(m * tv.rows());
      Linear(x.data(), m, wv.cols(), tv, y.data(), tv.rows());
      ExpectMatchesRef(x.data(), m, wv.cols(), rv, y.data(), tv.rows(), Name(type) + " rows from 8");
    }
  }
}

// The tiles' order (kernels/cpu/amx.cc), in plain C++: x scaled by the power of two that brings its
// largest |x| into [1, 2), split exactly into BF16 parts, the columns in steps of 32, and per step
// and part c = c + (even chain + odd chain) on the dequantized weights.
float TileOrderDot(const WeightMatrix& w, int64_t r, const float* x, int parts) {
  const int64_t n = w.cols();
  float amax = 0.f;
  for (int64_t c = 0; c < n; ++c) amax = std::max(amax, std::fabs(x[c]));
  const int e = amax > 0.f ? std::clamp(-std::ilogb(amax), -126, 126) : 0;
  std::vector<float> row(n), part[3];
  DequantRow(w, r, row.data());
  for (auto& v : part) v.assign((n + 31) / 32 * 32, 0.f);
  for (int64_t c = 0; c < n; ++c) {
    const float xs = std::ldexp(x[c], e);
    const float hi = std::bit_cast<float>(std::bit_cast<uint32_t>(xs) & 0xFFFF0000u);
    const float rest = xs - hi;
    const float mid = std::bit_cast<float>(std::bit_cast<uint32_t>(rest) & 0xFFFF0000u);
    part[0][c] = hi, part[1][c] = mid, part[2][c] = rest - mid;
  }
  float acc = 0.f;
  for (int64_t s = 0; s < n; s += 32)
    for (int q = 0; q < parts; ++q) {
      float even = 0.f, odd = 0.f;
      for (int64_t k = s; k < s + 32; k += 2) {
        if (k < n) even = std::fma(row[k], part[q][k], even);
        if (k + 1 < n) odd = std::fma(row[k + 1], part[q][k + 1], odd);
      }
      acc += even + odd;
    }
  return std::ldexp(acc, -e);
}

// Products with weights stored for the tiles: the tiles' order bit for bit, decode (up to 4 tokens,
// FMAs) and prefill (AMX tiles, or their model where the CPU has none) alike, in every batch split;
// inputs exact in BF16 (one part) and not (three), tail columns and views included.
TEST(TiledLinear, TileOrderBitForBitWhateverTheBatch) {
  if (ActiveIsa() < Isa::kAvx512Bf16)
    GTEST_SKIP() << "the tile path needs AVX-512 BF16; this run has " << IsaName(ActiveIsa());
  std::mt19937 rng(53);
  PageArena arena;
  for (WeightType type : {WeightType::kBF16, WeightType::kFP8, WeightType::kFP4}) {
    for (auto [rows, cols] : {std::pair{70, 1056}, {40, 2304}}) {
      TestWeight tw = MakeWeight(type, rows, cols, rng);
      for (int inexact = 0; inexact < 2; ++inexact) {
        const int64_t m = 37;
        const std::vector<float> x = inexact ? MakeInput(m, cols, rng) : MakeFp8Input(m, cols, rng);
        WeightMatrix wv = tw.w;
        if (type != WeightType::kFP4) wv.col_end = cols - 7;  // a partial last step
        const WeightMatrix t = Tiled(wv, arena);
        const std::string what = Name(type) + " rows " + std::to_string(rows) + " cols " + std::to_string(t.cols()) +
                                 (inexact ? " inexact" : " exact");
        std::vector<float> all(m * rows);
        Linear(x.data(), m, cols, t, all.data(), rows);
        ExpectMatchesRef(x.data(), m, cols, wv, all.data(), rows, what);
        for (int64_t tok = 0; tok < m; ++tok)
          for (int64_t r = 0; r < rows; ++r)
            ASSERT_EQ(std::bit_cast<uint32_t>(all[tok * rows + r]),
                      std::bit_cast<uint32_t>(TileOrderDot(t, r, x.data() + tok * cols, inexact ? 3 : 1)))
                << what << " token " << tok << " row " << r;
        for (int64_t chunk : {1, 3, 16, 17, 32}) {
          std::vector<float> part(m * rows);
          for (int64_t tok = 0; tok < m; tok += chunk)
            Linear(x.data() + tok * cols, std::min(chunk, m - tok), cols, t, part.data() + tok * rows, rows);
          for (int64_t i = 0; i < m * rows; ++i)
            ASSERT_EQ(std::bit_cast<uint32_t>(part[i]), std::bit_cast<uint32_t>(all[i]))
                << what << " chunk " << chunk << " element " << i;
        }
      }
    }
  }
}

// A group of tile jobs as a MoE layer's prefill gives them (experts of one panel each, their own
// inputs and token counts, the panels mode and the FMAs beside it) and a GEMM job: the group splits
// its panels over the token blocks by all of its panels, a job alone by its own, so the task
// boundaries differ while every job gives the bits it gives alone and the tiles' order. At 1, 2 and
// 8 threads: one task per panel, and splits of the pairs of blocks.
TEST(TiledLinear, GroupGivesEachJobItsBitsAlone) {
  if (ActiveIsa() < Isa::kAvx512Bf16)
    GTEST_SKIP() << "the tile path needs AVX-512 BF16; this run has " << IsaName(ActiveIsa());
  std::mt19937 rng(61);
  PageArena arena;
  const int64_t cols = 512;
  std::vector<TestWeight> ws;
  std::vector<WeightMatrix> tiled;
  const WeightType types[] = {WeightType::kFP4,  WeightType::kFP8, WeightType::kFP4,
                              WeightType::kBF16, WeightType::kFP4, WeightType::kFP8};
  for (WeightType type : types) ws.push_back(MakeWeight(type, 64, cols, rng));
  for (const TestWeight& t : ws) tiled.push_back(Tiled(t.w, arena));
  TestWeight dense = MakeWeight(WeightType::kFP8, 96, cols, rng);  // untiled: the GEMM path
  const int64_t tokens[] = {70, 33, 3, 64, 97, 40, 65};            // the last is the GEMM job's
  const int threads_before = NumThreads();
  for (int threads : {1, 2, 8}) {
    ASSERT_TRUE(SetNumThreads(threads).ok());
    std::vector<std::vector<float>> xs, ys;
    std::vector<LinearJob> jobs;
    for (size_t i = 0; i <= tiled.size(); ++i) {
      const WeightMatrix* w = i < tiled.size() ? &tiled[i] : &dense.w;
      xs.push_back(i % 2 ? MakeInput(tokens[i], cols, rng) : MakeFp8Input(tokens[i], cols, rng));
      ys.emplace_back(tokens[i] * w->rows());
      LinearJob j;
      j.x = xs.back().data(), j.m = tokens[i], j.ldx = cols, j.w = w, j.y = ys.back().data(), j.ldy = w->rows();
      jobs.push_back(j);
    }
    LinearGroup(jobs.data(), static_cast<int64_t>(jobs.size()));
    for (size_t i = 0; i < jobs.size(); ++i) {
      const std::string what = "job " + std::to_string(i) + " (" + std::to_string(tokens[i]) + " tokens), " +
                               std::to_string(threads) + " threads";
      std::vector<float> alone(ys[i].size());
      Linear(xs[i].data(), jobs[i].m, cols, *jobs[i].w, alone.data(), jobs[i].ldy);
      for (size_t e = 0; e < alone.size(); ++e)
        ASSERT_EQ(std::bit_cast<uint32_t>(alone[e]), std::bit_cast<uint32_t>(ys[i][e])) << what << ", element " << e;
      if (i == tiled.size()) continue;
      for (int64_t tok = 0; tok < jobs[i].m; tok += 7)
        for (int64_t r = 0; r < jobs[i].ldy; ++r)
          ASSERT_EQ(std::bit_cast<uint32_t>(ys[i][tok * jobs[i].ldy + r]),
                    std::bit_cast<uint32_t>(TileOrderDot(tiled[i], r, xs[i].data() + tok * cols, i % 2 ? 3 : 1)))
              << what << ", token " << tok << " row " << r;
    }
  }
  ASSERT_TRUE(SetNumThreads(threads_before).ok());
}

// FP8 subnormal codes (e = 0) and FP4 +-0.5 (its subnormal) are decoded to normal floats, never to
// subnormal ones, which DAZ would read as 0: a row of only such codes gives its exact sum on every
// path. Exact: every product and partial sum is a multiple of 2^-9 (FP8) or 2^-2 (FP4) far inside
// the float range.
TEST(FastLinear, SubnormalCodesAreNotZero) {
  for (WeightType type : {WeightType::kFP8, WeightType::kFP4}) {
    const int64_t rows = 20, cols = 512;
    TestWeight t;
    t.data.resize(type == WeightType::kFP8 ? rows * cols : rows * cols / 2);
    for (size_t i = 0; i < t.data.size(); ++i)
      t.data[i] = type == WeightType::kFP8 ? static_cast<uint8_t>((i % 7 + 1) | (i % 3 == 0 ? 0x80 : 0))
                                           : static_cast<uint8_t>(i % 5 == 0 ? 0x91 : 0x11);  // +-0.5 nibbles
    WeightMatrix& w = t.w;
    w.type = type, w.ld = type == WeightType::kFP4 ? cols / 2 : cols, w.row_end = rows, w.col_end = cols;
    if (type == WeightType::kFP8) {
      w.block_rows = w.block_cols = 128, w.scale_ld = cols / 128;
      t.scales.assign(w.scale_ld, 127);
    } else {
      w.block_cols = 32, w.scale_ld = cols / 32;
      t.scales.assign(rows * w.scale_ld, 127);
    }
    w.data = t.data.data(), w.scales = t.scales.data();
    for (int64_t m : {1, 12}) {
      std::vector<float> x(m * cols, 1.0f), y(m * rows);
      Linear(x.data(), m, cols, w, y.data(), rows);
      std::vector<float> row(cols);
      for (int64_t r = 0; r < rows; ++r) {
        DequantRow(w, r, row.data());
        double want = 0;
        for (float v : row) want += v;
        ASSERT_NE(want, 0.0);
        for (int64_t tok = 0; tok < m; ++tok) ASSERT_EQ(y[tok * rows + r], want) << Name(type) << " row " << r << " m " << m;
      }
    }
  }
}

// FP4 scales, on the AVX-512 levels, are folded into the decoded weights' exponents where every
// code of a pass of rows is at most 202 (2^75), and multiplied otherwise: the same products, so the
// same bits. Matrix A has codes 27..147 (2^-100 .. 2^20, the fast paths' range), but row 0 also
// takes 202 in some groups (products beyond the float range on every route: compared for bits
// only). B and C equal A but for one row each, which takes a code of 203 (the first that does not
// fold) or 255 (NaN) and sends its pass down the multiplying route. Every other row gives A's bits,
// at every token count (the streaming path's 1..4 rows at once and the blocked path); A's rows but
// row 0 stay within ExpectMatchesRef's tolerance of the plain loop; C's odd row is NaN (a code the
// fold took would lose the NaN).
TEST(FastLinear, Fp4FoldedScalesGiveTheMultipliedBits) {
  std::mt19937 rng(41);
  const int64_t rows = 128, cols = 2048 + 32;  // a tail of 32 columns after the last 128-column chunk
  TestWeight a = MakeWeight(WeightType::kFP4, rows, cols, rng);
  std::uniform_int_distribution<int> code(27, 147);
  for (auto& e : a.scales) e = static_cast<uint8_t>(code(rng));
  for (int64_t c = 0; c < a.w.scale_ld; c += 7) a.scales[c] = 202;
  const int64_t odd_row = 70;
  TestWeight b = a, c = a;
  b.w.data = b.data.data(), b.w.scales = b.scales.data();
  c.w.data = c.data.data(), c.w.scales = c.scales.data();
  b.scales[odd_row * a.w.scale_ld + 5] = 203;
  c.scales[odd_row * a.w.scale_ld + 9] = 255;
  WeightMatrix a_but_row0 = a.w;
  a_but_row0.row_begin = 1;
  std::normal_distribution<float> nd;
  for (int64_t m : {1, 2, 3, 4, 5, 16, 40}) {
    std::vector<float> x(m * cols);
    for (auto& v : x) v = nd(rng);
    std::vector<float> ya(m * rows), yb(m * rows), yc(m * rows);
    Linear(x.data(), m, cols, a.w, ya.data(), rows);
    Linear(x.data(), m, cols, b.w, yb.data(), rows);
    Linear(x.data(), m, cols, c.w, yc.data(), rows);
    ExpectMatchesRef(x.data(), m, cols, a_but_row0, ya.data() + 1, rows, "A, m " + std::to_string(m));
    for (int64_t t = 0; t < m; ++t) {
      EXPECT_TRUE(std::isnan(yc[t * rows + odd_row])) << "a NaN scale gives NaN, m " << m << " token " << t;
      for (int64_t r = 0; r < rows; ++r) {
        if (r == odd_row) continue;
        const uint32_t want = std::bit_cast<uint32_t>(ya[t * rows + r]);
        ASSERT_EQ(std::bit_cast<uint32_t>(yb[t * rows + r]), want) << "m " << m << " token " << t << " row " << r;
        ASSERT_EQ(std::bit_cast<uint32_t>(yc[t * rows + r]), want) << "m " << m << " token " << t << " row " << r;
      }
    }
    // Token 0 alone gives the batch's bits (but in row 0, whose products overflow in the streaming
    // path, which scales them by up to 2^50 more than the blocked one).
    std::vector<float> one(rows);
    Linear(x.data(), 1, cols, a.w, one.data(), rows);
    for (int64_t r = 1; r < rows; ++r)
      ASSERT_EQ(std::bit_cast<uint32_t>(one[r]), std::bit_cast<uint32_t>(ya[r])) << "m " << m << " row " << r;
  }
}

// Every thread that runs kernels computes with flush-to-zero and denormals-are-zero: the caller
// and each pool worker.
TEST(FloatMode, EveryComputingThreadFlushesDenormals) {
  std::vector<float> a(64, 1.f);
  (void)Dot(a.data(), a.data(), 64);
  std::vector<float> x(64, 1.f), y(4);
  TestWeight tw;
  std::mt19937 rng(5);
  tw = MakeWeight(WeightType::kF32, 4, 64, rng);
  Linear(x.data(), 1, 64, tw.w, y.data(), 4);
  EXPECT_TRUE(FlushesDenormals()) << "the calling thread";
  std::vector<int> ok(1000, 0);
  ParallelForDynamic(1000, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) ok[i] = FlushesDenormals() ? 1 : 0;
  });
  for (int v : ok) ASSERT_EQ(v, 1);
  // What the mode does: a subnormal operand reads as 0, a subnormal result becomes 0.
  volatile float tiny = std::numeric_limits<float>::denorm_min(), one = 1.f, small = 0x1p-70f;
  EXPECT_EQ(tiny * one, 0.f);
  EXPECT_EQ(small * small, 0.f);
}

// Large products (the model's shapes, scaled down) stay close to the plain loop.
TEST(FastLinear, ModelShapes) {
  std::mt19937 rng(17);
  for (auto [type, rows, cols, m] : {std::tuple{WeightType::kFP8, 512, 1024, 1}, {WeightType::kFP8, 256, 2048, 24},
                                     {WeightType::kFP4, 256, 2048, 1}, {WeightType::kFP4, 96, 1024, 48},
                                     {WeightType::kBF16, 300, 2048, 1}, {WeightType::kF32, 24, 4096, 3}}) {
    TestWeight tw = MakeWeight(type, rows, cols, rng);
    std::vector<float> x(m * cols);
    std::normal_distribution<float> nd;
    for (auto& v : x) v = nd(rng);
    std::vector<float> y(m * rows);
    Linear(x.data(), m, cols, tw.w, y.data(), rows);
    ExpectMatchesRef(x.data(), m, cols, tw.w, y.data(), rows, Name(type) + " model shape");
  }
}

TEST(FastLinear, CountsWork) {
  std::mt19937 rng(19);
  TestWeight tw = MakeWeight(WeightType::kFP8, 256, 512, rng);
  std::vector<float> x(2 * 512, 1.f), y(2 * 256);
  ResetWorkCounters();
  EnableWorkCounters(true);
  Linear(x.data(), 2, 512, tw.w, y.data(), 256);
  EnableWorkCounters(false);
  const WorkCounts c = ReadWorkCounters();
  EXPECT_EQ(c.weight_bytes, 256 * 512 + 2 * 4);
  EXPECT_EQ(c.flops, 2 * 2 * 256 * 512);
  Linear(x.data(), 2, 512, tw.w, y.data(), 256);
  EXPECT_EQ(ReadWorkCounters().flops, 2 * 2 * 256 * 512) << "counted while disabled";
}

// The rounding kernels against a plain loop over the formats' scalar rounding, bit for bit: values
// of every magnitude, exact ties, zeros of both signs, subnormals, infinities and NaN, short groups.
TEST(Qdq, VectorMatchesScalarBitForBit) {
  std::mt19937 rng(29);
  std::normal_distribution<float> nd;
  std::uniform_int_distribution<int> exp(-40, 20), pick(0, 30);
  for (bool fp4 : {false, true}) {
    for (int group : {32, 64, 128}) {
      for (int64_t n : {int64_t{7}, int64_t{64}, int64_t{200}, int64_t{1000}}) {
        const int64_t m = 3;
        std::vector<float> x(m * n);
        for (auto& v : x) {
          const int kind = pick(rng);
          v = std::ldexp(nd(rng), exp(rng));
          if (kind == 0) v = 0.f;
          if (kind == 1) v = -0.f;
          if (kind == 2) v = std::ldexp(1.5f, exp(rng));  // exact ties on many grids
          if (kind == 3) v = std::numeric_limits<float>::denorm_min() * pick(rng);
          if (kind == 4 && n == 200) v = std::numeric_limits<float>::infinity();
          if (kind == 5 && n == 1000) v = std::nanf("");
        }
        std::vector<float> want = x;
        const float fmt_max = fp4 ? 6.0f : 448.0f, floor = fp4 ? 6.0f * std::ldexp(1.0f, -126) : 1e-4f;
        for (int64_t t = 0; t < m; ++t)
          for (int64_t g = 0; g < n; g += group) {
            const int64_t len = std::min<int64_t>(group, n - g);
            float amax = 0.f;
            for (int64_t i = 0; i < len; ++i) amax = std::max(amax, std::fabs(want[t * n + g + i]));
            const float s = Pow2Ceil(std::max(amax, floor) * (1.0f / fmt_max));
            for (int64_t i = 0; i < len; ++i) {
              float& v = want[t * n + g + i];
              v = (fp4 ? RoundToFp4E2m1(v / s) : RoundToFp8E4m3(v / s)) * s;
            }
          }
        if (fp4) QdqFp4(x.data(), m, n, n, group);
        else QdqFp8(x.data(), m, n, n, group);
        for (int64_t i = 0; i < m * n; ++i)
          ASSERT_EQ(std::bit_cast<uint32_t>(x[i]), std::bit_cast<uint32_t>(want[i]))
              << (fp4 ? "fp4" : "fp8") << " group " << group << " n " << n << " element " << i << ": got " << x[i]
              << " want " << want[i];
      }
    }
  }
}

// Attention over gathered rows against the plain loop: head counts around the 4- and 16-head
// blocks, rows from all three segments with gaps, a query that sees nothing, sinks above and below
// every logit. 1e-5: float32 sums of up to 512 products in another order (about 1e-6 relative),
// amplified by the exponential of logits up to ~5, and a polynomial e^x (about 1 ulp).
TEST(FastAttention, MatchesPlainLoop) {
  std::mt19937 rng(31);
  std::normal_distribution<float> nd;
  for (auto [m, H, d, k] : {std::tuple{1, 64, 512, 40}, {3, 5, 48, 11}, {7, 18, 128, 23}, {2, 1, 16, 3}}) {
    std::vector<float> a(9 * d), b(m * d), c(30 * d), q(m * H * d), sink(H);
    for (auto* v : {&a, &b, &c, &q}) for (auto& x : *v) x = nd(rng);
    for (int64_t h = 0; h < H; ++h) sink[h] = h % 3 == 0 ? 30.f : nd(rng);
    KvSegments segs;
    segs.ptr[0] = a.data(), segs.len[0] = 9;
    segs.ptr[1] = b.data(), segs.len[1] = m;
    segs.ptr[2] = c.data(), segs.len[2] = 30;
    const int64_t total = 9 + m + 30;
    std::vector<int32_t> idx(m * k);
    for (int64_t t = 0; t < m; ++t)
      for (int64_t j = 0; j < k; ++j)
        idx[t * k + j] = (t == 1 || (j * 7 + t) % 5 == 0) ? -1 : static_cast<int32_t>((t * 13 + j * 3) % total);
    std::vector<float> out(m * H * d), want(m * H * d);
    SparseAttention(q.data(), m, H, d, segs, idx.data(), k, sink.data(), 0.05f, out.data());
    ref::SparseAttention(q.data(), m, H, d, segs, idx.data(), k, sink.data(), 0.05f, want.data());
    EXPECT_TRUE(AllClose("attention", out.data(), want.data(), out.size(), {.abs = 1e-5, .rel = 1e-5}))
        << "m " << m << " H " << H << " d " << d << " k " << k;
  }
}

// Indexer scores against the plain loop, with visibility limits inside and across key blocks.
TEST(FastIndexer, MatchesPlainLoop) {
  std::mt19937 rng(37);
  std::normal_distribution<float> nd;
  for (auto [m, H, d, n] : {std::tuple{1, 64, 128, 1000}, {4, 7, 64, 77}, {2, 3, 32, 5}}) {
    std::vector<float> q(m * H * d), w(m * H), keys(n * d);
    for (auto* v : {&q, &w, &keys}) for (auto& x : *v) x = nd(rng);
    std::vector<int64_t> nvis(m);
    for (int64_t t = 0; t < m; ++t) nvis[t] = std::min<int64_t>(n, (t * 37 + n / 2) % (n + 1));
    std::vector<float> s(m * n), want(m * n);
    IndexerScores(q.data(), w.data(), m, H, d, keys.data(), n, nvis.data(), s.data());
    ref::IndexerScores(q.data(), w.data(), m, H, d, keys.data(), n, nvis.data(), want.data());
    EXPECT_TRUE(AllClose("indexer", s.data(), want.data(), s.size(), {.abs = 1e-4, .rel = 1e-5}))
        << "m " << m << " H " << H << " d " << d << " n " << n;
  }
}

// The compressors' pooling against the plain loop: widths around the 8-channel vectors, one row
// and 2 x 128 rows, scores spread so the softmax is both flat and peaked. 1e-6: a polynomial e^x.
TEST(SoftmaxPool, MatchesPlainLoop) {
  std::mt19937 rng(41);
  std::normal_distribution<float> nd;
  for (auto [n, width] : {std::pair{1, 8}, {8, 512}, {256, 130}, {5, 3}}) {
    std::vector<float> v(n * width), sc(n * width);
    for (auto& x : v) x = nd(rng);
    for (int64_t i = 0; i < n * width; ++i) sc[i] = nd(rng) * (i % 2 ? 0.1f : 8.0f);
    std::vector<const float*> vp(n), sp(n);
    for (int64_t i = 0; i < n; ++i) vp[i] = &v[i * width], sp[i] = &sc[i * width];
    std::vector<float> out(width), want(width);
    SoftmaxPool(vp.data(), sp.data(), n, width, out.data());
    ref::SoftmaxPool(vp.data(), sp.data(), n, width, want.data());
    EXPECT_TRUE(AllClose("pool", out.data(), want.data(), width, {.abs = 1e-6, .rel = 1e-6})) << n << " x " << width;
  }
}

TEST(ThreadPool, DynamicCoversRangeOnce) {
  for (int64_t chunk : {1, 3, 64, 5000}) {
    std::vector<int> hits(1000, 0);
    ParallelForDynamic(1000, chunk, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) ++hits[i];
    });
    for (int h : hits) ASSERT_EQ(h, 1) << "chunk " << chunk;
  }
}

TEST(ThreadPool, ManyShortCallsAndNesting) {
  std::vector<int64_t> sum(NumThreads() * 16, 0);
  for (int it = 0; it < 2000; ++it) {
    ParallelFor(64, 1, [&](int64_t b, int64_t e) {
      // A nested call runs serially on this thread.
      ParallelFor(e - b, 1, [&](int64_t b2, int64_t e2) { sum[(b / 8) % sum.size()] += e2 - b2; });
    });
  }
  int64_t total = 0;
  for (int64_t s : sum) total += s;
  EXPECT_EQ(total, 64 * 2000);
}

TEST(Scratch, LifoZeroedAlignedAndReused) {
  const size_t before = ScratchArena::ForThisThread().capacity();
  for (int round = 0; round < 3; ++round) {
    Scratch<float> a(1000);
    for (float v : a) ASSERT_EQ(v, 0.f);
    EXPECT_EQ(reinterpret_cast<uintptr_t>(a.data()) % 64, 0u);
    a[999] = 5.f;
    {
      Scratch<int32_t> b(3 << 20, -1);  // bigger than the first block: a new one
      EXPECT_EQ(b[0], -1);
      EXPECT_EQ(b[(3 << 20) - 1], -1);
      Scratch<uint8_t> c(7);
      EXPECT_EQ(reinterpret_cast<uintptr_t>(c.data()) % 64, 0u);
    }
    EXPECT_EQ(a[999], 5.f);
  }
  const size_t after = ScratchArena::ForThisThread().capacity();
  EXPECT_GT(after, before);
  {
    Scratch<int32_t> b(3 << 20, NoInit{});
    (void)b;
  }
  EXPECT_EQ(ScratchArena::ForThisThread().capacity(), after) << "a second round must reuse the blocks";
}

}  // namespace
}  // namespace dsv4::kernels
