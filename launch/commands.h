// The `dsv4` subcommands (DESIGN.md, "The dsv4 command": a stable contract). Each is a pair: the
// flags it declares, and a function from the parsed flags to a status. main.cc holds the table
// and the one path for help, parsing and errors (exit 2 for bad arguments, 1 for other failures;
// under mpirun a failure ends the whole job).
#pragma once

#include <span>
#include <string>

#include "absl/status/status.h"
#include "base/flags.h"
#include "runtime/model/model.h"

namespace dsv4 {

struct Command {
  const char* name;
  const char* summary;
  void (*flags)(Flags&) = nullptr;
  absl::Status (*run)(const Flags&) = nullptr;
  std::span<const Command> subcommands = {};  // `dsv4 bench decode`, `dsv4 ctl drain`
};

void LogitsFlags(Flags& flags);
absl::Status Logits(const Flags& flags);
void CompleteFlags(Flags& flags);
absl::Status Complete(const Flags& flags);
void PlanFlags(Flags& flags);
absl::Status Plan(const Flags& flags);
void EngramIdsFlags(Flags& flags);
absl::Status EngramIds(const Flags& flags);
void TokenizeFlags(Flags& flags);
absl::Status Tokenize(const Flags& flags);
void ServeFlags(Flags& flags);
absl::Status Serve(const Flags& flags);
void GenerateFlags(Flags& flags);
absl::Status Generate(const Flags& flags);
void CtlFlags(Flags& flags);
absl::Status CtlStatus(const Flags& flags);
absl::Status CtlDrain(const Flags& flags);
absl::Status CtlShutdown(const Flags& flags);
absl::Status CtlRebalance(const Flags& flags);
absl::Status CtlPlacement(const Flags& flags);

// The ids of `flag` as the model checks them (vocabulary, and an Engram compressed id where the
// model has Engram layers): INVALID_ARGUMENT naming the flag.
absl::Status CheckTokenIds(std::span<const int32_t> ids, const Model& model, const std::string& flag);

// A failed call to the server at `address`, said so that it names the server; UNIMPLEMENTED (a
// server that does not offer `service`, e.g. the control plane's port given for the inference
// port) says which service was expected.
absl::Status ServerError(const absl::Status& status, const std::string& address, const std::string& service);

}  // namespace dsv4
