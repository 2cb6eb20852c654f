// The CUDA backend's host-side logic, on CPU (label `unit`, runs without CUDA or a GPU):
//  - the scalar device math (kernels/cuda/device_math.h is compiled here as plain C++) against
//    kernels/cpu/formats.h, the CPU kernels and the golden data, bit for bit where the CPU is exact;
//  - launch configurations: every grid within hardware limits for V4-Flash / V4-Pro shapes and
//    awkward ones, the grid covering every output;
//  - supported-shape checks (dispatch.h);
//  - memory planning: the arena, and weight-shard uploads replayed with memcpy and compared through
//    kernels::DequantRow.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/cpu/formats.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cuda/device_math.h"
#include "kernels/cuda/dispatch.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/memory_plan.h"
#include "tests/testutil.h"

namespace dsv4::kernels::cuda {
namespace {

using dsv4::testing::AllClose;

bool SameBits(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
}

// A spread of floats: every exponent, random mantissas, both signs, the format boundaries.
std::vector<float> AwkwardFloats() {
  std::vector<float> v = {0.0f, -0.0f, 448.0f, -448.0f, 464.0f, 480.0f, 1e30f, -1e30f, 6.0f, 5.0f, 7.0f, 2.5f, 3.5f,
                          0.25f, 0.75f, 1.25f, 1.75f, std::ldexp(1.0f, -9), std::ldexp(1.5f, -10), std::ldexp(1.0f, -6),
                          std::ldexp(0.9375f, -6), std::numeric_limits<float>::denorm_min(),
                          std::numeric_limits<float>::min(), std::numeric_limits<float>::infinity(),
                          -std::numeric_limits<float>::infinity()};
  std::mt19937 rng(7);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 20000; ++i) {
    const uint32_t u = bits(rng);
    const float f = std::bit_cast<float>(u);
    if (std::isfinite(f)) v.push_back(f);
  }
  std::normal_distribution<float> nd(0.f, 3.f);
  for (int i = 0; i < 20000; ++i) v.push_back(nd(rng));
  // Exact midpoints between neighbouring E4M3 values (ties to even).
  for (int c = 0; c < 126; ++c) v.push_back(0.5f * (Fp8E4m3ToFloat(c) + Fp8E4m3ToFloat(c + 1)));
  return v;
}

TEST(DeviceMath, DecodesMatchFormats) {
  for (int b = 0; b < 256; ++b) {
    EXPECT_TRUE(SameBits(DecodeFp8E4m3(static_cast<uint8_t>(b)), Fp8E4m3ToFloat(static_cast<uint8_t>(b)))) << b;
    EXPECT_TRUE(SameBits(DecodeE8m0(static_cast<uint8_t>(b)), E8m0ToFloat(static_cast<uint8_t>(b)))) << b;
  }
  for (int c = 0; c < 16; ++c) EXPECT_TRUE(SameBits(DecodeFp4E2m1(static_cast<uint8_t>(c)), kFp4E2m1[c])) << c;
  for (uint32_t v : {0u, 0x3f80u, 0xbf80u, 0x7f7fu, 0x0001u, 0x8001u, 0x7f80u, 0x4049u})
    EXPECT_TRUE(SameBits(DecodeBf16(static_cast<uint16_t>(v)), Bf16ToFloat(static_cast<uint16_t>(v)))) << v;
}

TEST(DeviceMath, RoundingBitExact) {
  for (float f : AwkwardFloats()) {
    ASSERT_TRUE(SameBits(RoundToFp8E4m3(f), kernels::RoundToFp8E4m3(f))) << "fp8 " << f;
    ASSERT_TRUE(SameBits(RoundToFp4E2m1(f), kernels::RoundToFp4E2m1(f))) << "fp4 " << f;
    if (std::isfinite(f) && f > std::numeric_limits<float>::min() && f < 1e37f) {
      ASSERT_TRUE(SameBits(Pow2Ceil(f), kernels::Pow2Ceil(f))) << f;
    }
  }
}

// The QDQ kernel's per-group algorithm (amax, QdqScale, QdqValue) replayed on the host.
void EmulateQdq(float* x, int64_t m, int64_t n, int64_t ld, int group, bool fp4) {
  for (int64_t t = 0; t < m; ++t)
    for (int64_t g = 0; g < n; g += group) {
      const int64_t end = std::min<int64_t>(n, g + group);
      float amax = 0.f;
      for (int64_t i = g; i < end; ++i) amax = std::fmax(amax, std::fabs(x[t * ld + i]));
      const float s = QdqScale(amax, fp4);
      for (int64_t i = g; i < end; ++i) x[t * ld + i] = QdqValue(x[t * ld + i], s, fp4);
    }
}

TEST(DeviceMath, QdqMatchesCpuKernel) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int64_t n : {1, 31, 64, 100, 448, 1000})
    for (int group : {16, 32, 64, 128})
      for (bool fp4 : {false, true}) {
        const int64_t m = 3, ld = n + 5;
        std::vector<float> x(m * ld);
        for (size_t i = 0; i < x.size(); ++i) x[i] = nd(rng) * std::exp2(static_cast<float>(i % 40) - 20.f);
        x[0] = 0.f;  // an all-small group exercises the amax floor
        std::vector<float> want = x, got = x;
        if (fp4) kernels::QdqFp4(want.data(), m, n, ld, group);
        else kernels::QdqFp8(want.data(), m, n, ld, group);
        EmulateQdq(got.data(), m, n, ld, group, fp4);
        for (size_t i = 0; i < x.size(); ++i) ASSERT_TRUE(SameBits(got[i], want[i])) << n << " " << group << " " << i;
      }
}

