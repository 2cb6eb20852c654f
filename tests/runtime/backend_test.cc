// Every backend operation against the CPU kernel it stands for (ggml's test-backend-ops pattern):
// inputs are made on the host, copied into the backend's memory, run there, copied back and
// compared. Built twice: backend_test runs the CPU backend (label unit; it catches a wrapper that
// passes an argument wrongly), backend_cuda_test the CUDA backend (label gpu; skipped without a
// device). Tolerances are the CUDA kernels' (kernels/cuda/README.md): bit-exact where the kernel
// is (QDQ, Hadamard, top-k, gathers, combines), else float sums in another order.
#include "runtime/backend/backend.h"

#include <gtest/gtest.h>

#include <bit>
#include <cmath>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "absl/strings/match.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernels.h"
#include "tests/testutil.h"

#ifndef DSV4_TEST_DEVICE_CUDA
#define DSV4_TEST_DEVICE_CUDA 0
#endif

namespace dsv4 {
namespace {

using testing::AllClose;
using testing::Tol;

std::vector<float> Random(size_t n, float scale = 1.f, uint32_t seed = 3) {
  std::mt19937 rng(seed + static_cast<uint32_t>(n));
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

// BF16 expert matrices w1, w3 [I, D] and w2 [D, I] for `count` experts, bit patterns
// 0x3c00 + (i * mul + e * emul + k) % 1024 for element i of matrix k of expert e.
struct Bf16Experts {
  std::vector<std::vector<uint16_t>> bits;
  std::vector<kernels::WeightMatrix> mats;  // [count * 3]: each expert's w1, w2, w3

  Bf16Experts(int64_t count, int64_t D, int64_t I, int mul, int emul) : bits(3 * count), mats(3 * count) {
    for (int64_t e = 0; e < count; ++e)
      for (int k = 0; k < 3; ++k) {
        const int64_t rows = k == 1 ? D : I, cols = k == 1 ? I : D;
        auto& b = bits[e * 3 + k];
        b.resize(rows * cols);
        for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint16_t>(0x3c00 + ((i * mul + e * emul + k) % 1024));
        kernels::WeightMatrix& w = mats[e * 3 + k];
        w.type = kernels::WeightType::kBF16, w.data = b.data(), w.ld = cols, w.row_end = rows, w.col_end = cols;
      }
  }
  ExpertViews Views(int64_t e) const { return {&mats[e * 3], &mats[e * 3 + 1], &mats[e * 3 + 2]}; }
};

class BackendOps : public ::testing::Test {
 protected:
  void SetUp() override {
    BackendOptions o;
    o.device = DSV4_TEST_DEVICE_CUDA ? DeviceChoice::kCuda : DeviceChoice::kCpu;
    o.workspace_bytes = int64_t{64} << 20;
    auto b = MakeBackend(o);
    if (!b.ok() && DSV4_TEST_DEVICE_CUDA) GTEST_SKIP() << b.status();
    ASSERT_TRUE(b.ok()) << b.status();
    be_ = std::move(*b);
  }
  void TearDown() override {
    if (be_) {
      EXPECT_TRUE(be_->Synchronize().ok()) << be_->status();
    }
  }

  // Device copies of host data, and back.
  template <typename T>
  T* Put(const std::vector<T>& v) {
    auto p = be_->Allocate(static_cast<int64_t>(std::max<size_t>(v.size(), 1) * sizeof(T)));
    EXPECT_TRUE(p.ok()) << p.status();
    be_->CopyToDevice(*p, v.data(), static_cast<int64_t>(v.size() * sizeof(T)));
    return static_cast<T*>(*p);
  }
  template <typename T>
  std::vector<T> Get(const T* p, size_t n) {
    std::vector<T> v(n);
    be_->CopyToHost(v.data(), p, static_cast<int64_t>(n * sizeof(T)));
    EXPECT_TRUE(be_->status().ok()) << be_->status();
    return v;
  }
  bool Exact() const { return be_->device() == Device::kCpu; }
  // On the CPU the backend runs the reference kernel itself: equal bits.
  Tol Or(Tol gpu) const { return Exact() ? Tol{} : gpu; }

  std::unique_ptr<Backend> be_;
};

TEST_F(BackendOps, DescribesItsDevice) {
  EXPECT_FALSE(be_->Describe().empty());
  EXPECT_TRUE(absl::StartsWith(be_->Describe(), DeviceName(be_->device())));
}

TEST_F(BackendOps, LinearQdqNormRopeHadamard) {
  const int64_t m = 5, n = 256, ld = 260;
  std::vector<float> x = Random(m * ld, 3.f), w = Random(96 * n, 0.1f, 4);
  kernels::WeightMatrix host;
  host.type = kernels::WeightType::kF32, host.data = w.data(), host.ld = n, host.row_end = 96, host.col_end = n;
  auto dw = be_->PlaceWeight(host, Backend::WeightUse::kProducts);
  ASSERT_TRUE(dw.ok()) << dw.status();
  float* dx = Put(x);
  std::vector<float> y(m * 100, 0.f), want = y;
  float* dy = Put(y);
  be_->Linear(dx, m, ld, *dw, dy, 100);
  kernels::Linear(x.data(), m, ld, host, want.data(), 100);
  std::vector<float> got = Get(dy, y.size());
  // Float sums of 256 products in another order.
  EXPECT_TRUE(AllClose("linear", got.data(), want.data(), got.size(), Or({.abs = 1e-4, .rel = 1e-4})));

  std::vector<float> q = x;
  be_->QdqFp8(dx, m, n, ld, 128);
  kernels::QdqFp8(q.data(), m, n, ld, 128);
  got = Get(dx, x.size());
  EXPECT_TRUE(AllClose("qdq fp8", got.data(), q.data(), got.size(), Tol{}));  // bit-exact on every backend
  be_->QdqFp4(dx, m, n, ld, 32);
  kernels::QdqFp4(q.data(), m, n, ld, 32);
  got = Get(dx, x.size());
  EXPECT_TRUE(AllClose("qdq fp4", got.data(), q.data(), got.size(), Tol{}));

  const std::vector<float> gain = Random(n, 1.f, 5);
  const float* dgain = Put(gain);
  be_->RmsNorm(dx, dgain, 1e-6f, m, n, ld, dx, ld);
  kernels::RmsNorm(q.data(), gain.data(), 1e-6f, m, n, ld, q.data(), ld);
  got = Get(dx, x.size());
  EXPECT_TRUE(AllClose("rmsnorm", got.data(), q.data(), got.size(), Or({.abs = 1e-5, .rel = 1e-5})));

  const int64_t half = 32;
  const std::vector<float> cos = Random(m * half, 1.f, 6), sin = Random(m * half, 1.f, 7);
  be_->Rope(dx + 4, m, ld, half, Put(cos), Put(sin), 1, false);
  kernels::Rope(q.data() + 4, m, ld, half, cos.data(), sin.data(), 1, false);
  be_->Hadamard(dx, m, 128, ld, 0.5f);
  kernels::Hadamard(q.data(), m, 128, ld, 0.5f);
  got = Get(dx, x.size());
  EXPECT_TRUE(AllClose("rope+hadamard", got.data(), q.data(), got.size(), Or({.abs = 1e-5, .rel = 1e-5})));
}

TEST_F(BackendOps, MhcSwiGluPoolTopKGatherCombine) {
  const int hc = 4;
  const int64_t m = 3, D = 64, mix = hc * (hc + 2);
  const std::vector<float> x = Random(m * hc * D), fn = Random(mix * hc * D, 0.05f, 8), base = Random(mix, 1.f, 9),
                           scale3 = {0.5f, 0.8f, 1.1f};
  std::vector<float> u(m * D), post(m * hc), comb(m * hc * hc);
  float *du = Put(u), *dpost = Put(post), *dcomb = Put(comb), *dx = Put(x);
  std::vector<float> pre(m * hc);
  float* dpre = Put(pre);
  be_->HcPre(dx, m, hc, D, hc * D, Put(fn), Put(scale3), Put(base), 20, 1e-6f, 1e-6f, du, dpost, dcomb, dpre);
  kernels::HcPre(x.data(), m, hc, D, hc * D, fn.data(), scale3.data(), base.data(), 20, 1e-6f, 1e-6f, u.data(),
                 post.data(), comb.data(), pre.data());
  std::vector<float> got = Get(du, u.size());
  EXPECT_TRUE(AllClose("hc pre", got.data(), u.data(), got.size(), Or({.abs = 1e-4, .rel = 1e-4})));
  got = Get(dpre, pre.size());
  EXPECT_TRUE(AllClose("hc pre weights", got.data(), pre.data(), got.size(), Or({.abs = 1e-5})));
  std::vector<float> xs = x;
  be_->HcPost(du, D, dpost, dcomb, m, hc, D, dx, hc * D);
  kernels::HcPost(u.data(), D, post.data(), comb.data(), m, hc, D, xs.data(), hc * D);
  got = Get(dx, x.size());
  EXPECT_TRUE(AllClose("hc post", got.data(), xs.data(), got.size(), Or({.abs = 1e-4, .rel = 1e-4})));

  const std::vector<float> hfn = Random(hc * hc * D, 0.05f, 25), hbase = Random(hc, 1.f, 26), hscale = {0.6f};
  std::vector<float> head(m * D);
  float* dhead = Put(head);
  be_->HcHead(dx, m, hc, D, hc * D, Put(hfn), Put(hscale), Put(hbase), 1e-6f, 1e-6f, dhead, D);
  kernels::HcHead(xs.data(), m, hc, D, hc * D, hfn.data(), hscale.data(), hbase.data(), 1e-6f, 1e-6f, head.data(), D);
  got = Get(dhead, head.size());
  EXPECT_TRUE(AllClose("hc head", got.data(), head.data(), got.size(), Or({.abs = 1e-4, .rel = 1e-4})));

  std::vector<uint16_t> table_bits(50 * D);
  for (size_t i = 0; i < table_bits.size(); ++i) table_bits[i] = static_cast<uint16_t>(0x3c00 + (i * 131) % 2048);
  kernels::WeightMatrix table;
  table.type = kernels::WeightType::kBF16, table.data = table_bits.data(), table.ld = D, table.row_end = 50,
  table.col_end = D;
  auto dtable = be_->PlaceWeight(table, Backend::WeightUse::kRows);
  ASSERT_TRUE(dtable.ok()) << dtable.status();
  const std::vector<int32_t> tokens = {49, 0, 17};
  std::vector<float> emb(m * 2 * D);
  float* demb = Put(emb);
  be_->EmbedRows(*dtable, Put(tokens), m, 2, demb, 2 * D);
  kernels::EmbedRows(table, tokens.data(), m, 2, emb.data(), 2 * D);
  EXPECT_EQ(Get(demb, emb.size()), emb);  // a format decode: exact

  const int64_t I = 70;
  const std::vector<float> g = Random(m * I, 5.f, 10), uu = Random(m * I, 5.f, 11), rw = Random(m, 1.f, 12);
  std::vector<float> h(m * I);
  float* dh = Put(h);
  be_->SwiGlu(Put(g), Put(uu), m, I, I, Put(rw), 10.f, dh);
  kernels::SwiGlu(g.data(), uu.data(), m, I, I, rw.data(), 10.f, h.data());
  got = Get(dh, h.size());
  EXPECT_TRUE(AllClose("swiglu", got.data(), h.data(), got.size(), Or({.abs = 1e-6, .rel = 1e-5})));

  const int64_t ratio = 4, hd = 24, width = 2 * hd, rows = 3 * ratio;
  const std::vector<float> kv = Random(rows * width, 1.f, 13), sc = Random(rows * width, 2.f, 14),
                           ape = Random(ratio * width, 1.f, 15);
  std::vector<float> pooled(2 * hd);
  float* dpooled = Put(pooled);
  be_->CompressPool(Put(kv), Put(sc), width, Put(ape), ratio, hd, true, ratio, true, 2, dpooled, hd);
  kernels::CompressPool(kv.data(), sc.data(), width, ape.data(), ratio, hd, true, ratio, true, 2, pooled.data(), hd);
  got = Get(dpooled, pooled.size());
  EXPECT_TRUE(AllClose("pool", got.data(), pooled.data(), got.size(), Or({.abs = 1e-5, .rel = 1e-5})));

  const int64_t n = 40, k = 6;
  const std::vector<float> s = Random(m * n, 1.f, 16);
  const std::vector<int64_t> nvalid = {40, 3, 17};
  std::vector<int32_t> idx(m * k, -7);
  int32_t* didx = Put(idx);
  be_->TopK(Put(s), m, n, n, Put(nvalid), k, didx, k);
  kernels::TopK(s.data(), m, n, n, nvalid.data(), k, idx.data(), k);
  EXPECT_EQ(Get(didx, idx.size()), idx);  // the same order on every backend

  const std::vector<int64_t> ids = {2, -1, 0};
  std::vector<float> gathered(m * D, 9.f);
  float* dgathered = Put(gathered);
  be_->GatherRows(dx, hc * D * 4, Put(ids), m, D * 4, dgathered, D * 4);
  kernels::GatherRows(xs.data(), hc * D * 4, ids.data(), m, D * 4, gathered.data(), D * 4);
  EXPECT_EQ(Get(dgathered, gathered.size()), gathered);

  // The inverse: row r to row to[r] (-1: skipped); the rows nothing lands on keep what they held.
  const std::vector<int64_t> to = {3, -1, 0};
  const std::vector<float> before = Random(4 * D, 1.f, 19);
  std::vector<float> scattered = before;
  float* dscattered = Put(scattered);
  be_->ScatterRows(dgathered, D * 4, Put(to), m, D * 4, dscattered, D * 4);
  kernels::ScatterRows(gathered.data(), D * 4, to.data(), m, D * 4, scattered.data(), D * 4);
  EXPECT_EQ(Get(dscattered, scattered.size()), scattered);
  for (int64_t c = 0; c < D; ++c) {
    EXPECT_EQ(scattered[3 * D + c], gathered[c]);
    EXPECT_EQ(scattered[c], gathered[2 * D + c]);
    EXPECT_EQ(scattered[D + c], before[D + c]);
    EXPECT_EQ(scattered[2 * D + c], before[2 * D + c]);
  }

  // The same to addresses, each row to an allocation of its own (0: skipped).
  std::vector<float> a(D, 5.f), b(D, 6.f);
  float *da = Put(a), *db = Put(b);
  const std::vector<uint64_t> dst = {reinterpret_cast<uint64_t>(db), 0, reinterpret_cast<uint64_t>(da)};
  be_->ScatterRowsTo(dgathered, D * 4, Put(dst), m, D * 4);
  const std::vector<uint64_t> host_dst = {reinterpret_cast<uint64_t>(b.data()), 0,
                                          reinterpret_cast<uint64_t>(a.data())};
  kernels::ScatterRowsTo(gathered.data(), D * 4, host_dst.data(), m, D * 4);
  EXPECT_EQ(Get(da, D), a);
  EXPECT_EQ(Get(db, D), b);
  for (int64_t c = 0; c < D; ++c) {
    EXPECT_EQ(a[c], gathered[2 * D + c]);
    EXPECT_EQ(b[c], gathered[c]);
  }

  const std::vector<int32_t> offsets = {0, 2, 2, 3}, src_rows = {1, 0, 2};
  const std::vector<float> weights = Random(3, 1.f, 17);
  std::vector<float> out = Random(m * D, 1.f, 18);
  float* dout = Put(out);
  be_->CombineRows(dgathered, D, Put(offsets), Put(src_rows), Put(weights), m, D, true, dout, D);
  kernels::CombineRows(gathered.data(), D, offsets.data(), src_rows.data(), weights.data(), m, D, true, out.data(), D);
  EXPECT_EQ(Get(dout, out.size()), out);  // products rounded before each add, in order: exact
}

TEST_F(BackendOps, AttentionAndIndexer) {
  const int64_t m = 2, H = 4, d = 64, rows = 12, k = 6;
  const std::vector<float> q = Random(m * H * d, 1.f, 19), kvrows = Random(rows * d, 1.f, 20),
                           sink = Random(H, 1.f, 21);
  const std::vector<int32_t> idx = {0, 3, 5, -1, 11, 2, 1, 1, 4, 7, -1, -1};
  kernels::KvSegments host_kv, dev_kv;
  host_kv.ptr[0] = kvrows.data(), host_kv.len[0] = rows;
  dev_kv.ptr[0] = Put(kvrows), dev_kv.len[0] = rows;
  std::vector<float> o(m * H * d);
  float* dout = Put(o);
  be_->SparseAttention(Put(q), m, H, d, dev_kv, Put(idx), k, Put(sink), 0.125f, dout);
  kernels::SparseAttention(q.data(), m, H, d, host_kv, idx.data(), k, sink.data(), 0.125f, o.data());
  std::vector<float> got = Get(dout, o.size());
  EXPECT_TRUE(AllClose("attention", got.data(), o.data(), got.size(), Or({.abs = 1e-5, .rel = 1e-4})));

  const int64_t Hi = 8, di = 32, n = 20;
  const std::vector<float> iq = Random(m * Hi * di, 1.f, 22), iw = Random(m * Hi, 1.f, 23),
                           keys = Random(n * di, 1.f, 24);
  const std::vector<int64_t> nvis = {20, 7};
  std::vector<float> scores(m * n);
  float* dscores = Put(scores);
  be_->IndexerScores(Put(iq), Put(iw), m, Hi, di, Put(keys), n, Put(nvis), dscores);
  kernels::IndexerScores(iq.data(), iw.data(), m, Hi, di, keys.data(), n, nvis.data(), scores.data());
  got = Get(dscores, scores.size());
  EXPECT_TRUE(AllClose("indexer", got.data(), scores.data(), got.size(), Or({.abs = 1e-4, .rel = 1e-4})));
}

// The MoE path: route, group by expert, gather, expert FFNs, combine, against the same steps on the
// CPU kernels.
TEST_F(BackendOps, RoutedExpertsEndToEnd) {
  const int64_t n = 5, E = 8, K = 3, D = 64, I = 32;
  const std::vector<float> logits = Random(n * E, 2.f, 40), bias = Random(E, 0.2f, 41), x = Random(n * D, 1.f, 42);
  std::vector<float> scores = logits, weights(n * K);
  std::vector<int32_t> experts(n * K);
  float* dscores = Put(logits);
  int32_t* dexperts = Put(experts);
  float* dweights = Put(weights);
  be_->Route(dscores, n, E, K, 1.f, kernels::RouterScore::kSqrtSoftplus, Put(bias), nullptr, nullptr, true, 0.f, 1.5f,
             dexperts, dweights);
  kernels::Route(scores.data(), n, E, K, 1.f, kernels::RouterScore::kSqrtSoftplus, bias.data(), nullptr, nullptr, true,
                 0.f, 1.5f, experts.data(), weights.data());
  ASSERT_EQ(Get(dexperts, experts.size()), experts);  // the picks: no near-ties in this data
  std::vector<float> got = Get(dweights, weights.size());
  EXPECT_TRUE(AllClose("route weights", got.data(), weights.data(), got.size(), Or({.abs = 1e-6, .rel = 1e-5})));

  const int64_t pairs = n * K;
  std::vector<int32_t> offsets(E + 1), position(pairs);
  std::vector<int64_t> order(pairs), tokens(pairs), counts(E, 0);
  int32_t* doffsets = Put(offsets);
  int32_t* dposition = Put(position);
  int64_t *dorder = Put(order), *dtokens = Put(tokens), *dcounts = Put(counts);
  be_->GroupByExpert(dexperts, pairs, K, E, doffsets, dorder, dtokens, dposition, dcounts);
  kernels::GroupByExpert(experts.data(), pairs, K, E, offsets.data(), order.data(), tokens.data(), position.data(),
                         counts.data());
  EXPECT_EQ(Get(doffsets, offsets.size()), offsets);
  EXPECT_EQ(Get(dorder, order.size()), order);
  EXPECT_EQ(Get(dtokens, tokens.size()), tokens);
  EXPECT_EQ(Get(dposition, position.size()), position);
  EXPECT_EQ(Get(dcounts, counts.size()), counts);

  // Experts in BF16 (no input rounding) with expert 6 not held here.
  const Bf16Experts bf16(E, D, I, 37, 101);
  const std::vector<kernels::WeightMatrix>& mats = bf16.mats;
  std::vector<ExpertViews> views(E);
  for (int64_t e = 0; e < E; ++e)
    if (e != 6) views[e] = bf16.Views(e);
  std::vector<int32_t> routed = experts;
  for (auto& r : routed)
    if (r == 6) r = -1;  // routed to another rank
  int32_t* drouted = Put(routed);
  be_->GroupByExpert(drouted, pairs, K, E, doffsets, dorder, dtokens, dposition, nullptr);
  kernels::GroupByExpert(routed.data(), pairs, K, E, offsets.data(), order.data(), tokens.data(), position.data(),
                         nullptr);
  auto table = be_->PlaceExperts(views);
  ASSERT_TRUE(table.ok()) << table.status();
  std::vector<float> xs(pairs * D), ws(pairs), ys(pairs * D, 0.f);
  float *dxs = Put(xs), *dws = Put(ws), *dys = Put(ys);
  be_->GatherRows(Put(x), D * 4, dtokens, pairs, D * 4, dxs, D * 4);
  be_->GatherRows(dweights, 4, dorder, pairs, 4, dws, 4);
  kernels::GatherRows(x.data(), D * 4, tokens.data(), pairs, D * 4, xs.data(), D * 4);
  kernels::GatherRows(weights.data(), 4, order.data(), pairs, 4, ws.data(), 4);
  ExpertFfnOptions fo;
  fo.swiglu_limit = 7.f;
  be_->ExpertFfn(**table, dxs, D, doffsets, pairs, dws, fo, dys, D);
  // The same FFN from single products on the CPU, expert by expert (BF16 experts, whose inputs are
  // not rounded, stay as they are stored at every level).
  std::vector<float> want(pairs * D, 0.f), g(I), u(I);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t r = offsets[e]; r < offsets[e + 1]; ++r) {
      kernels::Linear(&xs[r * D], 1, D, mats[e * 3], g.data(), I);
      kernels::Linear(&xs[r * D], 1, D, mats[e * 3 + 2], u.data(), I);
      kernels::SwiGlu(g.data(), u.data(), 1, I, I, &ws[r], 7.f, g.data());
      kernels::Linear(g.data(), 1, I, mats[e * 3 + 1], &want[r * D], D);
    }
  got = Get(dys, want.size());
  const int64_t kept = offsets[E];
  EXPECT_TRUE(AllClose("expert ffn", got.data(), want.data(), kept * D, Or({.abs = 1e-3, .rel = 1e-4})));

  std::vector<int32_t> token_offsets(n + 1);
  for (int64_t t = 0; t <= n; ++t) token_offsets[t] = static_cast<int32_t>(t * K);
  std::vector<float> out(n * D);
  float* dout = Put(out);
  be_->CombineRows(dys, D, Put(token_offsets), dposition, nullptr, n, D, false, dout, D);
  kernels::CombineRows(want.data(), D, token_offsets.data(), position.data(), nullptr, n, D, false, out.data(), D);
  got = Get(dout, out.size());
  EXPECT_TRUE(AllClose("combine", got.data(), out.data(), got.size(), Or({.abs = 1e-3, .rel = 1e-4})));
}

// The slots of each token in expert order, as the CPU kernel puts them.
TEST_F(BackendOps, SortSlotsByExpert) {
  const int64_t m = 7, K = 6;
  std::vector<int32_t> experts(m * K);
  for (int64_t p = 0; p < m * K; ++p) experts[p] = static_cast<int32_t>((p * 5 + p / K) % 11) - 1;
  std::vector<float> weights = Random(m * K, 1.f, 50);
  int32_t* de = Put(experts);
  float* dw = Put(weights);
  be_->SortSlotsByExpert(de, dw, m, K);
  kernels::SortSlotsByExpert(experts.data(), weights.data(), m, K);
  EXPECT_EQ(Get(de, experts.size()), experts);
  EXPECT_EQ(Get(dw, weights.size()), weights);
}

// Several expert tables in one ExpertFfnGroup give each job's rows exactly what the job alone gives
// (the grouping shares threads, not sums), whatever the tables' formats.
TEST_F(BackendOps, ExpertFfnGroupEqualsItsJobsAlone) {
  const int64_t D = 64, I = 32, E = 3;
  const Bf16Experts bf16(E + 1, D, I, 29, 71);  // the last one is the shared expert
  std::vector<ExpertViews> routed(E);
  for (int64_t e = 0; e < E; ++e) routed[e] = bf16.Views(e);
  const ExpertViews shared = bf16.Views(E);
  auto routed_table = be_->PlaceExperts(routed);
  auto shared_table = be_->PlaceExperts({&shared, 1});
  ASSERT_TRUE(routed_table.ok()) << routed_table.status();
  ASSERT_TRUE(shared_table.ok()) << shared_table.status();
  const std::vector<int32_t> routed_offsets = {0, 3, 3, 7}, shared_offsets = {0, 5};
  const std::vector<float> xr = Random(7 * D, 1.f, 51), xsh = Random(5 * D, 1.f, 52), wr = Random(7, 1.f, 53);
  ExpertFfnOptions fo;
  fo.swiglu_limit = 7.f;
  auto run = [&](bool together) {
    float *dxr = Put(xr), *dxsh = Put(xsh), *dyr = Put(std::vector<float>(7 * D)),
          *dysh = Put(std::vector<float>(5 * D));
    const ExpertFfnJob jobs[2] = {{routed_table->get(), dxr, D, Put(routed_offsets), 7, Put(wr), dyr, D},
                                  {shared_table->get(), dxsh, D, Put(shared_offsets), 5, nullptr, dysh, D}};
    if (together) {
      be_->ExpertFfnGroup(jobs, 2, fo);
    } else {
      be_->ExpertFfnGroup(&jobs[0], 1, fo);
      be_->ExpertFfnGroup(&jobs[1], 1, fo);
    }
    std::vector<float> y = Get(dyr, 7 * D), ysh = Get(dysh, 5 * D);
    y.insert(y.end(), ysh.begin(), ysh.end());
    return y;
  };
  const std::vector<float> alone = run(false), together = run(true);
  ASSERT_EQ(alone.size(), together.size());
  for (size_t i = 0; i < alone.size(); ++i)
    ASSERT_EQ(std::bit_cast<uint32_t>(alone[i]), std::bit_cast<uint32_t>(together[i])) << i;
  bool nonzero = false;
  for (float v : alone) nonzero |= v != 0.f;
  EXPECT_TRUE(nonzero);
}

// The operations that replaced the model's last host loops: V4.1's compressed-KV rounding, the
// indexer's weight scale, the watchdog's flags and Engram's gate.
TEST_F(BackendOps, CompressedKvScaleWatchdogAndEngramGate) {
  const int64_t m = 3, n = 96, ld = 100;
  std::vector<float> x = Random(m * ld, 2.f, 8), want = x;
  float* dx = Put(x);
  be_->QdqFp4E4m3(dx, m, n, ld, 16);
  kernels::QdqFp4E4m3(want.data(), m, n, ld, 16);
  std::vector<float> got = Get(dx, x.size());
  EXPECT_TRUE(AllClose("qdq fp4 e4m3", got.data(), want.data(), got.size(), Tol{}));  // bit-exact everywhere
  be_->Scale(dx, m * ld, 0.125f);
  kernels::Scale(want.data(), m * ld, 0.125f);
  got = Get(dx, x.size());
  EXPECT_TRUE(AllClose("scale", got.data(), want.data(), got.size(), Tol{}));

  std::vector<float> rows = Random(4 * ld, 1.f, 9);
  rows[2 * ld + 7] = NAN, rows[3 * ld + n - 1] = -INFINITY, rows[0 * ld + n] = INFINITY;  // the last: past n
  const std::vector<int32_t> ids = {3, 0, 2, 1, 2};
  int32_t* dflags = Put(std::vector<int32_t>(ids.size(), -1));
  be_->FlagNonFinite(Put(rows), ld, n, Put(ids), static_cast<int64_t>(ids.size()), dflags);
  EXPECT_EQ(Get(dflags, ids.size()), (std::vector<int32_t>{1, 0, 1, 0, 1}));

  // Engram: 2 streams of D = 64 per token, W_kv [(hc + 1) D, K = 96] in FP32 (act_qdq applies to
  // quantized W_kv only). The GPU's sums run in another order: 1e-5 relative on streams of ~1.
  const int hc = 2;
  const int64_t D = 64, K = 96, N = (hc + 1) * D, tokens = 5;
  std::vector<float> wkv = Random(N * K, 0.1f, 10), gate = Random(hc * D, 1.f, 11);
  std::vector<float> emb = Random(tokens * K, 1.f, 12), streams = Random(tokens * hc * D, 1.f, 13);
  kernels::WeightMatrix host;
  host.type = kernels::WeightType::kF32, host.data = wkv.data(), host.ld = K, host.row_end = N, host.col_end = K;
  auto dw = be_->PlaceWeight(host, Backend::WeightUse::kProducts);
  ASSERT_TRUE(dw.ok()) << dw.status();
  float* ds = Put(streams);
  be_->EngramGate(*dw, Put(gate), Put(emb), tokens, hc, D, 1e-6f, /*act_qdq=*/true, ds);
  std::vector<float> expect = streams;
  kernels::EngramGate(host, gate.data(), emb.data(), tokens, hc, D, 1e-6f, nullptr, {}, expect.data());
  got = Get(ds, streams.size());
  EXPECT_TRUE(AllClose("engram gate", got.data(), expect.data(), got.size(), Or({.abs = 1e-5, .rel = 1e-5})));
  EXPECT_NE(got, streams);  // the gate moved the streams
}

// Persistent memory comes back: an allocation freed and taken again holds what is copied into it.
// Attention's rows from the indexer's picks, through a block table, against the rule written out:
// block b of a sequence's compressed positions starts at pool row block_base[b]; -1 stays -1; the
// columns of a row past k are left alone.
TEST_F(BackendOps, PickRowsMapPicksThroughTheBlockTable) {
  const int64_t m = 3, k = 5, per = 4, ld = 7;
  const int32_t offset = 100;
  const std::vector<int32_t> picks = {0, 3, 4, -1, 9, 11, 8, -1, -1, 1, 5, 6, 7, 2, 10};
  const std::vector<int32_t> base = {40, 8, 24};  // blocks of 4 positions in pool order 40.., 8.., 24..
  std::vector<int32_t> want(m * ld, -7);
  for (int64_t t = 0; t < m; ++t)
    for (int64_t i = 0; i < k; ++i) {
      const int32_t p = picks[t * k + i];
      want[t * ld + i] = p < 0 ? -1 : offset + base[p / per] + p % per;
    }
  EXPECT_EQ(want[0 * ld + 2], 100 + 8);       // position 4: the first of block 1
  EXPECT_EQ(want[1 * ld + 0], 100 + 24 + 3);  // position 11: the last of block 2
  int32_t* drows = Put(std::vector<int32_t>(m * ld, -7));
  be_->PickRows(Put(picks), m, k, Put(base), per, offset, drows, ld);
  EXPECT_EQ(Get(drows, want.size()), want);
}

// V4.1's two levels on the backend against the CPU kernels (which CandidateBlocks.MatchTheDefinition
// checks against the definition): scores with ties between blocks, a query that sees nothing, one
// whose visible blocks all score -inf (only its newest block is kept), and level 2 leaving fewer
// candidates than k.
TEST_F(BackendOps, TwoLevelIndexerAsTheCpuKernels) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const int64_t n = 9, width = 37, bs = 4, topk_blocks = 3, k = 6;
  const int64_t nb = kernels::CandidateBlockCount(width, bs);
  std::vector<int64_t> nvis(n);
  std::vector<float> scores(n * width);
  for (int64_t t = 0; t < n; ++t) {
    nvis[t] = t == 0 ? 0 : t == 1 ? 12 : 1 + (t * 11) % width;
    for (int64_t p = 0; p < width; ++p)
      scores[t * width + p] = p >= nvis[t] || t == 1 ? -kInf : static_cast<float>((p * 7 + t) % 5);  // ties
  }
  std::vector<uint8_t> keep(n * nb, 9);
  kernels::SelectCandidateBlocks(scores.data(), n, width, nvis.data(), topk_blocks, bs, keep.data());
  const int64_t* dnvis = Put(nvis);
  float* dscores = Put(scores);
  uint8_t* dkeep = Put(std::vector<uint8_t>(n * nb, 9));
  be_->SelectCandidateBlocks(dscores, n, width, dnvis, topk_blocks, bs, dkeep);
  EXPECT_EQ(Get(dkeep, keep.size()), keep);
  EXPECT_EQ(std::count(keep.begin(), keep.begin() + nb, 1), 0);           // sees nothing
  EXPECT_EQ(std::count(keep.begin() + nb, keep.begin() + 2 * nb, 1), 1);  // all -inf: the newest block

