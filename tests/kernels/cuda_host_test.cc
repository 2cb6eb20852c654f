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
#include <array>
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
#include "kernels/cuda/mma_model.h"
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

// The E4M3-scaled FP4 groups of V4.1's compressed KV: the device's scale and rounding replayed on
// the host give kernels::QdqFp4E4m3 bit for bit, values from 2^-20 (under the scale's floor) up.
TEST(DeviceMath, QdqFp4E4m3MatchesCpuKernel) {
  std::mt19937 rng(4);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int64_t n : {1, 15, 16, 64, 100})
    for (int group : {16, 32}) {
      const int64_t m = 3, ld = n + 3;
      std::vector<float> x(m * ld);
      for (size_t i = 0; i < x.size(); ++i) x[i] = nd(rng) * std::exp2(static_cast<float>(i % 40) - 20.f);
      std::vector<float> want = x, got = x;
      kernels::QdqFp4E4m3(want.data(), m, n, ld, group);
      for (int64_t t = 0; t < m; ++t)
        for (int64_t g = 0; g < n; g += group) {
          const int64_t end = std::min<int64_t>(g + group, n);
          float amax = 0.f;
          for (int64_t i = g; i < end; ++i) amax = std::max(amax, std::fabs(got[t * ld + i]));
          const float scale = QdqScaleFp4E4m3(amax);
          for (int64_t i = g; i < end; ++i) got[t * ld + i] = QdqValue(got[t * ld + i], scale, true);
        }
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
    EXPECT_TRUE(Launchable(TopKFastLaunch(m)));
    EXPECT_TRUE(Launchable(RmsNormLaunch(m * 128, 512)));
    EXPECT_TRUE(Launchable(QdqLaunch(m * 64)));
    EXPECT_TRUE(Launchable(HadamardLaunch(m * 64, 128)));
    EXPECT_TRUE(Launchable(HcPreLaunch(m, 4)));
    EXPECT_TRUE(Launchable(HcPostLaunch(m, 7168)));
    EXPECT_TRUE(Launchable(ElementwiseLaunch(m * 128 * 32)));
    EXPECT_TRUE(Launchable(GroupedLinearLaunch(m, 3072, 384)));
    for (int64_t rows : {int64_t{1}, int64_t{3072}, int64_t{129280}})
      for (int64_t groups : {int64_t{1}, int64_t{384}}) {
        const SkinnyPlan p = PlanSkinny(m, rows, 7168, groups, {90, 132}, groups == 1);
        EXPECT_TRUE(Launchable(p.launch)) << m << " " << rows << " " << groups;
        EXPECT_TRUE(Launchable(SplitReduceLaunch(m, rows)));
      }
    EXPECT_TRUE(Launchable(Fp8GemmLaunch(m, 129280), 99 * 1024));  // sm_89's opt-in limit (sm_90: 227 KiB)
    EXPECT_TRUE(Launchable(Fp8QuantLaunch(m, 7168)));
    for (int64_t H : {1, 8, 64, 128}) {
      const AttentionPlan p = PlanAttention(m, H, 512, 2048, {90, 132}, true, true);
      EXPECT_TRUE(p.fused && Launchable(p.launch)) << m << " " << H;
      EXPECT_TRUE(Launchable(AttentionCombineLaunch(m, H)));
    }
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

// Size classes: exact to 256 bytes up to 1 MiB, then eighths of the power of two, never wasting
// more than an eighth.
TEST(BlockCache, SizeClasses) {
  EXPECT_EQ(BlockCache::SizeClass(0), 256);
  EXPECT_EQ(BlockCache::SizeClass(1), 256);
  EXPECT_EQ(BlockCache::SizeClass(256), 256);
  EXPECT_EQ(BlockCache::SizeClass(257), 512);
  EXPECT_EQ(BlockCache::SizeClass(1 << 20), 1 << 20);
  EXPECT_EQ(BlockCache::SizeClass((1 << 20) + 1), (1 << 20) + (1 << 17));
  EXPECT_EQ(BlockCache::SizeClass(3 << 20), 3 << 20);
  EXPECT_EQ(BlockCache::SizeClass((3 << 20) + 1), (3 << 20) + (1 << 18));
  for (int64_t b : {int64_t{1000}, int64_t{777777}, int64_t{5} << 20, (int64_t{9} << 30) + 12345}) {
    const int64_t c = BlockCache::SizeClass(b);
    EXPECT_GE(c, b);
    EXPECT_LE(c - b, std::max<int64_t>(b / 8, 255)) << b;
    EXPECT_EQ(BlockCache::SizeClass(c), c) << "a class is its own class";
  }
}

// Blocks come back by class, most recent first; a full cache gives back its oldest; a block taken
// out is never given back by a later eviction.
TEST(BlockCache, ReusesByClassAndEvictsTheOldest) {
  int a = 0, b = 0, c = 0, d = 0, big = 0;
  BlockCache cache(1024);
  EXPECT_EQ(cache.Take(256), nullptr);
  EXPECT_TRUE(cache.Give(&a, 256).empty());
  EXPECT_TRUE(cache.Give(&b, 256).empty());
  EXPECT_TRUE(cache.Give(&c, 512).empty());
  EXPECT_EQ(cache.cached_bytes(), 1024);
  EXPECT_EQ(cache.Take(768), nullptr);  // no class but its own
  EXPECT_EQ(cache.Take(256), &b);
  EXPECT_EQ(cache.cached_bytes(), 768);
  EXPECT_EQ(cache.Give(&d, 512), (std::vector<void*>{&a}));       // a is the oldest; b left the cache
  EXPECT_EQ(cache.Give(&big, 2048), (std::vector<void*>{&big}));  // larger than the whole cache
  EXPECT_EQ(cache.blocks(), 2);
  EXPECT_EQ(cache.Take(512), &d);
  EXPECT_EQ(cache.Take(512), &c);
  EXPECT_EQ(cache.Take(512), nullptr);
  EXPECT_EQ(cache.cached_bytes(), 0);
  EXPECT_TRUE(cache.Give(nullptr, 256).empty());
  cache.Give(&a, 256), cache.Give(&b, 256);
  std::vector<void*> all = cache.Drain();
  std::sort(all.begin(), all.end());
  std::vector<void*> want{&a, &b};
  std::sort(want.begin(), want.end());
  EXPECT_EQ(all, want);
  EXPECT_EQ(cache.cached_bytes(), 0);
  EXPECT_EQ(cache.Take(256), nullptr);
}

// Uploads are staged in ring order; a region is written only after the copies that used it last
// are done, the oldest first, including those at the end the ring skips when it wraps.
TEST(StagingRing, ReusesRegionsOnlyAfterTheirCopies) {
  StagingRing ring(4096);
  using W = std::vector<int64_t>;
  auto reserve = [&](int64_t bytes, int64_t fence, int64_t offset, const W& waits) {
    const StagingRing::Region r = ring.Reserve(bytes);
    EXPECT_EQ(r.offset, offset) << "fence " << fence;
    EXPECT_EQ(r.waits, waits) << "fence " << fence;
    if (r.offset >= 0) ring.Issued(fence);
  };
  reserve(1000, 1, 0, {});  // regions round up to 256 bytes: 1024 each
  reserve(1000, 2, 1024, {});
  reserve(1000, 3, 2048, {});
  reserve(1024, 4, 3072, {});
  reserve(1, 5, 0, {1});        // full: the oldest region goes first
  reserve(1500, 6, 256, {2});   // [256, 1792) overlaps 2 alone
  reserve(3000, 0, -1, {});     // over half the ring: copied directly, nothing changes
  reserve(1024, 7, 1792, {3});  // [1792, 2816)
  EXPECT_EQ(ring.InFlight(), (W{4, 5, 6, 7}));
  reserve(1536, 8, 0, {4, 5, 6});  // no room before the end: 4 (in the skipped end), then 5 and 6
  reserve(256, 9, 1536, {});       // [1536, 1792): 7 starts after it
  EXPECT_EQ(ring.InFlight(), (W{7, 8, 9}));
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

// ==== the tensor-core kernels' index model, replayed on the host (kernels/cuda/mma_model.h) ========
namespace dsv4::kernels::cuda {
namespace {

// ---- number conversions ----------------------------------------------------------------------------

TEST(MmaModel, HalfConversionsAreIeeeRoundToNearestEven) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = HalfBitsToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE((h & 0x7c00u) == 0x7c00u && (h & 0x3ffu) != 0) << h;
      continue;
    }
    ASSERT_EQ(FloatToHalfBits(f), h) << h;  // every half round-trips
    if ((h & 0x7fffu) < 0x7bffu) {          // the midpoint to the next half up rounds to the even one
      const float next = HalfBitsToFloat(static_cast<uint16_t>(h + 1));
      const double mid = (static_cast<double>(f) + next) / 2;
      if (static_cast<float>(mid) == mid) {  // representable in float (always, halves have 11 bits)
        const uint16_t want = (h & 1u) ? static_cast<uint16_t>(h + 1) : static_cast<uint16_t>(h);
        ASSERT_EQ(FloatToHalfBits(static_cast<float>(mid)), want) << h;
      }
    }
  }
  // Random floats: the nearest half (by exhaustive neighbours), ties to even, overflow to infinity.
  std::mt19937 rng(21);
  std::uniform_int_distribution<uint32_t> bits;
  for (int i = 0; i < 200000; ++i) {
    int exp = 0;
    float f = std::bit_cast<float>(bits(rng));
    if (!std::isfinite(f)) continue;
    f = std::ldexp(std::frexp(f, &exp), i % 50 - 34);  // exponents around the half range
    const uint16_t h = FloatToHalfBits(f);
    const double err = std::fabs(static_cast<double>(HalfBitsToFloat(h)) - f);
    if (std::fabs(f) >= 65520.f) {
      ASSERT_TRUE(std::isinf(HalfBitsToFloat(h))) << f;
      continue;
    }
    for (int d : {-1, 1}) {
      const uint16_t n = static_cast<uint16_t>(h + d);
      if ((n & 0x7c00u) == 0x7c00u || ((h & 0x7fffu) == 0 && d < 0)) continue;
      ASSERT_LE(err, std::fabs(static_cast<double>(HalfBitsToFloat(n)) - f)) << f;
    }
  }
  EXPECT_EQ(FloatToHalfBits(65504.f), 0x7bffu);
  EXPECT_EQ(FloatToHalfBits(65519.f), 0x7bffu);
  EXPECT_EQ(FloatToHalfBits(65520.f), 0x7c00u);
  EXPECT_EQ(FloatToHalfBits(std::ldexp(1.f, -24)), 1u);
  EXPECT_EQ(FloatToHalfBits(std::ldexp(1.f, -25)), 0u);  // a tie: to the even zero
  EXPECT_EQ(FloatToHalfBits(-std::ldexp(3.f, -26)), 0x8001u);
  for (float f : {0.f, -0.f, 1.f, 1e-3f, 3.14159f, -2.5e4f})
    EXPECT_EQ(FloatToBf16Bits(f), FloatToBf16(f)) << f;
}

TEST(MmaModel, Pow2HalfAndFoldsAreExact) {
  for (int d = -30; d <= 15; ++d)
    EXPECT_EQ(HalfBitsToFloat(Pow2HalfBits(d)), d >= -24 ? std::ldexp(1.f, d) : 0.f) << d;
  // FP8 weights folded by 2^d stay exact halves for d >= -15, FP4 (through E4M3 x 2^-6, folded by
  // 2^(d+6)) for d >= -23: the kernel's fold is an f16 multiply, emulated as a rounded float product.
  for (int b = 0; b < 256; ++b) {
    if ((b & 0x7f) == 0x7f) continue;  // NaN codes
    const float v = DecodeFp8E4m3(static_cast<uint8_t>(b));
    ASSERT_EQ(HalfBitsToFloat(FloatToHalfBits(v)), v) << b;  // E4M3 -> f16 is exact
    for (int d = -15; d <= 0; ++d) {
      const float folded = HalfBitsToFloat(FloatToHalfBits(HalfBitsToFloat(FloatToHalfBits(v)) *
                                                            HalfBitsToFloat(Pow2HalfBits(d))));
      ASSERT_EQ(folded, std::ldexp(v, d)) << b << " " << d;
    }
  }
  for (uint32_t codes = 0; codes < 65536; ++codes) {
    const uint32_t e4 = Fp4x4ToE4m3x4(codes);
    for (int i = 0; i < 4; ++i) {
      const float want = kFp4E2m1[(codes >> (4 * i)) & 15];
      const float got = DecodeFp8E4m3(static_cast<uint8_t>(e4 >> (8 * i)));
      ASSERT_TRUE(SameBits(got, std::ldexp(want, -kFp4AsE4m3Exp))) << codes << " " << i;
    }
  }
  for (int c = 0; c < 16; ++c)
    for (int d = -23; d <= 0; ++d) {
      const float h = HalfBitsToFloat(FloatToHalfBits(std::ldexp(kFp4E2m1[c], -kFp4AsE4m3Exp)));
      const float folded = HalfBitsToFloat(FloatToHalfBits(h * HalfBitsToFloat(Pow2HalfBits(d + kFp4AsE4m3Exp))));
      ASSERT_EQ(folded, std::ldexp(kFp4E2m1[c], d)) << c << " " << d;
    }
}

// The activations' split: within 2^-22 of each value relative to the chunk scale (2^-25 absolute
// floor); FP8-rounded activations (group 128 = the chunk) need no lo term at all.
TEST(MmaModel, ActivationSplit) {
  std::mt19937 rng(5);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (int trial = 0; trial < 400; ++trial) {
    std::vector<float> x(128);
    const float spread = std::exp2(static_cast<float>(trial % 40) - 20.f);
    for (auto& v : x) v = nd(rng) * spread * (nd(rng) > 1.5f ? 100.f : 1.f);
    if (trial % 7 == 0) x[trial % 128] = 0.f;
    float amax = 0.f;
    for (float v : x) amax = std::max(amax, std::fabs(v));
    const int e = ChunkScaleExp(amax);
    EXPECT_GE(std::ldexp(1.f, e), amax);
    const float inv = Pow2Float(-e);
    for (float v : x) {
      const HalfTerms s = SplitHalf(v, inv);
      const double got = (static_cast<double>(HalfBitsToFloat(s.hi)) + HalfBitsToFloat(s.lo)) * std::ldexp(1.0, e);
      ASSERT_LE(std::fabs(got - v), std::max(std::ldexp(static_cast<double>(std::fabs(v)), -22), std::ldexp(1.0, e - 25))) << v;
      const HalfTerms b = SplitBf16(v);
      const double gb = static_cast<double>(std::bit_cast<float>(static_cast<uint32_t>(b.hi) << 16)) +
                        std::bit_cast<float>(static_cast<uint32_t>(b.lo) << 16);
      ASSERT_LE(std::fabs(gb - v), std::ldexp(static_cast<double>(std::fabs(v)), -17)) << v;
    }
    std::vector<float> q = x;
    kernels::QdqFp8(q.data(), 1, 128, 128, 128);
    std::vector<float> q2 = q;  // the rounding is idempotent: Linear's act_fp8_group is a no-op then
    kernels::QdqFp8(q2.data(), 1, 128, 128, 128);
    float qmax = 0.f;
    for (int i = 0; i < 128; ++i) {
      ASSERT_TRUE(SameBits(q[i], q2[i])) << i;
      qmax = std::max(qmax, std::fabs(q[i]));
    }
    const float qinv = Pow2Float(-ChunkScaleExp(qmax));
    for (float v : q) ASSERT_EQ(SplitHalf(v, qinv).lo, 0) << v << " (spread " << spread << ")";
  }
  EXPECT_EQ(ChunkScaleExp(0.f), -100);
  EXPECT_EQ(ChunkScaleExp(1.f), 0);
  EXPECT_EQ(ChunkScaleExp(1.0001f), 1);
  EXPECT_EQ(ChunkScaleExp(std::numeric_limits<float>::max()), 126);
  EXPECT_EQ(ChunkScaleExp(std::numeric_limits<float>::quiet_NaN()), -100);
}

// ---- the mma register model ---------------------------------------------------------------------

// Element e of a 32-bit register: f16 / bf16 halves or e4m3 bytes, as float.
enum class Elem { kF16, kBf16, kE4m3 };
float RegElem(uint32_t r, int e, Elem type) {
  switch (type) {
    case Elem::kF16:
      return HalfBitsToFloat(static_cast<uint16_t>(r >> (16 * e)));
    case Elem::kBf16:
      return std::bit_cast<float>((r >> (16 * e)) << 16);
    case Elem::kE4m3:
      return DecodeFp8E4m3(static_cast<uint8_t>(r >> (8 * e)));
  }
  return 0.f;
}

// D[16][8] (double) = A B from every lane's registers as mma_model.h places them; also checks that
// the placement covers each element of A [16 x K] and B [K x 8] exactly once.
void MmaProduct(const uint32_t (&a)[32][4], const uint32_t (&b)[32][2], Elem type, double (&d)[16][8]) {
  const int per_reg = type == Elem::kE4m3 ? 4 : 2, K = 8 * per_reg;
  std::vector<double> A(16 * K, 0.0), B(K * 8, 0.0);
  std::vector<int> seen_a(16 * K, 0), seen_b(K * 8, 0);
  for (int lane = 0; lane < 32; ++lane)
    for (int e = 0; e < per_reg; ++e) {
      for (int r = 0; r < 4; ++r) {
        const int row = MmaRowA(lane, r), k = MmaK(lane, r >> 1, e, per_reg);
        A[row * K + k] = RegElem(a[lane][r], e, type);
        ++seen_a[row * K + k];
      }
      for (int p = 0; p < 2; ++p) {
        const int col = MmaColB(lane), k = MmaK(lane, p, e, per_reg);
        B[k * 8 + col] = RegElem(b[lane][p], e, type);
        ++seen_b[k * 8 + col];
      }
    }
  for (int i : seen_a) ASSERT_EQ(i, 1);
  for (int i : seen_b) ASSERT_EQ(i, 1);
  for (int r = 0; r < 16; ++r)
    for (int c = 0; c < 8; ++c) {
      double s = 0;
      for (int k = 0; k < K; ++k) s += A[r * K + k] * B[k * 8 + c];
      d[r][c] = s;
    }
  std::vector<int> seen_d(128, 0);
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 4; ++i) ++seen_d[MmaRowD(lane, i) * 8 + MmaColD(lane, i)];
  for (int i : seen_d) ASSERT_EQ(i, 1);
}

