// Every CUDA kernel against its CPU kernel (kernels/cpu, the reference) or a plain loop, over awkward
// shapes, plus the golden kernel cases on the GPU. Label `gpu`: every test skips when no CUDA device
// is present (cudaGetDeviceCount fails or finds none) and must pass when one is.
//
// Tolerances: bit-exact where the GPU performs the same float operations in the same order (QDQ,
// Hadamard, top-k, gathers); otherwise float32 sums in another order, bounded relative to the
// output's scale, with the reason next to each.
#include <cuda_runtime_api.h>
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
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/launch.h"
#include "kernels/cuda/memory.h"
#include "kernels/cuda/mma_model.h"
#include "tests/testutil.h"

namespace dsv4::kernels::cuda {
namespace {

using dsv4::testing::AllClose;

bool DeviceAvailable() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

// A device copy of a host vector, freed at scope exit.
template <typename T>
class DevVec {
 public:
  explicit DevVec(size_t n) : n_(n) { EXPECT_EQ(cudaMalloc(&p_, std::max<size_t>(1, n) * sizeof(T)), cudaSuccess); }
  explicit DevVec(const std::vector<T>& v) : DevVec(v.size()) {
    EXPECT_EQ(cudaMemcpy(p_, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DevVec() { cudaFree(p_); }
  DevVec(const DevVec&) = delete;
  DevVec& operator=(const DevVec&) = delete;
  T* get() const { return static_cast<T*>(p_); }
  std::vector<T> Host() const {
    std::vector<T> v(n_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(v.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }

 private:
  void* p_ = nullptr;
  size_t n_;
};

class CudaKernels : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!DeviceAvailable()) GTEST_SKIP() << "no CUDA device";
    ASSERT_EQ(cudaStreamCreate(&stream_), cudaSuccess);
  }
  void TearDown() override {
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }
  void Sync() { ASSERT_EQ(cudaStreamSynchronize(stream_), cudaSuccess); }

  std::vector<float> Random(size_t n, float sigma = 1.f) {
    std::normal_distribution<float> nd(0.f, sigma);
    std::vector<float> v(n);
    for (auto& x : v) x = nd(rng_);
    return v;
  }

  cudaStream_t stream_ = nullptr;
  std::mt19937 rng_{1234};
};

bool SameBits(float a, float b) {
  return (std::isnan(a) && std::isnan(b)) || std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b);
}

double MaxAbs(const std::vector<float>& v) {
  double m = 0;
  for (float x : v)
    if (std::isfinite(x)) m = std::max(m, static_cast<double>(std::fabs(x)));
  return m;
}

// ---- rounding, norms, rotations --------------------------------------------------------------------

TEST_F(CudaKernels, QdqBitExact) {
  for (int64_t n : {1, 31, 100, 448, 4096})
    for (int group : {16, 32, 64, 128})
      for (bool fp4 : {false, true}) {
        const int64_t m = 5, ld = n + 3;
        std::vector<float> x = Random(m * ld, 3.f);
        for (size_t i = 0; i < x.size(); i += 7) x[i] *= 1e-6f;
        std::vector<float> want = x;
        if (fp4) kernels::QdqFp4(want.data(), m, n, ld, group);
        else kernels::QdqFp8(want.data(), m, n, ld, group);
        DevVec<float> d(x);
        ASSERT_EQ((fp4 ? QdqFp4 : QdqFp8)(d.get(), m, n, ld, group, stream_), cudaSuccess);
        const std::vector<float> got = d.Host();
        for (size_t i = 0; i < x.size(); ++i)
          ASSERT_TRUE(SameBits(got[i], want[i])) << "n " << n << " group " << group << " fp4 " << fp4 << " at " << i;
      }
}

// Float sums of n squares in another order: relative 1e-5.
// V4.1's compressed KV rounding (E4M3 group scales) and the indexer's weight scaling.
TEST_F(CudaKernels, QdqFp4E4m3AndScaleBitExact) {
  for (int64_t n : {1, 15, 64, 512})
    for (int group : {16, 32}) {
      const int64_t m = 4, ld = n + 3;
      std::vector<float> x = Random(m * ld, 3.f);
      for (size_t i = 0; i < x.size(); i += 5) x[i] *= 1e-5f;
      std::vector<float> want = x;
      kernels::QdqFp4E4m3(want.data(), m, n, ld, group);
      DevVec<float> d(x);
      ASSERT_EQ(QdqFp4E4m3(d.get(), m, n, ld, group, stream_), cudaSuccess);
      const std::vector<float> got = d.Host();
      for (size_t i = 0; i < x.size(); ++i)
        ASSERT_TRUE(SameBits(got[i], want[i])) << "n " << n << " group " << group << " at " << i;
    }
  std::vector<float> x = Random(1000, 2.f), want = x;
  kernels::Scale(want.data(), 1000, 0.0883883f);
  DevVec<float> d(x);
  ASSERT_EQ(Scale(d.get(), 1000, 0.0883883f, stream_), cudaSuccess);
  const std::vector<float> got = d.Host();
  for (size_t i = 0; i < x.size(); ++i) ASSERT_TRUE(SameBits(got[i], want[i])) << i;
}

// The watchdog's flags: NaN, +Inf and -Inf anywhere in a checked row, nothing outside the first n.
TEST_F(CudaKernels, FlagNonFiniteAsTheCpu) {
  const int64_t rows = 6, n = 300, ld = 320;
  std::vector<float> x = Random(rows * ld, 1.f);
  x[1 * ld + 299] = std::numeric_limits<float>::quiet_NaN();
  x[3 * ld + 0] = std::numeric_limits<float>::infinity();
  x[4 * ld + 150] = -std::numeric_limits<float>::infinity();
  x[5 * ld + 310] = std::numeric_limits<float>::quiet_NaN();  // past n: not flagged
  const std::vector<int32_t> ids = {5, 4, 3, 2, 1, 0, 3};
  std::vector<int32_t> want(ids.size(), -1);
  kernels::FlagNonFinite(x.data(), ld, n, ids.data(), static_cast<int64_t>(ids.size()), want.data());
  EXPECT_EQ(want, (std::vector<int32_t>{0, 1, 1, 0, 1, 0, 1}));
  DevVec<float> dx(x);
  DevVec<int32_t> dids(ids), dflags(std::vector<int32_t>(ids.size(), -1));
  ASSERT_EQ(FlagNonFinite(dx.get(), ld, n, dids.get(), static_cast<int64_t>(ids.size()), dflags.get(), stream_),
            cudaSuccess);
  EXPECT_EQ(dflags.Host(), want);
}

// Attention's rows from the indexer's picks: the same table as the CPU kernel's, rows wider than k.
TEST_F(CudaKernels, PickRowsAsTheCpu) {
  const int64_t m = 37, k = 512, per = 64, ld = 640, blocks = 40;
  std::vector<int32_t> picks(m * k), base(blocks);
  for (int64_t b = 0; b < blocks; ++b) base[b] = static_cast<int32_t>(((b * 7) % blocks) * per);
  for (int64_t e = 0; e < m * k; ++e)
    picks[e] = e % 11 == 0 ? -1 : static_cast<int32_t>((e * 2654435761u) % (blocks * per));
  std::vector<int32_t> want(m * ld, -5);
  kernels::PickRows(picks.data(), m, k, base.data(), per, 1000, want.data(), ld);
  DevVec<int32_t> dpicks(picks), dbase(base), drows(std::vector<int32_t>(m * ld, -5));
  ASSERT_EQ(PickRows(dpicks.get(), m, k, dbase.get(), per, 1000, drows.get(), ld, stream_), cudaSuccess);
  EXPECT_EQ(drows.Host(), want);
}

// V4.1's two levels at a real layer's sizes (1024 positions in blocks of 16, 8 blocks kept, top-512)
// against the CPU kernels, bit for bit: they only compare and copy.
TEST_F(CudaKernels, TwoLevelIndexerAsTheCpu) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const int64_t n = 21, width = 1024, bs = 16, topk_blocks = 8, k = 512;
  const int64_t nb = kernels::CandidateBlockCount(width, bs);
  std::vector<int64_t> nvis(n);
  std::vector<float> scores = Random(n * width, 1.f), later = Random(n * width, 1.f);
  for (int64_t t = 0; t < n; ++t) {
    nvis[t] = t == 0 ? 0 : (t * 397) % width + 1;
    for (int64_t p = nvis[t]; p < width; ++p) scores[t * width + p] = later[t * width + p] = -kInf;
  }
  std::vector<uint8_t> keep(n * nb);
  kernels::SelectCandidateBlocks(scores.data(), n, width, nvis.data(), topk_blocks, bs, keep.data());
  DevVec<float> dscores(scores), dlater(later);
  DevVec<int64_t> dnvis(nvis);
  DevVec<uint8_t> dkeep(std::vector<uint8_t>(n * nb, 9));
  const int64_t bytes = SelectCandidateBlocksWorkspaceBytes(n, width, topk_blocks, bs);
  ASSERT_GT(bytes, 0);
  DevVec<char> work(static_cast<size_t>(bytes));
  ASSERT_EQ(SelectCandidateBlocks(dscores.get(), n, width, dnvis.get(), topk_blocks, bs, dkeep.get(), work.get(), bytes,
                                  stream_),
            cudaSuccess);
  EXPECT_EQ(dkeep.Host(), keep);
  kernels::MaskToCandidates(later.data(), n, width, keep.data(), bs);
  ASSERT_EQ(MaskToCandidates(dlater.get(), n, width, dkeep.get(), bs, stream_), cudaSuccess);
  const std::vector<float> got = dlater.Host();
  for (size_t i = 0; i < later.size(); ++i) ASSERT_TRUE(SameBits(got[i], later[i])) << i;
  std::vector<int32_t> picks(n * k);
  kernels::TopK(later.data(), n, width, width, nvis.data(), k, picks.data(), k);
  DevVec<int32_t> dpicks(picks);
  kernels::DropMaskedPicks(later.data(), n, width, nvis.data(), picks.data(), k);
  ASSERT_EQ(DropMaskedPicks(dlater.get(), n, width, dnvis.get(), dpicks.get(), k, stream_), cudaSuccess);
  EXPECT_EQ(dpicks.Host(), picks);
}

TEST_F(CudaKernels, RmsNorm) {
  for (int64_t n : {1, 33, 512, 4097})
    for (bool gain : {false, true})
      for (bool in_place : {false, true}) {
        const int64_t m = 7, ld = n + 1;
        const std::vector<float> x = Random(m * ld, 2.f), w = Random(n);
        std::vector<float> want(m * ld, 0.f);
        kernels::RmsNorm(x.data(), gain ? w.data() : nullptr, 1e-6f, m, n, ld, want.data(), ld);
        DevVec<float> dx(x), dw(w), dy(std::vector<float>(m * ld, 0.f));
        float* out = in_place ? dx.get() : dy.get();
        ASSERT_EQ(RmsNorm(dx.get(), gain ? dw.get() : nullptr, 1e-6f, m, n, ld, out, ld, stream_), cudaSuccess);
        std::vector<float> got = in_place ? dx.Host() : dy.Host();
        for (int64_t t = 0; t < m; ++t)  // the padding column is not part of the output
          got[t * ld + n] = want[t * ld + n] = 0.f;
        EXPECT_TRUE(AllClose("rmsnorm", got.data(), want.data(), got.size(), {.abs = 1e-6, .rel = 1e-5}))
            << n << " " << gain << " " << in_place;
      }
}

// Same products and sums as the CPU: 1e-6.
TEST_F(CudaKernels, Rope) {
  const int64_t tokens = 5, heads = 3, half = 32, ld = 2 * half + 448;  // rope on the last 64 of 512
  const std::vector<float> x = Random(tokens * heads * ld);
  std::vector<float> cos(tokens * half), sin(tokens * half);
  for (int64_t t = 0; t < tokens; ++t)
    for (int64_t i = 0; i < half; ++i) {
      const float angle = static_cast<float>(t * 37 + 1) * std::pow(10000.f, -static_cast<float>(i) / half);
      cos[t * half + i] = std::cos(angle), sin[t * half + i] = std::sin(angle);
    }
  for (bool inverse : {false, true}) {
    std::vector<float> want = x;
    for (int64_t r = 0; r < tokens * heads; ++r)
      kernels::Rope(&want[r * ld + 448], half, &cos[(r / heads) * half], &sin[(r / heads) * half], inverse);
    DevVec<float> dx(x), dc(cos), ds(sin);
    ASSERT_EQ(Rope(dx.get() + 448, tokens * heads, ld, half, dc.get(), ds.get(), heads, inverse, stream_), cudaSuccess);
    const std::vector<float> got = dx.Host();
    EXPECT_TRUE(AllClose("rope", got.data(), want.data(), got.size(), {.abs = 1e-6}));
  }
}

TEST_F(CudaKernels, HadamardBitExact) {
  for (int64_t n : {2, 64, 128, 512, 8192}) {
    const int64_t m = 3, ld = n + 2;
    const std::vector<float> x = Random(m * ld);
    std::vector<float> want = x;
    const float scale = 1.0f / std::sqrt(static_cast<float>(n));
    for (int64_t r = 0; r < m; ++r) kernels::Hadamard(&want[r * ld], n, scale);
    DevVec<float> d(x);
    ASSERT_EQ(Hadamard(d.get(), m, n, ld, scale, stream_), cudaSuccess);
    const std::vector<float> got = d.Host();
    for (size_t i = 0; i < got.size(); ++i) ASSERT_TRUE(SameBits(got[i], want[i])) << n << " at " << i;
  }
  DevVec<float> d(std::vector<float>(96));
  EXPECT_EQ(Hadamard(d.get(), 1, 96, 96, 1.f, stream_), cudaErrorInvalidValue);
}

TEST_F(CudaKernels, SwiGlu) {
  const int64_t m = 9, I = 300, ld = 301;
  std::vector<float> g = Random(m * ld, 6.f), u = Random(m * ld, 6.f), w = Random(m);
  for (float limit : {0.f, 10.f})
    for (bool weighted : {false, true}) {
      std::vector<float> want(m * ld, 0.f);
      kernels::ref::SwiGlu(g.data(), u.data(), m, I, ld, weighted ? w.data() : nullptr, limit, want.data());
      DevVec<float> dg(g), du(u), dw(w), dh(std::vector<float>(m * ld, 0.f));
      ASSERT_EQ(SwiGlu(dg.get(), du.get(), m, I, ld, weighted ? dw.get() : nullptr, limit, dh.get(), stream_),
                cudaSuccess);
      const std::vector<float> got = dh.Host();
      // expf on the device is within 2 ulp of the host's.
      EXPECT_TRUE(AllClose("swiglu", got.data(), want.data(), got.size(), {.abs = 1e-6, .rel = 1e-5}));
    }
}

// ---- mHC -------------------------------------------------------------------------------------------

// Dots over hc*D elements in another order feed sigmoids and Sinkhorn: 1e-4 relative.
TEST_F(CudaKernels, HcPreAndPost) {
  for (int hc : {1, 3, 4})
    for (int64_t D : {1, 100, 4096}) {
      const int64_t m = 6, mix = hc * (hc + 2), width = hc * D, ldx = width + 4;
      const std::vector<float> x = Random(m * ldx), fn = Random(mix * width, 0.05f), base = Random(mix),
                               scale3 = {0.5f, 0.8f, 1.1f}, y = Random(m * D);
      std::vector<float> want_u(m * D), want_post(m * hc), want_comb(m * hc * hc);
      kernels::ref::HcPre(x.data(), m, hc, D, ldx, fn.data(), scale3.data(), base.data(), 20, 1e-6f, 1e-6f,
                          want_u.data(), want_post.data(), want_comb.data());
      DevVec<float> dx(x), dfn(fn), dbase(base), dscale(scale3), du(m * D), dpost(m * hc), dcomb(m * hc * hc), dy(y);
      ASSERT_EQ(HcPre(dx.get(), m, hc, D, ldx, dfn.get(), dscale.get(), dbase.get(), 20, 1e-6f, 1e-6f, du.get(),
                      dpost.get(), dcomb.get(), nullptr, stream_),
                cudaSuccess);
      const std::vector<float> got_u = du.Host(), got_post = dpost.Host(), got_comb = dcomb.Host();
      const std::string tag = "hc " + std::to_string(hc) + " D " + std::to_string(D);
      EXPECT_TRUE(AllClose("hc collapse " + tag, got_u.data(), want_u.data(), got_u.size(), {.abs = 1e-4, .rel = 1e-4}));
      EXPECT_TRUE(AllClose("hc post " + tag, got_post.data(), want_post.data(), got_post.size(), {.abs = 1e-5}));
      EXPECT_TRUE(AllClose("hc comb " + tag, got_comb.data(), want_comb.data(), got_comb.size(), {.abs = 1e-5}));

      // Post with the reference's post/comb: same operations as the CPU loop.
      std::vector<float> want_x = x;
      for (int64_t t = 0; t < m; ++t)
        for (int64_t d = 0; d < D; ++d) {
          float in[4];
          for (int i = 0; i < hc; ++i) in[i] = x[t * ldx + i * D + d];
          for (int j = 0; j < hc; ++j) {
            float o = want_post[t * hc + j] * y[t * D + d];
            for (int i = 0; i < hc; ++i) o += want_comb[t * hc * hc + i * hc + j] * in[i];
            want_x[t * ldx + j * D + d] = o;
          }
        }
      DevVec<float> dpost_ref(want_post), dcomb_ref(want_comb);
      ASSERT_EQ(HcPost(dy.get(), D, dpost_ref.get(), dcomb_ref.get(), m, hc, D, dx.get(), ldx, stream_), cudaSuccess);
      const std::vector<float> got_x = dx.Host();
      EXPECT_TRUE(AllClose("hc post " + tag, got_x.data(), want_x.data(), got_x.size(), {.abs = 1e-6, .rel = 1e-6}));
    }
}

// ---- linear layers ---------------------------------------------------------------------------------

struct HostWeight {
  std::vector<uint8_t> data, scales;
  WeightMatrix w;
};

// FP8 blocks of block x block (V4: 128; V4.1: 32), FP4 scales per 32.
HostWeight MakeWeight(WeightType type, int64_t rows, int64_t cols, std::mt19937& rng, int block = 128) {
  std::uniform_int_distribution<int> byte(0, 255);
  std::normal_distribution<float> nd;
  HostWeight h;
  const int64_t ld = type == WeightType::kFP4 ? (cols + 1) / 2 : cols;
  const int64_t es = type == WeightType::kF32 ? 4 : type == WeightType::kBF16 ? 2 : 1;
  h.data.resize(rows * ld * es);
  if (type == WeightType::kF32) {
    for (int64_t i = 0; i < rows * cols; ++i) reinterpret_cast<float*>(h.data.data())[i] = nd(rng);
  } else if (type == WeightType::kBF16) {
    for (int64_t i = 0; i < rows * cols; ++i) reinterpret_cast<uint16_t*>(h.data.data())[i] = FloatToBf16(nd(rng));
  } else {
    for (auto& b : h.data) b = static_cast<uint8_t>(byte(rng) & (type == WeightType::kFP8 ? 0x77 : 0xff));
  }
  WeightMatrix& w = h.w;
  w.type = type, w.ld = ld, w.row_end = rows, w.col_end = cols;
  if (type == WeightType::kFP8) {
    w.block_rows = w.block_cols = block, w.scale_ld = (cols + block - 1) / block;
    h.scales.resize(((rows + block - 1) / block) * w.scale_ld);
  } else if (type == WeightType::kFP4) {
    w.block_cols = 32, w.scale_ld = (cols + 31) / 32;
    h.scales.resize(rows * w.scale_ld);
  }
  for (auto& s : h.scales) s = static_cast<uint8_t>(120 + byte(rng) % 10);
  w.data = h.data.data();
  w.scales = h.scales.empty() ? nullptr : h.scales.data();
  return h;
}

// Float sums of up to 1000 products in another order: 1e-5 of the output's scale.
TEST_F(CudaKernels, LinearAllFormatsAndShards) {
  DevicePool pool;
  ASSERT_EQ(DevicePool::Create(64 << 20, &pool), cudaSuccess);
  for (WeightType type : {WeightType::kF32, WeightType::kBF16, WeightType::kFP8, WeightType::kFP4})
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 32}, {70, 96}, {300, 1000}}) {
      HostWeight h = MakeWeight(type, rows, cols, rng_);
      for (int view = 0; view < 3; ++view) {
        WeightMatrix wv = h.w;
        if (view == 1 && rows > 2) wv.row_begin = 1, wv.row_end = rows - 1;        // a row shard
        if (view == 2 && cols >= 64) wv.col_begin = 32, wv.col_end = cols - 1;   // a column shard
        WeightMatrix dw;
        const int64_t mark = pool.used();
        ASSERT_EQ(UploadWeight(wv, pool, stream_, &dw), cudaSuccess);
        for (int64_t m : {1, 3, 4, 5, 33, 70}) {
          const int64_t ldx = cols + 3, ldy = wv.rows() + 2;
          const std::vector<float> x = Random(m * ldx);
          std::vector<float> want(m * ldy, 0.f);
          kernels::ref::Linear(x.data() + wv.col_begin, m, ldx, wv, want.data(), ldy);
          DevVec<float> dx(x), dy(std::vector<float>(m * ldy, 0.f));
          ASSERT_EQ(Linear(dx.get() + wv.col_begin, m, ldx, dw, dy.get(), ldy, stream_), cudaSuccess);
          const std::vector<float> got = dy.Host();
          const double scale = MaxAbs(want);
          EXPECT_TRUE(AllClose("linear", got.data(), want.data(), got.size(), {.abs = 1e-5 * (scale + 1), .rel = 1e-5}))
              << "type " << static_cast<int>(type) << " " << rows << "x" << cols << " view " << view << " m " << m;
        }
        pool.Reset(mark);
      }
    }
}

