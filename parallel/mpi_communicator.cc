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
#if defined(__linux__)
#include <sys/uio.h>
#include <unistd.h>

#include <cerrno>
#endif

#include "base/env.h"

namespace dsv4 {

#if DSV4_MPI
namespace {

// PeerMemory over Linux cross-memory attach (process_vm_readv), between ranks that share a node.
class CmaPeerMemory final : public PeerMemory {
 public:
  // The probe every rank publishes: a value its peers can check they read correctly.
  static uint64_t ProbeValue(int pid) { return 0x64737634504d454dull ^ static_cast<uint64_t>(pid); }

  CmaPeerMemory(std::string comm, int size) : comm_(std::move(comm)), size_(size) {}
  uint64_t* probe() { return &probe_; }
  void Init(std::vector<int> pids, std::vector<int> world_ranks, std::vector<uint8_t> can) {
    pids_ = std::move(pids), world_ranks_ = std::move(world_ranks), can_ = std::move(can);
  }
  // Reads 8 bytes at `address` of process `pid`: true when they hold `want`.
  static bool Probe(int pid, uint64_t address, uint64_t want) {
#if defined(__linux__)
    uint64_t got = 0;
    iovec local{&got, sizeof(got)}, remote{reinterpret_cast<void*>(address), sizeof(got)};
    return process_vm_readv(pid, &local, 1, &remote, 1, 0) == static_cast<ssize_t>(sizeof(got)) && got == want;
#else
    return false;
#endif
  }

  bool CanRead(int reader, int owner) const override {
    return reader >= 0 && owner >= 0 && reader < size_ && owner < size_ && can_[reader * size_ + owner] != 0;
  }

  absl::Status Gather(int owner, const uint64_t* remote, int64_t bytes, int64_t count, void* dst) override {
#if defined(__linux__)
    constexpr int64_t kMaxIov = 1024;  // IOV_MAX on Linux
    char* out = static_cast<char*>(dst);
    for (int64_t first = 0; first < count; first += kMaxIov) {
      const int64_t m = std::min(kMaxIov, count - first);
      iov_.resize(m);
      for (int64_t i = 0; i < m; ++i)
        iov_[i] = {reinterpret_cast<void*>(remote[first + i]), static_cast<size_t>(bytes)};
      iovec local{out + first * bytes, static_cast<size_t>(m * bytes)};
      const ssize_t got = process_vm_readv(pids_[owner], &local, 1, iov_.data(), m, 0);
      if (got != static_cast<ssize_t>(m * bytes))
        return absl::InternalError(absl::StrCat("reading ", m * bytes, " bytes of world rank ", world_ranks_[owner],
                                                " (", comm_, ") directly failed: ",
                                                got < 0 ? std::strerror(errno) : "a short read"));
    }
    return absl::OkStatus();
#else
    return absl::FailedPreconditionError("no cross-memory attach on this system");
#endif
  }

 private:
  std::string comm_;
  int size_;
  uint64_t probe_ = 0;
  std::vector<int> pids_, world_ranks_;
  std::vector<uint8_t> can_;  // [reader * size + owner]
#if defined(__linux__)
  std::vector<iovec> iov_;
#endif
};

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
  std::unique_ptr<PeerExchange> NewExchange(const char* what) override {
    return std::make_unique<Exchange>(this, what);
  }