// A random weight of `rows` x `cols` stored as the checkpoint stores it (bytes + E8M0 scales).
struct HostW {
  std::vector<uint8_t> data, scales;
  WeightMatrix w;
};
HostW RandomWeight(WeightType type, int64_t rows, int64_t cols, int block_rows, int block_cols, int scale_spread,
                   std::mt19937& rng) {
  std::uniform_int_distribution<int> byte(0, 255), spread(0, scale_spread);
  std::normal_distribution<float> nd(0.f, 0.05f);
  HostW h;
  const int64_t ld = type == WeightType::kFP4 ? cols / 2 : cols;
  const int64_t es = type == WeightType::kBF16 ? 2 : 1;
  h.data.resize(rows * ld * es);
  if (type == WeightType::kBF16) {
    for (int64_t i = 0; i < rows * cols; ++i) {
      const uint16_t v = FloatToBf16(nd(rng));
      std::memcpy(&h.data[2 * i], &v, 2);
    }
  } else {
    for (auto& b : h.data) {
      b = static_cast<uint8_t>(byte(rng));
      if (type == WeightType::kFP8 && (b & 0x7f) == 0x7f) b ^= 1;  // no NaN codes
    }
  }
  WeightMatrix& w = h.w;
  w.type = type, w.ld = ld, w.row_end = rows, w.col_end = cols;
  if (type != WeightType::kBF16) {
    w.block_rows = type == WeightType::kFP8 ? block_rows : 1, w.block_cols = block_cols;
    w.scale_ld = (cols + block_cols - 1) / block_cols;
    h.scales.resize(((rows + w.block_rows - 1) / w.block_rows) * w.scale_ld);
    for (auto& s : h.scales) s = static_cast<uint8_t>(120 - spread(rng) + byte(rng) % 4);
  }
  w.data = h.data.data();
  w.scales = h.scales.empty() ? nullptr : h.scales.data();
  return h;
}