TEST_F(CudaKernels, GroupedLinearExperts) {
  const int64_t E = 4, rows = 96, cols = 160, ld = cols + 1;
  const std::vector<int32_t> offsets = {0, 5, 5, 40, 41};  // an empty expert, a single-token one
  const int64_t T = offsets.back();
  for (WeightType type : {WeightType::kFP4, WeightType::kFP8}) {
    DevicePool pool;
    ASSERT_EQ(DevicePool::Create(16 << 20, &pool), cudaSuccess);
    std::vector<HostWeight> host;
    std::vector<WeightMatrix> dev(E);
    for (int64_t e = 0; e < E; ++e) {
      host.push_back(MakeWeight(type, rows, cols, rng_));
      ASSERT_EQ(UploadWeight(host.back().w, pool, stream_, &dev[e]), cudaSuccess);
    }
    const std::vector<float> x = Random(T * ld);
    std::vector<float> want(T * rows);
    for (int64_t e = 0; e < E; ++e)
      kernels::ref::Linear(&x[offsets[e] * ld], offsets[e + 1] - offsets[e], ld, host[e].w, &want[offsets[e] * rows],
                           rows);
    DevVec<float> dx(x), dy(std::vector<float>(T * rows, 0.f));
    DevVec<int32_t> doff(offsets);
    DevVec<WeightMatrix> dweights(dev);
    ASSERT_EQ(GroupedLinear(dx.get(), ld, dweights.get(), dev[0], doff.get(), E, T, dy.get(), rows, stream_),
              cudaSuccess);
    const std::vector<float> got = dy.Host();
    EXPECT_TRUE(AllClose("grouped", got.data(), want.data(), got.size(), {.abs = 1e-5 * (MaxAbs(want) + 1), .rel = 1e-5}))
        << static_cast<int>(type);
  }
}

