#include "runtime/backend/backend.h"

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace dsv4 {

// Defined by cuda_backend.cc in a build with CUDA, below otherwise.
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const BackendOptions& options);
// The number of visible GPUs (0 without CUDA, or when the driver has none).
int VisibleCudaDevices();

#if !DSV4_CUDA
absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const BackendOptions&) {
  return absl::FailedPreconditionError(
      "--device cuda: this build of dsv4 has no CUDA backend (nvcc was not found when it was built; "
      "rebuild on a machine with the CUDA toolkit, or use --device cpu)");
}
int VisibleCudaDevices() { return 0; }
#endif

const char* DeviceName(Device d) { return d == Device::kCuda ? "cuda" : "cpu"; }

absl::StatusOr<DeviceChoice> ParseDeviceChoice(const std::string& s) {
  if (s == "auto") return DeviceChoice::kAuto;
  if (s == "cpu") return DeviceChoice::kCpu;
  if (s == "cuda") return DeviceChoice::kCuda;
  return absl::InvalidArgumentError(absl::StrCat("--device must be cpu, cuda or auto, got '", s, "'"));
}

absl::StatusOr<const float*> Backend::PlaceVector(const float* host, int64_t n) {
  if (HostIsDevice()) return host;
  DSV4_ASSIGN_OR_RETURN(void* p, Allocate(n * 4));
  CopyToDevice(p, host, n * 4);
  DSV4_RETURN_IF_ERROR(status());
  return static_cast<const float*>(p);
}

absl::StatusOr<const int32_t*> Backend::PlaceInts(const int32_t* host, int64_t n) {
  if (HostIsDevice()) return host;
  DSV4_ASSIGN_OR_RETURN(void* p, Allocate(n * 4));
  CopyToDevice(p, host, n * 4);
  DSV4_RETURN_IF_ERROR(status());
  return static_cast<const int32_t*>(p);
}

absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const BackendOptions& options) {
  switch (options.device) {
    case DeviceChoice::kCpu:
      return MakeCpuBackend(options);
    case DeviceChoice::kCuda:
      return MakeCudaBackend(options);
    case DeviceChoice::kAuto:
      if (VisibleCudaDevices() > 0) return MakeCudaBackend(options);
      return MakeCpuBackend(options);
  }
  return MakeCpuBackend(options);
}

}  // namespace dsv4
