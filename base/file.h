// Reading and writing whole files, with errors that name the file and what went wrong.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace dsv4 {

// The bytes of the regular file `path` (symlinks followed). NOT_FOUND when it does not exist,
// INVALID_ARGUMENT when it is a directory or another non-regular file or larger than `max_bytes`,
// PERMISSION_DENIED / DATA_LOSS when it cannot be opened or read. Every message names `path`.
absl::StatusOr<std::string> ReadFile(const std::string& path, int64_t max_bytes = int64_t{1} << 30);

// Writes `bytes` to `path` atomically: a temporary file in the same folder, flushed and renamed
// over `path`, so a failure never leaves a truncated file or destroys the one that was there.
absl::Status WriteFileAtomic(const std::string& path, absl::string_view bytes);

}  // namespace dsv4
