// `dsv4`: the command-line entry point. The subcommands and their flags are a stable contract
// (DESIGN.md, "The dsv4 command").
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>

#include "base/env.h"
#include "base/log.h"
#include "launch/commands.h"
#include "parallel/communicator.h"

namespace {

struct Command {
  const char* name;
  int (*run)(int argc, char** argv);
  const char* help;
};

// Every subcommand, in the order `dsv4 --help` lists them.
constexpr Command kCommands[] = {
    {"logits", dsv4::RunLogits, "last-position logits after a prompt and each decode step, as .npy"},
    {"complete", dsv4::RunComplete, "greedy generation from token ids on the local machine"},
    {"bench", dsv4::RunBench, "throughput as ratios to limits measured in the same run (bench comm, ...)"},
    {"plan", dsv4::RunPlan, "capacity planning: devices, layout, latency and cost for a scenario"},
    {"engram-ids", dsv4::RunEngramIds, "the Engram table rows each token's n-gram hash selects, one JSON array per line"},
    {"tokenize", dsv4::RunTokenize, "token ids of each line of a text file, one JSON array per line"},
    {"serve", dsv4::RunServe, "serve the model over gRPC (inference endpoint, health, control plane)"},
    {"generate", dsv4::RunGenerate, "send one request to a running server and print the text as it streams"},
    {"ctl", dsv4::RunCtl, "a running server's control plane: status, drain, shutdown"},
};

void Usage() {
  std::fprintf(stderr, "usage: dsv4 <command> [flags]\ncommands:\n");
  for (const auto& c : kCommands) std::fprintf(stderr, "  %-10s %s\n", c.name, c.help);
  std::fprintf(stderr, "Run `dsv4 <command> --help` for its flags.\nEnvironment:\n%s", dsv4::env::Help().c_str());
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    Usage();
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  if (absl::Status st = dsv4::env::CheckAll(); !st.ok()) {
    std::fprintf(stderr, "dsv4: %s\n", std::string(st.message()).c_str());
    return 2;
  }
  for (const std::string& name : dsv4::env::UnknownVariables())
    DSV4_LOG(kWarn, name, " is set but is not a dsv4 setting (`dsv4 --help` lists them)");
  // Under mpirun every rank joins the MPI world before anything else.
  std::unique_ptr<dsv4::MpiSession> mpi;
  if (dsv4::LaunchedByMpirun()) mpi = std::make_unique<dsv4::MpiSession>(&argc, &argv);
  for (const auto& c : kCommands)
    if (cmd == c.name) return c.run(argc, argv);
  std::fprintf(stderr, "dsv4: unknown command '%s'\n", cmd.c_str());
  Usage();
  return 2;
}