// ---- the tensor-core linear kernels ------------------------------------------------------------------

// The hardware against the register model (mma_model.h) every tensor-core kernel and host replay
// assumes: random small integers (exact in f16, bf16 and e4m3, their products and sums exact in
// f32) placed by the model, one mma per flavour, results compared bit for bit.
TEST_F(CudaKernels, MmaRegisterModel) {
  std::uniform_int_distribution<int> small(-4, 4);
  for (int flavor = 0; flavor < 3; ++flavor) {
    const int per_reg = flavor == 2 ? 4 : 2, K = 8 * per_reg;
    std::vector<float> A(16 * K), B(K * 8);
    for (auto& v : A) v = static_cast<float>(small(rng_));
    for (auto& v : B) v = static_cast<float>(small(rng_));
    auto encode = [&](float v) -> uint32_t {
      if (flavor == 0) return FloatToHalfBits(v);
      if (flavor == 1) return FloatToBf16Bits(v);
      for (uint32_t b = 0; b < 256; ++b)
        if (Fp8E4m3ToFloat(static_cast<uint8_t>(b)) == v) return b;
      return 0;
    };
    std::vector<uint32_t> a(32 * 4, 0), b(32 * 2, 0);
    for (int lane = 0; lane < 32; ++lane)
      for (int e = 0; e < per_reg; ++e) {
        for (int r = 0; r < 4; ++r)
          a[4 * lane + r] |= encode(A[MmaRowA(lane, r) * K + MmaK(lane, r >> 1, e, per_reg)]) << (32 / per_reg * e);
        for (int p = 0; p < 2; ++p)
          b[2 * lane + p] |= encode(B[MmaK(lane, p, e, per_reg) * 8 + MmaColB(lane)]) << (32 / per_reg * e);
      }
    DevVec<uint32_t> da(a), db(b);
    DevVec<float> dd(32 * 4);
    const cudaError_t err = MmaProbe(flavor, da.get(), db.get(), dd.get(), stream_);
    if (flavor == 2 && err == cudaErrorNotSupported) continue;  // FP8 tensor cores: sm_89+
    ASSERT_EQ(err, cudaSuccess);
    const std::vector<float> d = dd.Host();
    for (int lane = 0; lane < 32; ++lane)
      for (int i = 0; i < 4; ++i) {
        const int row = MmaRowD(lane, i), col = MmaColD(lane, i);
        float want = 0.f;
        for (int k = 0; k < K; ++k) want += A[row * K + k] * B[k * 8 + col];
        ASSERT_EQ(d[4 * lane + i], want) << "flavor " << flavor << " lane " << lane << " reg " << i;
      }
  }
}