  // Level 2 on another layer's scores, then its top-k and the dropped picks.
  std::vector<float> later(n * width);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t p = 0; p < width; ++p)
      later[t * width + p] = p < nvis[t] ? static_cast<float>((p * 5 + t) % 7) : -kInf;
  float* dlater = Put(later);
  kernels::MaskToCandidates(later.data(), n, width, keep.data(), bs);
  be_->MaskToCandidates(dlater, n, width, dkeep, bs);
  EXPECT_EQ(Get(dlater, later.size()), later);
  std::vector<int32_t> picks(n * k, -3);
  kernels::TopK(later.data(), n, width, width, nvis.data(), k, picks.data(), k);
  int32_t* dpicks = Put(picks);
  kernels::DropMaskedPicks(later.data(), n, width, nvis.data(), picks.data(), k);
  be_->DropMaskedPicks(dlater, n, width, dnvis, dpicks, k);
  EXPECT_EQ(Get(dpicks, picks.size()), picks);
  EXPECT_GT(std::count(picks.begin(), picks.end(), -1), n);  // level 2 leaves some rows short
}

TEST_F(BackendOps, AllocationsAreGivenBack) {
  for (int round = 0; round < 3; ++round) {
    auto a = DeviceAllocation::Make(*be_, int64_t{4} << 20);
    ASSERT_TRUE(a.ok()) << a.status();
    const std::vector<float> v = Random(1000, 1.f, 20 + round);
    be_->CopyToDevice(a->floats() + 5000, v.data(), 4000);
    DeviceAllocation moved = *std::move(a);
    EXPECT_EQ(a->get(), nullptr);
    EXPECT_EQ(Get(moved.floats() + 5000, 1000), v);
  }
  be_->Free(nullptr);  // nothing to do
}

