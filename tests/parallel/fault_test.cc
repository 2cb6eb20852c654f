// A rank killed (SIGKILL) or stopped (SIGSTOP) in the middle of a job: every other rank must fail
// within the collective timeout with a message naming the collective, and mpirun must exit
// non-zero. Nothing may hang: each run is bounded by `timeout`.
#include <gtest/gtest.h>

#include <array>
#include <chrono>
#include <cstdio>
#include <string>

#include "absl/strings/str_cat.h"
#include "tests/testutil.h"

namespace dsv4 {
namespace {

struct JobResult {
  int exit_code;
  double seconds;
  std::string output;
};

JobResult RunJob(const std::string& fault, int np, const std::string& extra) {
  const std::string out = testing::TempDir() + "/logits.npy";
  const std::string cmd = absl::StrCat(
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 DSV4_FAULT_INJECT=", fault, " timeout -s KILL 150 ",
      DSV4_MPIEXEC, " --oversubscribe -np ", np, " ", DSV4_BINARY,
      " logits --model builtin:v4-tiny --prompt-ids 1,2,3,4,5 --decode-ids 6,7,8,9,10,11 --threads 1"
      " --comm-timeout-s 10 --out ",
      out, " ", extra, " 2>&1");
  const auto t0 = std::chrono::steady_clock::now();
  FILE* p = popen(cmd.c_str(), "r");
  JobResult r{-1, 0, ""};
  if (p == nullptr) return r;
  std::array<char, 4096> buf;
  while (fgets(buf.data(), buf.size(), p)) r.output += buf.data();
  const int status = pclose(p);
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  return r;
}

TEST(Fault, HealthyJobSucceeds) {
  const JobResult r = RunJob("", 2, "--ep 2");
  EXPECT_EQ(r.exit_code, 0) << r.output;
}

// A stopped rank never answers: its peers' collective times out after 10 s and names what it was.
TEST(Fault, StoppedRankFailsTheJobWithinTheTimeout) {
  const JobResult r = RunJob("1:3:STOP", 2, "--ep 2");
  EXPECT_NE(r.exit_code, 0) << r.output;
  EXPECT_LT(r.seconds, 120) << "the job ran into the test's own 150 s limit: it hung\n" << r.output;
  EXPECT_NE(r.output.find("did not arrive within 10 s"), std::string::npos) << r.output;
  const bool named = r.output.find("AllToAllV") != std::string::npos ||
                     r.output.find("AllReduce") != std::string::npos ||
                     r.output.find("Broadcast") != std::string::npos || r.output.find("AllGather") != std::string::npos ||
                     r.output.find("MoE dispatch") != std::string::npos || r.output.find("MoE combine") != std::string::npos;
  EXPECT_TRUE(named) << r.output;
}

// A killed rank: mpirun notices and ends the job, or the peers time out; either way non-zero, fast.
TEST(Fault, KilledRankFailsTheJob) {
  const JobResult r = RunJob("2:3:KILL", 4, "--tp 2 --ep 4");
  EXPECT_NE(r.exit_code, 0) << r.output;
  // mpirun reports the victim's signal as its own status (137), so a hang shows in the time only:
  // the test's own limit is 150 s.
  EXPECT_LT(r.seconds, 120) << r.output;
}

}  // namespace
}  // namespace dsv4
