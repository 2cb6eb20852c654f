// Pieces shared by the `dsv4` subcommands: model flags, opening a model, error reporting.
#pragma once

#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "launch/flags.h"
#include "runtime/model/model.h"

namespace dsv4 {

// --model, --qdq, --threads, --tp, --ep.
void AddModelFlags(Flags& flags);
absl::StatusOr<std::unique_ptr<Model>> OpenModel(const Flags& flags);
absl::Status CheckTokenIds(std::span<const int32_t> ids, const ModelConfig& config, const std::string& flag);

bool WantsHelp(int argc, char** argv);
int PrintHelp(const std::string& command, const Flags& flags);
// Prints "dsv4: <message>" to stderr and returns exit code 1 (2 for bad arguments).
int Fail(const absl::Status& status);

}  // namespace dsv4
