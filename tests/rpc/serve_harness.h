// Runs `dsv4 serve` as a child process for end-to-end tests: alone, or under mpirun when
// DSV4_SERVE_NP is set (> 1), with the flags of DSV4_SERVE_ARGS (a layout, e.g. "--tp 2") added. Servers bind 127.0.0.1 on a free port, read back from --info-file.
// Every wait is bounded; the destructor kills whatever is left (the whole process group).
#pragma once

#include <sys/types.h>

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace dsv4::testing {

class ServeProcess {
 public:
  // Starts `dsv4 serve --port 0 --info-file ... <args>` (with `np` ranks under mpirun when np > 1)
  // and waits for the info file (the server listens before it loads).
  // `wrapper` (e.g. {"/usr/bin/prlimit", "--nofile=256:256", "--"}) runs the whole job under it.
  static absl::StatusOr<std::unique_ptr<ServeProcess>> Start(const std::vector<std::string>& args, int np,
                                                             absl::Duration timeout = absl::Seconds(60),
                                                             const std::vector<std::string>& wrapper = {});
  ~ServeProcess();

  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  int port() const { return port_; }
  // The HTTP gateway's port (with --http-port), else -1.
  int http_port() const { return http_port_; }
  const std::string& control() const { return control_; }
  const std::string& info_file() const { return info_file_; }
  pid_t leader_pid() const { return leader_pid_; }
  // Sends `sig` to the leader (rank 0) process.
  void SignalLeader(int sig) const;
  // Waits for the child (dsv4, or mpirun) to exit: its exit status (128 + signal when killed), or
  // -1 after `timeout` (then the process group is killed).
  int Wait(absl::Duration timeout);
  bool exited() const { return exited_; }
  // Everything the job printed so far.
  std::string Log() const;

 private:
  ServeProcess() = default;
  pid_t child_ = -1;
  pid_t leader_pid_ = -1;
  int port_ = 0;
  int http_port_ = -1;
  std::string control_;
  std::string info_file_;
  std::string log_path_;
  bool exited_ = false;
  int status_ = -1;
};

// The number of ranks the e2e tests run the server with (DSV4_SERVE_NP, default 1).
int ServeRanks();

}  // namespace dsv4::testing