class GoldenDeviceMath : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!dsv4::testing::SharedAvailable()) GTEST_SKIP() << "shared/golden not found";
    auto f = SafetensorsFile::Open(dsv4::testing::SharedDir() + "/golden/v4-tiny/kernels.safetensors");
    ASSERT_TRUE(f.ok()) << f.status();
    f_ = std::move(*f);
  }
  std::unique_ptr<SafetensorsFile> f_;
};

TEST_F(GoldenDeviceMath, QdqBitExact) {
  for (auto [name, group, fp4] : {std::tuple{"qdq_e4m3_g64", 64, false}, std::tuple{"qdq_e4m3_g128", 128, false},
                                  std::tuple{"qdq_e2m1_g32", 32, true}}) {
    std::vector<float> x = dsv4::testing::ReadF32(*f_, std::string(name) + ".in");
    const std::vector<float> want = dsv4::testing::ReadF32(*f_, std::string(name) + ".out");
    const int64_t n = f_->tensors().at(std::string(name) + ".in").shape[1];
    EmulateQdq(x.data(), static_cast<int64_t>(x.size()) / n, n, n, group, fp4);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_TRUE(SameBits(x[i], want[i])) << name << " " << i;
  }
}

// 1e-5: the golden data came from float32 torch with another operation order.
TEST_F(GoldenDeviceMath, Sinkhorn) {
  const std::vector<float> mixes = dsv4::testing::ReadF32(*f_, "sinkhorn.mixes"),
                           scale = dsv4::testing::ReadF32(*f_, "sinkhorn.scale"),
                           base = dsv4::testing::ReadF32(*f_, "sinkhorn.base"),
                           pre = dsv4::testing::ReadF32(*f_, "sinkhorn.pre"),
                           post = dsv4::testing::ReadF32(*f_, "sinkhorn.post"),
                           comb = dsv4::testing::ReadF32(*f_, "sinkhorn.comb");
  const int hc = 4, mix = hc * (hc + 2);
  const int64_t tokens = static_cast<int64_t>(mixes.size()) / mix;
  std::vector<float> p(tokens * hc), q(tokens * hc), c(tokens * hc * hc);
  for (int64_t t = 0; t < tokens; ++t)
    SplitSinkhorn(&mixes[t * mix], scale.data(), base.data(), hc, 20, 1e-6f, &p[t * hc], &q[t * hc], &c[t * hc * hc]);
  EXPECT_TRUE(AllClose("pre", p.data(), pre.data(), p.size(), {.abs = 1e-5}));
  EXPECT_TRUE(AllClose("post", q.data(), post.data(), q.size(), {.abs = 1e-5}));
  EXPECT_TRUE(AllClose("comb", c.data(), comb.data(), c.size(), {.abs = 1e-5}));
}

