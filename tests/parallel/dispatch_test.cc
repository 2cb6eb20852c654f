// MoE dispatch/combine over the EP group against a single-rank reference. Each "expert" is a
// cheap function whose output tells which expert and which token produced it (expert e maps x to
// (e + 1) * x + e), so a misrouted or dropped token shows up as a wrong value.
#include <gtest/gtest.h>
#include <mpi.h>

#include <random>
#include <vector>

#include "parallel/layout.h"
#include "parallel/moe_dispatch.h"
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

void RunCase(Communicator& c, const Case& cs, bool with_replicas) {
  const int64_t D = 24, n = cs.tokens(c.rank());
  const int K = cs.k;
  ExpertPlacement placement = ExpertPlacement::Contiguous(cs.experts, c.size());
  if (with_replicas && c.size() > 1) placement.AddReplica(0, c.size() - 1);  // a hot expert copied
  std::vector<float> x(n * D), w(n * K);
  std::vector<int32_t> e(n * K);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t d = 0; d < D; ++d) x[t * D + d] = static_cast<float>(c.rank() * 100 + t) + 0.01f * d;
    for (int j = 0; j < K; ++j) e[t * K + j] = cs.route(c.rank(), t, j), w[t * K + j] = 0.5f + 0.125f * j;
  }
  MoeDispatcher disp(&c, &placement);
  ASSERT_TRUE(disp.Dispatch(x.data(), n, D, e.data(), w.data(), K).ok());
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
  std::vector<float> out(n * D, 0.f);
  ASSERT_TRUE(disp.Combine(y.data(), out.data()).ok());
  // Single-rank reference; tolerance: float sums of K terms in another grouping.
  for (int64_t t = 0; t < n; ++t)
    for (int64_t d = 0; d < D; ++d) {
      float want = 0;
      for (int j = 0; j < K; ++j) want += w[t * K + j] * ExpertFn(e[t * K + j], x[t * D + d]);
      ASSERT_NEAR(out[t * D + d], want, 1e-4f * (std::fabs(want) + 1)) << cs.name << " token " << t << " dim " << d;
    }
}

class Dispatch : public ::testing::TestWithParam<bool> {};

TEST_P(Dispatch, MatchesSingleRankReference) {
  auto c = World();
  const int P = c->size();
  auto distinct = [](int64_t experts, int k, uint32_t seed) {
    return [=](int rank, int64_t t, int j) {
      // k distinct experts per token: a token-dependent rotation of a stride-coprime walk.
      const int64_t start = (rank * 131 + t * 17 + seed) % experts;
      return static_cast<int32_t>((start + j * 1) % experts);
    };
  };
  const std::vector<Case> cases = {
      {"top-1", 8 * P, 1, distinct(8 * P, 1, 1), [](int r) { return 5 + r; }},
      {"top-6", 8 * P, 6, distinct(8 * P, 6, 2), [](int r) { return 9; }},
      {"top-16", 16 * P, 16, distinct(16 * P, 16, 3), [](int r) { return 4 + 3 * r; }},
      {"one expert only", 4 * P, 1, [](int, int64_t, int) { return 0; }, [](int) { return 6; }},
      {"experts without tokens", 8 * P, 2, [](int, int64_t t, int j) { return static_cast<int32_t>(j); },
       [](int) { return 3; }},
      {"ranks without tokens", 4 * P, 2, distinct(4 * P, 2, 4), [](int r) { return r == 0 ? 7 : 0; }},
      {"no tokens at all", 4 * P, 3, distinct(4 * P, 3, 5), [](int) { return 0; }},
  };
  for (const auto& cs : cases) RunCase(*c, cs, GetParam());
}

INSTANTIATE_TEST_SUITE_P(Replicas, Dispatch, ::testing::Bool());

TEST(Dispatch, ExpertOutOfRangeIsAnError) {
  auto c = World();
  ExpertPlacement placement = ExpertPlacement::Contiguous(4 * c->size(), c->size());
  MoeDispatcher disp(c.get(), &placement);
  std::vector<float> x(8, 0.f), w(1, 1.f);
  std::vector<int32_t> e = {static_cast<int32_t>(4 * c->size())};
  // Every rank fails before communicating, so nobody waits.
  EXPECT_EQ(disp.Dispatch(x.data(), 1, 8, e.data(), w.data(), 1).code(), absl::StatusCode::kInvalidArgument);
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
  EXPECT_NE(ParallelLayout::Make(6, 0, 1, 6, dims).status().message().find("16 routed experts"), std::string::npos);
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
