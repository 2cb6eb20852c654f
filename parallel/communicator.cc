#include "parallel/communicator.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace dsv4 {
namespace {

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

 private:
  absl::Status Check(const char* op) const {
    if (aborted_.empty()) return absl::OkStatus();
    return absl::AbortedError(absl::StrCat(op, ": communicator aborted: ", aborted_));
  }
  std::string name_;
  std::string aborted_;
};

}  // namespace

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
  return p;
}

bool LaunchedByMpirun() { return LauncherWorld().size > 1; }

}  // namespace dsv4
