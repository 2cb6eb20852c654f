// The model's fused row operations (kernels/cpu/fused.cc) against plain loops: double-precision
// twins for the ones that sum (mHC, pooling, SwiGLU), and the single-row kernels they batch for the
// others (bit for bit). Awkward shapes: odd widths, strides past the row, hc of 1, 3 and 4.
#include <gtest/gtest.h>

#include <algorithm>
#include <bit>
#include <functional>
#include <limits>
#include <cmath>
#include <random>
#include <thread>
#include <vector>

#include <xmmintrin.h>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/sampling.h"
#include "tests/testutil.h"

namespace dsv4::kernels {
namespace {

using dsv4::testing::AllClose;

// ctest runs this binary once per instruction-set level (DSV4_CPU_ISA); a level the CPU lacks skips.
[[maybe_unused]] ::testing::Environment* const kIsaEnvironment =
    ::testing::AddGlobalTestEnvironment(new dsv4::testing::IsaEnvironment);

std::vector<float> Random(size_t n, float scale = 1.f, uint32_t seed = 7) {
  std::mt19937 rng(seed + static_cast<uint32_t>(n));
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> v(n);
  for (auto& x : v) x = nd(rng);
  return v;
}

bool SameBits(float a, float b) { return std::bit_cast<uint32_t>(a) == std::bit_cast<uint32_t>(b); }

// Float against double: the float path's rounding of exp and of each product, 1e-6 relative.
TEST(Fused, SwiGluMatchesDoubleLoop) {
  const int64_t m = 9, I = 300, ld = 301;
  const std::vector<float> g = Random(m * ld, 6.f), u = Random(m * ld, 6.f, 8), w = Random(m, 1.f, 9);
  for (float limit : {0.f, 10.f})
    for (bool weighted : {false, true}) {
      std::vector<float> got(m * ld, 0.f), want(m * ld, 0.f);
      SwiGlu(g.data(), u.data(), m, I, ld, weighted ? w.data() : nullptr, limit, got.data());
      ref::SwiGlu(g.data(), u.data(), m, I, ld, weighted ? w.data() : nullptr, limit, want.data());
      EXPECT_TRUE(AllClose("swiglu", got.data(), want.data(), got.size(), {.abs = 1e-6, .rel = 1e-6}))
          << limit << " " << weighted;
    }
}

// Dots over hc*D floats in another order than the double loop feed Sinkhorn: 1e-4 relative on the
// collapse, 1e-5 absolute on the (bounded) mixing weights.
TEST(Fused, HcPreMatchesDoubleLoopAndHcPostThePlainLoop) {
  for (int hc : {1, 3, 4})
    for (int64_t D : {1, 100, 517}) {
      const int64_t m = 5, mix = int64_t{hc} * (hc + 2), width = hc * D, ldx = width + 4;
      const std::vector<float> x = Random(m * ldx), fn = Random(mix * width, 0.05f, 3), base = Random(mix, 1.f, 4),
                               scale3 = {0.5f, 0.8f, 1.1f}, y = Random(m * D, 1.f, 5);
      std::vector<float> u(m * D), post(m * hc), comb(m * hc * hc), pre(m * hc), want_u(m * D), want_post(m * hc),
          want_comb(m * hc * hc);
      HcPre(x.data(), m, hc, D, ldx, fn.data(), scale3.data(), base.data(), 20, 1e-6f, 1e-6f, u.data(), post.data(),
            comb.data(), pre.data());
      ref::HcPre(x.data(), m, hc, D, ldx, fn.data(), scale3.data(), base.data(), 20, 1e-6f, 1e-6f, want_u.data(),
                 want_post.data(), want_comb.data());
      const std::string tag = "hc " + std::to_string(hc) + " D " + std::to_string(D);
      EXPECT_TRUE(AllClose("collapse " + tag, u.data(), want_u.data(), u.size(), {.abs = 1e-4, .rel = 1e-4}));
      EXPECT_TRUE(AllClose("post " + tag, post.data(), want_post.data(), post.size(), {.abs = 1e-5}));
      EXPECT_TRUE(AllClose("comb " + tag, comb.data(), want_comb.data(), comb.size(), {.abs = 1e-5}));
      // The pre weights it hands out are the ones it collapsed with (a plain loop, bit for bit), and
      // without a collapse the mixes are the same.
      for (int64_t t = 0; t < m; ++t)
        for (int64_t d = 0; d < D; ++d) {
          float c = 0.f;
          for (int i = 0; i < hc; ++i) c += pre[t * hc + i] * x[t * ldx + i * D + d];
          ASSERT_TRUE(SameBits(u[t * D + d], c)) << tag << " at " << t << ", " << d;
        }
      std::vector<float> post2(m * hc), comb2(m * hc * hc), pre2(m * hc);
      HcPre(x.data(), m, hc, D, ldx, fn.data(), scale3.data(), base.data(), 20, 1e-6f, 1e-6f, nullptr, post2.data(),
            comb2.data(), pre2.data());
      EXPECT_EQ(post2, post) << tag;
      EXPECT_EQ(comb2, comb) << tag;
      EXPECT_EQ(pre2, pre) << tag;

      // Post: X'_j = post_j y + sum_i comb[i][j] X_i, in that order, as a plain loop.
      std::vector<float> got_x = x, want_x = x;
      HcPost(y.data(), D, post.data(), comb.data(), m, hc, D, got_x.data(), ldx);
      for (int64_t t = 0; t < m; ++t)
        for (int64_t d = 0; d < D; ++d)
          for (int j = 0; j < hc; ++j) {
            float o = post[t * hc + j] * y[t * D + d];
            for (int i = 0; i < hc; ++i) o += comb[t * hc * hc + i * hc + j] * x[t * ldx + i * D + d];
            want_x[t * ldx + j * D + d] = o;
          }
      for (size_t i = 0; i < got_x.size(); ++i) ASSERT_TRUE(SameBits(got_x[i], want_x[i])) << tag << " at " << i;
    }
}

// The head's collapse against a double loop (dots over hc*D floats in another order: 1e-5), and
// the embedding's copies against DequantRow (bit for bit).
TEST(Fused, HcHeadAndEmbedRows) {
  for (int hc : {1, 4}) {
    const int64_t m = 3, D = 130, width = hc * D, ldx = width + 2, ldo = D + 3;
    const std::vector<float> x = Random(m * ldx), fn = Random(hc * width, 0.05f, 21), base = Random(hc, 1.f, 22),
                             scale = {0.7f};
    std::vector<float> got(m * ldo, 0.f), want(m * ldo, 0.f);
    HcHead(x.data(), m, hc, D, ldx, fn.data(), scale.data(), base.data(), 1e-6f, 1e-6f, got.data(), ldo);
    for (int64_t t = 0; t < m; ++t) {
      const float* xt = &x[t * ldx];
      double ss = 0;
      for (int64_t i = 0; i < width; ++i) ss += static_cast<double>(xt[i]) * xt[i];
      const double rs = 1.0 / std::sqrt(ss / width + 1e-6);
      for (int i = 0; i < hc; ++i) {
        double dot = 0;
        for (int64_t j = 0; j < width; ++j) dot += static_cast<double>(xt[j]) * fn[i * width + j];
        const double pre = 1.0 / (1.0 + std::exp(-(dot * rs * scale[0] + base[i]))) + 1e-6;
        for (int64_t d = 0; d < D; ++d) want[t * ldo + d] += static_cast<float>(pre * xt[i * D + d]);
      }
    }
    EXPECT_TRUE(AllClose("hc head", got.data(), want.data(), got.size(), {.abs = 1e-5, .rel = 1e-5})) << hc;
  }
  std::vector<uint16_t> bf16(10 * 24);
  for (size_t i = 0; i < bf16.size(); ++i) bf16[i] = static_cast<uint16_t>(0x3f80 + i * 37);
  WeightMatrix table;
  table.type = WeightType::kBF16, table.data = bf16.data(), table.ld = 24, table.row_end = 10, table.col_end = 24;
  table.row_begin = 2;  // a view: ids are rows of the view
  const std::vector<int32_t> ids = {0, 7, 3};
  std::vector<float> out(3 * (3 * 24 + 1), -1.f), row(24);
  EmbedRows(table, ids.data(), 3, 3, out.data(), 3 * 24 + 1);
  for (int64_t t = 0; t < 3; ++t) {
    DequantRow(table, ids[t], row.data());
    for (int c = 0; c < 3; ++c)
      for (int64_t d = 0; d < 24; ++d) ASSERT_TRUE(SameBits(out[t * 73 + c * 24 + d], row[d])) << t << " " << c;
    EXPECT_EQ(out[t * 73 + 72], -1.f);  // the row's padding is left alone
  }
}

// Float softmax sums of up to 2*128 terms against a double loop: 1e-5.
TEST(Fused, CompressPoolMatchesDoubleLoop) {
  for (auto [ratio, overlap] : {std::pair<int64_t, bool>{4, true}, {128, false}, {3, false}, {2, true}})
    for (bool first_has_prev : {false, true}) {
      const int64_t hd = 72, width = overlap ? 2 * hd : hd, ld = width + 3, blocks = 5, ldo = hd + 1;
      const int64_t first_row = overlap ? ratio : 0, rows = first_row + blocks * ratio;
      const std::vector<float> kv = Random(rows * ld), score = Random(rows * ld, 2.f, 11), ape = Random(ratio * width);
      std::vector<float> got(blocks * ldo, 0.f), want(blocks * ldo, 0.f);
      CompressPool(kv.data(), score.data(), ld, ape.data(), ratio, hd, overlap, first_row, first_has_prev, blocks,
                   got.data(), ldo);
      ref::CompressPool(kv.data(), score.data(), ld, ape.data(), ratio, hd, overlap, first_row, first_has_prev, blocks,
                        want.data(), ldo);
      EXPECT_TRUE(AllClose("compress", got.data(), want.data(), got.size(), {.abs = 1e-5, .rel = 1e-5}))
          << ratio << " " << overlap << " " << first_has_prev;
    }
}

TEST(Fused, RowBatchedRopeHadamardTopKEqualTheSingleRowKernels) {
  const int64_t heads = 3, tokens = 4, half = 16, d = 2 * half + 5, n = 64;
  const std::vector<float> cos = Random(tokens * half), sin = Random(tokens * half, 1.f, 12);
  std::vector<float> x = Random(tokens * heads * d), want = x;
  for (bool inverse : {false, true}) {
    Rope(x.data(), tokens * heads, d, half, cos.data(), sin.data(), heads, inverse);
    for (int64_t r = 0; r < tokens * heads; ++r)
      Rope(&want[r * d], half, &cos[(r / heads) * half], &sin[(r / heads) * half], inverse);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_TRUE(SameBits(x[i], want[i])) << i;
  }
  std::vector<float> h = Random(3 * (n + 2)), hw = h;
  Hadamard(h.data(), 3, n, n + 2, 0.125f);
  for (int64_t r = 0; r < 3; ++r) Hadamard(&hw[r * (n + 2)], n, 0.125f);
  for (size_t i = 0; i < h.size(); ++i) ASSERT_TRUE(SameBits(h[i], hw[i])) << i;

  const int64_t m = 4, cols = 50, k = 8, ldidx = 9;
  std::vector<float> s = Random(m * cols);
  s[3] = s[7];  // a tie: the lower index first
  const std::vector<int64_t> nvalid = {50, 5, 0, 8};
  std::vector<int32_t> got(m * ldidx, -7), expect(m * ldidx, -7);
  TopK(s.data(), m, cols, cols, nvalid.data(), k, got.data(), ldidx);
  for (int64_t t = 0; t < m; ++t) {
    const int64_t kk = std::min<int64_t>(k, nvalid[t]);
    if (kk > 0) TopK(&s[t * cols], nvalid[t], kk, &expect[t * ldidx]);
    for (int64_t j = kk; j < k; ++j) expect[t * ldidx + j] = -1;
  }
  EXPECT_EQ(got, expect);
}

TEST(Fused, GatherRowsAndCombineRowsInOrder) {
  const int64_t rows = 6, D = 37, src_rows = 20;
  const std::vector<float> src = Random(src_rows * D), w = Random(13), init = Random(rows * D, 1.f, 2);
  const std::vector<int64_t> ids = {3, -1, 19, 0, 3, 7};
  std::vector<float> gathered(rows * (D + 1), 5.f);
  GatherRows(src.data(), D * 4, ids.data(), rows, D * 4, gathered.data(), (D + 1) * 4);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < D; ++c)
      ASSERT_EQ(gathered[r * (D + 1) + c], ids[r] < 0 ? 0.f : src[ids[r] * D + c]) << r << " " << c;

