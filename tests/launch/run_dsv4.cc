#include "tests/launch/run_dsv4.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>
#include <thread>

#include "base/file.h"
#include "tests/testutil.h"

extern char** environ;

namespace dsv4::testing {

const char* Dsv4Binary() { return DSV4_BINARY; }

RunResult RunDsv4(const std::vector<std::string>& args, const RunOptions& options) {
  std::vector<std::string> argv = {DSV4_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  return RunCommand(std::move(argv), options);
}

RunResult RunCommand(std::vector<std::string> argv, const RunOptions& options) {
  const std::string dir = TempDir();
  const std::string out_path = dir + "/stdout", err_path = dir + "/stderr";
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    const std::string entry = *e;
    if (!options.env.count(entry.substr(0, entry.find('=')))) env_strings.push_back(entry);
  }
  for (const auto& [k, v] : options.env) env_strings.push_back(k + "=" + v);
  // Everything the child touches is prepared here: after fork only async-signal-safe calls.
  std::vector<char*> cargv, cenv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);
  for (auto& e : env_strings) cenv.push_back(e.data());
  cenv.push_back(nullptr);
  const int out_fd = open(out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int err_fd = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  const int null_fd = open("/dev/null", O_RDONLY | O_CLOEXEC);

  const pid_t pid = fork();
  if (pid == 0) {
    setpgid(0, 0);  // its own process group: a timeout kills all of it
    dup2(null_fd, 0), dup2(out_fd, 1), dup2(err_fd, 2);
    for (const auto& [resource, value] : options.limits) {
      const struct rlimit lim = {value, value};
      if (setrlimit(resource, &lim) != 0) _exit(200);
    }
    for (int sig : options.ignore_signals) signal(sig, SIG_IGN);
    if (!options.cwd.empty() && chdir(options.cwd.c_str()) != 0) _exit(201);
    if (options.uid != static_cast<uid_t>(-1) && (setgid(options.uid) != 0 || setuid(options.uid) != 0)) _exit(202);
    execve(cargv[0], cargv.data(), cenv.data());
    _exit(203);
  }
  close(out_fd), close(err_fd), close(null_fd);
  RunResult r;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(options.timeout_s);
  int status = 0;
  for (;;) {
    const pid_t w = waitpid(pid, &status, WNOHANG);
    if (w == pid) {
      r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      break;
    }
    if (std::chrono::steady_clock::now() > deadline) {
      kill(-pid, SIGKILL);
      waitpid(pid, &status, 0);
      r.exit_code = -1;
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  r.out = ReadFile(out_path).value_or("");
  r.err = ReadFile(err_path).value_or("");
  return r;
}

}  // namespace dsv4::testing