TEST(DeviceMath, SinkhornMatchesCpuKernel) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 2.f);
  for (int hc = 1; hc <= kMaxHc; ++hc)
    for (int iters : {0, 1, 2, 20}) {
      const int mix = hc * (hc + 2);
      std::vector<float> mixes(mix), base(mix), scale3 = {0.7f, 1.3f, 0.9f};
      for (auto& v : mixes) v = nd(rng);
      for (auto& v : base) v = nd(rng);
      float p1[kMaxHc], q1[kMaxHc], c1[kMaxHc * kMaxHc], p2[kMaxHc], q2[kMaxHc], c2[kMaxHc * kMaxHc];
      SplitSinkhorn(mixes.data(), scale3.data(), base.data(), hc, iters, 1e-6f, p1, q1, c1);
      kernels::HcSplitSinkhorn(mixes.data(), scale3.data(), base.data(), hc, iters, 1e-6f, p2, q2, c2);
      // Same operations in the same order: identical.
      for (int i = 0; i < hc; ++i) EXPECT_TRUE(SameBits(p1[i], p2[i]) && SameBits(q1[i], q2[i])) << hc << " " << i;
      for (int i = 0; i < hc * hc; ++i) EXPECT_TRUE(SameBits(c1[i], c2[i])) << hc << " " << iters << " " << i;
    }
}

// Sorting by TopKKey gives kernels::TopK's order, ties and signed zeros included.
TEST(DeviceMath, TopKKeyOrderMatchesCpu) {
  std::mt19937 rng(11);
  std::uniform_int_distribution<int> small(-4, 4);
  for (int trial = 0; trial < 50; ++trial) {
    const int n = 1 + trial * 7;
    std::vector<float> x(n);
    for (auto& v : x) v = static_cast<float>(small(rng)) * 0.5f;
    for (int i = 0; i < n; i += 5) x[i] = (i % 10 == 0) ? -0.0f : 0.0f;
    if (n > 3) x[2] = -std::numeric_limits<float>::infinity();
    const int k = std::max(1, n / 3);
    std::vector<int32_t> want(k);
    kernels::TopK(x.data(), n, k, want.data());
    std::vector<uint64_t> keys(n);
    for (int i = 0; i < n; ++i) keys[i] = TopKKey(x[i], static_cast<uint32_t>(i));
    std::sort(keys.begin(), keys.end(), std::greater<>());
    for (int j = 0; j < k; ++j) ASSERT_EQ(static_cast<int32_t>(TopKKeyIndex(keys[j])), want[j]) << n << " " << j;
  }
}

// ---- launch configurations ------------------------------------------------------------------------

