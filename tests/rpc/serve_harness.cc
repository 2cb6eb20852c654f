#include "tests/rpc/serve_harness.h"

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <mutex>
#include <set>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "base/env.h"
#include "base/file.h"
#include "nlohmann/json.hpp"
#include "tests/testutil.h"

extern char** environ;

namespace dsv4::testing {

int ServeRanks() { return static_cast<int>(env::Int(env::Knob::kServeNp)); }

namespace {

// Every server process group still running. Tests that keep one server for all their cases hold it
// in a never-destroyed static; at exit the test binary kills what is left, so no server outlives
// the test that started it.
std::mutex live_mu;
std::set<pid_t>& Live() {
  static auto* live = new std::set<pid_t>;
  return *live;
}

void KillLive() {
  std::lock_guard<std::mutex> l(live_mu);
  for (pid_t group : Live()) {
    kill(-group, SIGKILL);
    int status;
    waitpid(group, &status, 0);
  }
  Live().clear();
}

void Track(pid_t child) {
  std::lock_guard<std::mutex> l(live_mu);
  static const bool registered = std::atexit(KillLive) == 0;
  (void)registered;
  Live().insert(child);
}

void Untrack(pid_t child) {
  std::lock_guard<std::mutex> l(live_mu);
  Live().erase(child);
}

}  // namespace

absl::StatusOr<std::unique_ptr<ServeProcess>> ServeProcess::Start(const std::vector<std::string>& args, int np,
                                                                  absl::Duration timeout,
                                                                  const std::vector<std::string>& wrapper) {
  static int counter = 0;
  std::unique_ptr<ServeProcess> p(new ServeProcess());
  const std::string dir = TempDir();
  const std::string info = absl::StrCat(dir, "/serve-", getpid(), "-", counter, ".json");
  p->log_path_ = absl::StrCat(dir, "/serve-", getpid(), "-", counter++, ".log");
  p->info_file_ = info;
  std::vector<std::string> argv = wrapper;
  if (np > 1) {
    for (const std::string& a : {std::string(DSV4_MPIEXEC), std::string("--oversubscribe"), std::string("-np"),
                                 std::to_string(np)})
      argv.push_back(a);
  }
  for (const std::string& a : {std::string(DSV4_BINARY), std::string("serve"), std::string("--port"), std::string("0"),
                               std::string("--info-file"), info})
    argv.push_back(a);
  argv.insert(argv.end(), args.begin(), args.end());
  // The layout under test (DSV4_SERVE_ARGS, e.g. "--tp 2"), after the test's own flags.
  for (absl::string_view a : absl::StrSplit(env::Str(env::Knob::kServeArgs), ' ', absl::SkipEmpty()))
    argv.emplace_back(a);
  std::vector<char*> cargv;
  for (auto& a : argv) cargv.push_back(a.data());
  cargv.push_back(nullptr);

  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, p->log_path_.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETPGROUP);
  posix_spawnattr_setpgroup(&attr, 0);  // its own process group: the destructor kills all of it
  const int rc = posix_spawn(&p->child_, cargv[0], &fa, &attr, cargv.data(), environ);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&attr);
  if (rc != 0) return absl::InternalError(absl::StrCat("posix_spawn ", cargv[0], " failed: ", rc));
  Track(p->child_);

  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    std::ifstream f(info);
    if (f) {
      try {
        const nlohmann::json j = nlohmann::json::parse(f);
        p->port_ = j.at("port").get<int>();
        p->http_port_ = j.value("http_port", -1);
        p->control_ = j.at("control").get<std::string>();
        p->leader_pid_ = j.at("pid").get<int>();
        return p;
      } catch (const std::exception&) {
        // Not complete yet (it is written by rename, so this is unlikely); read again.
      }
    }
    int status;
    if (waitpid(p->child_, &status, WNOHANG) == p->child_) {
      p->exited_ = true;
      Untrack(p->child_);
      return absl::InternalError(absl::StrCat("dsv4 serve exited before listening:\n", p->Log()));
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  return absl::DeadlineExceededError(absl::StrCat("dsv4 serve did not write ", info, " in time:\n", p->Log()));
}

ServeProcess::~ServeProcess() {
  if (child_ > 0 && !exited_) {
    kill(-child_, SIGKILL);
    int status;
    waitpid(child_, &status, 0);
  }
  if (child_ > 0) Untrack(child_);
}

void ServeProcess::SignalLeader(int sig) const {
  if (leader_pid_ > 0) kill(leader_pid_, sig);
}

int ServeProcess::Wait(absl::Duration timeout) {
  if (exited_) return status_;
  const absl::Time deadline = absl::Now() + timeout;
  while (absl::Now() < deadline) {
    int status;
    if (waitpid(child_, &status, WNOHANG) == child_) {
      exited_ = true;
      Untrack(child_);  // reaped: its id may be reused
      status_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return status_;
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
  kill(-child_, SIGKILL);
  int status;
  waitpid(child_, &status, 0);
  exited_ = true;
  Untrack(child_);
  status_ = -1;
  return -1;
}

std::string ServeProcess::Log() const { return ReadFile(log_path_).value_or(""); }

}  // namespace dsv4::testing