// ---- the skinny kernel, replayed ------------------------------------------------------------------

// Emulates gemm_skinny.cu for one 16-row warp tile and up to 64 tokens: the activation entries of
// each chunk built as the kernel builds them (SkinnyKSlot / SkinnyActEntry), every lane's weight
// registers from its 16-byte loads (SkinnyStepK), the fold factors, the mma model, the promotion.
// Sums in double: what is checked is the index math (a wrong index is an O(1) error), not the
// tensor cores' rounding.
void EmulateSkinnyTile(const WeightMatrix& w, int64_t row_first, const float* x, int64_t ldx, int mt, int act_group,
                       std::vector<double>& y /* [mt][16] */) {
  const bool bf16 = w.type == WeightType::kBF16;
  const int bits = bf16 ? 16 : w.type == WeightType::kFP8 ? 8 : 4, E = SkinnyLoadElems(bits);
  const int loads = kSkinnyChunk / (4 * E), ntiles = (mt + 7) / 8;
  const int64_t N = w.rows(), K = w.cols(), pitch = bf16 ? w.ld * 2 : w.ld;
  const auto* base = static_cast<const uint8_t*>(w.data);
  y.assign(static_cast<size_t>(mt) * 16, 0.0);
  for (int64_t c = 0; c < K / kSkinnyChunk; ++c) {
    // Activations: a warp per token, lane l owns columns 4l..4l+3.
    std::vector<std::array<uint32_t, 4>> act(kSkinnySteps * ntiles * 32);
    std::vector<float> xscale(ntiles * 8, 0.f);
    for (int tk = 0; tk < ntiles * 8; ++tk) {
      float v[128] = {};
      if (tk < mt)
        for (int i = 0; i < 128; ++i) v[i] = x[tk * ldx + c * kSkinnyChunk + i];
      if (act_group > 0) kernels::QdqFp8(v, 1, 128, 128, act_group);
      float amax = 0.f;
      for (float f : v) amax = std::max(amax, std::fabs(f));
      const int e = ChunkScaleExp(amax);
      if (!bf16) xscale[tk] = tk < mt ? Pow2Float(e) : 0.f;
      for (int lane = 0; lane < 32; ++lane) {
        HalfTerms t[4];
        for (int i = 0; i < 4; ++i) t[i] = bf16 ? SplitBf16(v[4 * lane + i]) : SplitHalf(v[4 * lane + i], Pow2Float(-e));
        const SkinnySlot slot = SkinnyKSlot(E, 4 * lane);
        ASSERT_EQ(slot.p, 0);
        ASSERT_EQ(slot.h, 0);
        act[SkinnyActEntry(slot.s, tk / 8, (tk % 8) * 4 + slot.t, ntiles)] = {
            t[0].hi | (uint32_t{t[1].hi} << 16), t[2].hi | (uint32_t{t[3].hi} << 16),
            t[0].lo | (uint32_t{t[1].lo} << 16), t[2].lo | (uint32_t{t[3].lo} << 16)};
      }
    }
    // Weights: lane (g, t), rows g and g + 8, loads l of 16 bytes; scale exponents per load.
    uint8_t bytes[32][2][4][16];
    int ex[32][2][4];
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < 2; ++i) {
        const int64_t r = std::min(row_first + lane / 4 + 8 * i, N - 1) + w.row_begin;
        for (int l = 0; l < loads; ++l) {
          const int64_t off = r * pitch + w.col_begin * bits / 8 + c * kSkinnyChunk * bits / 8 + l * 64 + (lane % 4) * 16;
          std::memcpy(bytes[lane][i][l], base + off, 16);
          if (bf16) {
            ex[lane][i][l] = 127;
          } else {
            const int64_t col = w.col_begin + c * kSkinnyChunk + l * 4 * E + (lane % 4) * E;
            const int64_t srow = w.type == WeightType::kFP8 ? r / w.block_rows : r;
            ex[lane][i][l] = w.scales[srow * w.scale_ld + col / w.block_cols];
          }
        }
      }
    std::vector<double> part(static_cast<size_t>(mt) * 16, 0.0);
    for (int s = 0; s < kSkinnySteps; ++s) {
      const int l = s / (E / 4), q = s % (E / 4);
      uint32_t a[32][4];
      double rscale[32][2];
      for (int lane = 0; lane < 32; ++lane)
        for (int i = 0; i < 2; ++i) {
          int rmax = 0;
          for (int tq = 0; tq < 4; ++tq)  // the quad's largest (shuffles in the kernel)
            for (int ll = 0; ll < loads; ++ll) rmax = std::max(rmax, ex[(lane & ~3) + tq][i][ll]);
          rscale[lane][i] = DecodeE8m0(static_cast<uint8_t>(rmax));
          const int d = ex[lane][i][l] - rmax + (w.type == WeightType::kFP4 ? kFp4AsE4m3Exp : 0);
          const float mult = HalfBitsToFloat(Pow2HalfBits(d));
          const bool fold = w.type == WeightType::kFP4 || w.block_cols < kSkinnyChunk;
          uint16_t h[4];  // elements 4q..4q+3 of the load
          for (int j = 0; j < 4; ++j) {
            const int el = 4 * q + j;
            if (bf16) {
              h[j] = static_cast<uint16_t>(bytes[lane][i][l][2 * el] | (bytes[lane][i][l][2 * el + 1] << 8));
              continue;
            }
            float v;
            if (w.type == WeightType::kFP8) {
              v = DecodeFp8E4m3(bytes[lane][i][l][el]);
            } else {
              const uint32_t codes = (bytes[lane][i][l][el / 2] >> (4 * (el % 2))) & 15u;
              v = DecodeFp8E4m3(static_cast<uint8_t>(Fp4x4ToE4m3x4(codes)));
            }
            uint16_t hv = FloatToHalfBits(v);
            if (fold) hv = FloatToHalfBits(HalfBitsToFloat(hv) * mult);
            h[j] = hv;
          }
          // Registers 0 / 2: row g pairs 0 / 1; 1 / 3: row g + 8.
          a[lane][i] = h[0] | (uint32_t{h[1]} << 16);
          a[lane][2 + i] = h[2] | (uint32_t{h[3]} << 16);
        }
      for (int n = 0; n < ntiles; ++n) {
        for (int term = 0; term < 2; ++term) {
          uint32_t b[32][2];
          for (int lane = 0; lane < 32; ++lane) {
            const auto& e = act[SkinnyActEntry(s, n, lane, ntiles)];
            b[lane][0] = e[2 * term], b[lane][1] = e[2 * term + 1];
          }
          double d[16][8];
          MmaProduct(a, b, bf16 ? Elem::kBf16 : Elem::kF16, d);
          for (int r = 0; r < 16; ++r)
            for (int col = 0; col < 8; ++col)
              if (n * 8 + col < mt) part[(n * 8 + col) * 16 + r] += d[r][col];
        }
      }
      if (s == kSkinnySteps - 1) {  // promotion (BF16: unscaled)
        for (int tk = 0; tk < mt; ++tk)
          for (int r = 0; r < 16; ++r) {
            const int lane = (r % 8) * 4;  // any lane of the row's quad has its scale
            const double f = bf16 ? 1.0 : rscale[lane][r / 8] * xscale[tk];
            y[tk * 16 + r] += part[tk * 16 + r] * f;
          }
      }
    }
  }
}

