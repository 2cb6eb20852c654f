#include "parallel/communicator.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace dsv4 {
namespace {

// Every wait fails: for communicators whose buffers are not host memory.
class UnsupportedExchange final : public PeerExchange {
 public:
  UnsupportedExchange(std::string comm, std::string what) : comm_(std::move(comm)), what_(std::move(what)) {}
  Handle Send(int, const void*, int64_t) override { return 0; }
  Handle SendRows(int, const void*, int64_t, const int64_t*, int64_t) override { return 0; }
  Handle Recv(int, void*, int64_t) override { return 0; }
  absl::Status Wait(Handle) override { return Error(); }
  absl::StatusOr<size_t> WaitAny(const std::vector<Handle>&) override { return Error(); }
  absl::Status WaitAll() override { return Error(); }

 private:
  absl::Status Error() const {
    return absl::UnimplementedError(absl::StrCat(what_, ": ", comm_, " has no point-to-point exchange"));
  }
  std::string comm_, what_;
};

// A world of one: messages to self, matched in posting order and copied once both sides exist. A
// receive that no send matches fails at its wait (in a world of one it could never complete).
class LocalExchange final : public PeerExchange {
 public:
  LocalExchange(std::string what, const std::string* aborted) : what_(std::move(what)), aborted_(aborted) {}

  Handle Send(int peer, const void* data, int64_t bytes) override {
    return Post(peer, {static_cast<const char*>(data), bytes, 0, nullptr, 0}, true);
  }
  Handle SendRows(int peer, const void* base, int64_t row_bytes, const int64_t* offsets, int64_t count) override {
    return Post(peer, {static_cast<const char*>(base), row_bytes * count, row_bytes, offsets, count}, true);
  }
  Handle Recv(int peer, void* data, int64_t bytes) override {
    return Post(peer, {static_cast<const char*>(data), bytes, 0, nullptr, 0}, false);
  }
  absl::Status Wait(Handle h) override {
    DSV4_RETURN_IF_ERROR(Check());
    if (h < 0 || h >= static_cast<Handle>(msgs_.size())) return absl::InvalidArgumentError("no such message");
    if (!msgs_[h].done) return Unmatched(h);
    return absl::OkStatus();
  }
  absl::StatusOr<size_t> WaitAny(const std::vector<Handle>& handles) override {
    DSV4_RETURN_IF_ERROR(Check());
    for (size_t i = 0; i < handles.size(); ++i) {
      const Handle h = handles[i];
      if (h < 0 || h >= static_cast<Handle>(msgs_.size())) return absl::InvalidArgumentError("no such message");
      if (msgs_[h].returned) continue;
      if (!msgs_[h].done) return Unmatched(h);
      msgs_[h].returned = true;
      return i;
    }
    return absl::OutOfRangeError(absl::StrCat(what_, ": every message was already waited for"));
  }
  absl::Status WaitAll() override {
    DSV4_RETURN_IF_ERROR(Check());
    for (size_t h = 0; h < msgs_.size(); ++h)
      if (!msgs_[h].done) return Unmatched(static_cast<Handle>(h));
    return absl::OkStatus();
  }

 private:
  struct Buf {
    const char* data;
    int64_t bytes, row_bytes;
    const int64_t* offsets;
    int64_t rows;
  };
  struct Msg {
    Buf buf;
    bool send, done = false, returned = false;
  };
  absl::Status Check() const {
    if (!status_.ok()) return status_;
    if (!aborted_->empty()) return absl::AbortedError(absl::StrCat(what_, ": communicator aborted: ", *aborted_));
    return absl::OkStatus();
  }
  absl::Status Unmatched(Handle h) const {
    return absl::FailedPreconditionError(absl::StrCat(what_, ": ", msgs_[h].send ? "send to" : "receive from",
                                                      " self without a matching ",
                                                      msgs_[h].send ? "receive" : "send", " (a world of one)"));
  }
  Handle Post(int peer, Buf b, bool send) {
    if (peer != 0 && status_.ok())
      status_ = absl::InvalidArgumentError(absl::StrCat(what_, ": peer ", peer, " outside a world of one"));
    msgs_.push_back({b, send});
    // Match the oldest unmatched send with the oldest unmatched receive.
    size_t s = 0, r = 0;
    for (;;) {
      while (s < msgs_.size() && (!msgs_[s].send || msgs_[s].done)) ++s;
      while (r < msgs_.size() && (msgs_[r].send || msgs_[r].done)) ++r;
      if (s == msgs_.size() || r == msgs_.size()) break;
      Copy(msgs_[s].buf, msgs_[r].buf);
      msgs_[s].done = msgs_[r].done = true;
    }
    return static_cast<Handle>(msgs_.size() - 1);
  }
  void Copy(const Buf& from, const Buf& to) {
    if (from.bytes != to.bytes) {
      if (status_.ok())
        status_ = absl::InvalidArgumentError(
            absl::StrCat(what_, ": a ", from.bytes, "-byte message to self received into ", to.bytes, " bytes"));
      return;
    }
    char* dst = const_cast<char*>(to.data);
    if (from.offsets == nullptr) {
      if (from.bytes > 0) std::memmove(dst, from.data, from.bytes);
      return;
    }
    for (int64_t i = 0; i < from.rows; ++i)
      std::memmove(dst + i * from.row_bytes, from.data + from.offsets[i], from.row_bytes);
  }

