// Runs the dsv4 binary as a careless or hostile user would: any arguments, environment, process
// limits or user, with stdout and stderr captured and every run bounded in time.
#pragma once

#include <sys/resource.h>
#include <sys/types.h>

#include <map>
#include <string>
#include <utility>
#include <vector>

namespace dsv4::testing {

struct RunOptions {
  std::map<std::string, std::string> env;             // added to (or replacing) the test's environment
  std::vector<std::pair<int, rlim_t>> limits;         // (RLIMIT_*, soft and hard value) set in the child
  std::vector<int> ignore_signals;                    // set to SIG_IGN in the child (e.g. SIGXFSZ)
  uid_t uid = static_cast<uid_t>(-1);                 // run as this user (needs root), else as the test
  std::string cwd;                                    // "" = the test's
  int timeout_s = 300;                                // then killed (exit_code -1)
};

struct RunResult {
  int exit_code = -1;  // 128 + signal when killed by one; -1 after the timeout
  std::string out, err;
};

// Runs `DSV4_BINARY args...`.
RunResult RunDsv4(const std::vector<std::string>& args, const RunOptions& options = {});
// Runs any command (argv[0] an absolute path), e.g. mpirun with dsv4 in several app contexts.
RunResult RunCommand(std::vector<std::string> argv, const RunOptions& options = {});
// The dsv4 binary under test.
const char* Dsv4Binary();

}  // namespace dsv4::testing