TEST(Launch, V4ShapesAreLaunchable) {
  // V4-Flash / V4-Pro sizes: hidden 4096 / 7168, heads 64 / 128 of 512, indexer 64 x 128, top-k
  // 512 / 1024, vocab 129280, experts 256 / 384, moe_intermediate 2048 / 3072; prefill up to 64K.
  for (int64_t m : {1, 2, 4, 5, 17, 4096, 65536}) {
    for (int64_t n_out : {1, 129280, 2 * 2048, 32768})
      EXPECT_TRUE(Launchable(LinearLaunch(m, n_out))) << m << " " << n_out;
    for (int64_t H : {1, 64, 128}) EXPECT_TRUE(Launchable(AttentionLaunch(m, H, 512))) << m << " " << H;
    EXPECT_TRUE(Launchable(IndexerLaunch(m, 64, 128, 262144)));
    EXPECT_TRUE(Launchable(TopKLaunch(m, 1024)));
    EXPECT_TRUE(Launchable(TopKLaunch(m, kMaxTopK)));
    EXPECT_TRUE(Launchable(RmsNormLaunch(m * 128, 512)));
    EXPECT_TRUE(Launchable(QdqLaunch(m * 64)));
    EXPECT_TRUE(Launchable(HadamardLaunch(m * 64, 128)));
    EXPECT_TRUE(Launchable(HcPreLaunch(m, 4)));
    EXPECT_TRUE(Launchable(HcPostLaunch(m, 7168)));
    EXPECT_TRUE(Launchable(ElementwiseLaunch(m * 128 * 32)));
    EXPECT_TRUE(Launchable(GroupedLinearLaunch(m, 3072, 384)));
    EXPECT_TRUE(Launchable(CompressLaunch(m / 4 + 1, 512)));
    EXPECT_TRUE(Launchable(GatherLaunch(m * 24)));
    EXPECT_TRUE(Launchable(CombineLaunch(m, 7168)));
    EXPECT_TRUE(Launchable(HcHeadLaunch(m, 4)));
    EXPECT_TRUE(Launchable(EmbedLaunch(m, 7168)));
  }
  EXPECT_TRUE(Launchable(HadamardLaunch(1, 8192)));
  EXPECT_FALSE(Launchable(LaunchConfig{{1, 1, 1}, {1025, 1, 1}, 0}));
  EXPECT_FALSE(Launchable(LaunchConfig{{1, 65536, 1}, {32, 1, 1}, 0}));
  EXPECT_FALSE(Launchable(LaunchConfig{{1, 1, 1}, {48, 1, 1}, 0}));  // not whole warps
  EXPECT_FALSE(Launchable(LaunchConfig{{1, 1, 1}, {32, 1, 1}, kSmemNoOptIn + 1}));
}

// The grids cover every output: blocks x (work per block) reach every row / column / key.
TEST(Launch, GridsCoverOutputs) {
  for (int64_t m : {1, 3, 4, 5, 31, 33, 97})
    for (int64_t n : {1, 7, 63, 64, 65, 1000}) {
      const LaunchConfig c = LinearLaunch(m, n);
      if (ChooseGemm(m) == GemmKind::kGemv) {
        EXPECT_EQ(c.block.x, kGemvWarps * kWarpSize);
        EXPECT_GE(c.grid.x * kGemvWarps, n);
        EXPECT_LT((c.grid.x - 1) * kGemvWarps, n);  // no block entirely idle
      } else {
        EXPECT_GE(c.grid.x * kTileN, n);
        EXPECT_GE(c.grid.y * kTileM, m);
        EXPECT_LT((c.grid.y - 1) * kTileM, m);
        EXPECT_EQ(c.block.x, kTileThreads);
      }
      const LaunchConfig g = GroupedLinearLaunch(m, n, 5);
      EXPECT_EQ(g.grid.z, 5);
      EXPECT_GE(g.grid.y * kTileM, m);
    }
  EXPECT_EQ(ChooseGemm(kGemvMaxTokens), GemmKind::kGemv);
  EXPECT_EQ(ChooseGemm(kGemvMaxTokens + 1), GemmKind::kTiled);
  for (int64_t H : {1, 3, 4, 5, 64, 127}) EXPECT_GE(AttentionLaunch(2, H, 512).grid.y * kAttnHeadsPerBlock, H);
  for (int64_t n : {1, 63, 64, 65, 1000}) EXPECT_GE(IndexerLaunch(2, 8, 16, n).grid.y * kIndexerKeysPerBlock, n);
  for (int64_t D : {1, 255, 256, 257, 4096}) {
    EXPECT_GE(HcPostLaunch(3, D).grid.y * kHcPostThreads, D);
    EXPECT_GE(CombineLaunch(3, D).grid.y * kCombineThreads, D);
    EXPECT_GE(EmbedLaunch(3, D).grid.y * kEmbedThreads, D);
    EXPECT_GE(CompressLaunch(3, D).grid.y * kCompressThreads, D);
  }
  // Element-wise launches are grid-stride: fewer blocks than elements is fine, zero is not.
  EXPECT_GE(ElementwiseLaunch(1).grid.x, 1);
  EXPECT_EQ(ElementwiseLaunch(int64_t{1} << 40).grid.x, kElementwiseMaxBlocks);
}

