// CPU kernels against the reference's own outputs (shared/golden/v4-tiny/kernels.safetensors) and
// against plain loops.
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/cpu/formats.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/thread_pool.h"
#include "runtime/model/model.h"
#include "tests/testutil.h"

namespace dsv4::kernels {
namespace {

using dsv4::testing::AllClose;
using dsv4::testing::ReadF32;
using dsv4::testing::ReadI64;

// ctest runs this binary once per instruction-set level (DSV4_CPU_ISA); a level the CPU lacks skips.
[[maybe_unused]] ::testing::Environment* const kIsaEnvironment =
    ::testing::AddGlobalTestEnvironment(new dsv4::testing::IsaEnvironment);

class GoldenKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!dsv4::testing::SharedAvailable()) GTEST_SKIP() << "shared/golden not found";
    auto f = SafetensorsFile::Open(dsv4::testing::SharedDir() + "/golden/v4-tiny/kernels.safetensors");
    ASSERT_TRUE(f.ok()) << f.status();
    f_ = std::move(*f);
  }
  std::unique_ptr<SafetensorsFile> f_;
};

// The rounding must match bit for bit (tolerance 0).
TEST_F(GoldenKernels, QdqBitExact) {
  struct {
    const char* name;
    int group;
    bool fp4;
  } cases[] = {{"qdq_e4m3_g64", 64, false}, {"qdq_e4m3_g128", 128, false}, {"qdq_e2m1_g32", 32, true}};
  for (const auto& c : cases) {
    std::vector<float> x = ReadF32(*f_, std::string(c.name) + ".in");
    const std::vector<float> want = ReadF32(*f_, std::string(c.name) + ".out");
    const int64_t n = f_->tensors().at(std::string(c.name) + ".in").shape[1];
    const int64_t m = static_cast<int64_t>(x.size()) / n;
    if (c.fp4) QdqFp4(x.data(), m, n, n, c.group);
    else QdqFp8(x.data(), m, n, n, c.group);
    for (size_t i = 0; i < x.size(); ++i)
      ASSERT_EQ(std::bit_cast<uint32_t>(x[i]), std::bit_cast<uint32_t>(want[i]))
          << c.name << " element " << i << ": got " << x[i] << " want " << want[i];
  }
}

// 1e-5: the reference computed these in float32 with another summation order.
TEST_F(GoldenKernels, Hadamard) {
  for (int n : {64, 128}) {
    const std::string name = "hadamard_" + std::to_string(n);
    std::vector<float> x = ReadF32(*f_, name + ".in");
    const std::vector<float> want = ReadF32(*f_, name + ".out");
    for (size_t r = 0; r < x.size() / n; ++r) Hadamard(&x[r * n], n, 1.0f / std::sqrt(static_cast<float>(n)));
    EXPECT_TRUE(AllClose(name, x.data(), want.data(), x.size(), {.abs = 1e-5}));
  }
}

TEST_F(GoldenKernels, Sinkhorn) {
  const std::vector<float> mixes = ReadF32(*f_, "sinkhorn.mixes"), base = ReadF32(*f_, "sinkhorn.base"),
                           scale = ReadF32(*f_, "sinkhorn.scale"), pre = ReadF32(*f_, "sinkhorn.pre"),
                           post = ReadF32(*f_, "sinkhorn.post"), comb = ReadF32(*f_, "sinkhorn.comb");
  const int64_t n = static_cast<int64_t>(mixes.size()) / 24;
  std::vector<float> gp(n * 4), gq(n * 4), gc(n * 16);
  for (int64_t t = 0; t < n; ++t)
    HcSplitSinkhorn(&mixes[t * 24], scale.data(), base.data(), 4, 20, 1e-6f, &gp[t * 4], &gq[t * 4], &gc[t * 16]);
  EXPECT_TRUE(AllClose("pre", gp.data(), pre.data(), gp.size(), {.abs = 1e-5}));
  EXPECT_TRUE(AllClose("post", gq.data(), post.data(), gq.size(), {.abs = 1e-5}));
  EXPECT_TRUE(AllClose("comb", gc.data(), comb.data(), gc.size(), {.abs = 1e-5}));
}