// The replay against the reference, over formats, block shapes (V4's 128 x 128, V4.1's 32 x 32, FP4
// per 32), scale spreads within the exact folding range, tokens 1..64, shards, rounded activations.
// Tolerance: the two-term activations carry 22 bits (2^-22 relative) and BF16's 16 bits: 2e-5 and
// 1e-4 of the output scale.
TEST(MmaModel, SkinnyKernelReplayMatchesReference) {
  std::mt19937 rng(31);
  std::normal_distribution<float> nd(0.f, 1.f);
  struct Case {
    WeightType type;
    int br, bc, spread;
  };
  for (Case cs : {Case{WeightType::kFP8, 128, 128, 8}, Case{WeightType::kFP8, 32, 32, 12},
                  Case{WeightType::kFP8, 16, 64, 15}, Case{WeightType::kFP4, 1, 32, 16}, Case{WeightType::kBF16, 1, 1, 0}})
    for (int mt : {1, 7, 8, 13, 64})
      for (int act_group : {0, 128, 32}) {
        if (cs.type == WeightType::kBF16 && act_group > 0) continue;
        const int64_t rows = 40, cols = 384;
        HostW h = RandomWeight(cs.type, rows, cols, cs.br, cs.bc, cs.spread, rng);
        WeightMatrix view = h.w;
        view.row_begin = 3, view.col_begin = 128;  // a shard: rows 3.., columns 128..383
        ASSERT_EQ(SkinnyUnsupported(view, 90, true), nullptr);
        const int64_t ldx = view.cols() + 5;
        std::vector<float> x(mt * ldx);
        for (auto& v : x) v = nd(rng) * (nd(rng) > 2.f ? 30.f : 1.f);
        std::vector<float> xq = x;
        if (act_group > 0) kernels::QdqFp8(xq.data(), mt, view.cols(), ldx, act_group);
        std::vector<float> want(mt * view.rows());
        kernels::ref::Linear(xq.data(), mt, ldx, view, want.data(), view.rows());
        std::vector<float> got(mt * view.rows());
        for (int64_t r0 = 0; r0 < view.rows(); r0 += 16) {
          std::vector<double> tile;
          EmulateSkinnyTile(view, r0, x.data(), ldx, mt, act_group, tile);
          for (int tk = 0; tk < mt; ++tk)
            for (int r = 0; r < 16 && r0 + r < view.rows(); ++r)
              got[tk * view.rows() + r0 + r] = static_cast<float>(tile[tk * 16 + r]);
        }
        double scale = 0;
        for (float v : want) scale = std::max(scale, static_cast<double>(std::fabs(v)));
        const double tol = (cs.type == WeightType::kBF16 ? 1e-4 : 2e-5) * scale;
        EXPECT_TRUE(AllClose("skinny replay", got.data(), want.data(), got.size(), {.abs = tol}))
            << "type " << static_cast<int>(cs.type) << " block " << cs.br << "x" << cs.bc << " mt " << mt
            << " act_group " << act_group;
      }
}

TEST(MmaModel, SkinnyKOrderIsAPermutation) {
  for (int E : {8, 16, 32}) {
    std::vector<int> seen(kSkinnyChunk, 0);
    for (int s = 0; s < kSkinnySteps; ++s)
      for (int t = 0; t < 4; ++t)
        for (int p = 0; p < 2; ++p)
          for (int h = 0; h < 2; ++h) {
            const int k = SkinnyStepK(E, s, t, p, h);
            ASSERT_GE(k, 0);
            ASSERT_LT(k, kSkinnyChunk);
            ++seen[k];
            const SkinnySlot back = SkinnyKSlot(E, k);
            ASSERT_TRUE(back.s == s && back.t == t && back.p == p && back.h == h) << E << " " << k;
          }
    for (int v : seen) ASSERT_EQ(v, 1) << E;
    // A lane's load l covers [l 4E + t E, + E): E / 4 consecutive steps of that lane.
    for (int l = 0; l < kSkinnyChunk / (4 * E); ++l)
      for (int t = 0; t < 4; ++t)
        for (int j = 0; j < E; ++j) {
          const SkinnySlot sl = SkinnyKSlot(E, l * 4 * E + t * E + j);
          ASSERT_EQ(sl.s, l * (E / 4) + j / 4);
          ASSERT_EQ(sl.t, t);
        }
  }
  // The activation entries of a chunk: one per (step, n-tile, lane), a warp's step reads 512
  // consecutive bytes (32 entries in lane order: no bank conflicts).
  for (int nt : {1, 2, 4, 8}) {
    std::vector<int> seen(kSkinnySteps * nt * 32, 0);
    for (int s = 0; s < kSkinnySteps; ++s)
      for (int n = 0; n < nt; ++n)
        for (int lane = 0; lane < 32; ++lane) {
          ++seen[SkinnyActEntry(s, n, lane, nt)];
          if (lane > 0) { ASSERT_EQ(SkinnyActEntry(s, n, lane, nt), SkinnyActEntry(s, n, lane - 1, nt) + 1); }
        }
    for (int v : seen) ASSERT_EQ(v, 1);
    EXPECT_LE(SkinnySmemBytes(nt), kSmemNoOptIn);
  }
}

