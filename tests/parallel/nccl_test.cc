// The NCCL communicator and the GPU MoE exchange across ranks (labels gpu, multi_gpu, mpi; run
// under mpirun with one GPU per rank). Skips when the node has fewer GPUs than ranks. Data encodes
// its provenance: rank r's element i for peer p is r * 1000 + p * 10 + i, and expert e maps x to
// (e + 1) x + e, so a misrouted or dropped row shows up as a wrong value.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "kernels/cuda/memory.h"
#include "parallel/communicator.h"
#include "parallel/layout.h"
#include "parallel/placement.h"
#include "parallel/nccl_communicator.h"
#include "parallel/nccl_moe.h"
#include "tests/mpi_main.h"

namespace dsv4 {
namespace {

template <typename T>
struct Dev {
  explicit Dev(size_t n) : n(n) { EXPECT_EQ(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)), cudaSuccess); }
  explicit Dev(const std::vector<T>& v) : Dev(v.size()) {
    EXPECT_EQ(cudaMemcpy(p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~Dev() { cudaFree(p); }
  std::vector<T> Host() const {
    std::vector<T> v(n);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(v.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return v;
  }
  T* get() const { return static_cast<T*>(p); }
  void* p = nullptr;
  size_t n;
};

class Nccl : public ::testing::Test {
 protected:
  void SetUp() override {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices < 1) GTEST_SKIP() << "no CUDA device";
    const LocalRank local = LocalRankFromEnv();
    if (devices < local.size) GTEST_SKIP() << devices << " GPUs for " << local.size << " local ranks";
    world_ = testing::World();
    auto c = MakeNcclCommunicator(*world_, local.rank, "nccl");
    ASSERT_TRUE(c.ok()) << c.status();
    comm_ = std::move(*c);
    comm_->set_timeout(std::chrono::seconds(60));
  }
  std::unique_ptr<Communicator> world_;
  std::unique_ptr<NcclCommunicator> comm_;
};

TEST_F(Nccl, AllToAllVProvenance) {
  const int P = comm_->size(), me = comm_->rank();
  auto count = [](int from, int to) { return static_cast<int64_t>((from + 2 * to) % 3); };  // zeros included
  std::vector<int64_t> sb(P), sd(P), rb(P), rd(P);
  std::vector<float> send;
  int64_t so = 0, ro = 0;
  for (int p = 0; p < P; ++p) {
    sb[p] = count(me, p) * 4, sd[p] = so, so += sb[p];
    rb[p] = count(p, me) * 4, rd[p] = ro, ro += rb[p];
    for (int64_t i = 0; i < count(me, p); ++i) send.push_back(static_cast<float>(me * 1000 + p * 10 + i));
  }
  Dev<float> ds(send), dr(static_cast<size_t>(ro / 4));
  ASSERT_TRUE(comm_->AllToAllV(ds.get(), sb.data(), sd.data(), dr.get(), rb.data(), rd.data()).ok());
  const std::vector<float> got = dr.Host();
  for (int p = 0; p < P; ++p)
    for (int64_t i = 0; i < count(p, me); ++i)
      EXPECT_EQ(got[rd[p] / 4 + i], static_cast<float>(p * 1000 + me * 10 + i)) << "from " << p;
}

TEST_F(Nccl, CollectivesAndSplit) {
  const int P = comm_->size(), me = comm_->rank();
  Dev<float> x(std::vector<float>(5, static_cast<float>(me + 1)));
  ASSERT_TRUE(comm_->AllReduceSum(x.get(), 5).ok());
  for (float v : x.Host()) EXPECT_EQ(v, P * (P + 1) / 2.0f);

  std::vector<int64_t> counts(P);
  int64_t total = 0;
  for (int p = 0; p < P; ++p) counts[p] = p + 1, total += p + 1;
  Dev<float> mine(std::vector<float>(me + 1, static_cast<float>(me))), all(total);
  ASSERT_TRUE(comm_->AllGatherV(mine.get(), counts.data(), all.get()).ok());
  const std::vector<float> g = all.Host();
  for (int p = 0, off = 0; p < P; off += p + 1, ++p)
    for (int i = 0; i <= p; ++i) EXPECT_EQ(g[off + i], static_cast<float>(p));

  Dev<int> b(std::vector<int>(3, me == P - 1 ? 42 : 0));
  ASSERT_TRUE(comm_->Broadcast(b.get(), 3 * sizeof(int), P - 1).ok());
  for (int v : b.Host()) EXPECT_EQ(v, 42);
  ASSERT_TRUE(comm_->Barrier().ok());

  auto half = comm_->Split(me % 2, me, "parity");
  ASSERT_TRUE(half.ok()) << half.status();
  Dev<float> one(std::vector<float>{1.f});
  ASSERT_TRUE((*half)->AllReduceSum(one.get(), 1).ok());
  EXPECT_EQ(one.Host()[0], static_cast<float>((P + (me % 2 == 0 ? 1 : 0)) / 2));
}

float ExpertFn(int64_t e, float x) { return static_cast<float>(e + 1) * x + static_cast<float>(e); }

TEST_F(Nccl, MoeExchangeMatchesDirect) {
  const int P = comm_->size(), me = comm_->rank(), K = 2;
  const int64_t E = 4 * P, D = 24, n = 5 + 3 * me;
  ExpertPlacement placement = ExpertPlacement::Contiguous(E, P);
  if (P > 1) placement.AddReplica(0, P - 1);
  std::mt19937 rng(me + 1);
  std::vector<float> x(n * D), w(n * K);
  std::vector<int32_t> experts(n * K);
  for (int64_t t = 0; t < n; ++t) {
    for (int64_t d = 0; d < D; ++d) x[t * D + d] = static_cast<float>(me * 100 + t) + 0.01f * d;
    experts[t * K] = static_cast<int32_t>((t * 3 + me) % E);
    experts[t * K + 1] = static_cast<int32_t>((t * 3 + me + 1 + t % 2) % E);
    w[t * K] = 0.25f + 0.1f * t, w[t * K + 1] = 0.5f;
  }
  kernels::cuda::DevicePool pool;
  ASSERT_EQ(kernels::cuda::DevicePool::Create(16 << 20, &pool), cudaSuccess);
  NcclMoeExchange ex(comm_.get(), &pool);
  Dev<float> dx(x), dout(std::vector<float>(n * D, 0.f));
  cudaStream_t stream = comm_->stream();
  ASSERT_TRUE(ex.Dispatch(placement, dx.get(), n, D, experts.data(), w.data(), K, stream).ok());
  // The experts, on the host: grouped rows -> weight * ExpertFn.
  const ExpertGroups& g = ex.groups();
  std::vector<float> grouped(g.rows() * D);
  ASSERT_EQ(cudaStreamSynchronize(stream), cudaSuccess);
  ASSERT_EQ(cudaMemcpy(grouped.data(), ex.grouped_hidden(), grouped.size() * 4, cudaMemcpyDeviceToHost), cudaSuccess);
  std::vector<float> y(g.rows() * D);
  for (size_t s = 0; s < g.local_experts.size(); ++s)
    for (int32_t i = g.offsets[s]; i < g.offsets[s + 1]; ++i)
      for (int64_t d = 0; d < D; ++d) y[i * D + d] = g.row_weight[i] * ExpertFn(g.local_experts[s], grouped[i * D + d]);
  Dev<float> dy(y);
  ASSERT_TRUE(ex.Combine(dy.get(), dout.get(), stream).ok());
  ASSERT_TRUE(comm_->Synchronize(stream).ok());
  const std::vector<float> out = dout.Host();
  for (int64_t t = 0; t < n; ++t)
    for (int64_t d = 0; d < D; ++d) {
      float want = 0.f;
      for (int j = 0; j < K; ++j) want += w[t * K + j] * ExpertFn(experts[t * K + j], x[t * D + d]);
      EXPECT_NEAR(out[t * D + d], want, 1e-3f * (1.f + std::fabs(want))) << "rank " << me << " token " << t;
    }
}

}  // namespace
}  // namespace dsv4