double Scale(const std::vector<float>& v) { return MaxAbs(v) + 1e-30; }

// The skinny tensor-core kernel (BF16 / FP8 V4 / FP8 V4.1 / FP4 weights, K multiples of 128, shards
// on chunk boundaries) and the FP8 tiled kernel (FP8 weights, rounded activations, m > 64, with a
// workspace) against the reference, every m from decode to prefill blocks, with and without a
// workspace (split-K), with and without rounded activations.
// Tolerances, relative to the output's largest magnitude: 1e-4 for the f16 / bf16 paths
// (activations carried in two half-precision terms: 22 / 16 bits; tensor-core f32 accumulation
// truncates), 2e-3 for the e4m3 path (exact FP8 products, but the tensor cores add them with about
// 14 bits of alignment on sm_90, DeepSeek-V3 section 3.3.2; promoted to f32 every <= 128 columns).
TEST_F(CudaKernels, LinearTensorCorePaths) {
  struct Case {
    WeightType type;
    int block;
  };
  DevicePool pool;
  ASSERT_EQ(DevicePool::Create(256 << 20, &pool), cudaSuccess);
  for (Case cs : {Case{WeightType::kBF16, 1}, Case{WeightType::kFP8, 128}, Case{WeightType::kFP8, 32},
                  Case{WeightType::kFP4, 32}})
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 128}, {40, 384}, {300, 1024}, {2048, 256}}) {
      HostWeight h = MakeWeight(cs.type, rows, cols, rng_, cs.block);
      for (int view = 0; view < 2; ++view) {
        WeightMatrix wv = h.w;
        if (view == 1 && cols >= 256) wv.row_begin = rows > 2 ? 1 : 0, wv.col_begin = 128;  // a shard
        WeightMatrix dw;
        const int64_t mark = pool.used();
        ASSERT_EQ(UploadWeight(wv, pool, stream_, &dw), cudaSuccess);
        for (int64_t m : {1, 9, 64, 65, 130})
          for (int act_group : {0, 128, 32}) {
            if (cs.type == WeightType::kBF16 && act_group > 0) continue;
            const int64_t ldx = wv.cols() + 4, ldy = wv.rows() + 2;
            std::vector<float> x = Random(m * ldx);
            for (size_t i = 0; i < x.size(); i += 97) x[i] *= 40.f;  // outliers
            std::vector<float> xq = x;
            if (act_group > 0) kernels::QdqFp8(xq.data(), m, wv.cols(), ldx, act_group);
            std::vector<float> want(m * ldy, 0.f);
            kernels::ref::Linear(xq.data(), m, ldx, wv, want.data(), ldy);
            DevVec<float> dx(x);
            for (bool workspace : {false, true}) {
              const int64_t ws_bytes = workspace ? LinearWorkspaceBytes(m, dw, act_group) : 0;
              DevVec<uint8_t> ws(std::max<int64_t>(ws_bytes, 1));
              DevVec<float> dy(std::vector<float>(m * ldy, 0.f));
              LinearOptions o;
              o.act_fp8_group = act_group;
              o.workspace = workspace ? ws.get() : nullptr;
              o.workspace_bytes = ws_bytes;
              ASSERT_EQ(Linear(dx.get(), m, ldx, dw, dy.get(), ldy, o, stream_), cudaSuccess);
              const std::vector<float> got = dy.Host();
              const LinearChoice c = ChooseLinear(m, dw, act_group, ws_bytes, CurrentDeviceCaps(), true);
              const double tol = c.path == LinearPath::kFp8Tiled ? 2e-3 : 1e-4;
              EXPECT_TRUE(AllClose("linear", got.data(), want.data(), got.size(), {.abs = tol * Scale(want)}))
                  << "type " << static_cast<int>(cs.type) << " block " << cs.block << " " << rows << "x" << cols
                  << " view " << view << " m " << m << " act_group " << act_group << " workspace " << workspace
                  << " path " << static_cast<int>(c.path) << " splits " << c.skinny.splits;
            }
          }
        pool.Reset(mark);
      }
    }
}