// ---- the FP8 tiled kernel, replayed ----------------------------------------------------------------

// ldmatrix.x4 from a [rows][128-byte] swizzled tile: lane l's register i = bytes 4 (l % 4) .. +3 of
// the row lane 8 i + l / 4 points at.
void Ldmatrix(const std::vector<uint8_t>& tile, const int (&row_of_lane)[32], const int (&chunk_of_lane)[32],
              uint32_t (&out)[32][4]) {
  for (int i = 0; i < 4; ++i) {
    // One phase: eight 16-byte rows, each must land in its own group of four banks.
    std::vector<int> groups;
    for (int j = 0; j < 8; ++j) groups.push_back((Fp8SwizzledOffset(row_of_lane[8 * i + j], chunk_of_lane[8 * i + j]) / 16) % 8);
    std::sort(groups.begin(), groups.end());
    ASSERT_TRUE(std::adjacent_find(groups.begin(), groups.end()) == groups.end()) << "bank conflict in phase " << i;
    for (int l = 0; l < 32; ++l) {
      const int src = 8 * i + l / 4;
      const int off = Fp8SwizzledOffset(row_of_lane[src], chunk_of_lane[src]) + 4 * (l % 4);
      std::memcpy(&out[l][i], &tile[off], 4);
    }
  }
}

// One 128 x 128 block tile of gemm_fp8.cu on the host: the cp.async placement into swizzled tiles,
// the ldmatrix reads, the e4m3 mma model and the promotion every kQ columns, against the reference
// on the FP8-rounded activations (1e-5 of the output scale: double sums; the index math is checked).
TEST(MmaModel, Fp8TileReplayMatchesReference) {
  std::mt19937 rng(41);
  std::normal_distribution<float> nd(0.f, 1.f);
  for (auto [bc, group] : {std::pair{128, 128}, std::pair{32, 128}, std::pair{128, 64}, std::pair{64, 32}}) {
    const int64_t rows = 150, m = 140, K = 256;  // partial row and token tiles, two stages
    HostW h = RandomWeight(WeightType::kFP8, rows, K, bc, bc, 6, rng);
    ASSERT_EQ(Fp8GemmUnsupported(h.w, group, 89, true), nullptr);
    ASSERT_NE(Fp8GemmUnsupported(h.w, group, 80, true), nullptr);
    std::vector<float> x(m * K);
    for (auto& v : x) v = nd(rng);
    std::vector<float> xq = x;
    kernels::QdqFp8(xq.data(), m, K, K, group);
    // The quantization pre-pass: codes and group scales (exact: v / scale is an E4M3 value).
    std::vector<uint8_t> codes(m * K);
    std::vector<float> xs(m * (K / group));
    for (int64_t t = 0; t < m; ++t)
      for (int64_t g0 = 0; g0 < K; g0 += group) {
        float amax = 0.f;
        for (int i = 0; i < group; ++i) amax = std::max(amax, std::fabs(x[t * K + g0 + i]));
        const float s = QdqScale(amax, false);
        xs[t * (K / group) + g0 / group] = s;
        for (int i = 0; i < group; ++i) {
          const float q = RoundToFp8E4m3(x[t * K + g0 + i] / s);
          int code = -1;
          for (int b = 0; b < 256 && code < 0; ++b)
            if ((b & 0x7f) != 0x7f && DecodeFp8E4m3(static_cast<uint8_t>(b)) == q) code = b;
          ASSERT_GE(code, 0);
          codes[t * K + g0 + i] = static_cast<uint8_t>(code);
          ASSERT_EQ(DecodeFp8E4m3(static_cast<uint8_t>(code)) * s, xq[t * K + g0 + i]);
        }
      }
    std::vector<float> want(m * rows);
    kernels::ref::Linear(xq.data(), m, K, h.w, want.data(), rows);
    const int kq = std::min(bc % 128 == 0 ? 128 : bc, group);
    std::vector<double> got(m * rows, 0.0);
    for (int64_t row0 = 0; row0 < rows; row0 += kFp8TileRows)
      for (int64_t tok0 = 0; tok0 < m; tok0 += kFp8TileTokens) {
        std::vector<double> acc(kFp8TileRows * kFp8TileTokens, 0.0);
        for (int64_t c = 0; c < K / kFp8TileK; ++c) {
          // The stage: 1024 16-byte pieces per operand, piece p -> row p / 8, chunk p % 8.
          std::vector<uint8_t> sa(kFp8TileRows * kFp8TileK, 0xee), sb(kFp8TileTokens * kFp8TileK, 0xee);
          std::vector<int> written(kFp8TileRows * kFp8TileK, 0);
          for (int piece = 0; piece < kFp8Threads * 4; ++piece) {
            const int row = piece / 8, ch = piece % 8;
            for (int i = 0; i < 16; ++i) {
              const bool ra = row0 + row < rows, rb = tok0 + row < m;
              sa[Fp8SwizzledOffset(row, ch) + i] = ra ? h.data[(row0 + row) * K + c * 128 + ch * 16 + i] : 0;
              sb[Fp8SwizzledOffset(row, ch) + i] = rb ? codes[(tok0 + row) * K + c * 128 + ch * 16 + i] : 0;
              ++written[Fp8SwizzledOffset(row, ch) + i];
            }
          }
          for (int v : written) ASSERT_EQ(v, 1);  // the swizzle is a permutation of the tile
          for (int warp = 0; warp < 8; ++warp) {
            const int wr = warp / 4, wc = warp % 4;
            for (int pq = 0; pq < kFp8TileK / kq; ++pq) {
              std::vector<double> part(kFp8WarpRows * kFp8WarpTokens, 0.0);
              for (int ks = pq * (kq / 32); ks < (pq + 1) * (kq / 32); ++ks) {
                for (int i = 0; i < kFp8WarpRows / 16; ++i)
                  for (int jp = 0; jp < kFp8WarpTokens / 16; ++jp) {
                    int arow[32], achunk[32], brow[32], bchunk[32];
                    for (int l = 0; l < 32; ++l) {
                      arow[l] = wr * kFp8WarpRows + i * 16 + Fp8LdmatrixARow(l), achunk[l] = Fp8LdmatrixAChunk(l, ks);
                      brow[l] = wc * kFp8WarpTokens + jp * 16 + Fp8LdmatrixBRow(l), bchunk[l] = Fp8LdmatrixBChunk(l, ks);
                    }
                    uint32_t af[32][4], br[32][4];
                    Ldmatrix(sa, arow, achunk, af);
                    Ldmatrix(sb, brow, bchunk, br);
                    for (int half = 0; half < 2; ++half) {
                      uint32_t bf[32][2];
                      for (int l = 0; l < 32; ++l) bf[l][0] = br[l][2 * half], bf[l][1] = br[l][2 * half + 1];
                      double d[16][8];
                      MmaProduct(af, bf, Elem::kE4m3, d);
                      for (int r = 0; r < 16; ++r)
                        for (int col = 0; col < 8; ++col)
                          part[(i * 16 + r) * kFp8WarpTokens + jp * 16 + half * 8 + col] += d[r][col];
                    }
                  }
              }
              const int64_t k0 = c * kFp8TileK + pq * kq;
              for (int r = 0; r < kFp8WarpRows; ++r)
                for (int tk = 0; tk < kFp8WarpTokens; ++tk) {
                  const int64_t grow = std::min<int64_t>(row0 + wr * kFp8WarpRows + r, rows - 1);
                  const int64_t gtok = std::min<int64_t>(tok0 + wc * kFp8WarpTokens + tk, m - 1);
                  const double ws = DecodeE8m0(h.scales[(grow / bc) * h.w.scale_ld + k0 / bc]);
                  const double xsc = xs[gtok * (K / group) + k0 / group];
                  acc[(wr * kFp8WarpRows + r) * kFp8TileTokens + wc * kFp8WarpTokens + tk] +=
                      part[r * kFp8WarpTokens + tk] * ws * xsc;
                }
            }
          }
        }
        for (int r = 0; r < kFp8TileRows; ++r)
          for (int tk = 0; tk < kFp8TileTokens; ++tk)
            if (row0 + r < rows && tok0 + tk < m) got[(tok0 + tk) * rows + row0 + r] = acc[r * kFp8TileTokens + tk];
      }
    double scale = 0;
    for (float v : want) scale = std::max(scale, static_cast<double>(std::fabs(v)));
    std::vector<float> gotf(got.begin(), got.end());
    EXPECT_TRUE(AllClose("fp8 tile replay", gotf.data(), want.data(), gotf.size(), {.abs = 1e-5 * scale}))
        << "block " << bc << " group " << group;
  }
}