  // Collective: which ranks share a node, their pids, and a probe read of every same-node peer.
  absl::StatusOr<std::unique_ptr<PeerMemory>> NewPeerMemory() override {
    if (!aborted_.empty()) return absl::AbortedError("NewPeerMemory: communicator aborted: " + aborted_);
    auto pm = std::make_unique<CmaPeerMemory>(name(), size_);
    MPI_Comm node;
    if (MPI_Comm_split_type(comm_, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node) != MPI_SUCCESS)
      return absl::InternalError(absl::StrCat("MPI_Comm_split_type of ", name(), " failed"));
    int node_root_world = 0;  // names the node: the world rank of its first rank in this group
    {
      int node_rank = 0;
      MPI_Comm_rank(node, &node_rank);
      int mine = node_rank == 0 ? world_ranks_[rank_] : -1;
      MPI_Allreduce(&mine, &node_root_world, 1, MPI_INT, MPI_MAX, node);
      MPI_Comm_free(&node);
    }
#if defined(__linux__)
    const int pid = static_cast<int>(getpid());
#else
    const int pid = 0;
#endif
    const bool enabled = env::Int(env::Knob::kEpSingleCopy) != 0 && pid != 0;
    *pm->probe() = CmaPeerMemory::ProbeValue(pid);
    struct Who {
      int pid, node;
      uint64_t probe;
    };
    const Who me{pid, node_root_world, reinterpret_cast<uint64_t>(pm->probe())};
    std::vector<Who> all(size_);
    MPI_Allgather(&me, sizeof(Who), MPI_BYTE, all.data(), sizeof(Who), MPI_BYTE, comm_);
    std::vector<uint8_t> mine(size_, 0), can(static_cast<size_t>(size_) * size_, 0);
    for (int p = 0; p < size_; ++p)
      if (enabled && p != rank_ && all[p].node == me.node)
        mine[p] = CmaPeerMemory::Probe(all[p].pid, all[p].probe, CmaPeerMemory::ProbeValue(all[p].pid)) ? 1 : 0;
    MPI_Allgather(mine.data(), size_, MPI_BYTE, can.data(), size_, MPI_BYTE, comm_);
    std::vector<int> pids(size_);
    for (int p = 0; p < size_; ++p) pids[p] = all[p].pid;
    pm->Init(std::move(pids), world_ranks_, std::move(can));
    return std::unique_ptr<PeerMemory>(std::move(pm));
  }

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
      if (c_->PollUntil([this] {
            int done = 0;
            MPI_Testall(static_cast<int>(reqs_.size()), reqs_.data(), &done, MPI_STATUSES_IGNORE);
            return done != 0;
          }))
        return absl::OkStatus();
      return TimedOut();
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
        if (!flag && reqs_[i] != MPI_REQUEST_NULL) missing.push_back(peers_[i]);
      }
      return c_->Missing(what_, missing);
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

  // Polls `done` until it returns true (true) or the timeout passes (false). Large messages only
  // move while we call into MPI, so poll hot at first, yielding the core to oversubscribed peers
  // every 16th poll only (a yield per poll slowed shared-memory transfers by a third); a peer that
  // is late by more than 50 ms gets a gentler backoff.
  template <typename Done>
  bool PollUntil(Done done) const {
    const auto start = std::chrono::steady_clock::now();
    const auto deadline = start + timeout_;
    auto nap = std::chrono::microseconds(0);
    for (int polls = 1;; ++polls) {
      if (done()) return true;
      const auto now = std::chrono::steady_clock::now();
      if (now > deadline) return false;
      if (now - start < std::chrono::milliseconds(50)) {
        if (polls % 16 == 0) std::this_thread::yield();
        continue;
      }
      nap = std::min<std::chrono::microseconds>(nap * 2 + std::chrono::microseconds(1), std::chrono::microseconds(500));
      std::this_thread::sleep_for(nap);
    }
  }

  // DEADLINE_EXCEEDED for `what`, naming the world ranks of the (group) peers that did not arrive.
  absl::Status Missing(const std::string& what, const std::vector<int>& peers) const {
    std::vector<int> missing;
    for (int p : peers) missing.push_back(world_ranks_[p]);
    std::sort(missing.begin(), missing.end());
    missing.erase(std::unique(missing.begin(), missing.end()), missing.end());
    const double secs = std::chrono::duration<double>(timeout_).count();
    return absl::DeadlineExceededError(absl::StrCat(what, " on ", name(), " (world rank ", world_ranks_[rank_],
                                                    "): world rank(s) ", absl::StrJoin(missing, ", "),
                                                    " did not arrive within ", secs, " s"));
  }

