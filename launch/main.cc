// `dsv4`: the command-line entry point. The subcommands and their flags are a stable contract
// (DESIGN.md, "The dsv4 command").
#include <cstdio>
#include <cstring>
#include <string>

#include "launch/commands.h"

namespace {

void Usage() {
  std::fprintf(stderr,
               "usage: dsv4 <command> [flags]\n"
               "commands:\n"
               "  logits    last-position logits after a prompt and each decode step, as .npy\n"
               "  complete  greedy generation from token ids on the local machine\n"
               "Run `dsv4 <command> --help` for its flags.\n");
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2 || !std::strcmp(argv[1], "--help") || !std::strcmp(argv[1], "-h")) {
    Usage();
    return argc < 2 ? 2 : 0;
  }
  const std::string cmd = argv[1];
  if (cmd == "logits") return dsv4::RunLogits(argc, argv);
  if (cmd == "complete") return dsv4::RunComplete(argc, argv);
  std::fprintf(stderr, "dsv4: unknown command '%s'\n", cmd.c_str());
  Usage();
  return 2;
}