// ---- plans ---------------------------------------------------------------------------------------

TEST(LinearPlan, ChoosesTheKernelByItsPreconditions) {
  uint8_t bytes[16] = {}, scales[16] = {};
  WeightMatrix fp8{.type = WeightType::kFP8, .data = bytes, .scales = scales, .ld = 4096, .scale_ld = 32,
                   .block_rows = 128, .block_cols = 128, .row_begin = 0, .row_end = 4096, .col_begin = 0, .col_end = 4096};
  const DeviceCaps h200{90, 132}, ada{89, 128}, a100{80, 108}, turing{75, 40};
  const int64_t big = int64_t{1} << 40;
  EXPECT_EQ(ChooseLinear(1, fp8, 0, 0, h200, true).path, LinearPath::kSkinny);
  EXPECT_EQ(ChooseLinear(64, fp8, 128, big, h200, true).path, LinearPath::kSkinny);
  EXPECT_EQ(ChooseLinear(65, fp8, 128, big, h200, true).path, LinearPath::kFp8Tiled);
  EXPECT_EQ(ChooseLinear(512, fp8, 128, big, ada, true).path, LinearPath::kFp8Tiled);
  EXPECT_EQ(ChooseLinear(512, fp8, 128, big, a100, true).path, LinearPath::kSkinny);   // no FP8 tensor cores
  EXPECT_EQ(ChooseLinear(512, fp8, 128, 1000, h200, true).path, LinearPath::kSkinny);  // workspace too small
  EXPECT_EQ(ChooseLinear(512, fp8, 0, big, h200, true).path, LinearPath::kSkinny);     // activations not rounded
  EXPECT_EQ(ChooseLinear(512, fp8, 128, big, turing, true).path, LinearPath::kLegacyTiled);
  EXPECT_EQ(ChooseLinear(2, fp8, 0, 0, turing, true).path, LinearPath::kLegacyGemv);
  EXPECT_EQ(ChooseLinear(2, fp8, 0, 0, h200, false).path, LinearPath::kLegacyGemv);   // unaligned data
  EXPECT_EQ(ChooseLinear(512, fp8, 128, big, h200, true).workspace_bytes, Fp8ActWorkspaceBytes(512, 4096, 128));
  EXPECT_EQ(ChooseLinear(4, fp8, 128, big, turing, true).workspace_bytes, 4 * 4096 * 4);  // a rounded copy of x
  WeightMatrix v = fp8;
  v.col_end = 4000;
  EXPECT_NE(SkinnyUnsupported(v, 90, true), nullptr);  // K not a multiple of 128
  v = fp8, v.col_begin = 64;
  EXPECT_NE(SkinnyUnsupported(v, 90, true), nullptr);  // a shard not on a chunk
  v = fp8, v.col_begin = 128;
  EXPECT_EQ(SkinnyUnsupported(v, 90, true), nullptr);
  v = fp8, v.ld = 4100;
  EXPECT_NE(SkinnyUnsupported(v, 90, true), nullptr);  // rows not 16-byte aligned
  v = fp8, v.block_cols = 48;
  EXPECT_NE(SkinnyUnsupported(v, 90, true), nullptr);
  v = fp8, v.block_cols = 32, v.block_rows = 32;
  EXPECT_EQ(SkinnyUnsupported(v, 90, true), nullptr);  // V4.1's 32 x 32
  EXPECT_EQ(Fp8GemmUnsupported(v, 128, 90, true), nullptr);
  EXPECT_NE(Fp8GemmUnsupported(v, 96, 90, true), nullptr);
  v = fp8, v.type = WeightType::kF32;
  EXPECT_NE(SkinnyUnsupported(v, 90, true), nullptr);
  WeightMatrix fp4 = fp8;
  fp4.type = WeightType::kFP4, fp4.block_rows = 1, fp4.block_cols = 32, fp4.ld = 2048, fp4.scale_ld = 128;
  EXPECT_EQ(SkinnyUnsupported(fp4, 80, true), nullptr);
  EXPECT_NE(Fp8GemmUnsupported(fp4, 128, 90, true), nullptr);
  EXPECT_EQ(ChooseLinear(1000, fp4, 128, big, h200, true).path, LinearPath::kSkinny);
  fp4.block_cols = 16;
  EXPECT_NE(SkinnyUnsupported(fp4, 90, true), nullptr);
}

TEST(LinearPlan, SkinnyGridsCoverRowsTokensAndK) {
  const DeviceCaps h200{90, 132};
  for (int64_t m : {1, 2, 8, 9, 33, 64, 65, 300})
    for (int64_t rows : {1, 16, 17, 512, 4096, 129280})
      for (int64_t cols : {128, 1024, 4096, 7168})
        for (bool splits : {false, true}) {
          const SkinnyPlan p = PlanSkinny(m, rows, cols, 1, h200, splits);
          ASSERT_TRUE(p.ntiles == 1 || p.ntiles == 2 || p.ntiles == 4 || p.ntiles == 8);
          EXPECT_GE(p.ntiles * 8, std::min<int64_t>(m, 64));
          if (p.ntiles > 1) { EXPECT_LT(p.ntiles / 2 * 8, std::min<int64_t>(m, 64)) << "more n-tiles than needed"; }
          EXPECT_GE(p.row_blocks * p.warps * kSkinnyRowsPerWarp, rows);
          EXPECT_GE(p.token_blocks * kSkinnyMaxTokens, m);
          EXPECT_GE(p.splits * p.chunks_per_split, p.chunks);
          EXPECT_LT((p.splits - 1) * p.chunks_per_split, p.chunks);  // no empty split
          EXPECT_EQ(p.launch.grid.x, p.row_blocks * p.splits);
          EXPECT_TRUE(Launchable(p.launch));
          if (!splits) { EXPECT_EQ(p.splits, 1); }
          // The split (the summation order) does not depend on m.
          EXPECT_EQ(p.splits, PlanSkinny(1, rows, cols, 1, h200, splits).splits);
          if (splits && p.splits > 1) { EXPECT_GE(p.chunks_per_split, kSkinnyMinChunksPerSplit); }
        }
  // Few rows get split-K: 1024 rows x 4096 = 16 blocks of 64 rows -> 8 splits of 4 chunks.
  EXPECT_EQ(PlanSkinny(1, 1024, 4096, 1, h200, true).splits, 8);
  EXPECT_EQ(PlanSkinny(1, 32768, 4096, 1, h200, true).splits, 1);
  EXPECT_EQ(PlanSkinny(1, 1024, 4096, 384, h200, true).splits, 1);  // grouped: never split
}