TEST(Launch, SharedMemorySizing) {
  // Attention: queries of 4 heads, 4 x 64 logits, 64 row ids.
  EXPECT_EQ(AttentionLaunch(1, 64, 512).smem_bytes, (4 * 512 + 4 * 64) * 4 + 64 * 4);
  EXPECT_EQ(IndexerSmemBytes(64, 128), (64 * 129 + 64) * 4);
  EXPECT_LE(IndexerSmemBytes(64, 128), kSmemNoOptIn);
  EXPECT_EQ(HadamardLaunch(1, 128).smem_bytes, 128 * 4);
  EXPECT_EQ(HadamardLaunch(1, 128).block.x, 64);
  EXPECT_EQ(HadamardLaunch(1, 4).block.x, 32);
  EXPECT_EQ(HcPreLaunch(1, 4).smem_bytes, (kHcPreThreads / 32) * 25 * 4);
  EXPECT_EQ(HcHeadLaunch(1, 4).smem_bytes, (kHcHeadThreads / 32) * 5 * 4);
  for (int64_t k : {1, 2, 3, 6, 512, 513, 1024, 2048}) {
    const int64_t p = TopKSortSize(k);
    EXPECT_GE(p, k);
    EXPECT_EQ(p & (p - 1), 0);
    EXPECT_LT(p / 2, k);
    EXPECT_EQ(TopKLaunch(1, k).smem_bytes, p * 8);
  }
  EXPECT_EQ(RmsNormLaunch(1, 7).block.x, 32);
  EXPECT_EQ(RmsNormLaunch(1, 4096).block.x, 256);
}

TEST(Launch, GraphBuckets) {
  EXPECT_EQ(GraphBuckets(1), (std::vector<int64_t>{1}));
  EXPECT_EQ(GraphBuckets(4), (std::vector<int64_t>{1, 2, 4}));
  EXPECT_EQ(GraphBuckets(20), (std::vector<int64_t>{1, 2, 4, 8, 16, 20}));
  EXPECT_EQ(GraphBuckets(24), (std::vector<int64_t>{1, 2, 4, 8, 16, 24}));
  const auto b = GraphBuckets(64);
  EXPECT_TRUE(std::is_sorted(b.begin(), b.end()));
  EXPECT_EQ(PickGraphBucket(b, 1), 1);
  EXPECT_EQ(PickGraphBucket(b, 3), 4);
  EXPECT_EQ(PickGraphBucket(b, 9), 16);
  EXPECT_EQ(PickGraphBucket(b, 64), 64);
  EXPECT_EQ(PickGraphBucket(b, 65), -1);
}

// ---- supported shapes ------------------------------------------------------------------------------