TEST_F(GoldenKernels, SparseAttention) {
  const std::vector<float> q = ReadF32(*f_, "sparse_attn.q"), kv = ReadF32(*f_, "sparse_attn.kv"),
                           sink = ReadF32(*f_, "sparse_attn.sink"), want = ReadF32(*f_, "sparse_attn.out");
  const std::vector<int64_t> idx64 = ReadI64(*f_, "sparse_attn.idx");
  const float scale = ReadF32(*f_, "sparse_attn.scale")[0];
  const auto& qs = f_->tensors().at("sparse_attn.q").shape;  // [1, m, H, d]
  const int64_t m = qs[1], H = qs[2], d = qs[3], k = f_->tensors().at("sparse_attn.idx").shape[2];
  std::vector<int32_t> idx(idx64.begin(), idx64.end());
  KvSegments segs;
  segs.ptr[0] = kv.data(), segs.len[0] = static_cast<int64_t>(kv.size()) / d;
  std::vector<float> out(m * H * d), out_ref(m * H * d);
  SparseAttention(q.data(), m, H, d, segs, idx.data(), k, sink.data(), scale, out.data());
  ref::SparseAttention(q.data(), m, H, d, segs, idx.data(), k, sink.data(), scale, out_ref.data());
  EXPECT_TRUE(AllClose("sparse_attn", out.data(), want.data(), out.size(), {.abs = 1e-5}));
  EXPECT_TRUE(AllClose("sparse_attn ref", out_ref.data(), want.data(), out.size(), {.abs = 1e-5}));
}

// The rotary tables: the reference builds them in float32 (README: up to 3e-5 from float64).
TEST_F(GoldenKernels, RopeTables) {
  for (bool compressed : {false, true}) {
    const std::string p = compressed ? "rope_compressed" : "rope_window";
    const std::vector<float> cos = ReadF32(*f_, p + ".cos"), sin = ReadF32(*f_, p + ".sin");
    const dsv4::Rope rope = compressed ? dsv4::Rope(64, 160000, 65536, 16, 32, 1) : dsv4::Rope(64, 10000, 0, 1, 32, 1);
    std::vector<float> gc(cos.size()), gs(sin.size());
    for (int64_t pos = 0; pos < static_cast<int64_t>(cos.size()) / 32; ++pos) rope.CosSin(pos, &gc[pos * 32], &gs[pos * 32]);
    EXPECT_TRUE(AllClose(p + ".cos", gc.data(), cos.data(), cos.size(), {.abs = 3e-5}));
    EXPECT_TRUE(AllClose(p + ".sin", gs.data(), sin.data(), sin.size(), {.abs = 3e-5}));
  }
}

// Formats: every E4M3 code decodes to a value that RoundToFp8E4m3 keeps fixed.
TEST(Formats, Fp8RoundTrip) {
  for (int b = 0; b < 256; ++b) {
    const float v = Fp8E4m3ToFloat(static_cast<uint8_t>(b));
    if (std::isnan(v)) continue;
    EXPECT_EQ(RoundToFp8E4m3(v), v) << "code " << b;
  }
  EXPECT_EQ(RoundToFp8E4m3(1000.f), 448.f);
  EXPECT_EQ(RoundToFp8E4m3(-1000.f), -448.f);
  EXPECT_EQ(RoundToFp8E4m3(1.0625f), 1.0f);   // tie between 1 and 1.125: even mantissa
  EXPECT_EQ(RoundToFp8E4m3(1.1875f), 1.25f);  // tie between 1.125 and 1.25: even mantissa
  EXPECT_EQ(RoundToFp4E2m1(2.5f), 2.f);
  EXPECT_EQ(RoundToFp4E2m1(3.5f), 4.f);
  EXPECT_EQ(RoundToFp4E2m1(5.f), 4.f);
  EXPECT_EQ(RoundToFp4E2m1(0.25f), 0.f);
  EXPECT_EQ(RoundToFp4E2m1(0.75f), 1.f);
  EXPECT_EQ(RoundToFp4E2m1(7.f), 6.f);
}

