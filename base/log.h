// Logging for every layer, over spdlog (kept out of this header so kernels and tools that include
// it do not pull spdlog in). Lines go to stderr as
//   2026-12-04 20:19:04.123 info [rank 0 step 17] admitted req-3: 12 prompt tokens
// with the rank once the job knows it and the step while the calling thread runs one.
//
//   DSV4_LOG(kInfo, "admitted ", id, ": ", n, " prompt tokens");   // absl::StrCat arguments
//
// The arguments are formatted only when the level is enabled. Thread-safe.
#pragma once

#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace dsv4::log {

enum class Level { kTrace, kDebug, kInfo, kWarn, kError, kOff };

// Sets the level from its name (trace, debug, info, warn, error, off); "" = DSV4_LOG_LEVEL, whose
// default is info. INVALID_ARGUMENT naming the value otherwise.
absl::Status SetLevel(absl::string_view name);
// Tags every later line with this process's world rank (-1: untagged).
void SetRank(int rank);
// Tags the calling thread's lines with the step it runs (-1: untagged).
void SetStep(int64_t step);

bool Enabled(Level level);
void Write(Level level, absl::string_view message);

}  // namespace dsv4::log

#define DSV4_LOG(level, ...)                                                      \
  do {                                                                            \
    if (::dsv4::log::Enabled(::dsv4::log::Level::level))                          \
      ::dsv4::log::Write(::dsv4::log::Level::level, ::absl::StrCat(__VA_ARGS__)); \
  } while (0)