TEST(Dispatch, SupportedShapes) {
  EXPECT_EQ(CheckHadamard(128), nullptr);
  EXPECT_NE(CheckHadamard(96), nullptr);
  EXPECT_NE(CheckHadamard(16384), nullptr);
  EXPECT_EQ(CheckHc(4), nullptr);
  EXPECT_NE(CheckHc(5), nullptr);
  EXPECT_NE(CheckHc(0), nullptr);
  for (int64_t d : {1, 7, 64, 128, 129, 200, 256, 257, 448, 512}) EXPECT_EQ(CheckAttention(64, d, 640), nullptr) << d;
  EXPECT_NE(CheckAttention(64, 513, 1), nullptr);
  EXPECT_EQ(AttnDimsPerThread(128), 1);
  EXPECT_EQ(AttnDimsPerThread(129), 2);
  EXPECT_EQ(AttnDimsPerThread(257), 4);
  EXPECT_EQ(AttnDimsPerThread(513), 0);
  EXPECT_EQ(CheckIndexer(64, 128), nullptr);
  EXPECT_NE(CheckIndexer(128, 128), nullptr);  // 66 KB of queries: past the no-opt-in limit
  EXPECT_EQ(CheckTopK(262144, 2048), nullptr);
  EXPECT_NE(CheckTopK(262144, 2049), nullptr);
  EXPECT_NE(CheckTopK(5, 6), nullptr);
  EXPECT_EQ(CheckQdq(100, 100, 7), nullptr);
  EXPECT_NE(CheckQdq(100, 99, 32), nullptr);
  EXPECT_NE(CheckQdq(100, 100, 0), nullptr);

  uint8_t bytes[64] = {}, scales[8] = {};
  WeightMatrix w{.type = WeightType::kFP8, .data = bytes, .scales = scales, .ld = 8, .scale_ld = 1,
                 .block_rows = 8, .block_cols = 8, .row_begin = 0, .row_end = 8, .col_begin = 0, .col_end = 8};
  EXPECT_EQ(CheckWeight(w), nullptr);
  EXPECT_EQ(CheckLinear(3, w, 8, 8), nullptr);
  EXPECT_NE(CheckLinear(3, w, 7, 8), nullptr);
  WeightMatrix fp4 = w;
  fp4.type = WeightType::kFP4, fp4.ld = 4, fp4.block_rows = 1, fp4.block_cols = 4, fp4.scale_ld = 2;
  EXPECT_EQ(CheckWeight(fp4), nullptr);
  fp4.block_cols = 3;
  EXPECT_NE(CheckWeight(fp4), nullptr);
  WeightMatrix none = w;
  none.scales = nullptr;
  EXPECT_NE(CheckWeight(none), nullptr);
  none = w;
  none.row_end = 0;
  EXPECT_NE(CheckWeight(none), nullptr);
}

// ---- memory planning -------------------------------------------------------------------------------

TEST(Arena, AlignsBoundsAndResets) {
  Arena a(1000);
  EXPECT_EQ(a.Allocate(10), 0);
  EXPECT_EQ(a.Allocate(10), 256);
  EXPECT_EQ(a.Allocate(1, 4), 268);
  const int64_t mark = a.used();
  EXPECT_EQ(a.Allocate(700), -1);  // 512 + 700 > 1000
  EXPECT_EQ(a.used(), mark);       // a failed allocation changes nothing
  EXPECT_EQ(a.Allocate(488), 512);
  EXPECT_EQ(a.used(), 1000);
  EXPECT_EQ(a.Allocate(0, 1), 1000);
  EXPECT_EQ(a.Allocate(1, 1), -1);
  a.Reset(mark);
  EXPECT_EQ(a.used(), mark);
  EXPECT_EQ(a.high_water(), 1000);
  EXPECT_EQ(a.Allocate(1, 3), -1);  // not a power of two
  EXPECT_EQ(a.Allocate(-1), -1);
}

// Replays a plan with memcpy (what cudaMemcpy2DAsync does) and checks the rebased view dequantizes
// to the same rows as the original view.
void CheckUpload(const WeightMatrix& w, const std::string& what) {
  ASSERT_EQ(CheckWeight(w), nullptr) << what;
  const WeightUploadPlan p = PlanWeightUpload(w);
  std::vector<uint8_t> data(p.data.bytes()), scales(p.scales.bytes());
  for (int64_t r = 0; r < p.data.rows; ++r)
    std::memcpy(&data[r * p.data.row_bytes],
                static_cast<const uint8_t*>(w.data) + p.data.src_offset + r * p.data.src_pitch, p.data.row_bytes);
  for (int64_t r = 0; r < p.scales.rows; ++r)
    std::memcpy(&scales[r * p.scales.row_bytes], w.scales + p.scales.src_offset + r * p.scales.src_pitch,
                p.scales.row_bytes);
  WeightMatrix d = p.view;
  d.data = data.data();
  d.scales = scales.empty() ? nullptr : scales.data();
  ASSERT_EQ(d.rows(), w.rows()) << what;
  ASSERT_EQ(d.cols(), w.cols()) << what;
  std::vector<float> a(w.cols()), b(w.cols());
  for (int64_t r = 0; r < w.rows(); ++r) {
    DequantRow(w, r, a.data());
    DequantRow(d, r, b.data());
    for (int64_t c = 0; c < w.cols(); ++c) ASSERT_TRUE(SameBits(a[c], b[c])) << what << " row " << r << " col " << c;
  }
}

