// Communicator tests, run under `mpirun --oversubscribe -np N` for N = 1..4 (a single process
// tests the local backend). Data encodes its sender: element i from rank r is r * 1000 + i, so a
// receiver can tell exactly where every value came from.
#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <cstring>
#include <functional>
#include <numeric>
#include <vector>

#include "parallel/communicator.h"
#include "tests/mpi_main.h"

namespace dsv4 {
namespace {

using testing::World;

float Tag(int rank, int64_t i) { return static_cast<float>(rank * 1000 + i); }

// Where the launcher put this rank, read before MPI starts: on one machine every rank shares the
// node, so its local rank and size (the GPU it would take) are its world rank and size, as MPI
// numbers them.
TEST(Comm, LauncherPlaceIsTheNodeLocalRank) {
  const LauncherPlace p = LauncherWorld();
  int rank = 0, size = 1;
  if (LaunchedByMpirun()) {  // alone, MPI is not started: a world of one
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
  }
  EXPECT_EQ(p.rank, rank);
  EXPECT_EQ(p.size, size);
  EXPECT_EQ(p.local_rank, rank);
  EXPECT_EQ(p.local_size, size);
}

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

// PeerExchange: every rank sends every other rank a count first, then that many rows gathered
// from scattered places of a buffer (SendRows), then a trailer. Receivers make room as each count
// arrives (WaitAny) and check where every value came from.
TEST(Comm, ExchangeSizesAheadOfRows) {
  auto c = World();
  const int P = c->size(), me = c->rank();
  const int64_t W = 5;  // floats per row
  auto count_to = [](int from, int to) { return static_cast<int64_t>((from * 3 + to * 5) % 4); };  // some zero
  // The source: 8 rows; peer p gets rows 7, 6, 5, ... (reversed: not contiguous in the source order).
  std::vector<float> src(8 * W);
  for (int64_t r = 0; r < 8; ++r)
    for (int64_t i = 0; i < W; ++i) src[r * W + i] = Tag(me, r * 10 + i);
  std::vector<int64_t> counts_out(P), counts_in(P, -1), offsets(8);
  for (int64_t r = 0; r < 8; ++r) offsets[r] = (7 - r) * W * static_cast<int64_t>(sizeof(float));
  std::vector<int32_t> trailer_out(P), trailer_in(P, -1);
  for (int round = 0; round < 2; ++round) {
    auto ex = c->NewExchange("exchange test");
    std::vector<PeerExchange::Handle> count_msgs;
    std::vector<int> peers;
    for (int p = 0; p < P; ++p)
      if (p != me) peers.push_back(p), count_msgs.push_back(ex->Recv(p, &counts_in[p], sizeof(int64_t)));
    for (int p = 0; p < P; ++p) {
      if (p == me) continue;
      counts_out[p] = count_to(me, p);
      trailer_out[p] = me * 100 + p;
      ex->Send(p, &counts_out[p], sizeof(int64_t));
      ex->SendRows(p, src.data(), W * sizeof(float), offsets.data(), counts_out[p]);
      ex->Send(p, &trailer_out[p], sizeof(int32_t));
    }
    std::vector<std::vector<float>> rows(P);
    for (size_t k = 0; k < peers.size(); ++k) {
      auto i = ex->WaitAny(count_msgs);
      ASSERT_TRUE(i.ok()) << i.status();
      const int p = peers[*i];
      ASSERT_EQ(counts_in[p], count_to(p, me));
      rows[p].assign(counts_in[p] * W, -1.f);
      ex->Recv(p, rows[p].data(), counts_in[p] * W * static_cast<int64_t>(sizeof(float)));
      ex->Recv(p, &trailer_in[p], sizeof(int32_t));
    }
    EXPECT_EQ(ex->WaitAny(count_msgs).status().code(), absl::StatusCode::kOutOfRange);
    ASSERT_TRUE(ex->WaitAll().ok());
    for (int p = 0; p < P; ++p) {
      if (p == me) continue;
      EXPECT_EQ(trailer_in[p], p * 100 + me);
      for (int64_t k = 0; k < counts_in[p]; ++k)
        for (int64_t i = 0; i < W; ++i) ASSERT_EQ(rows[p][k * W + i], Tag(p, (7 - k) * 10 + i)) << "from " << p;
    }
  }
}

TEST(Comm, ExchangeWithSelfInAWorldOfOne) {
  auto local = MakeLocalCommunicator();
  auto ex = local->NewExchange("self");
  const float a[3] = {1, 2, 3};
  float b[3] = {};
  const int64_t offsets[2] = {8, 0};
  ex->SendRows(0, a, 4, offsets, 2);  // a[2], a[0]
  const auto h = ex->Recv(0, b, 8);
  ASSERT_TRUE(ex->Wait(h).ok());
  EXPECT_EQ(b[0], 3.f);
  EXPECT_EQ(b[1], 1.f);
  float lonely;
  const auto unmatched = ex->Recv(0, &lonely, 4);
  EXPECT_EQ(ex->Wait(unmatched).code(), absl::StatusCode::kFailedPrecondition);
  auto bad = local->NewExchange("self");
  bad->Send(1, a, 4);
  EXPECT_EQ(bad->WaitAll().code(), absl::StatusCode::kInvalidArgument);
}

// A peer that never sends: the exchange's wait fails within the timeout, naming it.
TEST(Comm, ExchangeMissingPeerTimesOutWithNames) {
  auto c = World();
  if (c->size() < 2) GTEST_SKIP() << "needs 2 ranks";
  auto sub = c->Split(0, c->rank(), "exchange-timeout-test");
  ASSERT_TRUE(sub.ok());
  (*sub)->set_timeout(std::chrono::milliseconds(800));
  const int absent = c->size() - 1;
  if (c->rank() != absent) {
    auto ex = (*sub)->NewExchange("MoE test");
    int64_t n = 0;
    const auto h = ex->Recv(absent, &n, sizeof(n));
    const absl::Status st = ex->Wait(h);
    EXPECT_EQ(st.code(), absl::StatusCode::kDeadlineExceeded) << st;
    EXPECT_NE(st.message().find("MoE test"), std::string::npos) << st;
    EXPECT_NE(st.message().find("rank(s) " + std::to_string(absent)), std::string::npos) << st;
    auto any = ex->WaitAny({h});
    EXPECT_EQ(any.status().code(), absl::StatusCode::kDeadlineExceeded);
  }
  ASSERT_TRUE(c->Barrier().ok());
}

// PeerMemory: ranks of one node read each other's rows directly (when the OS allows it: then every
// pair of this single-node job can), gathering scattered rows into one buffer.
TEST(Comm, PeerMemoryGathersRowsOfSameNodePeers) {
  auto c = World();
  const int P = c->size(), me = c->rank();
  auto pm = c->NewPeerMemory();
  ASSERT_TRUE(pm.ok()) << pm.status();
  for (int p = 0; p < P; ++p) EXPECT_FALSE((*pm)->CanRead(p, p)) << "a rank never reads itself";
  if (P < 2 || !(*pm)->CanRead(me, (me + 1) % P)) {
    GTEST_SKIP() << "no direct reads here (one rank, DSV4_EP_SINGLE_COPY=0, or the OS refuses)";
  }
  for (int a = 0; a < P; ++a)
    for (int b = 0; b < P; ++b) EXPECT_EQ((*pm)->CanRead(a, b), a != b) << a << " " << b;  // one node: all pairs
  const int64_t W = 6;
  std::vector<float> mine(10 * W);
  for (int64_t i = 0; i < 10 * W; ++i) mine[i] = Tag(me, i);
  // Everyone publishes its buffer's address; each reads rows 9, 2, 5 of its right neighbour.
  const uint64_t address = reinterpret_cast<uint64_t>(mine.data());
  std::vector<float> addresses(2 * P);
  float pair[2];
  std::memcpy(pair, &address, sizeof(address));
  std::vector<int64_t> twos(P, 2);
  ASSERT_TRUE(c->AllGatherV(pair, twos.data(), addresses.data()).ok());
  const int owner = (me + 1) % P;
  uint64_t base;
  std::memcpy(&base, &addresses[2 * owner], sizeof(base));
  const uint64_t rows[3] = {base + 9 * W * 4, base + 2 * W * 4, base + 5 * W * 4};
  std::vector<float> got(3 * W, -1.f);
  ASSERT_TRUE((*pm)->Gather(owner, rows, W * 4, 3, got.data()).ok());
  for (int k = 0; k < 3; ++k)
    for (int64_t i = 0; i < W; ++i) EXPECT_EQ(got[k * W + i], Tag(owner, (k == 0 ? 9 : k == 1 ? 2 : 5) * W + i));
  const uint64_t wild = 8;  // an address nobody maps: an error, not a crash
  EXPECT_EQ((*pm)->Gather(owner, &wild, 4, 1, got.data()).code(), absl::StatusCode::kInternal);
  ASSERT_TRUE(c->Barrier().ok());  // the buffers stay until everyone has read
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
  auto ex = (*sub)->NewExchange("after abort");
  EXPECT_EQ(ex->WaitAll().code(), absl::StatusCode::kAborted);
}

}  // namespace
}  // namespace dsv4