// A workspace the kernels cannot use as given is an error, not a silent fallback or a misaligned
// cp.async: Linear and SparseAttention take 16-byte aligned workspaces only.
TEST_F(CudaKernels, MisalignedWorkspaceIsInvalid) {
  DevicePool pool;
  ASSERT_EQ(DevicePool::Create(16 << 20, &pool), cudaSuccess);
  HostWeight h = MakeWeight(WeightType::kFP8, 256, 512, rng_);
  WeightMatrix dw;
  ASSERT_EQ(UploadWeight(h.w, pool, stream_, &dw), cudaSuccess);
  DevVec<float> dx(Random(130 * 512)), dy(130 * 256);
  DevVec<uint8_t> ws(1 << 20);
  LinearOptions o;
  o.act_fp8_group = 128, o.workspace = ws.get() + 4, o.workspace_bytes = (1 << 20) - 4;
  EXPECT_EQ(Linear(dx.get(), 130, 512, dw, dy.get(), 256, o, stream_), cudaErrorInvalidValue);
  o.workspace = ws.get(), o.workspace_bytes = -1;
  EXPECT_EQ(Linear(dx.get(), 130, 512, dw, dy.get(), 256, o, stream_), cudaErrorInvalidValue);
  o.workspace_bytes = 1 << 20;
  EXPECT_EQ(Linear(dx.get(), 130, 512, dw, dy.get(), 256, o, stream_), cudaSuccess);
  EXPECT_EQ(cudaStreamSynchronize(stream_), cudaSuccess);
}

// A token's result does not depend on the other tokens of the call: bit for bit, m = 1 against
// m = 64 and m = 5, on every tensor-core format (the skinny kernel's sums per output element are
// fixed by the weight's shape alone).
TEST_F(CudaKernels, LinearBatchInvariant) {
  DevicePool pool;
  ASSERT_EQ(DevicePool::Create(64 << 20, &pool), cudaSuccess);
  for (WeightType type : {WeightType::kBF16, WeightType::kFP8, WeightType::kFP4})
    for (bool workspace : {false, true}) {
      HostWeight h = MakeWeight(type, 1024, 4096, rng_);
      WeightMatrix dw;
      ASSERT_EQ(UploadWeight(h.w, pool, stream_, &dw), cudaSuccess);
      const int64_t K = 4096, N = 1024;
      const std::vector<float> x = Random(64 * K);
      DevVec<float> dx(x), y64(64 * N), y5(5 * N), y1(N);
      const int64_t ws_bytes = LinearWorkspaceBytes(64, dw, 0);
      DevVec<uint8_t> ws(std::max<int64_t>(ws_bytes, 1));
      LinearOptions o;
      o.workspace = workspace ? ws.get() : nullptr;
      o.workspace_bytes = workspace ? ws_bytes : 0;
      ASSERT_EQ(Linear(dx.get(), 64, K, dw, y64.get(), N, o, stream_), cudaSuccess);
      ASSERT_EQ(Linear(dx.get() + 7 * K, 5, K, dw, y5.get(), N, o, stream_), cudaSuccess);
      const std::vector<float> a = y64.Host(), b = y5.Host();
      for (int64_t t = 0; t < 64; t += 9) {
        ASSERT_EQ(Linear(dx.get() + t * K, 1, K, dw, y1.get(), N, o, stream_), cudaSuccess);
        const std::vector<float> c = y1.Host();
        for (int64_t r = 0; r < N; ++r) ASSERT_TRUE(SameBits(c[r], a[t * N + r])) << "token " << t << " row " << r;
      }
      for (int64_t t = 0; t < 5; ++t)
        for (int64_t r = 0; r < N; ++r) ASSERT_TRUE(SameBits(b[t * N + r], a[(7 + t) * N + r])) << t << " " << r;
      pool.Reset();
    }
}

// MoE experts through the skinny kernel: an empty expert, a single token, one with two blocks of
// tokens; rounded activations or not. 1e-4 of the output scale, as LinearTensorCorePaths.
TEST_F(CudaKernels, GroupedLinearTensorCore) {
  const int64_t E = 5, rows = 96, cols = 256, ld = cols + 4;
  const std::vector<int32_t> offsets = {0, 5, 5, 75, 76, 80};
  const int64_t T = offsets.back(), max_rows = 70;
  for (WeightType type : {WeightType::kFP4, WeightType::kFP8, WeightType::kBF16})
    for (int act_group : {0, 128}) {
      if (type == WeightType::kBF16 && act_group > 0) continue;
      DevicePool pool;
      ASSERT_EQ(DevicePool::Create(16 << 20, &pool), cudaSuccess);
      std::vector<HostWeight> host;
      std::vector<WeightMatrix> dev(E);
      for (int64_t e = 0; e < E; ++e) {
        host.push_back(MakeWeight(type, rows, cols, rng_));
        ASSERT_EQ(UploadWeight(host.back().w, pool, stream_, &dev[e]), cudaSuccess);
      }
      const std::vector<float> x = Random(T * ld);
      std::vector<float> xq = x;
      if (act_group > 0) kernels::QdqFp8(xq.data(), T, cols, ld, act_group);
      std::vector<float> want(T * rows);
      for (int64_t e = 0; e < E; ++e)
        kernels::ref::Linear(&xq[offsets[e] * ld], offsets[e + 1] - offsets[e], ld, host[e].w, &want[offsets[e] * rows],
                             rows);
      DevVec<float> dx(x), dy(std::vector<float>(T * rows, 0.f));
      DevVec<int32_t> doff(offsets);
      DevVec<WeightMatrix> dweights(dev);
      LinearOptions o;
      o.act_fp8_group = act_group;
      ASSERT_EQ(GroupedLinear(dx.get(), ld, dweights.get(), dev[0], doff.get(), E, max_rows, dy.get(), rows, o, stream_),
                cudaSuccess);
      const std::vector<float> got = dy.Host();
      EXPECT_TRUE(AllClose("grouped", got.data(), want.data(), got.size(), {.abs = 1e-4 * Scale(want)}))
          << static_cast<int>(type) << " act_group " << act_group;
    }
}

// ---- attention -------------------------------------------------------------------------------------

