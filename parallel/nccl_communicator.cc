#include "parallel/nccl_communicator.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <chrono>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "parallel/nccl_plan.h"

namespace dsv4 {
namespace {

using Clock = std::chrono::steady_clock;

// NCCL results by fault: the caller's mistake, a peer or the network, or this process.
absl::Status FromNccl(ncclResult_t r, const std::string& what) {
  switch (r) {
    case ncclSuccess:
    case ncclInProgress:
      return absl::OkStatus();
    case ncclInvalidArgument:
    case ncclInvalidUsage:
      return absl::InvalidArgumentError(absl::StrCat(what, ": ", ncclGetErrorString(r)));
    case ncclRemoteError:
    case ncclSystemError:
      return absl::UnavailableError(absl::StrCat(what, ": ", ncclGetErrorString(r)));
    default:
      return absl::InternalError(absl::StrCat(what, ": ", ncclGetErrorString(r)));
  }
}

absl::Status FromCuda(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorString(e)));
}

class NcclComm final : public NcclCommunicator {
 public:
  NcclComm(ncclComm_t comm, int rank, int size, int device, cudaStream_t stream, float* scratch, std::string name,
           std::chrono::milliseconds timeout)
      : comm_(comm), rank_(rank), size_(size), device_(device), stream_(stream), scratch_(scratch),
        name_(std::move(name)) {
    set_timeout(timeout);
  }

  ~NcclComm() override {
    cudaSetDevice(device_);
    if (comm_ != nullptr) {
      // Finalize flushes outstanding work, bounded by the timeout (a peer that is gone would make it
      // wait forever); anything but a clean finish aborts.
      bool clean = aborted_.empty();
      if (clean) {
        const ncclResult_t fin = ncclCommFinalize(comm_);
        clean = fin == ncclSuccess || fin == ncclInProgress;
        const auto deadline = Clock::now() + timeout();
        ncclResult_t st = ncclInProgress;
        while (clean && ncclCommGetAsyncError(comm_, &st) == ncclSuccess && st == ncclInProgress &&
               Clock::now() < deadline)
          std::this_thread::sleep_for(std::chrono::microseconds(100));
        clean = clean && st == ncclSuccess;
      }
      if (clean) ncclCommDestroy(comm_);
      else ncclCommAbort(comm_);
    }
    if (scratch_ != nullptr) cudaFree(scratch_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return name_; }
  cudaStream_t stream() const override { return stream_; }
  int device() const override { return device_; }
  const void* NativeHandle() const override { return &comm_; }

  absl::Status AllReduceSum(float* data, int64_t n) override {
    DSV4_RETURN_IF_ERROR(AllReduceSumAsync(data, n, stream_));
    return Synchronize(stream_);
  }

  absl::Status AllReduceSumAsync(float* data, int64_t n, cudaStream_t stream) override {
    DSV4_RETURN_IF_ERROR(Ready("AllReduce"));
    if (n == 0) return absl::OkStatus();
    return Enqueued("AllReduce", ncclAllReduce(data, data, static_cast<size_t>(n), ncclFloat32, ncclSum, comm_, stream));
  }

  absl::Status AllGatherV(const float* in, const int64_t* counts, float* out) override {
    DSV4_RETURN_IF_ERROR(Ready("AllGatherV"));
    const GroupedExchange g = PlanAllGatherV(rank_, size_, counts, sizeof(float));
    DSV4_RETURN_IF_ERROR(RunExchange("AllGatherV", g, in, out, stream_));
    return Synchronize(stream_);
  }

  absl::Status Broadcast(void* data, int64_t bytes, int root) override {
    if (root < 0 || root >= size_)
      return absl::InvalidArgumentError(absl::StrCat("Broadcast: root ", root, " outside [0, ", size_, ")"));
    DSV4_RETURN_IF_ERROR(Ready("Broadcast"));
    if (bytes == 0) return absl::OkStatus();
    DSV4_RETURN_IF_ERROR(
        Enqueued("Broadcast", ncclBroadcast(data, data, static_cast<size_t>(bytes), ncclInt8, root, comm_, stream_)));
    return Synchronize(stream_);
  }

  absl::Status AllToAllV(const void* send, const int64_t* send_bytes, const int64_t* send_displs, void* recv,
                         const int64_t* recv_bytes, const int64_t* recv_displs) override {
    DSV4_RETURN_IF_ERROR(AllToAllVAsync(send, send_bytes, send_displs, recv, recv_bytes, recv_displs, stream_));
    return Synchronize(stream_);
  }

  absl::Status AllToAllVAsync(const void* send, const int64_t* send_bytes, const int64_t* send_displs, void* recv,
                              const int64_t* recv_bytes, const int64_t* recv_displs, cudaStream_t stream) override {
    DSV4_RETURN_IF_ERROR(Ready("AllToAllV"));
    absl::StatusOr<GroupedExchange> g = PlanAllToAllV(rank_, size_, send_bytes, send_displs, recv_bytes, recv_displs);
    if (!g.ok()) return g.status();
    return RunExchange("AllToAllV", *g, send, recv, stream);
  }

  absl::Status Barrier() override { return AllReduceSum(scratch_, 1); }

  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key, const std::string& name) override {
    DSV4_RETURN_IF_ERROR(Ready("Split"));
    ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
    config.blocking = 0;
    ncclComm_t sub = nullptr;
    DSV4_RETURN_IF_ERROR(FromNccl(ncclCommSplit(comm_, color, key, &sub, &config), "ncclCommSplit"));
    if (auto st = WaitComm(sub, "ncclCommSplit"); !st.ok()) {
      if (sub != nullptr) ncclCommAbort(sub);
      return st;
    }
    if (sub == nullptr) return absl::InvalidArgumentError("Split: NCCL_SPLIT_NOCOLOR gives no communicator");
    int sub_rank = 0, sub_size = 0;
    ncclCommUserRank(sub, &sub_rank);
    ncclCommCount(sub, &sub_size);
    cudaStream_t stream = nullptr;
    float* scratch = nullptr;
    if (auto st = MakeStreamAndScratch(&stream, &scratch); !st.ok()) {
      ncclCommAbort(sub);
      return st;
    }
    return std::unique_ptr<Communicator>(
        new NcclComm(sub, sub_rank, sub_size, device_, stream, scratch, name_ + ":" + name, timeout()));
  }

