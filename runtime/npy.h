// Minimal NumPy .npy I/O for float32 arrays (the `dsv4 logits` output format).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv4 {

absl::Status WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape, const float* data);

struct NpyF32 {
  std::vector<int64_t> shape;
  std::vector<float> data;
};
absl::StatusOr<NpyF32> ReadNpyF32(const std::string& path);

}  // namespace dsv4