TEST(AttentionPlan, FusedBlocksSplitsAndFallback) {
  const DeviceCaps h200{90, 132};
  EXPECT_FALSE(PlanAttention(1, 64, 128, 640, h200, true, true).fused);  // d != 512: the simple kernel
  EXPECT_FALSE(PlanAttention(1, 64, 512, 640, h200, false, true).fused);  // unaligned
  for (int64_t m : {1, 3, 64, 1000})
    for (int64_t H : {1, 5, 8, 16, 64, 128})
      for (int64_t k : {0, 1, 7, 8, 65, 640, 2048})
        for (bool splits : {false, true}) {
          const AttentionPlan p = PlanAttention(m, H, 512, k, h200, true, splits);
          ASSERT_TRUE(p.fused);
          EXPECT_TRUE(p.warps == 1 || p.warps == 2 || p.warps == 4 || p.warps == 8);
          EXPECT_GE(p.head_groups * kFusedHeadsPerWarp * p.warps, H);
          EXPECT_LT((p.head_groups - 1) * kFusedHeadsPerWarp * p.warps, H);
          EXPECT_GE(p.splits * p.rows_per_split, k);
          if (k > 0) { EXPECT_LT((p.splits - 1) * p.rows_per_split, k); }  // no empty split
          EXPECT_EQ(p.rows_per_split % kFusedRows, 0);
          if (!splits) { EXPECT_EQ(p.splits, 1); }
          EXPECT_TRUE(Launchable(p.launch)) << m << " " << H << " " << k;
          EXPECT_LE(p.launch.smem_bytes, kSmemNoOptIn);
        }
  // Decode of 64 heads x 640 rows: 2 head groups of 32 heads, each split into 20 blocks of 32 rows.
  const AttentionPlan d1 = PlanAttention(1, 64, 512, 640, h200, true, true);
  EXPECT_EQ(d1.warps, 8);
  EXPECT_EQ(d1.splits, 20);
  EXPECT_EQ(d1.rows_per_split, 32);
  // Without a workspace, more blocks from smaller head groups.
  EXPECT_EQ(PlanAttention(1, 64, 512, 640, h200, true, false).warps, 2);
  EXPECT_EQ(PlanAttention(64, 64, 512, 640, h200, true, false).warps, 4);  // 64 x 2 blocks < 132 SMs
  EXPECT_EQ(PlanAttention(64, 64, 512, 640, h200, true, true).warps, 8);
  EXPECT_EQ(PlanAttention(256, 64, 512, 640, h200, true, false).warps, 8);
}

// ---- the fused attention's algebra: tiles of 8 rows, online softmax, splits merged in order ------

TEST(AttentionPlan, TiledOnlineSoftmaxWithSplitsMatchesReference) {
  std::mt19937 rng(51);
  std::normal_distribution<float> nd(0.f, 1.f);
  const int64_t d = 16, H = 3, m = 2, n = 90;
  for (int64_t k : {1, 8, 13, 64, 90})
    for (int64_t rows_per_split : {8, 16, 64, 96}) {
      std::vector<float> q(m * H * d), kv(n * d), sink(H);
      for (auto& v : q) v = nd(rng);
      for (auto& v : kv) v = nd(rng);
      for (auto& v : sink) v = nd(rng);
      std::vector<int32_t> idx(m * k);
      std::uniform_int_distribution<int32_t> pick(-1, static_cast<int32_t>(n - 1));
      for (auto& v : idx) v = pick(rng);
      for (int64_t j = 0; j < std::min<int64_t>(k, 20); ++j) idx[k + j] = -1;  // a split that sees nothing
      KvSegments segs;
      segs.ptr[0] = kv.data(), segs.len[0] = n;
      const float scale = 0.25f;
      std::vector<float> want(m * H * d);
      kernels::ref::SparseAttention(q.data(), m, H, d, segs, idx.data(), k, sink.data(), scale, want.data());
      std::vector<float> got(m * H * d);
      const int64_t splits = std::max<int64_t>(1, (k + rows_per_split - 1) / rows_per_split);
      for (int64_t t = 0; t < m; ++t)
        for (int64_t h = 0; h < H; ++h) {
          std::vector<float> ms(splits), ls(splits);
          std::vector<std::vector<float>> os(splits, std::vector<float>(d, 0.f));
          for (int64_t sp = 0; sp < splits; ++sp) {  // one block of the kernel
            float mrun = -INFINITY, lsum = 0.f;
            std::vector<float>& o = os[sp];
            const int64_t jend = std::min(k, (sp + 1) * rows_per_split);
            for (int64_t j0 = sp * rows_per_split; j0 < jend; j0 += kFusedRows) {
              float logit[kFusedRows];
              const float* rows[kFusedRows];
              for (int r = 0; r < kFusedRows; ++r) {
                const int64_t j = j0 + r;
                const int32_t id = j < jend ? idx[t * k + j] : -1;
                const float* row = rows[r] = id >= 0 ? segs.Row(id, d) : nullptr;
                float s = 0.f;
                if (row != nullptr)
                  for (int64_t i = 0; i < d; ++i) s += q[(t * H + h) * d + i] * row[i];
                logit[r] = row != nullptr ? s * scale : -INFINITY;
              }
              float mt = -INFINITY;
              for (float l : logit) mt = std::max(mt, l);
              const float mnew = std::max(mrun, mt), a = mrun == -INFINITY ? 0.f : std::exp(mrun - mnew);
              float sum = 0.f;
              for (auto& o_i : o) o_i *= a;
              for (int r = 0; r < kFusedRows; ++r) {
                const float p = logit[r] == -INFINITY ? 0.f : std::exp(logit[r] - mnew);
                sum += p;
                if (rows[r] != nullptr)
                  for (int64_t i = 0; i < d; ++i) o[i] += p * rows[r][i];
              }
              lsum = lsum * a + sum, mrun = mnew;
            }
            ms[sp] = mrun, ls[sp] = lsum;
          }
          // The combine kernel: merge in split order, then the sink.
          float mx = -INFINITY;
          for (float v : ms) mx = std::max(mx, v);
          std::vector<float> o(d, 0.f);
          float l = 0.f;
          if (mx != -INFINITY)
            for (int64_t sp = 0; sp < splits; ++sp) {
              if (ms[sp] == -INFINITY) continue;
              const float f = std::exp(ms[sp] - mx);
              l += ls[sp] * f;
              for (int64_t i = 0; i < d; ++i) o[i] += os[sp][i] * f;
            }
          float factor = 0.f;
          if (mx != -INFINITY) {
            const float m2 = std::max(mx, sink[h]), f = std::exp(mx - m2);
            factor = f / (l * f + std::exp(sink[h] - m2));
          }
          for (int64_t i = 0; i < d; ++i) got[(t * H + h) * d + i] = o[i] * factor;
        }
      EXPECT_TRUE(AllClose("tiled attention", got.data(), want.data(), got.size(), {.abs = 1e-5, .rel = 1e-4}))
          << "k " << k << " rows per split " << rows_per_split;
    }
}

TEST(AttentionPlan, ReduceScatterLeavesLaneLWithValueL) {
  std::mt19937 rng(3);
  std::uniform_int_distribution<int> small(-50, 50);
  float orig[32][32], v[32][32];  // [lane][value]: small integers, so every sum is exact
  for (int lane = 0; lane < 32; ++lane)
    for (int i = 0; i < 32; ++i) v[lane][i] = orig[lane][i] = static_cast<float>(small(rng));
  for (int off = 16; off >= 1; off /= 2) {  // attention.cu ReduceScatterStep<off>, all lanes in lockstep
    float next[32][32];
    for (int lane = 0; lane < 32; ++lane) {
      const bool upper = (lane & off) != 0, partner_upper = ((lane ^ off) & off) != 0;
      for (int i = 0; i < off; ++i) {
        const float mine = upper ? v[lane][i + off] : v[lane][i];
        const float theirs = partner_upper ? v[lane ^ off][i] : v[lane ^ off][i + off];  // what the partner sends
        next[lane][i] = mine + theirs;
      }
    }
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < off; ++i) v[lane][i] = next[lane][i];
  }
  for (int lane = 0; lane < 32; ++lane) {
    float want = 0.f;
    for (int src = 0; src < 32; ++src) want += orig[src][ReduceScatterIndex(lane, 0, 32)];
    EXPECT_EQ(v[lane][0], want) << lane;
  }
}

