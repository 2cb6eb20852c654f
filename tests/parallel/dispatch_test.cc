// MoE dispatch/combine over the EP group against a single-rank reference. Each "expert" is a
// cheap function whose output tells which expert and which token produced it (expert e maps x to
// (e + 1) * x + e), so a misrouted or dropped token shows up as a wrong value. Placements: even
// blocks, uneven blocks (the experts do not divide over the ranks), a hot expert copied, and EPLB
// with redundant slots; replicas must split their expert's pairs evenly.
#include <gtest/gtest.h>
#include <mpi.h>

#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <vector>

#include "parallel/layout.h"
#include "parallel/moe_dispatch.h"
#include "parallel/placement.h"
#include "tests/mpi_main.h"

namespace dsv4 {
namespace {

using testing::World;

float ExpertFn(int32_t e, float x) { return (e + 1) * x + e; }

struct Case {
  const char* name;
  int64_t experts;
  int k;
  // Routing of token t of rank r, slot j.
  std::function<int32_t(int rank, int64_t t, int j)> route;
  std::function<int64_t(int rank)> tokens;  // tokens on each rank
};

enum class Kind { kEven, kUneven, kReplica, kEplb };

ExpertPlacement PlacementFor(Kind kind, int64_t experts, int P) {
  switch (kind) {
    case Kind::kEven:
    case Kind::kUneven:
      return ExpertPlacement::Contiguous(experts, P);
    case Kind::kReplica: {
      ExpertPlacement p = ExpertPlacement::Contiguous(experts, P);
      if (P > 1) p.AddReplica(0, P - 1);  // a hot expert copied
      return p;
    }
    case Kind::kEplb: {
      std::vector<double> load(experts, 1.0);
      load[0] = 10.0 * P;  // expert 0 hot: it gets copies on several ranks
      auto p = PlanEplbLayer(load, P, {std::min<int64_t>(experts + P, experts * P), 0, 1});
      EXPECT_TRUE(p.ok()) << p.status();
      return *p;
    }
  }
  return {};
}

void RunCase(Communicator& c, const Case& cs, Kind kind) {
  const int64_t D = 24, n = cs.tokens(c.rank());
  const int K = cs.k;
  const ExpertPlacement placement = PlacementFor(kind, cs.experts, c.size());
  std::vector<float> x(n * D), w(n * K);
  std::vector<int32_t> e(n * K);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t d = 0; d < D; ++d) x[t * D + d] = static_cast<float>(c.rank() * 100 + t) + 0.01f * d;
    for (int j = 0; j < K; ++j) e[t * K + j] = cs.route(c.rank(), t, j), w[t * K + j] = 0.5f + 0.125f * j;
  }
  MoeDispatcher disp(&c);
  // Twice: the second call reuses the first one's buffers.
  for (int round = 0; round < 2; ++round) {
    ASSERT_TRUE(disp.Dispatch(placement, x.data(), n, D, e.data(), w.data(), K).ok());
    // Serve: every received pair must be an expert this rank holds.
    const int64_t m = disp.num_received();
    std::vector<float> y(m * D, 0.f);
    for (int64_t i = 0; i < m; ++i)
      for (int j = 0; j < K; ++j) {
        const int32_t ex = disp.recv_expert(i, j);
        if (ex < 0) continue;
        ASSERT_TRUE(placement.Holds(c.rank(), ex)) << cs.name << ": rank " << c.rank() << " got expert " << ex;
        for (int64_t d = 0; d < D; ++d) y[i * D + d] += disp.recv_weight(i, j) * ExpertFn(ex, disp.recv_hidden(i)[d]);
      }
    // Round 0 adds into an output holding 1s; round 1 writes over NaNs (the model's use), which
    // every token's row must replace, a token routed nowhere with zeros.
    const bool accumulate = round == 0;
    std::vector<float> out(n * D, accumulate ? 1.f : std::numeric_limits<float>::quiet_NaN());
    ASSERT_TRUE(disp.Combine(y.data(), out.data(), accumulate).ok());
    // Single-rank reference; tolerance: float sums of K terms in another grouping.
    for (int64_t t = 0; t < n; ++t)
      for (int64_t d = 0; d < D; ++d) {
        float want = accumulate ? 1.f : 0.f;
        for (int j = 0; j < K; ++j)
          if (e[t * K + j] >= 0) want += w[t * K + j] * ExpertFn(e[t * K + j], x[t * D + d]);
        ASSERT_NEAR(out[t * D + d], want, 1e-4f * (std::fabs(want) + 1))
            << cs.name << " token " << t << " dim " << d << (accumulate ? " (accumulate)" : "");
      }
  }
  // Replicas share their expert's pairs evenly: each of this sender's replicas of an expert gets
  // floor or ceil of its pairs / replicas.
  const MoeSendPlan& plan = disp.plan();
  for (int64_t ex = 0; ex < placement.num_experts(); ++ex) {
    const auto& reps = placement.replicas(ex);
    if (reps.size() < 2) continue;
    std::vector<int64_t> per(c.size(), 0);
    int64_t total = 0;
    for (int64_t row = 0; row < plan.total(); ++row) {
      int dest = 0;
      while (plan.send_offset[dest + 1] <= row) ++dest;
      for (int j = 0; j < K; ++j) per[dest] += plan.expert(row, j) == ex, total += plan.expert(row, j) == ex;
    }
    for (int r : reps) {
      EXPECT_GE(per[r], total / static_cast<int64_t>(reps.size())) << cs.name << " expert " << ex << " rank " << r;
      EXPECT_LE(per[r], (total + static_cast<int64_t>(reps.size()) - 1) / static_cast<int64_t>(reps.size()))
          << cs.name << " expert " << ex << " rank " << r;
    }
  }
}