TEST(WeightUpload, ShardsDequantizeIdentically) {
  std::mt19937 rng(13);
  std::uniform_int_distribution<int> byte(0, 255), exp_byte(120, 134);
  const int64_t R = 300, C = 520;  // not multiples of the 128 blocks
  std::vector<uint8_t> fp8(R * C), fp8_scales(3 * 5), fp4(R * C / 2), fp4_scales(R * 17);
  std::vector<uint16_t> bf16(R * C);
  std::vector<float> f32(R * C);
  for (auto& v : fp8) v = static_cast<uint8_t>(byte(rng) & 0x7e);  // no NaN codes
  for (auto& v : fp8_scales) v = static_cast<uint8_t>(exp_byte(rng));
  for (auto& v : fp4) v = static_cast<uint8_t>(byte(rng));
  for (auto& v : fp4_scales) v = static_cast<uint8_t>(exp_byte(rng));
  for (auto& v : bf16) v = static_cast<uint16_t>(0x3f00 + byte(rng));
  for (auto& v : f32) v = static_cast<float>(byte(rng)) - 128.f;
  struct Range {
    int64_t r0, r1, c0, c1;
  };
  for (Range s : {Range{0, R, 0, C}, Range{75, 150, 0, C}, Range{130, 299, 0, C}, Range{0, R, 130, 390},
                  Range{1, 2, 0, 1}, Range{129, 257, 127, 129}, Range{299, 300, 519, 520}, Range{0, R, 33, 95}}) {
    const std::string tag = std::to_string(s.r0) + ":" + std::to_string(s.r1) + " x " + std::to_string(s.c0) + ":" +
                            std::to_string(s.c1);
    CheckUpload({.type = WeightType::kFP8, .data = fp8.data(), .scales = fp8_scales.data(), .ld = C, .scale_ld = 5,
                 .block_rows = 128, .block_cols = 128, .row_begin = s.r0, .row_end = s.r1, .col_begin = s.c0,
                 .col_end = s.c1},
                "fp8 " + tag);
    CheckUpload({.type = WeightType::kFP4, .data = fp4.data(), .scales = fp4_scales.data(), .ld = C / 2,
                 .scale_ld = 17, .block_rows = 1, .block_cols = 32, .row_begin = s.r0, .row_end = s.r1,
                 .col_begin = s.c0, .col_end = s.c1},
                "fp4 " + tag);
    CheckUpload({.type = WeightType::kBF16, .data = bf16.data(), .ld = C, .row_begin = s.r0, .row_end = s.r1,
                 .col_begin = s.c0, .col_end = s.c1},
                "bf16 " + tag);
    CheckUpload({.type = WeightType::kF32, .data = f32.data(), .ld = C, .row_begin = s.r0, .row_end = s.r1,
                 .col_begin = s.c0, .col_end = s.c1},
                "f32 " + tag);
  }
  // A row shard copies only its rows (plus the start of its first scale block for FP8).
  const WeightUploadPlan p = PlanWeightUpload({.type = WeightType::kFP8, .data = fp8.data(),
                                               .scales = fp8_scales.data(), .ld = C, .scale_ld = 5, .block_rows = 128,
                                               .block_cols = 128, .row_begin = 150, .row_end = 300, .col_begin = 0,
                                               .col_end = C});
  EXPECT_EQ(p.data.rows, 300 - 128);
  EXPECT_EQ(p.scales.rows, 2);
  EXPECT_EQ(p.view.row_begin, 22);
}

}  // namespace
}  // namespace dsv4::kernels::cuda
