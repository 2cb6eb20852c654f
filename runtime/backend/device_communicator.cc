#include "runtime/backend/device_communicator.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace dsv4 {
namespace {

// One byte past the last byte any peer's part reaches.
int64_t Extent(const int64_t* bytes, const int64_t* displs, int n) {
  int64_t end = 0;
  for (int p = 0; p < n; ++p)
    if (bytes[p] > 0) end = std::max(end, displs[p] + bytes[p]);
  return end;
}

class BackendCommunicator final : public Communicator {
 public:
  // staged: `inner` takes host memory; else device memory. `owned` is `inner` when the wrapper owns it.
  BackendCommunicator(Backend& be, Communicator* inner, std::unique_ptr<Communicator> owned, bool staged)
      : be_(be), inner_(inner), owned_(std::move(owned)), staged_(staged) {
    set_timeout(inner_->timeout());
  }

  int rank() const override { return inner_->rank(); }
  int size() const override { return inner_->size(); }
  std::string name() const override { return absl::StrCat(staged_ ? "staged:" : "", inner_->name()); }

  absl::Status AllReduceSum(float* data, int64_t n) override {
    const int64_t bytes = n * static_cast<int64_t>(sizeof(float));
    if (!staged_) return Ordered([&] { return inner_->AllReduceSum(data, n); });
    float* h = Host<float>(send_, n);
    be_.CopyToHost(h, data, bytes);
    return Staged([&] { return inner_->AllReduceSum(h, n); }, [&] { be_.CopyToDevice(data, h, bytes); });
  }

  absl::Status AllGatherV(const float* in, const int64_t* counts, float* out) override {
    if (!staged_) return Ordered([&] { return inner_->AllGatherV(in, counts, out); });
    int64_t total = 0;
    for (int r = 0; r < size(); ++r) total += counts[r];
    const int64_t mine = counts[rank()];
    float* hin = Host<float>(send_, mine);
    float* hout = Host<float>(recv_, total);
    be_.CopyToHost(hin, in, mine * static_cast<int64_t>(sizeof(float)));
    return Staged([&] { return inner_->AllGatherV(hin, counts, hout); },
                  [&] { be_.CopyToDevice(out, hout, total * static_cast<int64_t>(sizeof(float))); });
  }

  absl::Status Broadcast(void* data, int64_t bytes, int root) override {
    if (!staged_) return Ordered([&] { return inner_->Broadcast(data, bytes, root); });
    char* h = Host<char>(send_, bytes);
    if (rank() == root) be_.CopyToHost(h, data, bytes);
    return Staged([&] { return inner_->Broadcast(h, bytes, root); },
                  [&] {
                    if (rank() != root) be_.CopyToDevice(data, h, bytes);
                  });
  }

  absl::Status AllToAllV(const void* send, const int64_t* send_bytes, const int64_t* send_displs, void* recv,
                         const int64_t* recv_bytes, const int64_t* recv_displs) override {
    if (!staged_)
      return Ordered([&] { return inner_->AllToAllV(send, send_bytes, send_displs, recv, recv_bytes, recv_displs); });
    const int P = size();
    const int64_t sent = Extent(send_bytes, send_displs, P), received = Extent(recv_bytes, recv_displs, P);
    char* hs = Host<char>(send_, sent);
    char* hr = Host<char>(recv_, received);
    if (sent > 0) be_.CopyToHost(hs, send, sent);
    return Staged([&] { return inner_->AllToAllV(hs, send_bytes, send_displs, hr, recv_bytes, recv_displs); },
                  [&] {
                    // Each peer's part alone: what lies between the parts is the caller's.
                    for (int p = 0; p < P; ++p)
                      if (recv_bytes[p] > 0)
                        be_.CopyToDevice(static_cast<char*>(recv) + recv_displs[p], hr + recv_displs[p], recv_bytes[p]);
                  });
  }

  absl::Status Barrier() override { return inner_->Barrier(); }

  absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key, const std::string& name) override {
    DSV4_ASSIGN_OR_RETURN(std::unique_ptr<Communicator> sub, inner_->Split(color, key, name));
    Communicator* raw = sub.get();
    return std::unique_ptr<Communicator>(new BackendCommunicator(be_, raw, std::move(sub), staged_));
  }

  void Abort(const std::string& reason) override { inner_->Abort(reason); }

 private:
  // Grow-only host staging, left uninitialized.
  template <typename T>
  T* Host(std::vector<char>& buffer, int64_t n) {
    const size_t bytes = static_cast<size_t>(std::max<int64_t>(n, 1)) * sizeof(T);
    if (buffer.size() < bytes) buffer.resize(bytes);
    return reinterpret_cast<T*>(buffer.data());
  }

  // The backend's queued work first; the collective runs even when that work failed, so that the
  // peers are not left waiting, and the backend's error is the one returned.
  template <typename F>
  absl::Status Ordered(F collective) {
    const absl::Status before = be_.Synchronize();
    const absl::Status done = collective();
    return before.ok() ? done : before;
  }

  // The host copies made before `collective` are complete (CopyToHost waits); `back` copies the
  // results to the device once it succeeded.
  template <typename F, typename B>
  absl::Status Staged(F collective, B back) {
    const absl::Status before = be_.status();
    const absl::Status done = collective();
    if (!before.ok()) return before;
    DSV4_RETURN_IF_ERROR(done);
    back();
    return be_.status();
  }

  Backend& be_;
  Communicator* inner_;
  std::unique_ptr<Communicator> owned_;
  const bool staged_;
  std::vector<char> send_, recv_;
};

}  // namespace

std::unique_ptr<Communicator> MakeStagedCommunicator(Backend& backend, Communicator& inner) {
  return std::make_unique<BackendCommunicator>(backend, &inner, nullptr, /*staged=*/true);
}

std::unique_ptr<Communicator> MakeBackendOrderedCommunicator(Backend& backend, std::unique_ptr<Communicator> inner) {
  Communicator* raw = inner.get();
  return std::make_unique<BackendCommunicator>(backend, raw, std::move(inner), /*staged=*/false);
}

}  // namespace dsv4