// Linear against the plain loop for every weight format, awkward shapes and a column/row view.
// Tolerance: float32 sums of up to 300 products in another order, relative 1e-5 of the row scale.
TEST(Linear, MatchesPlainLoopAllFormats) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> nd;
  for (WeightType type : {WeightType::kF32, WeightType::kBF16, WeightType::kFP8, WeightType::kFP4}) {
    for (auto [m, rows, cols] : {std::tuple{1, 17, 96}, {5, 130, 288}, {3, 1, 32}}) {
      const int64_t ld = type == WeightType::kFP4 ? cols / 2 : cols;
      const int64_t bytes_per = type == WeightType::kF32 ? 4 : type == WeightType::kBF16 ? 2 : 1;
      std::vector<uint8_t> data(rows * ld * bytes_per);
      if (type == WeightType::kF32) {
        for (int64_t i = 0; i < rows * cols; ++i) reinterpret_cast<float*>(data.data())[i] = nd(rng);
      } else if (type == WeightType::kBF16) {
        for (int64_t i = 0; i < rows * cols; ++i) reinterpret_cast<uint16_t*>(data.data())[i] = FloatToBf16(nd(rng));
      } else {
        for (auto& b : data) b = static_cast<uint8_t>(byte(rng) & (type == WeightType::kFP8 ? 0x77 : 0xff));
      }
      WeightMatrix w;
      w.type = type, w.data = data.data(), w.ld = ld, w.row_end = rows, w.col_end = cols;
      std::vector<uint8_t> scales;
      if (type == WeightType::kFP8) {
        w.block_rows = w.block_cols = 128, w.scale_ld = (cols + 127) / 128;
        scales.resize(((rows + 127) / 128) * w.scale_ld);
      } else if (type == WeightType::kFP4) {
        w.block_cols = 32, w.scale_ld = cols / 32;
        scales.resize(rows * w.scale_ld);
      }
      for (auto& s : scales) s = static_cast<uint8_t>(120 + byte(rng) % 10);
      w.scales = scales.data();
      std::vector<float> x(m * cols);
      for (auto& v : x) v = nd(rng);
      for (int view = 0; view < 2; ++view) {
        WeightMatrix wv = w;
        if (view == 1 && rows > 2 && cols >= 64) wv.row_begin = 1, wv.row_end = rows - 1, wv.col_begin = 32;
        std::vector<float> y(m * wv.rows()), y_ref(m * wv.rows());
        Linear(x.data() + wv.col_begin, m, cols, wv, y.data(), wv.rows());
        ref::Linear(x.data() + wv.col_begin, m, cols, wv, y_ref.data(), wv.rows());
        double scale = 0;
        for (float v : y_ref) scale = std::max(scale, static_cast<double>(std::fabs(v)));
        EXPECT_TRUE(AllClose("linear", y.data(), y_ref.data(), y.size(), {.abs = 1e-5 * (scale + 1), .rel = 1e-5}))
            << "type " << static_cast<int>(type) << " m " << m << " rows " << rows << " cols " << cols << " view "
            << view;
      }
    }
  }
}

TEST(SparseAttention, MatchesPlainLoopWithSegments) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd;
  const int64_t m = 7, H = 3, d = 40, k = 11;
  std::vector<float> a(5 * d), b(9 * d), c(4 * d), q(m * H * d), sink(H);
  for (auto* v : {&a, &b, &c, &q, &sink})
    for (auto& x : *v) x = nd(rng);
  KvSegments segs;
  segs.ptr[0] = a.data(), segs.len[0] = 5;
  segs.ptr[1] = b.data(), segs.len[1] = 9;
  segs.ptr[2] = c.data(), segs.len[2] = 4;
  std::vector<int32_t> idx(m * k);
  for (int64_t t = 0; t < m; ++t)
    for (int64_t j = 0; j < k; ++j) idx[t * k + j] = (t == 2) ? -1 : static_cast<int32_t>((t * 5 + j * 3) % 19) - 1;
  std::vector<float> out(m * H * d), out_ref(m * H * d);
  SparseAttention(q.data(), m, H, d, segs, idx.data(), k, sink.data(), 0.15f, out.data());
  ref::SparseAttention(q.data(), m, H, d, segs, idx.data(), k, sink.data(), 0.15f, out_ref.data());
  EXPECT_TRUE(AllClose("sparse attention", out.data(), out_ref.data(), out.size(), {.abs = 1e-5}));
  for (int64_t i = 2 * H * d; i < 3 * H * d; ++i) EXPECT_EQ(out[i], 0.f) << "query with no visible rows";
}

TEST(IndexerScores, MatchesPlainLoop) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd;
  const int64_t m = 6, H = 5, d = 32, n = 13;
  std::vector<float> q(m * H * d), w(m * H), keys(n * d);
  for (auto* v : {&q, &w, &keys})
    for (auto& x : *v) x = nd(rng);
  std::vector<int64_t> nvis = {0, 1, 5, 13, 7, 2};
  std::vector<float> s(m * n), s_ref(m * n);
  IndexerScores(q.data(), w.data(), m, H, d, keys.data(), n, nvis.data(), s.data());
  ref::IndexerScores(q.data(), w.data(), m, H, d, keys.data(), n, nvis.data(), s_ref.data());
  EXPECT_TRUE(AllClose("indexer scores", s.data(), s_ref.data(), s.size(), {.abs = 1e-4, .rel = 1e-5}));
}

TEST(TopK, OrderAndTies) {
  const float x[] = {1, 5, 3, 5, -INFINITY, 2};
  int32_t idx[4];
  TopK(x, 6, 4, idx);
  EXPECT_EQ(idx[0], 1);
  EXPECT_EQ(idx[1], 3);
  EXPECT_EQ(idx[2], 2);
  EXPECT_EQ(idx[3], 5);
}

TEST(ThreadPool, CoversRangeOnce) {
  std::vector<int> hits(1000, 0);
  ParallelFor(1000, 1, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) ++hits[i];
  });
  for (int h : hits) EXPECT_EQ(h, 1);
}

}  // namespace
}  // namespace dsv4::kernels