TEST_F(BackendOps, WorkspaceIsRecycledAndCopiesRoundTrip) {
  void* a = be_->Workspace(1000);
  be_->Reset();
  EXPECT_EQ(be_->Workspace(1000), a);  // the same memory for the same step shape
  const std::vector<float> v = Random(33);
  float* p = be_->WorkspaceF32(33);
  be_->CopyToDevice(p, v.data(), 33 * 4);
  float* p2 = be_->WorkspaceF32(33);
  be_->CopyOnDevice(p2, p, 33 * 4);
  EXPECT_EQ(Get(p2, 33), v);
  be_->Zero(p2, 33 * 4);
  EXPECT_EQ(Get(p2, 33), std::vector<float>(33, 0.f));
}

// Scoped temporaries are a stack: what a scope took is handed out again after it, nested scopes
// give disjoint memory, and a release frees what an operation took for itself inside the scope.
TEST_F(BackendOps, ScopedTemporariesAreAStack) {
  be_->Reset();
  const WorkspaceMark outer = be_->Mark();
  const int32_t* first;
  {
    DeviceScratch<int32_t> a(*be_, 1000);
    DeviceScratch<int32_t> b(*be_, 3000);
    first = a.data();
    EXPECT_GE(reinterpret_cast<uintptr_t>(b.data()), reinterpret_cast<uintptr_t>(a.data() + 1000));
    be_->Iota(a.data(), 1000, 5, 3);
    be_->Iota(b.data(), 3000, -7, -2);
    const std::vector<int32_t> ga = Get(a.data(), 1000), gb = Get(b.data(), 3000);
    for (int i = 0; i < 1000; ++i) ASSERT_EQ(ga[i], 5 + 3 * i) << i;
    for (int i = 0; i < 3000; ++i) ASSERT_EQ(gb[i], -7 - 2 * i) << i;
    {
      const WorkspaceScope scope(*be_);
      be_->Workspace(1 << 20);  // as an operation's own temporary
    }
    DeviceScratch<int32_t> c(*be_, 10);
    EXPECT_GE(reinterpret_cast<uintptr_t>(c.data()), reinterpret_cast<uintptr_t>(b.data() + 3000));
    EXPECT_LT(reinterpret_cast<uintptr_t>(c.data()), reinterpret_cast<uintptr_t>(b.data() + 3000) + 4096);
  }
  const WorkspaceMark after = be_->Mark();
  EXPECT_EQ(after.chunk, outer.chunk);
  EXPECT_EQ(after.offset, outer.offset);
  DeviceScratch<int32_t> again(*be_, 1000);
  EXPECT_EQ(again.data(), first);
  be_->Iota(again.data(), 0, 0, 1);  // nothing to do
}