// Softmax-weighted sums over up to 200 rows in another order: 1e-5 absolute on O(1) outputs.
TEST_F(CudaKernels, SparseAttentionMatchesCpu) {
  for (int64_t d : {40, 72, 128, 200, 512})
    for (int64_t H : {1, 5, 64})
      for (int64_t k : {1, 63, 64, 65, 200}) {
        if (H == 64 && d < 512 && k != 65) continue;  // keep the sweep short; every d and k still runs
        const int64_t m = 4, n0 = 128, n1 = 9, n2 = 70, total = n0 + n1 + n2;
        const std::vector<float> s0 = Random(n0 * d), s1 = Random(n1 * d), s2 = Random(n2 * d), q = Random(m * H * d),
                                 sink = Random(H);
        std::vector<int32_t> idx(m * k);
        std::uniform_int_distribution<int32_t> pick(-1, static_cast<int32_t>(total - 1));
        for (auto& v : idx) v = pick(rng_);
        for (int64_t j = 0; j < k; ++j) idx[2 * k + j] = -1;  // query 2 sees nothing: output 0
        KvSegments host_kv, dev_kv;
        host_kv.ptr[0] = s0.data(), host_kv.ptr[1] = s1.data(), host_kv.ptr[2] = s2.data();
        host_kv.len[0] = n0, host_kv.len[1] = n1, host_kv.len[2] = n2;
        const float scale = 1.0f / std::sqrt(static_cast<float>(d));
        std::vector<float> want(m * H * d);
        kernels::ref::SparseAttention(q.data(), m, H, d, host_kv, idx.data(), k, sink.data(), scale, want.data());
        DevVec<float> d0(s0), d1(s1), d2(s2), dq(q), dsink(sink), dout(m * H * d);
        DevVec<int32_t> didx(idx);
        dev_kv = host_kv;
        dev_kv.ptr[0] = d0.get(), dev_kv.ptr[1] = d1.get(), dev_kv.ptr[2] = d2.get();
        ASSERT_EQ(SparseAttention(dq.get(), m, H, d, dev_kv, didx.get(), k, dsink.get(), scale, dout.get(), stream_),
                  cudaSuccess);
        const std::vector<float> got = dout.Host();
        EXPECT_TRUE(AllClose("sparse attention", got.data(), want.data(), got.size(), {.abs = 1e-5, .rel = 1e-4}))
            << "d " << d << " H " << H << " k " << k;
        for (int64_t i = 2 * H * d; i < 3 * H * d; ++i) ASSERT_EQ(got[i], 0.f);
      }
}

// The fused kernel (d = 512): heads 1..128 (partial head groups), rows not a multiple of its tiles,
// masked rows and a query that sees nothing, decode and prefill, with and without a workspace (KV
// splits merged in order). Softmax-weighted sums in another order: 1e-5 absolute on O(1) outputs.
TEST_F(CudaKernels, FusedSparseAttention) {
  const int64_t d = 512, n0 = 700, n1 = 33;
  const std::vector<float> s0 = Random(n0 * d), s1 = Random(n1 * d);
  DevVec<float> d0(s0), d1(s1);
  KvSegments host_kv, dev_kv;
  host_kv.ptr[0] = s0.data(), host_kv.ptr[1] = s1.data(), host_kv.len[0] = n0, host_kv.len[1] = n1;
  dev_kv = host_kv;
  dev_kv.ptr[0] = d0.get(), dev_kv.ptr[1] = d1.get();
  for (int64_t H : {1, 5, 8, 16, 64, 128})
    for (int64_t k : {1, 7, 65, 640})
      for (int64_t m : {1, 3, 64}) {
        if (m == 64 && H != 64 && H != 8) continue;  // keep the sweep short
        const std::vector<float> q = Random(m * H * d, 0.05f), sink = Random(H);
        std::vector<int32_t> idx(m * k);
        std::uniform_int_distribution<int32_t> pick(-1, static_cast<int32_t>(n0 + n1 + 5));  // some past the end
        for (auto& v : idx) v = pick(rng_);
        if (m > 1)
          for (int64_t j = 0; j < k; ++j) idx[k + j] = -1;  // query 1 sees nothing: output 0
        const float scale = 1.0f / std::sqrt(static_cast<float>(d));
        std::vector<float> want(m * H * d);
        std::vector<int32_t> ref_idx = idx;  // the CPU reference takes only valid ids
        for (auto& v : ref_idx)
          if (v >= n0 + n1) v = -1;
        kernels::ref::SparseAttention(q.data(), m, H, d, host_kv, ref_idx.data(), k, sink.data(), scale, want.data());
        DevVec<float> dq(q), dsink(sink);
        DevVec<int32_t> didx(idx);
        for (bool workspace : {false, true}) {
          const int64_t ws_bytes = workspace ? SparseAttentionWorkspaceBytes(m, H, d, k) : 0;
          DevVec<uint8_t> ws(std::max<int64_t>(ws_bytes, 1));
          DevVec<float> dout(std::vector<float>(m * H * d, 7.f));
          ASSERT_EQ(SparseAttention(dq.get(), m, H, d, dev_kv, didx.get(), k, dsink.get(), scale, dout.get(),
                                    workspace ? ws.get() : nullptr, ws_bytes, stream_),
                    cudaSuccess);
          const std::vector<float> got = dout.Host();
          EXPECT_TRUE(AllClose("fused attention", got.data(), want.data(), got.size(), {.abs = 1e-5, .rel = 1e-4}))
              << "H " << H << " k " << k << " m " << m << " workspace " << workspace;
        }
      }
}

TEST_F(CudaKernels, CompressPool) {
  for (auto [ratio, overlap] : {std::pair<int64_t, bool>{4, true}, {128, false}, {3, false}, {2, true}})
    for (bool first_has_prev : {false, true}) {
      const int64_t hd = 72, width = overlap ? 2 * hd : hd, ld = width + 3, blocks = 5;
      const int64_t first_row = overlap ? ratio : 0, rows = first_row + blocks * ratio;
      const std::vector<float> kv = Random(rows * ld), score = Random(rows * ld, 2.f), ape = Random(ratio * width);
      std::vector<float> want(blocks * hd);
      kernels::ref::CompressPool(kv.data(), score.data(), ld, ape.data(), ratio, hd, overlap, first_row, first_has_prev,
                                 blocks, want.data(), hd);
      DevVec<float> dkv(kv), dscore(score), dape(ape), dout(blocks * hd);
      ASSERT_EQ(CompressPool(dkv.get(), dscore.get(), ld, dape.get(), ratio, hd, overlap, first_row, first_has_prev,
                             blocks, dout.get(), hd, stream_),
                cudaSuccess);
      const std::vector<float> got = dout.Host();
      // Float softmax sums of up to 256 terms against a double loop.
      EXPECT_TRUE(AllClose("compress", got.data(), want.data(), got.size(), {.abs = 1e-5, .rel = 1e-5}))
          << ratio << " " << overlap << " " << first_has_prev;
    }
}

// ---- indexer and top-k -----------------------------------------------------------------------------

TEST_F(CudaKernels, IndexerScores) {
  for (auto [H, d] : {std::pair<int64_t, int64_t>{3, 17}, {64, 128}, {33, 64}})
    for (int64_t n : {1, 65, 300}) {
      const int64_t m = 5;
      const std::vector<float> q = Random(m * H * d), w = Random(m * H), keys = Random(n * d);
      const std::vector<int64_t> nvis = {0, 1, n / 2, n, n};
      std::vector<float> want(m * n);
      kernels::ref::IndexerScores(q.data(), w.data(), m, H, d, keys.data(), n, nvis.data(), want.data());
      DevVec<float> dq(q), dw(w), dk(keys), ds(m * n);
      DevVec<int64_t> dn(nvis);
      ASSERT_EQ(IndexerScores(dq.get(), dw.get(), m, H, d, dk.get(), n, dn.get(), ds.get(), stream_), cudaSuccess);
      const std::vector<float> got = ds.Host();
      // Sums of H relu'd dots of d products, float against the reference's double: 1e-5 of the scale.
      EXPECT_TRUE(AllClose("indexer", got.data(), want.data(), got.size(), {.abs = 1e-5 * (MaxAbs(want) + 1), .rel = 1e-5}))
          << H << " " << d << " " << n;
    }
}

