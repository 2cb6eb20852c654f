// The `dsv4` subcommands. Each returns the process exit code and prints its own errors.
#pragma once

namespace dsv4 {

int RunLogits(int argc, char** argv);
int RunComplete(int argc, char** argv);
int RunBench(int argc, char** argv);
int RunPlan(int argc, char** argv);
int RunEngramIds(int argc, char** argv);
int RunTokenize(int argc, char** argv);

}  // namespace dsv4