#if !DSV4_TEST_DEVICE_CUDA
TEST(Backends, ChoiceParsingAndClearErrors) {
  EXPECT_EQ(*ParseDeviceChoice("cpu"), DeviceChoice::kCpu);
  EXPECT_EQ(*ParseDeviceChoice("cuda"), DeviceChoice::kCuda);
  EXPECT_EQ(*ParseDeviceChoice("auto"), DeviceChoice::kAuto);
  auto bad = ParseDeviceChoice("gpu");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("--device must be cpu, cuda or auto"), std::string::npos);

  BackendOptions o;
  o.device = DeviceChoice::kCpu;
  EXPECT_EQ((*MakeBackend(o))->device(), Device::kCpu);
  // Without a usable GPU, asking for one is an error that says why; auto falls back to the CPU.
  o.device = DeviceChoice::kCuda;
  auto cuda = MakeBackend(o);
  if (!cuda.ok()) {
    EXPECT_EQ(cuda.status().code(), absl::StatusCode::kFailedPrecondition) << cuda.status();
    EXPECT_NE(cuda.status().message().find("--device cuda"), std::string::npos) << cuda.status();
    o.device = DeviceChoice::kAuto;
    EXPECT_EQ((*MakeBackend(o))->device(), Device::kCpu);
  }
}