TEST_F(CudaKernels, TopKMatchesCpuExactly) {
  std::uniform_int_distribution<int> coarse(-50, 50);
  for (int64_t n : {1, 7, 300, 1000, 70000})
    for (int64_t k : {1, 6, 512, 2048}) {
      if (k > n) continue;
      for (bool ties : {false, true}) {
        const int64_t m = 4, ldx = n + 1, ldidx = k + 2;
        std::vector<float> x = Random(m * ldx);
        if (ties)
          for (auto& v : x) v = static_cast<float>(coarse(rng_)) * 0.25f;  // many equal values, +-0 among them
        if (ties)
          for (size_t i = 0; i < x.size(); i += 11) x[i] = -0.0f;
        x[0] = -std::numeric_limits<float>::infinity();
        const std::vector<int64_t> nvalid = {n, std::max<int64_t>(0, n - 1), n / 2, 0};
        std::vector<int32_t> want(m * ldidx, 77);
        for (int64_t t = 0; t < m; ++t) {
          const int64_t kk = std::min(k, nvalid[t]);
          if (kk > 0) kernels::TopK(&x[t * ldx], nvalid[t], kk, &want[t * ldidx]);
          for (int64_t j = kk; j < k; ++j) want[t * ldidx + j] = -1;
        }
        DevVec<float> dx(x);
        DevVec<int64_t> dn(nvalid);
        DevVec<int32_t> di(std::vector<int32_t>(m * ldidx, 77));
        ASSERT_EQ(TopK(dx.get(), m, n, ldx, dn.get(), k, di.get(), ldidx, stream_), cudaSuccess);
        const std::vector<int32_t> got = di.Host();
        for (int64_t t = 0; t < m; ++t)
          for (int64_t j = 0; j < ldidx; ++j)
            ASSERT_EQ(got[t * ldidx + j], want[t * ldidx + j]) << "n " << n << " k " << k << " ties " << ties
                                                               << " row " << t << " slot " << j;
      }
    }
}

// The indexer's shape (262144 positions -> 512 / 2048) on the fast path's three regimes: spread
// values (one histogram level), values that agree in their top 11 bits (two levels), all equal (the
// exact fallback), ReLU-like scores with half of them 0; bit-exact against kernels::TopK.
TEST_F(CudaKernels, TopKIndexerShapes) {
  std::normal_distribution<float> nd(0.f, 1.f);
  const int64_t n = 262144, m = 3;
  for (const char* dist : {"normal", "narrow", "equal", "relu"})
    for (int64_t k : {512, 2048}) {
      std::vector<float> x(m * n);
      for (auto& v : x) {
        const std::string d = dist;
        v = d == "narrow" ? 1.0f + 1e-3f * std::fabs(nd(rng_)) : d == "equal" ? 0.25f
            : d == "relu" ? std::max(0.f, nd(rng_)) : nd(rng_);
      }
      const std::vector<int64_t> nvalid = {n, n - 5, 1000};
      std::vector<int32_t> want(m * k, -1);
      for (int64_t t = 0; t < m; ++t) kernels::TopK(&x[t * n], nvalid[t], std::min(k, nvalid[t]), &want[t * k]);
      DevVec<float> dx(x);
      DevVec<int64_t> dn(nvalid);
      DevVec<int32_t> di(std::vector<int32_t>(m * k, 77));
      ASSERT_EQ(TopK(dx.get(), m, n, n, dn.get(), k, di.get(), k, stream_), cudaSuccess);
      const std::vector<int32_t> got = di.Host();
      for (int64_t i = 0; i < m * k; ++i) ASSERT_EQ(got[i], want[i]) << dist << " k " << k << " at " << i;
    }
}

// ---- data movement ---------------------------------------------------------------------------------

TEST_F(CudaKernels, GatherRowsFromPinnedHost) {
  for (int64_t row_bytes : {6144 + 192, 37})  // an Engram FP8 row with its scales; an unaligned size
    for (int64_t dst_pitch : {row_bytes, row_bytes + 16}) {
      const int64_t table_rows = 1000, src_pitch = row_bytes, n = 50;
      void* table = nullptr;
      ASSERT_EQ(cudaHostAlloc(&table, table_rows * src_pitch, cudaHostAllocMapped), cudaSuccess);
      auto* bytes = static_cast<uint8_t*>(table);
      for (int64_t i = 0; i < table_rows * src_pitch; ++i) bytes[i] = static_cast<uint8_t>(i * 131 + 7);
      void* dev_table = nullptr;
      ASSERT_EQ(cudaHostGetDevicePointer(&dev_table, table, 0), cudaSuccess);
      std::vector<int64_t> ids(n);
      std::uniform_int_distribution<int64_t> pick(0, table_rows - 1);
      for (auto& v : ids) v = pick(rng_);
      ids[3] = -1;  // zero fill
      DevVec<int64_t> dids(ids);
      DevVec<uint8_t> dst(n * dst_pitch);
      ASSERT_EQ(GatherRows(dev_table, src_pitch, dids.get(), n, row_bytes, dst.get(), dst_pitch, stream_), cudaSuccess);
      const std::vector<uint8_t> got = dst.Host();
      for (int64_t r = 0; r < n; ++r)
        for (int64_t b = 0; b < row_bytes; ++b)
          ASSERT_EQ(got[r * dst_pitch + b], ids[r] < 0 ? 0 : bytes[ids[r] * src_pitch + b]) << r << " " << b;
      cudaFreeHost(table);
    }
}

TEST_F(CudaKernels, SortSlotsByExpertAsTheCpu) {
  const int64_t m = 300, K = 8;  // more tokens than a block's threads
  std::vector<int32_t> experts(m * K);
  std::vector<float> weights(m * K);
  for (int64_t p = 0; p < m * K; ++p) {
    experts[p] = static_cast<int32_t>((p * 37 + p / 3) % 17) - 1;  // -1s and repeats
    weights[p] = static_cast<float>(p);
  }
  DevVec<int32_t> de(experts);
  DevVec<float> dw(weights);
  ASSERT_EQ(SortSlotsByExpert(de.get(), dw.get(), m, K, stream_), cudaSuccess);
  kernels::SortSlotsByExpert(experts.data(), weights.data(), m, K);
  EXPECT_EQ(de.Host(), experts);
  EXPECT_EQ(dw.Host(), weights);
  EXPECT_EQ(SortSlotsByExpert(de.get(), dw.get(), m, 33, stream_), cudaErrorInvalidValue);
}

TEST_F(CudaKernels, CombineRowsInOrder) {
  const int64_t rows = 6, D = 300, src_rows = 20;
  const std::vector<float> src = Random(src_rows * D), w = Random(13), init = Random(rows * D);
  const std::vector<int32_t> offsets = {0, 2, 2, 5, 9, 12, 13};
  std::vector<int32_t> which(13);
  for (int i = 0; i < 13; ++i) which[i] = (i * 7) % src_rows;
  for (bool accumulate : {false, true})
    for (bool weighted : {false, true}) {
      std::vector<float> want = accumulate ? init : std::vector<float>(rows * D, 0.f);
      for (int64_t t = 0; t < rows; ++t)
        for (int64_t c = 0; c < D; ++c)
          for (int32_t e = offsets[t]; e < offsets[t + 1]; ++e)
            want[t * D + c] += (weighted ? w[e] : 1.f) * src[which[e] * D + c];
      DevVec<float> dsrc(src), dw(w), dout(init);
      DevVec<int32_t> doff(offsets), dwhich(which);
      ASSERT_EQ(CombineRows(dsrc.get(), D, doff.get(), dwhich.get(), weighted ? dw.get() : nullptr, rows, D, accumulate,
                            dout.get(), D, stream_),
                cudaSuccess);
      const std::vector<float> got = dout.Host();
      for (size_t i = 0; i < got.size(); ++i) ASSERT_TRUE(SameBits(got[i], want[i])) << i;  // same order: exact
    }
}

// ---- memory, graphs --------------------------------------------------------------------------------

