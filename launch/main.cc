// `dsv4`: the command-line entry point. The subcommands and their flags are a stable contract
// (DESIGN.md, "The dsv4 command"). This file is the table of subcommands and the one path every
// command takes: environment check, help, flag parsing, running, and reporting a failure.
#include <cstdio>
#include <cstring>
#include <memory>
#include <span>
#include <string>

#include "absl/strings/str_cat.h"
#include "base/env.h"
#include "base/log.h"
#include "bench/commands.h"
#include "kernels/cpu/isa.h"
#include "launch/commands.h"
#include "parallel/communicator.h"

namespace dsv4 {
namespace {

constexpr Command kBenchCommands[] = {
    {"comm", "MoE dispatch + combine against raw MPI_Alltoallv (run under mpirun)", bench::CommFlags, bench::Comm},
    {"engram", "Engram decode steps, tables sharded vs whole on every rank (run under mpirun -np 2)",
     bench::EngramFlags, bench::Engram},
    {"decode", "CPU decode tokens/s and GB/s against STREAM triad (default builtin:v4-bench)", bench::DecodeFlags,
     bench::Decode},
    {"prefill", "CPU prefill tokens/s and GFLOP/s against the peak of its arithmetic (default builtin:v4-bench)",
     bench::PrefillFlags, bench::Prefill},
    {"serve", "N concurrent gRPC streams against the engine in-process and the batched decode rate", bench::ServeFlags,
     bench::Serve},
    {"sample", "the per-token sampler on one thread against one read pass over the same logits", bench::SampleFlags,
     bench::Sample},
    {"kernels", "every CUDA kernel at V4-Flash / V4-Pro shapes against the device copy bandwidth",
     bench::KernelsFlags, bench::Kernels},
};

constexpr Command kCtlCommands[] = {
    {"status", "every rank's state, step and per-expert load, as JSON", CtlFlags, CtlStatus},
    {"drain", "stop admitting, let in-flight requests finish (--grace-s), then stop the job", CtlFlags, CtlDrain},
    {"shutdown", "stop the job now", CtlFlags, CtlShutdown},
    {"rebalance", "re-place the experts from the routed load (EPLB) and switch every rank at the next step",
     CtlFlags, CtlRebalance},
    {"placement", "the expert placement the job runs, as a placement file", CtlFlags, CtlPlacement},
};

// Every subcommand, in the order `dsv4 --help` lists them.
constexpr Command kCommands[] = {
    {"logits", "last-position logits after a prompt and each decode step, as .npy", LogitsFlags, Logits},
    {"complete", "greedy generation from token ids on the local machine", CompleteFlags, Complete},
    {"bench", "throughput as ratios to limits measured in the same run", nullptr, nullptr, kBenchCommands},
    {"plan", "capacity planning: devices, layout, latency and cost for a scenario", PlanFlags, Plan},
    {"engram-ids", "the Engram table rows each token's n-gram hash selects, one JSON array per line", EngramIdsFlags,
     EngramIds},
    {"tokenize", "token ids of each line of a text file, one JSON array per line", TokenizeFlags, Tokenize},
    {"serve", "serve the model over gRPC (inference endpoint, health, control plane)", ServeFlags, Serve},
    {"generate", "send one request to a running server and print the text as it streams", GenerateFlags, Generate},
    {"ctl", "a running server's control plane", nullptr, nullptr, kCtlCommands},
};

bool IsHelp(const char* arg) { return !std::strcmp(arg, "--help") || !std::strcmp(arg, "-h"); }

void ListCommands(const std::string& prefix, std::span<const Command> commands) {
  std::fprintf(stderr, "usage: dsv4 %s<command> [flags]\ncommands:\n", prefix.c_str());
  for (const Command& c : commands) std::fprintf(stderr, "  %-10s %s\n", c.name, c.summary);
  std::fprintf(stderr, "Run `dsv4 %s<command> --help` for its flags.\n", prefix.c_str());
}

// The flags every command takes.
void AddCommonFlags(Flags& flags) {
  flags.String("log-level", "", "trace, debug, info, warn, error or off (default: DSV4_LOG_LEVEL, else info)");
}

// Prints "dsv4: <message>" (with the rank under mpirun) and returns the exit code: 2 for bad
// arguments, 1 otherwise. Under mpirun the whole job is ended instead, so no peer waits forever.
int Fail(const absl::Status& status) {
  const int code = status.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
  const std::string message(status.message().empty() ? absl::StatusCodeToString(status.code()) : status.message());
  if (LaunchedByMpirun()) {
    std::fprintf(stderr, "dsv4 (rank %d): %s\n", LauncherWorld().rank, message.c_str());
    std::fflush(stderr);
    MpiSession::AbortJob(code);
  }
  std::fprintf(stderr, "dsv4: %s\n", message.c_str());
  return code;
}

int Main(int argc, char** argv) {
  if (argc < 2 || IsHelp(argv[1])) {
    ListCommands("", kCommands);
    std::fprintf(stderr, "Environment:\n%s", env::Help().c_str());
    return argc < 2 ? 2 : 0;
  }
  if (absl::Status st = env::CheckAll(); !st.ok()) return Fail(st);
  for (const std::string& name : env::UnknownVariables())
    DSV4_LOG(kWarn, name, " is set but is not a dsv4 setting (`dsv4 --help` lists them)");

  // The command, and its subcommand where it has them (`dsv4 bench decode ...`).
  std::span<const Command> table = kCommands;
  std::string path;
  int first = 1;
  const Command* cmd = nullptr;
  while (cmd == nullptr || !cmd->subcommands.empty()) {
    if (cmd != nullptr) table = cmd->subcommands;
    if (first >= argc || IsHelp(argv[first]) || argv[first][0] == '-') {
      ListCommands(path, table);
      return first < argc && IsHelp(argv[first]) ? 0 : 2;
    }
    const Command* found = nullptr;
    for (const Command& c : table)
      if (!std::strcmp(argv[first], c.name)) found = &c;
    if (found == nullptr) {
      std::fprintf(stderr, "dsv4: unknown command '%s%s'\n", path.c_str(), argv[first]);
      ListCommands(path, table);
      return 2;
    }
    cmd = found;
    path += std::string(cmd->name) + " ";
    ++first;
  }

  Flags flags;
  cmd->flags(flags);
  AddCommonFlags(flags);
  for (int i = first; i < argc; ++i) {
    if (IsHelp(argv[i])) {
      std::printf("usage: dsv4 %s[flags]\n%s\n%s", path.c_str(), cmd->summary, flags.Help().c_str());
      return 0;
    }
  }
  if (absl::Status st = flags.Parse(argc, argv, first); !st.ok()) return Fail(st);
  if (absl::Status st = log::SetLevel(flags.GetString("log-level")); !st.ok())
    return Fail(absl::InvalidArgumentError(absl::StrCat("--log-level: ", st.message())));
  if (absl::Status st = cmd->run(flags); !st.ok()) return Fail(st);
  return 0;
}

}  // namespace
}  // namespace dsv4

int main(int argc, char** argv) {
  // Flush-to-zero and denormals-are-zero before any thread starts, so every thread inherits them
  // (kernels/cpu/isa.h: subnormal operands stall Intel cores).
  dsv4::kernels::SetFlushDenormals();
  // Under mpirun every rank joins the MPI world before anything else.
  std::unique_ptr<dsv4::MpiSession> mpi;
  if (dsv4::LaunchedByMpirun()) mpi = std::make_unique<dsv4::MpiSession>(&argc, &argv);
  // Errors are statuses; an exception reaching here (a library's, or std::system_error when the
  // system refuses a thread) is still reported as one line and a non-zero exit, never an abort.
  try {
    return dsv4::Main(argc, argv);
  } catch (const std::exception& e) {
    return dsv4::Fail(absl::InternalError(absl::StrCat("unexpected error: ", e.what())));
  }
}
