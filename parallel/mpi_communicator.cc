// The MPI communicator (host memory).
//
// Collectives are built from non-blocking point-to-point messages, one per peer, each tagged with
// the collective's sequence number. That costs a little bandwidth over MPI's tuned algorithms for
// large worlds, and buys two properties the runtime depends on:
//  - a bounded wait: the caller polls its requests until a deadline, and on expiry knows exactly
//    which peers' messages never arrived, so the error names them;
//  - determinism: AllReduceSum adds the contributions in rank order on every rank, so every rank
//    holds the bit-identical sum (tensor-parallel ranks must agree on routing and top-k).
#include <algorithm>
#include <chrono>
#include <climits>
#include <cstring>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "parallel/communicator.h"

#if DSV4_MPI
#include <mpi.h>
#endif

namespace dsv4 {

#if DSV4_MPI
namespace {

class MpiCommunicator final : public Communicator {
 public:
  MpiCommunicator(MPI_Comm comm, std::string name, bool owned) : comm_(comm), name_(std::move(name)), owned_(owned) {
    MPI_Comm_rank(comm_, &rank_);
    MPI_Comm_size(comm_, &size_);
    std::vector<int> world_of_local(size_);
    int world_rank;
    MPI_Comm_rank(MPI_COMM_WORLD, &world_rank);
    MPI_Allgather(&world_rank, 1, MPI_INT, world_of_local.data(), 1, MPI_INT, comm_);
    world_ranks_ = std::move(world_of_local);
  }
  ~MpiCommunicator() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (owned_ && !finalized) MPI_Comm_free(&comm_);
  }

  int rank() const override { return rank_; }
  int size() const override { return size_; }
  std::string name() const override { return "mpi:" + name_; }

  absl::Status AllReduceSum(float* data, int64_t n) override {
    std::vector<float> all(static_cast<size_t>(n) * size_);
    std::vector<int64_t> counts(size_, n);
    DSV4_RETURN_IF_ERROR(GatherImpl("AllReduce", data, counts.data(), all.data()));
    // Same order on every rank: bit-identical results.
    std::memcpy(data, all.data(), n * sizeof(float));
    for (int r = 1; r < size_; ++r) {
      const float* src = &all[static_cast<size_t>(r) * n];
      for (int64_t i = 0; i < n; ++i) data[i] += src[i];
    }
    return absl::OkStatus();
  }

  absl::Status AllGatherV(const float* in, const int64_t* counts, float* out) override {
    return GatherImpl("AllGather", in, counts, out);
  }

  absl::Status Broadcast(void* data, int64_t bytes, int root) override {
    if (root < 0 || root >= size_)
      return absl::InvalidArgumentError(absl::StrCat("Broadcast: root ", root, " outside [0, ", size_, ")"));
    Op op(this, "Broadcast");
    if (rank_ == root) {
      for (int p = 0; p < size_; ++p)
        if (p != rank_) op.Send(p, data, bytes);
    } else {
      op.Recv(root, data, bytes);
    }
    return op.Wait();
  }

  absl::Status AllToAllV(const void* send, const int64_t* send_bytes, const int64_t* send_displs, void* recv,
                         const int64_t* recv_bytes, const int64_t* recv_displs) override {
    Op op(this, "AllToAllV");
    for (int p = 0; p < size_; ++p) {
      if (p == rank_) continue;
      op.Recv(p, static_cast<char*>(recv) + recv_displs[p], recv_bytes[p]);
    }
    for (int p = 0; p < size_; ++p) {
      if (p == rank_) continue;
      op.Send(p, static_cast<const char*>(send) + send_displs[p], send_bytes[p]);
    }
    if (send_bytes[rank_] != recv_bytes[rank_]) {
      op.Fail(absl::InvalidArgumentError(absl::StrCat("AllToAllV on ", name(), ": rank ", rank_, " sends ",
                                                      send_bytes[rank_], " bytes to itself but expects ",
                                                      recv_bytes[rank_])));
    } else if (send_bytes[rank_] > 0) {
      std::memmove(static_cast<char*>(recv) + recv_displs[rank_],
                   static_cast<const char*>(send) + send_displs[rank_], send_bytes[rank_]);
    }
    return op.Wait();
  }