  std::string what_;
  const std::string* aborted_;
  std::vector<Msg> msgs_;
  absl::Status status_;
};

class LocalCommunicator final : public Communicator {
 public:
  explicit LocalCommunicator(std::string name = "local") : name_(std::move(name)) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return name_; }

  absl::Status AllReduceSum(float*, int64_t) override { return Check("AllReduce"); }
  absl::Status AllGatherV(const float* in, const int64_t* counts, float* out) override {
    if (out != in) std::memmove(out, in, counts[0] * sizeof(float));
    return Check("AllGather");
  }
  absl::Status Broadcast(void*, int64_t, int root) override {
    if (root != 0) return absl::InvalidArgumentError(absl::StrCat("Broadcast: root ", root, " in a world of 1"));
    return Check("Broadcast");
  }
  absl::Status AllToAllV(const void* send, const int64_t* send_bytes, const int64_t* send_displs, void* recv,
                         const int64_t* recv_bytes, const int64_t* recv_displs) override {
    if (send_bytes[0] != recv_bytes[0])
      return absl::InvalidArgumentError(
          absl::StrCat("AllToAllV: sending ", send_bytes[0], " bytes to self but expecting ", recv_bytes[0]));
    if (send_bytes[0] > 0)
      std::memmove(static_cast<char*>(recv) + recv_displs[0], static_cast<const char*>(send) + send_displs[0],
                   send_bytes[0]);
    return Check("AllToAllV");
  }
  absl::Status Barrier() override { return Check("Barrier"); }
  absl::StatusOr<std::unique_ptr<Communicator>> Split(int, int, const std::string& name) override {
    return std::unique_ptr<Communicator>(new LocalCommunicator(name));
  }
  void Abort(const std::string& reason) override { aborted_ = reason.empty() ? "aborted" : reason; }
  std::unique_ptr<PeerExchange> NewExchange(const char* what) override {
    return std::make_unique<LocalExchange>(absl::StrCat(what, " on ", name_), &aborted_);
  }

 private:
  absl::Status Check(const char* op) const {
    if (aborted_.empty()) return absl::OkStatus();
    return absl::AbortedError(absl::StrCat(op, ": communicator aborted: ", aborted_));
  }
  std::string name_;
  std::string aborted_;
};

}  // namespace

std::unique_ptr<PeerExchange> Communicator::NewExchange(const char* what) {
  return std::make_unique<UnsupportedExchange>(name(), what);
}

namespace {

class NoPeerMemory final : public PeerMemory {
 public:
  bool CanRead(int, int) const override { return false; }
  absl::Status Gather(int owner, const uint64_t*, int64_t, int64_t, void*) override {
    return absl::FailedPreconditionError(absl::StrCat("the memory of rank ", owner, " cannot be read directly"));
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<PeerMemory>> Communicator::NewPeerMemory() {
  return std::unique_ptr<PeerMemory>(std::make_unique<NoPeerMemory>());
}

absl::Status AllGatherBytes(Communicator& comm, const void* in, int64_t bytes, void* out) {
  const int n = comm.size();
  std::vector<int64_t> counts(n, bytes), send_displs(n, 0), recv_displs(n);
  for (int r = 0; r < n; ++r) recv_displs[r] = r * bytes;
  return comm.AllToAllV(in, counts.data(), send_displs.data(), out, counts.data(), recv_displs.data());
}

std::unique_ptr<Communicator> MakeLocalCommunicator() { return std::make_unique<LocalCommunicator>(); }

LauncherPlace LauncherWorld() {
  auto read = [](const char* ompi, const char* pmi, int fallback) {
    const char* v = std::getenv(ompi);
    if (v == nullptr) v = std::getenv(pmi);
    return v != nullptr ? std::atoi(v) : fallback;
  };
  LauncherPlace p;
  p.size = std::max(1, read("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", 1));
  p.rank = std::clamp(read("OMPI_COMM_WORLD_RANK", "PMI_RANK", 0), 0, p.size - 1);
  p.local_size = std::clamp(read("OMPI_COMM_WORLD_LOCAL_SIZE", "MPI_LOCALNRANKS", 1), 1, p.size);
  p.local_rank = std::clamp(read("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID", 0), 0, p.local_size - 1);
  return p;
}

bool LaunchedByMpirun() { return LauncherWorld().size > 1; }

}  // namespace dsv4
