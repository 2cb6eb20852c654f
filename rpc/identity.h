// What the control plane compares between ranks: the build (the executable's own bytes). The
// model and its settings are compared when the runtime opens (runtime/runtime.h, ConfigDigest).
#pragma once

#include <string>

#include "absl/status/statusor.h"

namespace dsv4 {

// "<version>-<16 hex digits>": the configure-time version and a 64-bit FNV-1a hash of the running
// executable. Computed once.
const std::string& BuildId();

}  // namespace dsv4