// The fused kernel's dims: each lane's q / KV registers and each warp's P.V accumulators cover the
// 512 dims exactly once, and every vector load reads consecutive, aligned dims.
TEST(AttentionPlan, FusedDimsCoverTheHeadOnce) {
  std::vector<int> seen(kFusedDim, 0);
  for (int lane = 0; lane < 32; ++lane)
    for (int j = 0; j < 4; ++j) {
      ASSERT_EQ(FusedQDim(lane, j, 0) % 4, 0);  // float4
      for (int c = 0; c < 4; ++c) {
        ASSERT_EQ(FusedQDim(lane, j, c), FusedQDim(lane, j, 0) + c);
        ++seen[FusedQDim(lane, j, c)];
      }
    }
  for (int v : seen) ASSERT_EQ(v, 1);
  for (int warps : {1, 2, 4, 8}) {
    const int pv = 16 / warps, vec = warps == 8 ? 2 : 4;
    std::fill(seen.begin(), seen.end(), 0);
    for (int warp = 0; warp < warps; ++warp)
      for (int lane = 0; lane < 32; ++lane)
        for (int e = 0; e < pv; ++e) {
          const int d = FusedPvDim(warps, warp, lane, e);
          ASSERT_GE(d, warp * kFusedDim / warps);  // the warp's own slice
          ASSERT_LT(d, (warp + 1) * kFusedDim / warps);
          ++seen[d];
          if (e % vec == 0) {
            ASSERT_EQ(d % vec, 0) << warps;
          } else {
            ASSERT_EQ(d, FusedPvDim(warps, warp, lane, e - 1) + 1) << warps;
          }
        }
    for (int v : seen) ASSERT_EQ(v, 1) << warps;
    EXPECT_EQ(kFusedHeadsPerWarp * warps * pv, 64);  // accumulators per lane
  }
}

// ---- the fast top-k's buckets, a host twin -----------------------------------------------------------

// Replays indexer.cu TopKFastKernel's decisions: returns the level it collects at (0, 1) or -1 for
// the exact fallback, and the indices it outputs.
int HostTopKFast(const float* x, int64_t nv, int64_t k, std::vector<int32_t>* out) {
  const int kk = static_cast<int>(std::min(k, nv));
  uint32_t prefix = 0;
  int need = kk, above_total = 0;
  for (int level = 0; level < 2; ++level) {
    std::vector<int> hist(kTopKBins, 0);
    for (int64_t i = 0; i < nv; ++i) {
      const uint32_t key = OrderedKey(x[i]);
      if (level == 0 || TopKPrefix(key, 0) == prefix) ++hist[TopKBin(key, level)];
    }
    int above = 0;
    const int bin = TopKThresholdBin(hist.data(), kTopKBins, need, &above);
    EXPECT_GE(bin, 0);
    above_total += above, need -= above;
    prefix = level == 0 ? static_cast<uint32_t>(bin) : (prefix << kTopKLevelBits) | static_cast<uint32_t>(bin);
    const int count = above_total + hist[bin];
    if (count <= kTopKCandidates) {
      std::vector<uint64_t> cand;
      for (int64_t i = 0; i < nv; ++i)
        if (TopKPrefix(OrderedKey(x[i]), level) >= prefix) cand.push_back(TopKKey(x[i], static_cast<uint32_t>(i)));
      EXPECT_EQ(static_cast<int>(cand.size()), count);
      std::sort(cand.begin(), cand.end(), std::greater<>());
      out->resize(kk);
      for (int j = 0; j < kk; ++j) (*out)[j] = static_cast<int32_t>(TopKKeyIndex(cand[j]));
      return level;
    }
  }
  out->resize(kk);
  kernels::TopK(x, nv, kk, out->data());  // the exact radix select gives TopK's answer
  return -1;
}

TEST(TopKBuckets, HostTwinMatchesCpuAndPicksItsLevel) {
  std::mt19937 rng(61);
  std::normal_distribution<float> nd(0.f, 1.f);
  struct Case {
    const char* what;
    int64_t n, k;
    int want_level;  // -2: any
  };
  for (Case cs : {Case{"normal", 262144, 512, 0}, Case{"normal k2048", 262144, 2048, 1}, Case{"narrow", 100000, 600, 1},
                  Case{"all equal", 70000, 100, -1}, Case{"coarse ties", 50000, 2048, -2}, Case{"small", 300, 7, 0},
                  Case{"relu scores", 262144, 1024, -2}}) {
    std::vector<float> x(cs.n);
    const std::string what = cs.what;
    for (auto& v : x) {
      if (what == "narrow") v = 1.0f + 1e-3f * std::fabs(nd(rng));
      else if (what == "all equal") v = 0.5f;
      else if (what == "coarse ties") v = std::round(nd(rng) * 4.f) * 0.25f;
      else if (what == "relu scores") v = std::max(0.f, nd(rng)) * 3.f;  // half of them exactly 0
      else v = nd(rng);
    }
    x[0] = -std::numeric_limits<float>::infinity();
    x[cs.n / 2] = -0.0f;
    std::vector<int32_t> want(std::min(cs.k, cs.n)), got;
    kernels::TopK(x.data(), cs.n, static_cast<int64_t>(want.size()), want.data());
    const int level = HostTopKFast(x.data(), cs.n, cs.k, &got);
    EXPECT_EQ(got, want) << cs.what;
    if (cs.want_level != -2) { EXPECT_EQ(level, cs.want_level) << cs.what; }
  }
  // The kernel's parallel search (a thread per pair of bins, suffix sums) picks what the sequential
  // TopKThresholdBin picks, on every need, for histograms with empty bins and single heavy ones.
  std::uniform_int_distribution<int> count(0, 3), heavy(0, 9);
  for (int trial = 0; trial < 200; ++trial) {
    std::vector<int> hist(64);
    for (int& h : hist) h = heavy(rng) == 0 ? 40 : count(rng) * (trial % 3);
    int total = 0;
    for (int h : hist) total += h;
    for (int need = 1; need <= total; ++need) {
      int picks = 0, bin = -1, above = -1, suffix = 0;
      for (int b0 = 62; b0 >= 0; b0 -= 2) {
        suffix += hist[b0] + hist[b0 + 1];
        int pb = 0, pa = 0;
        if (TopKPickInPair(b0, hist[b0], hist[b0 + 1], suffix, need, &pb, &pa)) ++picks, bin = pb, above = pa;
      }
      int want_above = 0;
      const int want = TopKThresholdBin(hist.data(), 64, need, &want_above);
      ASSERT_EQ(picks, 1) << trial << " " << need;
      ASSERT_EQ(bin, want) << trial << " " << need;
      ASSERT_EQ(above, want_above) << trial << " " << need;
    }
  }
  int above = 0;
  const int hist[4] = {5, 0, 3, 2};
  EXPECT_EQ(TopKThresholdBin(hist, 4, 1, &above), 3);
  EXPECT_EQ(above, 0);
  EXPECT_EQ(TopKThresholdBin(hist, 4, 3, &above), 2);
  EXPECT_EQ(above, 2);
  EXPECT_EQ(TopKThresholdBin(hist, 4, 6, &above), 0);
  EXPECT_EQ(above, 5);
  EXPECT_EQ(TopKFastLaunch(3).smem_bytes, std::max(kTopKHistCopies * kTopKBins * 4, kTopKCandidates * 8));
  EXPECT_TRUE(Launchable(TopKFastLaunch(65536)));
}

}  // namespace
}  // namespace dsv4::kernels::cuda
