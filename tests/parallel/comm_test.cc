// Communicator tests, run under `mpirun --oversubscribe -np N` for N = 1..4 (a single process
// tests the local backend). Data encodes its sender: element i from rank r is r * 1000 + i, so a
// receiver can tell exactly where every value came from.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <numeric>
#include <vector>

#include "parallel/communicator.h"
#include "tests/mpi_main.h"

namespace dsv4 {
namespace {

using testing::World;

float Tag(int rank, int64_t i) { return static_cast<float>(rank * 1000 + i); }

TEST(Comm, AllReduceSumsInRankOrder) {
  auto c = World();
  const int P = c->size();
  for (int64_t n : {0, 1, 7, 1000}) {
    std::vector<float> x(n);
    for (int64_t i = 0; i < n; ++i) x[i] = Tag(c->rank(), i);
    ASSERT_TRUE(c->AllReduceSum(x.data(), n).ok());
    for (int64_t i = 0; i < n; ++i) {
      float want = 0;
      for (int r = 0; r < P; ++r) want += Tag(r, i);
      ASSERT_EQ(x[i], want) << "n " << n << " i " << i;
    }
  }
}

TEST(Comm, AllGatherVUnevenAndEmpty) {
  auto c = World();
  const int P = c->size();
  std::vector<int64_t> counts(P);
  for (int r = 0; r < P; ++r) counts[r] = (r % 2 == 1) ? 0 : r + 3;  // odd ranks contribute nothing
  std::vector<float> in(counts[c->rank()]);
  for (size_t i = 0; i < in.size(); ++i) in[i] = Tag(c->rank(), i);
  std::vector<float> out(std::accumulate(counts.begin(), counts.end(), int64_t{0}));
  ASSERT_TRUE(c->AllGatherV(in.data(), counts.data(), out.data()).ok());
  size_t at = 0;
  for (int r = 0; r < P; ++r)
    for (int64_t i = 0; i < counts[r]; ++i) ASSERT_EQ(out[at++], Tag(r, i));
}

TEST(Comm, BroadcastFromEveryRoot) {
  auto c = World();
  for (int root = 0; root < c->size(); ++root) {
    std::vector<float> x(33, -1.f);
    if (c->rank() == root)
      for (size_t i = 0; i < x.size(); ++i) x[i] = Tag(root, i);
    ASSERT_TRUE(c->Broadcast(x.data(), x.size() * sizeof(float), root).ok());
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(x[i], Tag(root, i));
  }
  EXPECT_FALSE(c->Broadcast(nullptr, 0, c->size()).ok());
}

// All-to-all with uneven counts, zero-size messages, and a pattern where one rank receives all.
void CheckAllToAll(Communicator& c, const std::function<int64_t(int from, int to)>& count) {
  const int P = c.size(), me = c.rank();
  std::vector<int64_t> sb(P), sd(P), rb(P), rd(P);
  int64_t so = 0, ro = 0;
  for (int p = 0; p < P; ++p) {
    sb[p] = count(me, p) * 4, sd[p] = so, so += sb[p];
    rb[p] = count(p, me) * 4, rd[p] = ro, ro += rb[p];
  }
  std::vector<float> send(so / 4), recv(ro / 4, -1.f);
  for (int p = 0; p < P; ++p)
    for (int64_t i = 0; i < count(me, p); ++i) send[sd[p] / 4 + i] = Tag(me, p * 100 + i);
  ASSERT_TRUE(c.AllToAllV(send.data(), sb.data(), sd.data(), recv.data(), rb.data(), rd.data()).ok());
  for (int p = 0; p < P; ++p)
    for (int64_t i = 0; i < count(p, me); ++i) ASSERT_EQ(recv[rd[p] / 4 + i], Tag(p, me * 100 + i)) << "from " << p;
}

TEST(Comm, AllToAllVPatterns) {
  auto c = World();
  CheckAllToAll(*c, [](int from, int to) { return (from * 7 + to * 3) % 5; });          // uneven, some zero
  CheckAllToAll(*c, [](int, int) { return 0; });                                     // all empty
  CheckAllToAll(*c, [](int from, int to) { return to == 0 ? from + 2 : 0; });         // rank 0 gets all
  CheckAllToAll(*c, [](int from, int to) { return from == to ? 5 : 0; });            // only self
}

TEST(Comm, SplitGroupsAreIndependent) {
  auto c = World();
  auto sub = c->Split(c->rank() % 2, c->rank(), "parity");
  ASSERT_TRUE(sub.ok()) << sub.status();
  float x = static_cast<float>(c->rank());
  ASSERT_TRUE((*sub)->AllReduceSum(&x, 1).ok());
  float want = 0;
  for (int r = c->rank() % 2; r < c->size(); r += 2) want += r;
  EXPECT_EQ(x, want);
}

// A peer that never arrives: the others fail within the timeout, naming the collective and the
// missing rank, instead of hanging.
TEST(Comm, MissingPeerTimesOutWithNames) {
  auto c = World();
  if (c->size() < 2) GTEST_SKIP() << "needs 2 ranks";
  auto sub = c->Split(0, c->rank(), "timeout-test");
  ASSERT_TRUE(sub.ok());
  (*sub)->set_timeout(std::chrono::milliseconds(800));
  const int absent = c->size() - 1;
  if (c->rank() != absent) {
    float x = 1;
    const auto t0 = std::chrono::steady_clock::now();
    const absl::Status st = (*sub)->AllReduceSum(&x, 1);
    const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
    EXPECT_NE(st.message().find("AllReduce"), std::string::npos) << st;
    EXPECT_NE(st.message().find("rank(s) " + std::to_string(absent)), std::string::npos) << st;
    EXPECT_LT(waited, 10.0);
  }
  // Everyone meets again on the world communicator.
  ASSERT_TRUE(c->Barrier().ok());
}

TEST(Comm, AbortFailsPromptly) {
  auto c = World();
  auto sub = c->Split(c->rank(), 0, "self");
  ASSERT_TRUE(sub.ok());
  (*sub)->Abort("test");
  float x = 0;
  EXPECT_EQ((*sub)->AllReduceSum(&x, 1).code(), absl::StatusCode::kAborted);
}

}  // namespace
}  // namespace dsv4