// The copies stored for the AMX tiles share one limit (DSV4_CPU_STORE_LIMIT_MB, here 1 MiB of 512 KiB
// copies): an expert table takes two of its three, so the weight placed next is not stored; when
// the table goes it gives its share back, and two more copies are made. Skips below amx, where
// nothing is stored.
TEST(CpuBackendStore, CopiesShareOneLimitAndTablesGiveTheirsBack) {
  if (kernels::ActiveIsa() != kernels::Isa::kAmx)
    GTEST_SKIP() << "nothing is stored for the tiles at " << kernels::IsaName(kernels::ActiveIsa());
  struct Fp8 {
    std::vector<uint8_t> data, scales;
    kernels::WeightMatrix w;
    Fp8(int64_t rows, int64_t cols) : data(rows * cols, 0x38), scales((rows / 128) * (cols / 128), 127) {
      w.type = kernels::WeightType::kFP8, w.data = data.data(), w.ld = cols, w.scales = scales.data();
      w.block_rows = w.block_cols = 128, w.scale_ld = cols / 128, w.row_end = rows, w.col_end = cols;
    }
  };
  const Fp8 w1(512, 1024), w2(1024, 512), w3(512, 1024), other(512, 1024);  // 512 KiB stored each
  ASSERT_EQ(kernels::StoredBytes(other.w), 512 << 10);
  ASSERT_EQ(setenv("DSV4_CPU_STORE_LIMIT_MB", "1", 1), 0);
  std::unique_ptr<Backend> be = MakeCpuBackend();
  unsetenv("DSV4_CPU_STORE_LIMIT_MB");
  auto stored = [&] {
    auto placed = be->PlaceWeight(other.w, Backend::WeightUse::kProducts);
    EXPECT_TRUE(placed.ok()) << placed.status();
    return placed.ok() && placed->tiled;
  };
  const ExpertViews expert{&w1.w, &w2.w, &w3.w};
  auto table = be->PlaceExperts({&expert, 1});
  ASSERT_TRUE(table.ok()) << table.status();
  EXPECT_FALSE(stored()) << "the table's copies fill the limit";
  table->reset();
  EXPECT_TRUE(stored()) << "the table gave its share back";
  EXPECT_TRUE(stored());
  EXPECT_FALSE(stored()) << "two copies fill the limit again";
}
#endif

}  // namespace
}  // namespace dsv4