class Dispatch : public ::testing::TestWithParam<Kind> {};

TEST_P(Dispatch, MatchesSingleRankReference) {
  auto c = World();
  const int P = c->size();
  // Uneven: 8 * P + 3 experts do not divide over P > 1 ranks (P = 3: 9, 9, 9).
  const int64_t per = GetParam() == Kind::kUneven ? 1 : 0;
  auto distinct = [](int64_t experts, int k, uint32_t seed) {
    return [=](int rank, int64_t t, int j) {
      // k distinct experts per token: a token-dependent rotation of a stride-coprime walk.
      const int64_t start = (rank * 131 + t * 17 + seed) % experts;
      return static_cast<int32_t>((start + j * 1) % experts);
    };
  };
  const int64_t E8 = 8 * P + 3 * per, E16 = 16 * P + 5 * per, E4 = 4 * P + per;
  const std::vector<Case> cases = {
      {"top-1", E8, 1, distinct(E8, 1, 1), [](int r) { return 5 + r; }},
      {"top-6", E8, 6, distinct(E8, 6, 2), [](int r) { return 9; }},
      {"top-16", E16, 16, distinct(E16, 16, 3), [](int r) { return 4 + 3 * r; }},
      {"one expert only", E4, 1, [](int, int64_t, int) { return 0; }, [](int) { return 6; }},
      {"experts without tokens", E8, 2, [](int, int64_t t, int j) { return static_cast<int32_t>(j); },
       [](int) { return 3; }},
      {"ranks without tokens", E4, 2, distinct(E4, 2, 4), [](int r) { return r == 0 ? 7 : 0; }},
      {"no tokens at all", E4, 3, distinct(E4, 3, 5), [](int) { return 0; }},
      {"tokens routed nowhere", E8, 3,  // every third token: no expert; others: some slots empty
       [=](int rank, int64_t t, int j) {
         return t % 3 == 0 || (t + j) % 4 == 0 ? -1 : static_cast<int32_t>((rank * 5 + t * 3 + j) % E8);
       },
       [](int r) { return 8 + r; }},
      {"hot expert 0", E8, 4,
       [=](int rank, int64_t t, int j) {
         return j == 0 ? 0 : static_cast<int32_t>(1 + (rank * 7 + t * 5 + j) % (E8 - 1));
       },
       [](int r) { return 11 + r; }},
  };
  for (const auto& cs : cases) RunCase(*c, cs, GetParam());
}

INSTANTIATE_TEST_SUITE_P(Placements, Dispatch,
                         ::testing::Values(Kind::kEven, Kind::kUneven, Kind::kReplica, Kind::kEplb));

TEST(Dispatch, ExpertOutOfRangeIsAnError) {
  auto c = World();
  ExpertPlacement placement = ExpertPlacement::Contiguous(4 * c->size(), c->size());
  MoeDispatcher disp(c.get());
  std::vector<float> x(8, 0.f), w(1, 1.f);
  std::vector<int32_t> e = {static_cast<int32_t>(4 * c->size())};
  // Every rank fails before communicating, so nobody waits.
  EXPECT_EQ(disp.Dispatch(placement, x.data(), 1, 8, e.data(), w.data(), 1).code(),
            absl::StatusCode::kInvalidArgument);
  // A placement for another group size, likewise.
  EXPECT_EQ(disp.Dispatch(ExpertPlacement::Contiguous(8, c->size() + 1), x.data(), 1, 8, e.data(), w.data(), 1).code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(Layout, ValidatesDivisibility) {
  ShardedDims dims{8, 2, 16};
  EXPECT_TRUE(ParallelLayout::Make(4, 3, 2, 4, dims).ok());
  auto l = ParallelLayout::Make(4, 3, 2, 0, dims);
  ASSERT_TRUE(l.ok());
  EXPECT_EQ(l->tp_rank, 1);
  EXPECT_EQ(l->dp_rank, 1);
  EXPECT_EQ(l->ep, 4);
  EXPECT_NE(ParallelLayout::Make(4, 0, 3, 0, dims).status().message().find("--tp 3 does not divide the world size 4"),
            std::string::npos);
  EXPECT_TRUE(ParallelLayout::Make(6, 0, 1, 6, dims).ok());  // 16 experts over 6 ranks: 3, 3, 3, 3, 2, 2
  EXPECT_NE(ParallelLayout::Make(4, 0, 4, 0, dims).status().message().find("2 output groups"), std::string::npos);
  EXPECT_FALSE(ParallelLayout::Make(4, 4, 1, 0, dims).ok());
}

TEST(Layout, OneGpuPerRank) {
  EXPECT_EQ(*DeviceForLocalRank(3, 8, 8), 3);
  const auto shared = DeviceForLocalRank(1, 2, 1);
  ASSERT_FALSE(shared.ok());
  EXPECT_NE(shared.status().message().find("2 ranks on this node but 1 visible GPU(s)"), std::string::npos);
  EXPECT_FALSE(DeviceForLocalRank(0, 1, 0).ok());
  EXPECT_FALSE(DeviceForLocalRank(4, 4, 8).ok());
}

}  // namespace
}  // namespace dsv4
