// MakeDeviceCommunicator in a build without NCCL (parallel/communicator.h).
#include "absl/strings/str_cat.h"
#include "parallel/communicator.h"

namespace dsv4 {

absl::StatusOr<std::unique_ptr<Communicator>> MakeDeviceCommunicator(Communicator&, const std::string& name) {
  return absl::UnimplementedError(
      absl::StrCat(name, ": this build of dsv4 has no NCCL (CUDA and nccl.h were not both found when it was built)"));
}

}  // namespace dsv4
