// What the control plane compares between ranks: the build (the executable's own bytes) and the
// model with the settings that change its numbers.
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace dsv4 {

// "<version>-<16 hex digits>": the configure-time version and a 64-bit FNV-1a hash of the running
// executable. Computed once.
const std::string& BuildId();

// A 64-bit FNV-1a hash (16 hex digits) of the model's config.json text (a built-in model's
// generated one) and `settings` (e.g. "qdq=on tp=2 ep=2").
absl::StatusOr<std::string> ConfigDigest(const std::string& model, const std::string& settings);

}  // namespace dsv4