  absl::Status Barrier() override {
    Op op(this, "Barrier");
    for (int p = 0; p < size_; ++p)
      if (p != rank_) op.Recv(p, nullptr, 0), op.Send(p, nullptr, 0);
    return op.Wait();
  }

  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key, const std::string& name) override {
    if (!aborted_.empty()) return absl::AbortedError("Split: communicator aborted: " + aborted_);
    MPI_Comm sub;
    if (MPI_Comm_split(comm_, color, key, &sub) != MPI_SUCCESS)
      return absl::InternalError(absl::StrCat("MPI_Comm_split of ", this->name(), " failed"));
    auto c = std::make_unique<MpiCommunicator>(sub, name, /*owned=*/true);
    c->set_timeout(timeout_);
    return std::unique_ptr<Communicator>(std::move(c));
  }

  absl::StatusOr<std::unique_ptr<Communicator>> SplitNode(const std::string& name) override {
    if (!aborted_.empty()) return absl::AbortedError("SplitNode: communicator aborted: " + aborted_);
    MPI_Comm sub;
    if (MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &sub) != MPI_SUCCESS)
      return absl::InternalError(absl::StrCat("MPI_Comm_split_type of ", this->name(), " failed"));
    auto c = std::make_unique<MpiCommunicator>(sub, name, /*owned=*/true);
    c->set_timeout(timeout_);
    return std::unique_ptr<Communicator>(std::move(c));
  }

  void Abort(const std::string& reason) override { aborted_ = reason.empty() ? "aborted" : reason; }
  const void* NativeHandle() const override { return &comm_; }

 private:
  // One collective: its requests, and which peer each belongs to.
  class Op {
   public:
    Op(MpiCommunicator* c, const char* what) : c_(c), what_(what), tag_(c->NextTag()) {}
    ~Op() {
      for (auto& r : reqs_)
        if (r != MPI_REQUEST_NULL) {
          MPI_Cancel(&r);
          MPI_Request_free(&r);
        }
    }
    void Send(int peer, const void* buf, int64_t bytes) { Post(peer, const_cast<void*>(buf), bytes, true); }
    void Recv(int peer, void* buf, int64_t bytes) { Post(peer, buf, bytes, false); }
    void Fail(absl::Status st) {
      if (status_.ok()) status_ = std::move(st);
    }

    absl::Status Wait() {
      if (!c_->aborted_.empty()) Fail(absl::AbortedError(absl::StrCat(what_, " on ", c_->name(),
                                                                      ": communicator aborted: ", c_->aborted_)));
      if (!status_.ok()) return status_;
      const auto start = std::chrono::steady_clock::now();
      const auto deadline = start + c_->timeout_;
      auto nap = std::chrono::microseconds(0);
      for (int polls = 1;; ++polls) {
        int done = 0;
        MPI_Testall(static_cast<int>(reqs_.size()), reqs_.data(), &done, MPI_STATUSES_IGNORE);
        if (done) return absl::OkStatus();
        const auto now = std::chrono::steady_clock::now();
        if (now > deadline) return TimedOut();
        // Large messages only move while we call into MPI, so poll hot at first, yielding the core
        // to oversubscribed peers every 16th poll only (a yield per poll slowed shared-memory
        // transfers by a third); a peer that is late by more than 50 ms gets a gentler backoff.
        if (now - start < std::chrono::milliseconds(50)) {
          if (polls % 16 == 0) std::this_thread::yield();
          continue;
        }
        nap = std::min<std::chrono::microseconds>(nap * 2 + std::chrono::microseconds(1), std::chrono::microseconds(500));
        std::this_thread::sleep_for(nap);
      }
    }

   private:
    void Post(int peer, void* buf, int64_t bytes, bool send) {
      if (bytes < 0 || bytes > INT_MAX) {
        Fail(absl::InvalidArgumentError(absl::StrCat(what_, " on ", c_->name(), ": message of ", bytes,
                                                     " bytes to/from rank ", peer, " (limit 2^31-1)")));
        return;
      }
      MPI_Request r;
      const int n = static_cast<int>(bytes);
      const int rc = send ? MPI_Isend(buf, n, MPI_BYTE, peer, tag_, c_->comm_, &r)
                          : MPI_Irecv(buf, n, MPI_BYTE, peer, tag_, c_->comm_, &r);
      if (rc != MPI_SUCCESS) {
        Fail(absl::UnavailableError(absl::StrCat(what_, " on ", c_->name(), ": MPI error ", rc, " with rank ", peer)));
        return;
      }
      reqs_.push_back(r);
      peers_.push_back(peer);
    }

    absl::Status TimedOut() {
      std::vector<int> missing;
      for (size_t i = 0; i < reqs_.size(); ++i) {
        int flag = 0;
        if (reqs_[i] != MPI_REQUEST_NULL) MPI_Test(&reqs_[i], &flag, MPI_STATUS_IGNORE);
        if (!flag && reqs_[i] != MPI_REQUEST_NULL) missing.push_back(c_->world_ranks_[peers_[i]]);
      }
      std::sort(missing.begin(), missing.end());
      missing.erase(std::unique(missing.begin(), missing.end()), missing.end());
      const double secs = std::chrono::duration<double>(c_->timeout_).count();
      return absl::DeadlineExceededError(absl::StrCat(what_, " on ", c_->name(), " (world rank ",
                                                      c_->world_ranks_[c_->rank_], "): world rank(s) ",
                                                      absl::StrJoin(missing, ", "), " did not arrive within ", secs,
                                                      " s"));
    }

    MpiCommunicator* c_;
    const char* what_;
    int tag_;
    std::vector<MPI_Request> reqs_;
    std::vector<int> peers_;
    absl::Status status_;
  };

  int NextTag() {
    seq_ = (seq_ + 1) % 30000;  // MPI guarantees tags up to 32767
    return seq_ + 1;
  }

  absl::Status GatherImpl(const char* what, const float* in, const int64_t* counts, float* out) {
    Op op(this, what);
    std::vector<int64_t> displs(size_ + 1, 0);
    for (int p = 0; p < size_; ++p) displs[p + 1] = displs[p] + counts[p];
    for (int p = 0; p < size_; ++p)
      if (p != rank_) op.Recv(p, out + displs[p], counts[p] * sizeof(float));
    for (int p = 0; p < size_; ++p)
      if (p != rank_) op.Send(p, in, counts[rank_] * sizeof(float));
    if (out + displs[rank_] != in) std::memmove(out + displs[rank_], in, counts[rank_] * sizeof(float));
    return op.Wait();
  }

  MPI_Comm comm_;
  std::string name_;
  bool owned_;
  int rank_ = 0, size_ = 1;
  int seq_ = 0;
  std::vector<int> world_ranks_;
  std::string aborted_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Communicator>> MakeMpiWorldCommunicator() {
  int init = 0;
  MPI_Initialized(&init);
  if (!init) return absl::FailedPreconditionError("MPI is not initialized");
  return std::unique_ptr<Communicator>(std::make_unique<MpiCommunicator>(MPI_COMM_WORLD, "world", false));
}

MpiSession::MpiSession(int* argc, char*** argv) {
  int provided = 0;
  initialized_ = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided) == MPI_SUCCESS;
}

MpiSession::~MpiSession() {
  if (initialized_) MPI_Finalize();
}

void MpiSession::AbortJob(int code) {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  std::fflush(stdout);
  std::fflush(stderr);
  if (init && !fin) MPI_Abort(MPI_COMM_WORLD, code);
  std::exit(code);
}

#else  // !DSV4_MPI

absl::StatusOr<std::unique_ptr<Communicator>> MakeMpiWorldCommunicator() {
  return absl::UnavailableError("dsv4 was built without MPI (configure with -DDSV4_MPI=ON and an MPI library)");
}

MpiSession::MpiSession(int*, char***) {}
MpiSession::~MpiSession() = default;
void MpiSession::AbortJob(int code) { std::exit(code); }

#endif

}  // namespace dsv4