  // PeerExchange over non-blocking MPI messages, all with one tag (MPI keeps messages between two
  // ranks with one tag in order). Rows are sent with an hindexed datatype straight from the
  // caller's buffer.
  class Exchange final : public PeerExchange {
   public:
    Exchange(MpiCommunicator* c, std::string what) : c_(c), what_(std::move(what)), tag_(c->NextTag()) {}
    ~Exchange() override {
      for (auto& r : reqs_)
        if (r != MPI_REQUEST_NULL) {
          MPI_Cancel(&r);
          MPI_Request_free(&r);
        }
    }

    Handle Send(int peer, const void* data, int64_t bytes) override {
      return Post(peer, const_cast<void*>(data), bytes, MPI_BYTE, true);
    }
    Handle SendRows(int peer, const void* base, int64_t row_bytes, const int64_t* offsets, int64_t count) override {
      if (count == 0 || row_bytes == 0) return Post(peer, nullptr, 0, MPI_BYTE, true);
      if (row_bytes > INT_MAX || count > INT_MAX || row_bytes * count > INT_MAX) {
        Fail(absl::InvalidArgumentError(absl::StrCat(what_, " on ", c_->name(), ": ", count, " rows of ", row_bytes,
                                                     " bytes to rank ", peer, " (limit 2^31-1 bytes)")));
        return Record(MPI_REQUEST_NULL, peer);
      }
      // Absolute addresses from MPI_BOTTOM: the datatype describes the rows where they are.
      displs_.resize(count);
      for (int64_t i = 0; i < count; ++i)
        MPI_Get_address(static_cast<const char*>(base) + offsets[i], &displs_[i]);
      MPI_Datatype rows;
      if (MPI_Type_create_hindexed_block(static_cast<int>(count), static_cast<int>(row_bytes), displs_.data(), MPI_BYTE,
                                         &rows) != MPI_SUCCESS ||
          MPI_Type_commit(&rows) != MPI_SUCCESS) {
        Fail(absl::InternalError(absl::StrCat(what_, " on ", c_->name(), ": cannot build a datatype of ", count,
                                              " rows")));
        return Record(MPI_REQUEST_NULL, peer);
      }
      const Handle h = Post(peer, MPI_BOTTOM, 1, rows, true);
      MPI_Type_free(&rows);  // freed once the send no longer needs it
      return h;
    }
    Handle Recv(int peer, void* data, int64_t bytes) override { return Post(peer, data, bytes, MPI_BYTE, false); }

    absl::Status Wait(Handle h) override {
      DSV4_RETURN_IF_ERROR(Check());
      if (h < 0 || h >= static_cast<Handle>(reqs_.size()))
        return absl::InvalidArgumentError(absl::StrCat(what_, ": no message ", h));
      if (c_->PollUntil([&] {
            int flag = 0;
            MPI_Test(&reqs_[h], &flag, MPI_STATUS_IGNORE);
            return flag != 0;
          }))
        return absl::OkStatus();
      return c_->Missing(what_, {peers_[h]});
    }

