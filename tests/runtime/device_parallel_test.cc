// Expert- and tensor-parallel exchanges over device memory, without a GPU. Every rank of an mpirun
// job runs the model on a GuardedBackend (tests/runtime/test_backends.h): memory the host may not
// touch outside the backend's operations, as a GPU's. The model must then reach its TP collectives
// and its MoE exchange through backend memory (runtime/backend/device_communicator.h,
// runtime/model/expert_exchange.h); a host access faults and ends the test.
//
// The reference is the same job on the CPU backend, whose exchanges are the MPI path's
// (parallel/moe_dispatch.h). Both run the same kernels on the same rows and sum every token's
// expert rows in the same order, so logits must match bit for bit: tolerance 0.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "parallel/moe_dispatch.h"
#include "runtime/backend/device_communicator.h"
#include "runtime/model/expert_exchange.h"
#include "runtime/runtime.h"
#include "tests/mpi_main.h"
#include "tests/runtime/test_backends.h"

namespace dsv4 {
namespace {

using testing::GuardedBackend;

// ---- the staged communicator over guarded memory ------------------------------------------------

template <typename T>
T* Put(Backend& be, const std::vector<T>& host) {
  T* dev = static_cast<T*>(*be.Allocate(static_cast<int64_t>(host.size() * sizeof(T))));
  be.CopyToDevice(dev, host.data(), static_cast<int64_t>(host.size() * sizeof(T)));
  return dev;
}

template <typename T>
std::vector<T> Get(Backend& be, const T* dev, int64_t n) {
  std::vector<T> host(n);
  be.CopyToHost(host.data(), dev, n * static_cast<int64_t>(sizeof(T)));
  return host;
}

// Data that names its sender and receiver: rank r's word i for peer p.
int32_t Word(int r, int p, int64_t i) { return r * 1000000 + p * 1000 + static_cast<int32_t>(i); }

TEST(StagedCommunicator, CollectivesOnDeviceMemory) {
  std::unique_ptr<Communicator> world = testing::World();
  const int P = world->size(), me = world->rank();
  GuardedBackend be;
  std::unique_ptr<Communicator> comm = MakeStagedCommunicator(be, *world);
  EXPECT_EQ(comm->rank(), me);
  EXPECT_EQ(comm->size(), P);
  EXPECT_EQ(comm->name().rfind("staged:", 0), 0u) << comm->name();

  // AllToAllV: rank r sends r + p + 1 words to peer p; the receive buffer has a gap of 3 words
  // before each part, which must keep what was there.
  std::vector<int64_t> sb(P), sd(P), rb(P), rd(P);
  std::vector<int32_t> send;
  int64_t at = 0;
  for (int p = 0; p < P; ++p) {
    sb[p] = (me + p + 1) * 4, sd[p] = static_cast<int64_t>(send.size()) * 4;
    for (int64_t i = 0; i < me + p + 1; ++i) send.push_back(Word(me, p, i));
    at += 3;
    rb[p] = (p + me + 1) * 4, rd[p] = at * 4;
    at += p + me + 1;
  }
  std::vector<int32_t> before(at, -7);
  int32_t* dsend = Put(be, send);
  int32_t* drecv = Put(be, before);
  ASSERT_TRUE(comm->AllToAllV(dsend, sb.data(), sd.data(), drecv, rb.data(), rd.data()).ok());
  const std::vector<int32_t> got = Get(be, drecv, at);
  std::vector<int32_t> want(at, -7);
  for (int p = 0; p < P; ++p)
    for (int64_t i = 0; i < p + me + 1; ++i) want[rd[p] / 4 + i] = Word(p, me, i);
  EXPECT_EQ(got, want);

  // AllReduceSum (rank order, as the MPI communicator sums) and AllGatherV.
  std::vector<float> mine(5);
  for (int i = 0; i < 5; ++i) mine[i] = static_cast<float>(me + 1) * (i + 1);
  float* dsum = Put(be, mine);
  ASSERT_TRUE(comm->AllReduceSum(dsum, 5).ok());
  const float ranks = static_cast<float>(P * (P + 1) / 2);
  for (int i = 0; i < 5; ++i) EXPECT_EQ(Get(be, dsum, 5)[i], ranks * (i + 1));
  std::vector<int64_t> counts(P);
  int64_t total = 0;
  for (int r = 0; r < P; ++r) counts[r] = r + 1, total += r + 1;
  float* dmine = Put(be, std::vector<float>(me + 1, static_cast<float>(me)));
  float* dall = Put(be, std::vector<float>(total, -1.f));
  ASSERT_TRUE(comm->AllGatherV(dmine, counts.data(), dall).ok());
  std::vector<float> all_want;
  for (int r = 0; r < P; ++r) all_want.insert(all_want.end(), r + 1, static_cast<float>(r));
  EXPECT_EQ(Get(be, dall, total), all_want);

  // Broadcast from the last rank.
  int32_t* db = Put(be, std::vector<int32_t>(4, me == P - 1 ? 42 : me));
  ASSERT_TRUE(comm->Broadcast(db, 16, P - 1).ok());
  EXPECT_EQ(Get(be, db, 4), std::vector<int32_t>(4, 42));

  // A split keeps the staging.
  auto half = comm->Split(me % 2, me, "half");
  ASSERT_TRUE(half.ok()) << half.status();
  float* one = Put(be, std::vector<float>{1.f});
  ASSERT_TRUE((*half)->AllReduceSum(one, 1).ok());
  EXPECT_EQ(Get(be, one, 1)[0], static_cast<float>((P - me % 2 + 1) / 2));
  EXPECT_TRUE(be.Synchronize().ok());
}

// A backend error is returned, and the collective still runs (the peers are not left waiting).
TEST(StagedCommunicator, ReportsTheBackendsError) {
  std::unique_ptr<Communicator> world = testing::World();
  GuardedBackend be;
  std::unique_ptr<Communicator> comm = MakeStagedCommunicator(be, *world);
  std::vector<int32_t> host(4);
  be.Iota(host.data(), 4, 0, 1);  // host memory: the guard latches an error
  float* x = Put(be, std::vector<float>{1.f});
  const absl::Status s = comm->AllReduceSum(x, 1);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("Iota was handed host memory"), std::string::npos) << s;
  EXPECT_TRUE(world->Barrier().ok());  // every rank took part and came back
}

// ---- the MoE exchange against the MPI path's dispatcher ------------------------------------------

// A served token's "expert output", from its received row and routing alone (both paths receive
// the same rows, in different orders): sum_j w_j * (e_j + 1) * x.
void Serve(const float* x, const int32_t* experts, const float* weights, int K, int64_t D, float* y) {
  for (int64_t c = 0; c < D; ++c) y[c] = 0;
  for (int j = 0; j < K; ++j)
    if (experts[j] >= 0)
      for (int64_t c = 0; c < D; ++c) y[c] += weights[j] * static_cast<float>(experts[j] + 1) * x[c];
}

// The same tokens, routing and served rows through ExpertExchange (on `be`, rows over `rows`) and
// MoeDispatcher (host memory): the combined outputs must agree bit for bit. Rows of magnitudes
// 2^-8 .. 2^8 make the sums depend on their order, and a replicated expert splits its tokens over
// two ranks.
void ExchangeAsTheMpiDispatcher(Communicator& world, Backend& be, Communicator& rows) {
  const int P = world.size(), me = world.rank(), K = 4;
  const int64_t E = 4 * P + 1, n = 37 + 5 * me, D = 24;
  ExpertPlacement placement = ExpertPlacement::Contiguous(E, P);
  if (P > 1) placement.AddReplica(0, P - 1);
  std::vector<int32_t> experts(n * K);
  std::vector<float> weights(n * K), x(n * D);
  uint64_t s = 0x9e3779b97f4a7c15ull * (me + 1);
  auto next = [&] { return (s = s * 6364136223846793005ull + 1442695040888963407ull) >> 33; };
  for (int64_t t = 0; t < n; ++t) {
    for (int j = 0; j < K; ++j) {
      int32_t e = -1;
      while (e < 0 || std::count(&experts[t * K], &experts[t * K + j], e) > 0) e = static_cast<int32_t>(next() % E);
      experts[t * K + j] = t % 11 == 3 && j == K - 1 ? -1 : e;  // now and then a slot routed nowhere
      weights[t * K + j] = 0.25f + static_cast<float>(next() % 1000) / 1000.f;
    }
    for (int64_t c = 0; c < D; ++c)
      x[t * D + c] = std::ldexp(static_cast<float>(next() % 2001) / 1000.f - 1.f, static_cast<int>(next() % 17) - 8);
  }

  // The MPI path.
  MoeDispatcher dispatcher(&world);
  ASSERT_TRUE(dispatcher.Dispatch(placement, x.data(), n, D, experts.data(), weights.data(), K).ok());
  std::vector<float> y_host(dispatcher.num_received() * D), want(n * D);
  for (int64_t i = 0; i < dispatcher.num_received(); ++i) {
    const int32_t* meta = dispatcher.recv_meta(i);
    std::vector<float> w(K);
    std::memcpy(w.data(), meta + K, K * sizeof(float));
    Serve(dispatcher.recv_hidden(i), meta, w.data(), K, D, &y_host[i * D]);
  }
  ASSERT_TRUE(dispatcher.Combine(y_host.data(), want.data(), /*accumulate=*/false).ok());

  // The backend's memory.
  ExpertExchange ex(be, world, rows);
  const WorkspaceScope scope(be);
  float* out = be.WorkspaceF32(n * D);
  ASSERT_TRUE(ex.Dispatch(placement, Put(be, x), n, D, Put(be, experts), Put(be, weights), K).ok());
  ASSERT_EQ(ex.received(), dispatcher.num_received());
  const int64_t m = ex.received();
  const std::vector<float> hidden = Get(be, ex.hidden(), m * D), w = Get(be, ex.weights(), m * K);
  const std::vector<int32_t> e = Get(be, ex.experts(), m * K);
  std::vector<float> y(m * D);
  int64_t held = 0;
  for (int64_t i = 0; i < m; ++i) {
    Serve(&hidden[i * D], &e[i * K], &w[i * K], K, D, &y[i * D]);
    for (int j = 0; j < K; ++j) held += e[i * K + j] >= 0;
  }
  EXPECT_EQ(ex.held_pairs(), held);
  float* dy = be.WorkspaceF32(m * D);
  be.CopyToDevice(dy, y.data(), m * D * static_cast<int64_t>(sizeof(float)));
  ASSERT_TRUE(ex.Combine(dy, out).ok());
  const std::vector<float> got = Get(be, out, n * D);
  int64_t differ = 0;
  for (int64_t i = 0; i < n * D; ++i) differ += std::memcmp(&got[i], &want[i], sizeof(float)) != 0;
  EXPECT_EQ(differ, 0) << "of " << n * D << " values on rank " << me << " (" << be.Describe() << ", " << rows.name()
                       << ")";
  EXPECT_TRUE(be.Synchronize().ok());
}

// Guarded memory, the rows staged through the host.
TEST(ExpertExchange, CombinesAsTheMpiDispatcher) {
  std::unique_ptr<Communicator> world = testing::World();
  GuardedBackend be;
  std::unique_ptr<Communicator> rows = MakeStagedCommunicator(be, *world);
  ExchangeAsTheMpiDispatcher(*world, be, *rows);
}

// On GPUs, one per rank, the rows over NCCL (label gpu: skips without them). The combine adds rows
// without products (CombineRows with no weights), so the GPU's sums are the CPU's.
TEST(ExpertExchange, CombinesAsTheMpiDispatcherOverNccl) {
  std::unique_ptr<Communicator> world = testing::World();
  BackendOptions o;
  o.device = DeviceChoice::kCuda;
  const LauncherPlace place = LauncherWorld();
  o.local_rank = place.local_rank, o.local_size = place.local_size;
  o.workspace_bytes = int64_t{64} << 20;
  absl::StatusOr<std::unique_ptr<Backend>> gpu = MakeBackend(o);
  // Every rank skips or none does, so no collective is left waiting.
  float ready = gpu.ok() ? 1.f : 0.f;
  ASSERT_TRUE(world->AllReduceSum(&ready, 1).ok());
  if (ready < static_cast<float>(world->size())) GTEST_SKIP() << "not every rank has a GPU of its own";
  std::shared_ptr<Backend> be = std::move(*gpu);
  absl::StatusOr<std::unique_ptr<Communicator>> nccl = MakeDeviceCommunicator(*world, "nccl");
  if (absl::IsUnimplemented(nccl.status())) GTEST_SKIP() << nccl.status();
  ASSERT_TRUE(nccl.ok()) << nccl.status();
  std::unique_ptr<Communicator> rows = MakeBackendOrderedCommunicator(*be, std::move(*nccl));
  ExchangeAsTheMpiDispatcher(*world, *be, *rows);
}

// ---- the model in every layout the world divides ------------------------------------------------

struct Layout {
  const char* model;
  int tp, ep;  // ep 0: the whole world
  bool qdq;
  int np;  // the world size the case runs at
};

std::string Name(const Layout& l) {
  return absl::StrCat(l.model, " --tp ", l.tp, " --ep ", l.ep, " --qdq ", l.qdq ? "on" : "off");
}

// Logits of a 9-token prefill and three greedy decode steps, on every rank.
std::vector<float> RunLayout(const Layout& l, bool guarded) {
  RuntimeOptions o;
  o.model = absl::StrCat("builtin:", l.model);
  o.tp = l.tp, o.ep = l.ep, o.qdq = l.qdq, o.threads = 1, o.comm_timeout_s = 120;
  if (guarded) o.backend_for_test = [] { return std::make_shared<GuardedBackend>(); };
  auto rt = Runtime::Open(o);
  EXPECT_TRUE(rt.ok()) << rt.status();
  if (!rt.ok()) return {};
  const Model& m = (*rt)->model();
  const int64_t V = m.config().vocab_size;
  SequenceCache cache = m.NewCache();
  std::vector<int32_t> tokens(9);
  for (int i = 0; i < 9; ++i) tokens[i] = static_cast<int32_t>((i * 40503u + 17u) % 1000u);
  std::vector<float> logits(V), all;
  for (int step = 0; step < 4; ++step) {
    const absl::Status s = m.Forward(tokens, cache, logits.data());
    EXPECT_TRUE(s.ok()) << Name(l) << (guarded ? " guarded" : " cpu") << ": " << s;
    if (!s.ok()) return {};
    all.insert(all.end(), logits.begin(), logits.end());
    int32_t best = 0;
    for (int64_t v = 1; v < V; ++v)
      if (logits[v] > logits[best]) best = static_cast<int32_t>(v);
    tokens.assign(1, best);
  }
  return all;
}

class DeviceParallel : public ::testing::TestWithParam<Layout> {};

TEST_P(DeviceParallel, GuardedEqualsCpu) {
  const Layout& l = GetParam();
  {
    std::unique_ptr<Communicator> world = testing::World();
    if (world->size() != l.np) GTEST_SKIP() << Name(l) << " runs at " << l.np << " ranks";
  }
  const std::vector<float> cpu = RunLayout(l, false);
  const std::vector<float> guarded = RunLayout(l, true);
  ASSERT_EQ(cpu.size(), guarded.size());
  ASSERT_FALSE(cpu.empty());
  int64_t differ = 0, first = -1;
  for (size_t i = 0; i < cpu.size(); ++i)
    if (std::memcmp(&cpu[i], &guarded[i], sizeof(float)) != 0 && !(cpu[i] == 0 && guarded[i] == 0)) {
      if (first < 0) first = static_cast<int64_t>(i);
      ++differ;
    }
  EXPECT_EQ(differ, 0) << Name(l) << ": first at " << first << " (" << cpu[first] << " vs " << guarded[first] << ")";
}

// v4-tiny at --tp 2 cuts wo_b's FP8 blocks (2 groups x 64 columns over 2 ranks, blocks of 128): with
// --qdq on the output projection gathers whole rows first. v41-tiny adds V4.1's indexer and Engram.
INSTANTIATE_TEST_SUITE_P(Layouts, DeviceParallel,
                         ::testing::Values(Layout{"v4-tiny", 2, 0, true, 2}, Layout{"v4-tiny", 1, 0, false, 2},
                                           Layout{"v41-tiny", 2, 0, true, 2}, Layout{"v4-tiny", 2, 4, true, 4},
                                           Layout{"v4-tiny", 1, 0, true, 4}),
                         [](const ::testing::TestParamInfo<Layout>& info) { return std::to_string(info.index); });

}  // namespace
}  // namespace dsv4