  void Abort(const std::string& reason) override {
    if (!aborted_.empty()) return;
    aborted_ = reason.empty() ? "aborted" : reason;
    if (comm_ != nullptr) ncclCommAbort(comm_);
    comm_ = nullptr;
  }

  absl::Status Synchronize(cudaStream_t stream) override {
    const auto deadline = Clock::now() + timeout();
    for (;;) {
      if (!aborted_.empty()) return absl::AbortedError(absl::StrCat(name_, ": communicator aborted: ", aborted_));
      const cudaError_t q = cudaStreamQuery(stream);
      if (q == cudaSuccess) return absl::OkStatus();
      if (q != cudaErrorNotReady) return FromCuda(q, name_ + ": stream");
      ncclResult_t async = ncclSuccess;
      ncclCommGetAsyncError(comm_, &async);
      if (async != ncclSuccess && async != ncclInProgress) {
        absl::Status st = FromNccl(async, absl::StrCat(name_, " (rank ", rank_, ")"));
        Abort(st.ToString());
        return st;
      }
      if (Clock::now() >= deadline) {
        const std::string what = absl::StrCat(name_, " (rank ", rank_, " of ", size_, "): collective did not finish within ",
                                              timeout().count(), " ms; communicator aborted");
        Abort(what);
        return absl::DeadlineExceededError(what);
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  }

  // Creates the blocking-collective stream and the barrier scratch on the current device.
  static absl::Status MakeStreamAndScratch(cudaStream_t* stream, float** scratch) {
    DSV4_RETURN_IF_ERROR(FromCuda(cudaStreamCreateWithFlags(stream, cudaStreamNonBlocking), "cudaStreamCreate"));
    DSV4_RETURN_IF_ERROR(FromCuda(cudaMalloc(reinterpret_cast<void**>(scratch), sizeof(float)), "cudaMalloc"));
    return FromCuda(cudaMemset(*scratch, 0, sizeof(float)), "cudaMemset");
  }

  // Polls a non-blocking communicator until its pending operation leaves ncclInProgress.
  absl::Status WaitComm(ncclComm_t comm, const std::string& what) const {
    const auto deadline = Clock::now() + timeout();
    ncclResult_t st = ncclInProgress;
    while (comm != nullptr) {
      DSV4_RETURN_IF_ERROR(FromNccl(ncclCommGetAsyncError(comm, &st), what));
      if (st != ncclInProgress) return FromNccl(st, what);
      if (Clock::now() >= deadline)
        return absl::DeadlineExceededError(absl::StrCat(what, ": peers did not join within ", timeout().count(), " ms"));
      std::this_thread::sleep_for(std::chrono::microseconds(100));
    }
    return absl::OkStatus();
  }

 private:
  absl::Status Ready(const char* op) const {
    if (!aborted_.empty()) return absl::AbortedError(absl::StrCat(op, " on ", name_, ": communicator aborted: ", aborted_));
    return FromCuda(cudaSetDevice(device_), "cudaSetDevice");
  }

  absl::Status Enqueued(const std::string& op, ncclResult_t r) {
    DSV4_RETURN_IF_ERROR(FromNccl(r, op + " on " + name_));
    if (r == ncclInProgress) return WaitComm(comm_, op + " on " + name_);
    return absl::OkStatus();
  }

  absl::Status RunExchange(const std::string& op, const GroupedExchange& g, const void* send, void* recv,
                           cudaStream_t stream) {
    if (g.self_bytes > 0) {
      auto st = FromCuda(cudaMemcpyAsync(static_cast<char*>(recv) + g.self_recv_offset,
                                         static_cast<const char*>(send) + g.self_send_offset,
                                         static_cast<size_t>(g.self_bytes), cudaMemcpyDeviceToDevice, stream),
                         op + ": self copy");
      if (!st.ok()) return st;
    }
    if (g.ops.empty()) return absl::OkStatus();
    DSV4_RETURN_IF_ERROR(FromNccl(ncclGroupStart(), op));
    absl::Status first;
    for (const P2pOp& o : g.ops) {
      const ncclResult_t r =
          o.kind == P2pOp::kSend
              ? ncclSend(static_cast<const char*>(send) + o.offset, static_cast<size_t>(o.bytes), ncclInt8, o.peer,
                         comm_, stream)
              : ncclRecv(static_cast<char*>(recv) + o.offset, static_cast<size_t>(o.bytes), ncclInt8, o.peer, comm_,
                         stream);
      if (first.ok()) first = FromNccl(r, absl::StrCat(op, " with rank ", o.peer));
    }
    const ncclResult_t end = ncclGroupEnd();  // always close the group, even after a failure
    if (!first.ok()) return first;
    return Enqueued(op, end);
  }

  ncclComm_t comm_;
  int rank_, size_, device_;
  cudaStream_t stream_;
  float* scratch_;
  std::string name_;
  std::string aborted_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<NcclCommunicator>> MakeNcclCommunicator(Communicator& bootstrap, int device,
                                                                        const std::string& name) {
  DSV4_RETURN_IF_ERROR(FromCuda(cudaSetDevice(device), absl::StrCat("cudaSetDevice(", device, ")")));
  ncclUniqueId id{};
  absl::Status drawn = bootstrap.rank() == 0 ? FromNccl(ncclGetUniqueId(&id), "ncclGetUniqueId") : absl::OkStatus();
  // Every rank takes part in the broadcast, so a failure on rank 0 does not leave the others waiting:
  // an all-zero id tells them.
  if (!drawn.ok()) id = ncclUniqueId{};
  DSV4_RETURN_IF_ERROR(bootstrap.Broadcast(&id, sizeof(id), 0));
  if (!drawn.ok()) return drawn;
  bool zero = true;
  for (char c : id.internal) zero &= c == 0;
  if (zero) return absl::UnavailableError("NCCL bootstrap: rank 0 could not draw a unique id");

  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;
  ncclComm_t comm = nullptr;
  if (auto st = FromNccl(ncclCommInitRankConfig(&comm, bootstrap.size(), id, bootstrap.rank(), &config),
                         "ncclCommInitRankConfig");
      !st.ok())
    return st;
  cudaStream_t stream = nullptr;
  float* scratch = nullptr;
  if (auto st = NcclComm::MakeStreamAndScratch(&stream, &scratch); !st.ok()) {
    ncclCommAbort(comm);
    return st;
  }
  auto out = std::make_unique<NcclComm>(comm, bootstrap.rank(), bootstrap.size(), device, stream, scratch, name,
                                        bootstrap.timeout());
  if (auto st = out->WaitComm(comm, "ncclCommInitRankConfig"); !st.ok()) {
    out->Abort(st.ToString());
    return st;
  }
  return std::unique_ptr<NcclCommunicator>(std::move(out));
}

absl::StatusOr<std::unique_ptr<Communicator>> MakeDeviceCommunicator(Communicator& bootstrap, const std::string& name) {
  int device = 0;
  DSV4_RETURN_IF_ERROR(FromCuda(cudaGetDevice(&device), "cudaGetDevice"));
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<NcclCommunicator> comm, MakeNcclCommunicator(bootstrap, device, name));
  return std::unique_ptr<Communicator>(std::move(comm));
}

}  // namespace dsv4