    absl::StatusOr<size_t> WaitAny(const std::vector<Handle>& handles) override {
      DSV4_RETURN_IF_ERROR(Check());
      for (Handle h : handles)
        if (h < 0 || h >= static_cast<Handle>(reqs_.size()))
          return absl::InvalidArgumentError(absl::StrCat(what_, ": no message ", h));
      std::vector<size_t> open;
      for (size_t i = 0; i < handles.size(); ++i)
        if (!returned_[handles[i]]) open.push_back(i);
      if (open.empty()) return absl::OutOfRangeError(absl::StrCat(what_, ": every message was already waited for"));
      // Messages completed by an earlier Wait or WaitAll hold MPI_REQUEST_NULL, which MPI_Testany
      // skips: they are answered first.
      for (size_t i : open)
        if (reqs_[handles[i]] == MPI_REQUEST_NULL) {
          returned_[handles[i]] = true;
          return i;
        }
      std::vector<MPI_Request> reqs(open.size());
      for (size_t i = 0; i < open.size(); ++i) reqs[i] = reqs_[handles[open[i]]];
      int index = MPI_UNDEFINED;
      const bool ok = c_->PollUntil([&] {
        int flag = 0;
        MPI_Testany(static_cast<int>(reqs.size()), reqs.data(), &index, &flag, MPI_STATUS_IGNORE);
        return flag != 0 && index != MPI_UNDEFINED;
      });
      for (size_t i = 0; i < open.size(); ++i) reqs_[handles[open[i]]] = reqs[i];  // completed ones are null now
      if (!ok) {
        std::vector<int> peers;
        for (size_t i : open) peers.push_back(peers_[handles[i]]);
        return c_->Missing(what_, peers);
      }
      const size_t i = open[index];
      returned_[handles[i]] = true;
      return i;
    }

    absl::Status WaitAll() override {
      DSV4_RETURN_IF_ERROR(Check());
      if (c_->PollUntil([this] {
            int done = 0;
            MPI_Testall(static_cast<int>(reqs_.size()), reqs_.data(), &done, MPI_STATUSES_IGNORE);
            return done != 0;
          }))
        return absl::OkStatus();
      std::vector<int> peers;
      for (size_t i = 0; i < reqs_.size(); ++i)
        if (reqs_[i] != MPI_REQUEST_NULL) peers.push_back(peers_[i]);
      return c_->Missing(what_, peers);
    }

   private:
    absl::Status Check() const {
      if (!status_.ok()) return status_;
      if (!c_->aborted_.empty())
        return absl::AbortedError(absl::StrCat(what_, " on ", c_->name(), ": communicator aborted: ", c_->aborted_));
      return absl::OkStatus();
    }
    void Fail(absl::Status st) {
      if (status_.ok()) status_ = std::move(st);
    }
    Handle Record(MPI_Request r, int peer) {
      reqs_.push_back(r);
      peers_.push_back(peer);
      returned_.push_back(false);
      return static_cast<Handle>(reqs_.size() - 1);
    }
    Handle Post(int peer, void* buf, int64_t count, MPI_Datatype type, bool send) {
      if (peer < 0 || peer >= c_->size_) {
        Fail(absl::InvalidArgumentError(absl::StrCat(what_, " on ", c_->name(), ": peer ", peer, " outside [0, ",
                                                     c_->size_, ")")));
        return Record(MPI_REQUEST_NULL, 0);
      }
      if (count < 0 || count > INT_MAX) {
        Fail(absl::InvalidArgumentError(absl::StrCat(what_, " on ", c_->name(), ": message of ", count,
                                                     " bytes to/from rank ", peer, " (limit 2^31-1)")));
        return Record(MPI_REQUEST_NULL, peer);
      }
      MPI_Request r;
      const int n = static_cast<int>(count);
      const int rc = send ? MPI_Isend(buf, n, type, peer, tag_, c_->comm_, &r)
                          : MPI_Irecv(buf, n, type, peer, tag_, c_->comm_, &r);
      if (rc != MPI_SUCCESS) {
        Fail(absl::UnavailableError(absl::StrCat(what_, " on ", c_->name(), ": MPI error ", rc, " with rank ", peer)));
        return Record(MPI_REQUEST_NULL, peer);
      }
      return Record(r, peer);
    }

    MpiCommunicator* c_;
    std::string what_;
    int tag_;
    std::vector<MPI_Request> reqs_;
    std::vector<int> peers_;
    std::vector<bool> returned_;
    std::vector<MPI_Aint> displs_;
    absl::Status status_;
  };

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
