// The NCCL communicator across ranks (labels gpu, multi_gpu, mpi; run under mpirun with one GPU per
// rank). Skips when the node has fewer GPUs than ranks. Data encodes its provenance: rank r's
// element i for peer p is r * 1000 + p * 10 + i, so a misrouted or dropped part shows up as a wrong
// value. The MoE exchange over NCCL is tests/runtime/device_parallel_test.cc's.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <vector>

#include "parallel/communicator.h"
#include "parallel/layout.h"
#include "parallel/nccl_communicator.h"
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

}  // namespace
}  // namespace dsv4