TEST_F(CudaKernels, DevicePoolNeverGrows) {
  DevicePool pool;
  ASSERT_EQ(DevicePool::Create(4096, &pool), cudaSuccess);
  void* a = pool.Allocate(1000);
  void* b = pool.Allocate(1000);
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b) % kDeviceAlignment, 0u);
  EXPECT_EQ(pool.Allocate(4096), nullptr);
  pool.Reset();
  EXPECT_EQ(pool.Allocate(4096), pool.base());
}

struct GraphCtx {
  float* x;
  int64_t m, n;
};

cudaError_t EnqueueNormAndRound(cudaStream_t s, void* p) {
  auto* c = static_cast<GraphCtx*>(p);
  if (cudaError_t e = RmsNorm(c->x, nullptr, 1e-6f, c->m, c->n, c->n, c->x, c->n, s); e != cudaSuccess) return e;
  return QdqFp8(c->x, c->m, c->n, c->n, 64, s);
}

TEST_F(CudaKernels, StepGraphReplaysLaunches) {
  const int64_t m = 3, n = 200;
  const std::vector<float> x = Random(m * n, 5.f);
  DevVec<float> direct(x), graphed(x);
  GraphCtx c1{direct.get(), m, n}, c2{graphed.get(), m, n};
  ASSERT_EQ(EnqueueNormAndRound(stream_, &c1), cudaSuccess);
  StepGraph g;
  ASSERT_EQ(g.Capture(stream_, EnqueueNormAndRound, &c2), cudaSuccess);
  ASSERT_TRUE(g.captured());
  ASSERT_EQ(g.Launch(stream_), cudaSuccess);
  Sync();
  const std::vector<float> a = direct.Host(), b = graphed.Host();
  for (size_t i = 0; i < a.size(); ++i) ASSERT_TRUE(SameBits(a[i], b[i])) << i;
}

// ---- golden kernel cases on the GPU ----------------------------------------------------------------

class GoldenCuda : public CudaKernels {
 protected:
  void SetUp() override {
    CudaKernels::SetUp();
    if (IsSkipped()) return;
    if (!dsv4::testing::SharedAvailable()) GTEST_SKIP() << "shared/golden not found";
    auto f = SafetensorsFile::Open(dsv4::testing::SharedDir() + "/golden/v4-tiny/kernels.safetensors");
    ASSERT_TRUE(f.ok()) << f.status();
    f_ = std::move(*f);
  }
  std::vector<float> F32(const std::string& name) { return dsv4::testing::ReadF32(*f_, name); }
  std::unique_ptr<SafetensorsFile> f_;
};

TEST_F(GoldenCuda, QdqBitExact) {
  for (auto [name, group, fp4] : {std::tuple{"qdq_e4m3_g64", 64, false}, std::tuple{"qdq_e4m3_g128", 128, false},
                                  std::tuple{"qdq_e2m1_g32", 32, true}}) {
    const std::vector<float> x = F32(std::string(name) + ".in"), want = F32(std::string(name) + ".out");
    const int64_t n = f_->tensors().at(std::string(name) + ".in").shape[1], m = static_cast<int64_t>(x.size()) / n;
    DevVec<float> d(x);
    ASSERT_EQ((fp4 ? QdqFp4 : QdqFp8)(d.get(), m, n, n, group, stream_), cudaSuccess);
    const std::vector<float> got = d.Host();
    for (size_t i = 0; i < got.size(); ++i) ASSERT_TRUE(SameBits(got[i], want[i])) << name << " " << i;
  }
}

TEST_F(GoldenCuda, Hadamard) {
  for (int64_t n : {64, 128}) {
    const std::string name = "hadamard_" + std::to_string(n);
    const std::vector<float> x = F32(name + ".in"), want = F32(name + ".out");
    DevVec<float> d(x);
    ASSERT_EQ(Hadamard(d.get(), static_cast<int64_t>(x.size()) / n, n, n, 1.0f / std::sqrt(static_cast<float>(n)),
                       stream_),
              cudaSuccess);
    const std::vector<float> got = d.Host();
    EXPECT_TRUE(AllClose(name, got.data(), want.data(), got.size(), {.abs = 1e-5}));
  }
}

// HcPre with D = 1, unit streams and fn rows that pick out the golden mixes: the Sinkhorn outputs
// must match the reference's (1e-5, as on CPU).
TEST_F(GoldenCuda, Sinkhorn) {
  const std::vector<float> mixes = F32("sinkhorn.mixes"), scale = F32("sinkhorn.scale"), base = F32("sinkhorn.base"),
                           pre = F32("sinkhorn.pre"), post = F32("sinkhorn.post"), comb = F32("sinkhorn.comb");
  const int hc = 4, mix = hc * (hc + 2);
  const int64_t tokens = static_cast<int64_t>(mixes.size()) / mix;
  for (int64_t t = 0; t < tokens; ++t) {
    const std::vector<float> x(hc, 1.0f);  // rms exactly 1 with norm_eps 0
    std::vector<float> fn(mix * hc, 0.f);
    for (int k = 0; k < mix; ++k) fn[k * hc] = mixes[t * mix + k];
    DevVec<float> dx(x), dfn(fn), dscale(scale), dbase(base), du(1), dpost(hc), dcomb(hc * hc);
    ASSERT_EQ(HcPre(dx.get(), 1, hc, 1, hc, dfn.get(), dscale.get(), dbase.get(), 20, 0.f, 1e-6f, du.get(), dpost.get(),
                    dcomb.get(), nullptr, stream_),
              cudaSuccess);
    const std::vector<float> got_post = dpost.Host(), got_comb = dcomb.Host(), got_u = du.Host();
    EXPECT_TRUE(AllClose("post", got_post.data(), &post[t * hc], hc, {.abs = 1e-5}));
    EXPECT_TRUE(AllClose("comb", got_comb.data(), &comb[t * hc * hc], hc * hc, {.abs = 1e-5}));
    float pre_sum = 0.f;  // collapse of unit streams = sum of pre
    for (int i = 0; i < hc; ++i) pre_sum += pre[t * hc + i];
    EXPECT_NEAR(got_u[0], pre_sum, 4e-5);
  }
}

TEST_F(GoldenCuda, SparseAttention) {
  const std::vector<float> q = F32("sparse_attn.q"), kv = F32("sparse_attn.kv"), sink = F32("sparse_attn.sink"),
                           want = F32("sparse_attn.out");
  const std::vector<int64_t> idx64 = dsv4::testing::ReadI64(*f_, "sparse_attn.idx");
  const float scale = F32("sparse_attn.scale")[0];
  const auto& qs = f_->tensors().at("sparse_attn.q").shape;  // [1, m, H, d]
  const int64_t m = qs[1], H = qs[2], d = qs[3], k = f_->tensors().at("sparse_attn.idx").shape[2];
  const std::vector<int32_t> idx(idx64.begin(), idx64.end());
  DevVec<float> dq(q), dkv(kv), dsink(sink), dout(m * H * d);
  DevVec<int32_t> didx(idx);
  KvSegments segs;
  segs.ptr[0] = dkv.get(), segs.len[0] = static_cast<int64_t>(kv.size()) / d;
  ASSERT_EQ(SparseAttention(dq.get(), m, H, d, segs, didx.get(), k, dsink.get(), scale, dout.get(), stream_),
            cudaSuccess);
  const std::vector<float> got = dout.Host();
  EXPECT_TRUE(AllClose("sparse_attn", got.data(), want.data(), got.size(), {.abs = 1e-5}));
}

}  // namespace
}  // namespace dsv4::kernels::cuda