  const std::vector<int32_t> offsets = {0, 2, 2, 5, 9, 12, 13};
  std::vector<int32_t> which(13);
  for (int i = 0; i < 13; ++i) which[i] = (i * 7) % src_rows;
  for (bool accumulate : {false, true})
    for (bool weighted : {false, true}) {
      std::vector<float> want = accumulate ? init : std::vector<float>(rows * D, 0.f), got = init;
      for (int64_t t = 0; t < rows; ++t)
        for (int64_t c = 0; c < D; ++c)
          for (int32_t e = offsets[t]; e < offsets[t + 1]; ++e)
            want[t * D + c] += (weighted ? w[e] : 1.f) * src[which[e] * D + c];
      CombineRows(src.data(), D, offsets.data(), which.data(), weighted ? w.data() : nullptr, rows, D, accumulate,
                  got.data(), D);
      for (size_t i = 0; i < got.size(); ++i) ASSERT_TRUE(SameBits(got[i], want[i])) << i;  // same order: exact
    }
}

// The router against a plain restatement: scores, the top-K of score + bias by sorting (ties to the
// lower id), weights normalized and scaled; and hash layers taking the table's experts.
// The watchdog's flags: NaN and both infinities in a checked row (row ids in any order, repeated),
// nothing for values past the first n, short rows and rows a vocabulary long; and Scale, a plain product.
TEST(Fused, FlagNonFiniteAndScale) {
  const int64_t ld = 40, n = 33;
  std::vector<float> x(6 * ld, 1.5f);
  x[1 * ld + 32] = std::nanf("");
  x[3 * ld + 0] = INFINITY;
  x[4 * ld + 17] = -INFINITY;
  x[5 * ld + 35] = std::nanf("");  // past n
  x[2 * ld + 5] = std::numeric_limits<float>::max();  // large, finite
  const std::vector<int32_t> rows = {5, 4, 3, 2, 1, 0, 3};
  std::vector<int32_t> flags(rows.size(), -1);
  FlagNonFinite(x.data(), ld, n, rows.data(), static_cast<int64_t>(rows.size()), flags.data());
  EXPECT_EQ(flags, (std::vector<int32_t>{0, 1, 1, 0, 1, 0, 1}));
  // Rows of a vocabulary's length, which the check cuts into pieces spread over the threads: one bad
  // value at the first, a middle, or the last position flags its row alone, whatever the batch; a
  // row's tail past n stays unread.
  const int64_t vocab = 129280, lv = vocab + 7;
  for (const int64_t at : {int64_t{0}, int64_t{16383}, int64_t{16384}, int64_t{70001}, vocab - 1})
    for (const int64_t batch : {1, 3, 16}) {
      std::vector<float> logits(batch * lv, -3.25f);
      for (int64_t r = 0; r < batch; ++r) logits[r * lv + vocab] = INFINITY;  // past n
      const int64_t bad_row = batch / 2;
      logits[bad_row * lv + at] = std::nanf("");
      std::vector<int32_t> ids(batch), got(batch, -1), want(batch, 0);
      for (int64_t r = 0; r < batch; ++r) ids[r] = static_cast<int32_t>(r);
      want[bad_row] = 1;
      FlagNonFinite(logits.data(), lv, vocab, ids.data(), batch, got.data());
      EXPECT_EQ(got, want) << "bad value at " << at << ", batch " << batch;
    }
  std::vector<float> y = {1.f, -2.f, 3e-3f};
  Scale(y.data(), 3, 0.25f);
  EXPECT_EQ(y, (std::vector<float>{0.25f, -0.5f, 0.75e-3f}));
}

TEST(Moe, RouteMatchesAPlainRestatement) {
  const int64_t m = 4, E = 24, K = 5, vocab = 10;
  const std::vector<float> logits = Random(m * E, 2.f, 31), bias = Random(E, 0.3f, 32);
  const std::vector<int32_t> tokens = {3, 9, 0, 3};
  std::vector<int32_t> table(vocab * K);
  for (size_t i = 0; i < table.size(); ++i) table[i] = static_cast<int32_t>((i * 7) % E);
  for (RouterScore score : {RouterScore::kSqrtSoftplus, RouterScore::kSigmoid, RouterScore::kSoftmax})
    for (bool hashed : {false, true}) {
      std::vector<float> scores = logits, w(m * K);
      std::vector<int32_t> ex(m * K);
      const bool normalize = score != RouterScore::kSoftmax;
      Route(scores.data(), m, E, K, 1.5f, score, bias.data(), hashed ? table.data() : nullptr, tokens.data(), normalize,
            1e-20f, 2.5f, ex.data(), w.data());
      for (int64_t t = 0; t < m; ++t) {
        std::vector<double> s(E);
        double mx = -INFINITY, sum = 0;
        for (int64_t e = 0; e < E; ++e) mx = std::max<double>(mx, logits[t * E + e] / 1.5);
        for (int64_t e = 0; e < E; ++e) {
          const double z = logits[t * E + e] / 1.5;
          s[e] = score == RouterScore::kSqrtSoftplus ? std::sqrt(std::log1p(std::exp(z)))
                 : score == RouterScore::kSigmoid    ? 1 / (1 + std::exp(-z))
                                                     : std::exp(z - mx);
          sum += s[e];
        }
        if (score == RouterScore::kSoftmax)
          for (auto& v : s) v /= sum;
        std::vector<int32_t> want(K);
        if (hashed) {
          for (int64_t j = 0; j < K; ++j) want[j] = table[tokens[t] * K + j];
        } else {
          std::vector<int32_t> ids(E);
          for (int32_t e = 0; e < E; ++e) ids[e] = e;
          std::stable_sort(ids.begin(), ids.end(),
                           [&](int32_t a, int32_t b) { return s[a] + bias[a] > s[b] + bias[b]; });
          want.assign(ids.begin(), ids.begin() + K);
        }
        double wsum = 0;
        for (int64_t j = 0; j < K; ++j) wsum += s[want[j]];
        for (int64_t j = 0; j < K; ++j) {
          ASSERT_EQ(ex[t * K + j], want[j]) << static_cast<int>(score) << " " << hashed << " token " << t;
          const double expect = (normalize ? s[want[j]] / wsum : s[want[j]]) * 2.5;
          EXPECT_NEAR(w[t * K + j], expect, 1e-5 * std::abs(expect)) << t << " " << j;  // float vs double
          EXPECT_NEAR(scores[t * E + want[j]], s[want[j]], 1e-5 * std::abs(s[want[j]]) + 1e-7);
        }
      }
    }
}

// Each token's slots against std::stable_sort of its (expert, weight) pairs: repeated experts (hash
// layers' tables may repeat one) keep their slot order, -1s come first.
TEST(Moe, SortSlotsByExpertIsStablePerToken) {
  const int64_t K = 5, m = 6;
  std::vector<int32_t> experts(m * K);
  std::vector<float> weights(m * K);
  for (int64_t p = 0; p < m * K; ++p) {
    experts[p] = static_cast<int32_t>((p * 7 + p / K) % 9) - 1;
    weights[p] = 0.5f + static_cast<float>(p);
  }
  experts[2 * K + 1] = experts[2 * K + 3] = 4;  // a repeated expert
  std::vector<int32_t> want_e = experts;
  std::vector<float> want_w = weights;
  for (int64_t t = 0; t < m; ++t) {
    std::vector<std::pair<int32_t, float>> slots;
    for (int64_t j = 0; j < K; ++j) slots.push_back({experts[t * K + j], weights[t * K + j]});
    std::stable_sort(slots.begin(), slots.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (int64_t j = 0; j < K; ++j) want_e[t * K + j] = slots[j].first, want_w[t * K + j] = slots[j].second;
  }
  std::vector<int32_t> e = experts;
  SortSlotsByExpert(e.data(), weights.data(), m, K);
  EXPECT_EQ(e, want_e);
  EXPECT_EQ(weights, want_w);
  SortSlotsByExpert(experts.data(), nullptr, m, K);  // without weights
  EXPECT_EQ(experts, want_e);
}

// Grouping against a direct construction: every kept pair once, in expert order then pair order.
TEST(Moe, GroupByExpertIsAStableCountingSort) {
  const int64_t K = 3, tokens = 7, pairs = tokens * K, E = 5;
  std::vector<int32_t> experts(pairs);
  for (int64_t p = 0; p < pairs; ++p) experts[p] = static_cast<int32_t>((p * 11) % 7) - 1;  // -1 and 5: not held
  std::vector<int32_t> offsets(E + 1), position(pairs);
  std::vector<int64_t> order(pairs), order_tokens(pairs), counts(E, 10);
  GroupByExpert(experts.data(), pairs, K, E, offsets.data(), order.data(), order_tokens.data(), position.data(),
                counts.data());
  int64_t row = 0;
  for (int32_t e = 0; e < E; ++e) {
    ASSERT_EQ(offsets[e], row) << e;
    for (int64_t p = 0; p < pairs; ++p)
      if (experts[p] == e) {
        ASSERT_EQ(order[row], p);
        ASSERT_EQ(order_tokens[row], p / K);
        ASSERT_EQ(position[p], row);
        ++row;
      }
    EXPECT_EQ(counts[e], 10 + (offsets[e + 1] - offsets[e]));
  }
  ASSERT_EQ(offsets[E], row);
  for (int64_t i = row; i < pairs; ++i) EXPECT_EQ(order[i], -1);
  for (int64_t p = 0; p < pairs; ++p) {
    if (experts[p] < 0 || experts[p] >= E) {
      EXPECT_EQ(position[p], -1);
    }
  }
}

// Each fused, MoE and sampling kernel sets FTZ/DAZ on a thread that calls it without them (as a thread
// created before the process set the mode would): run on a fresh thread with MXCSR's FTZ (bit 15)
// and DAZ (bit 6) cleared first.
TEST(FloatMode, FusedAndMoeKernelsSetFlushDenormalsOnTheirThread) {
  auto on_plain_thread = [](const char* name, const std::function<void()>& kernel) {
    bool before = true, after = false;
    std::thread t([&] {
      _mm_setcsr(_mm_getcsr() & ~0x8040u);
      before = FlushesDenormals();
      kernel();
      after = FlushesDenormals();
    });
    t.join();
    EXPECT_FALSE(before) << name << ": the test could not clear the mode";
    EXPECT_TRUE(after) << name;
  };
  const int64_t m = 2, D = 32;
  const std::vector<float> x = Random(m * D), fn = Random(D, 0.05f, 41), base = {0.1f}, scale = {0.7f};
  std::vector<float> out(m * D);
  on_plain_thread("HcHead", [&] {
    HcHead(x.data(), m, 1, D, D, fn.data(), scale.data(), base.data(), 1e-6f, 1e-6f, out.data(), D);
  });
  std::vector<uint16_t> bf16(4 * 16, 0x3f80);
  WeightMatrix table;
  table.type = WeightType::kBF16, table.data = bf16.data(), table.ld = 16, table.row_end = 4, table.col_end = 16;
  const std::vector<int32_t> ids = {1, 3};
  on_plain_thread("EmbedRows", [&] { EmbedRows(table, ids.data(), 2, 1, out.data(), 16); });
  const int64_t E = 8, K = 2;
  std::vector<float> scores = Random(m * E, 1.f, 42), w(m * K);
  std::vector<int32_t> ex(m * K);
  on_plain_thread("Route", [&] {
    Route(scores.data(), m, E, K, 1.f, RouterScore::kSigmoid, nullptr, nullptr, nullptr, true, 1e-20f, 1.f,
          ex.data(), w.data());
  });
  std::vector<float> e(m * E);
  on_plain_thread("ExpShiftedSum", [&] { (void)ExpShiftedSum(scores.data(), m * E, 10.f, 1.f, e.data()); });
  bool any_nan = false;
  on_plain_thread("MaxAndNaN", [&] { (void)MaxAndNaN(scores.data(), m * E, &any_nan); });
  std::vector<int32_t> in_range(m * E);
  std::vector<float> range_weights(m * E);
  std::vector<double> range_sums(m * E);
  on_plain_thread("SplitAtRange", [&] {
    (void)SplitAtRange(e.data(), m * E, 0.f, 1.f, 8, range_sums.data(), in_range.data(), range_weights.data());
  });
  double sums[2];
  on_plain_thread("KeptBlockSums", [&] { KeptBlockSums(e.data(), m * E, KeepRule{}, 8, sums); });
  std::vector<int32_t> offsets(E + 1), position(m * K);
  std::vector<int64_t> order(m * K), order_tokens(m * K), counts(E, 0);
  on_plain_thread("GroupByExpert", [&] {
    GroupByExpert(ex.data(), m * K, K, E, offsets.data(), order.data(), order_tokens.data(), position.data(),
                  counts.data());
  });
  const std::vector<float> g = Random(m * D, 1.f, 43), u = Random(m * D, 1.f, 44);
  std::vector<float> h(m * D);
  on_plain_thread("SwiGlu", [&] { SwiGlu(g.data(), u.data(), m, D, D, nullptr, 0.f, h.data()); });
}

}  // namespace
}  // namespace dsv4::kernels
