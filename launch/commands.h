// The `dsv4` subcommands. Each returns the process exit code and prints its own errors.
#pragma once

namespace dsv4 {

int RunLogits(int argc, char** argv);
int RunComplete(int argc, char** argv);
int RunBench(int argc, char** argv);
int BenchEngram(int argc, char** argv);  // dsv4 bench engram
int RunPlan(int argc, char** argv);
int RunEngramIds(int argc, char** argv);
int RunTokenize(int argc, char** argv);
int RunServe(int argc, char** argv);
int RunGenerate(int argc, char** argv);
int RunCtl(int argc, char** argv);
// `dsv4 bench serve` (bench_serve.cc).
int BenchServe(int argc, char** argv);

}  // namespace dsv4
