// Pieces shared by the `dsv4` subcommands: model flags, opening a model on this rank of the job,
// error reporting.
#pragma once

#include <memory>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "launch/flags.h"
#include "parallel/layout.h"
#include "runtime/model/model.h"

namespace dsv4 {

// --model, --qdq, --threads, --tp, --ep, --comm-timeout-s, --engram-placement.
void AddModelFlags(Flags& flags);

// A model ready to run on this rank: under mpirun the communicators of its TP and EP groups and
// the weights of its slice; otherwise a world of one.
struct Runtime {
  std::unique_ptr<ParallelGroups> groups;
  std::unique_ptr<Communicator> engram_comm;  // the ranks sharing the Engram tables (node placement)
  std::unique_ptr<Model> model;
  bool leader() const { return groups->ctx.layout.rank == 0; }
  Communicator& world() const { return *groups->world; }
};
absl::StatusOr<std::unique_ptr<Runtime>> OpenRuntime(const Flags& flags);

// The ids of `flag` as the model checks them (vocabulary, and an Engram compressed id where the
// model has Engram layers), as InvalidArgument naming the flag.
absl::Status CheckTokenIds(std::span<const int32_t> ids, const Model& model, const std::string& flag);

bool WantsHelp(int argc, char** argv);
int PrintHelp(const std::string& command, const Flags& flags);
// Prints "dsv4: <message>" to stderr (with the rank under mpirun) and returns exit code 1 (2 for
// bad arguments). Under mpirun the whole job is ended instead, so no peer waits forever.
int Fail(const absl::Status& status);

}  // namespace dsv4
