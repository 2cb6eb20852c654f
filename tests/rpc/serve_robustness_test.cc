// `dsv4 serve` against a careless or hostile environment (issue 18, findings 1, 2, 8, 10, 11): a
// process that runs out of file descriptors, a second server on a taken port, weights that
// compute NaN, a client pointed at the wrong port, and the info file that must go away with the
// job. One rank (DSV4_SERVE_NP for mpirun), 127.0.0.1 only; every wait is bounded.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "rpc/client.h"
#include "tests/launch/run_dsv4.h"
#include "tests/rpc/serve_harness.h"
#include "tests/testutil.h"

namespace dsv4 {
namespace {

using grpc::health::v1::HealthCheckResponse;
using testing::ServeProcess;

constexpr const char* kPrlimit = "/usr/bin/prlimit";

v1::GenerateRequest TokenRequest(std::vector<int32_t> ids, int max_tokens = 4) {
  v1::GenerateRequest r;
  r.mutable_tokens()->mutable_ids()->Add(ids.begin(), ids.end());
  r.mutable_sampling()->set_max_tokens(max_tokens);
  r.mutable_sampling()->set_temperature(0);
  return r;
}

// A fresh client (a new connection), its Generate's status and token count.
struct Reply {
  absl::Status status;
  int tokens = 0;
};
Reply FreshGenerate(const std::string& address, const v1::GenerateRequest& req, absl::Duration timeout) {
  Reply reply;
  auto c = InferenceClient::Connect(address, {});
  if (!c.ok()) return {c.status(), 0};
  reply.status = (*c)->Generate(
      req, [&](const v1::GenerateResponse& m) { reply.tokens += m.token_ids_size(); }, timeout);
  return reply;
}

std::vector<std::string> TinyArgs() { return {"--model", "builtin:v4-tiny", "--threads", "1", "--cache-mb", "256"}; }

// Finding 1: with 256 descriptors (soft = hard, so the server cannot raise it), 300 idle
// connections used to make gRPC's listener fail accept4 with EMFILE and never accept again: every
// later request ended DEADLINE_EXCEEDED while health said SERVING. Now connections beyond the cap
// are closed at once, and after the storm the port serves.
TEST(ServeFinding1, ADescriptorStormLeavesThePortServing) {
  if (access(kPrlimit, X_OK) != 0) GTEST_SKIP() << kPrlimit << " is missing";
  auto p = ServeProcess::Start(TinyArgs(), testing::ServeRanks(), absl::Seconds(60),
                               {kPrlimit, "--nofile=256:256", "--"});
  ASSERT_TRUE(p.ok()) << p.status();
  auto client = InferenceClient::Connect((*p)->address(), {});
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->WaitForServing(absl::Seconds(240)).ok()) << (*p)->Log();

  std::vector<int> idle;
  for (int i = 0; i < 300; ++i)
    if (const int fd = testing::ConnectLoopback((*p)->port()); fd >= 0) idle.push_back(fd);
  EXPECT_EQ(idle.size(), 300u);
  // While they are held, the connection that was open before keeps working.
  auto during = (*client)->Health("", absl::Seconds(10));
  ASSERT_TRUE(during.ok()) << during.status();
  EXPECT_EQ(*during, HealthCheckResponse::SERVING);
  for (int fd : idle) close(fd);

  // New connections are served again (the server sees the closes within moments).
  Reply r;
  for (int attempt = 0; attempt < 20; ++attempt) {
    r = FreshGenerate((*p)->address(), TokenRequest({0, 100, 200}), absl::Seconds(20));
    if (r.status.ok()) break;
    absl::SleepFor(absl::Milliseconds(250));
  }
  EXPECT_TRUE(r.status.ok()) << r.status << "\n" << (*p)->Log();
  EXPECT_EQ(r.tokens, 4);
  const std::string log = (*p)->Log();
  EXPECT_NE(log.find("at most 128 inference connections (open-files limit 256)"), std::string::npos) << log;
  EXPECT_EQ(log.find("Failed accept4"), std::string::npos) << log;
}

// At start the open-files soft limit is raised to the hard limit.
TEST(ServeFinding1, TheOpenFilesLimitIsRaised) {
  if (access(kPrlimit, X_OK) != 0) GTEST_SKIP() << kPrlimit << " is missing";
  auto p = ServeProcess::Start(TinyArgs(), 1, absl::Seconds(60), {kPrlimit, "--nofile=256:4096", "--"});
  ASSERT_TRUE(p.ok()) << p.status();
  std::ifstream limits(absl::StrCat("/proc/", (*p)->leader_pid(), "/limits"));
  std::string line;
  bool found = false;
  while (std::getline(limits, line))
    if (line.rfind("Max open files", 0) == 0) {
      found = true;
      EXPECT_NE(line.find("4096                 4096"), std::string::npos) << line;
    }
  EXPECT_TRUE(found);
}

// Finding 2: a second server on the same port started without error and took a share of the
// traffic (SO_REUSEPORT). Now it exits non-zero naming the port, and the first keeps it all.
TEST(ServeFinding2, ASecondServerOnATakenPortFails) {
  auto first = ServeProcess::Start(TinyArgs(), 1);
  ASSERT_TRUE(first.ok()) << first.status();
  std::vector<std::string> args = TinyArgs();
  args.insert(args.end(), {"--port", std::to_string((*first)->port())});
  auto second = ServeProcess::Start(args, 1);
  ASSERT_FALSE(second.ok()) << "a second server listens on port " << (*first)->port();
  EXPECT_NE(second.status().message().find(absl::StrCat("127.0.0.1:", (*first)->port())), std::string::npos)
      << second.status();
  EXPECT_NE(second.status().message().find("in use by another process"), std::string::npos) << second.status();
  // The control plane's port likewise.
  const std::string control = (*first)->control();
  args = TinyArgs();
  args.insert(args.end(), {"--control-port", control.substr(control.rfind(':') + 1)});
  auto third = ServeProcess::Start(args, 1);
  ASSERT_FALSE(third.ok());
  EXPECT_NE(third.status().message().find("the control plane"), std::string::npos) << third.status();
  EXPECT_NE(third.status().message().find("in use by another process"), std::string::npos) << third.status();
}

// Finding 8 in serve: a request whose tokens meet a NaN (here: one row of the embedding) ends with
// an error naming the layer; the same server answers other requests as before.
TEST(ServeFinding8, NonFiniteValuesEndTheRequestNotTheServer) {
  const int64_t D = testing::TinyConfig()["hidden_size"].get<int64_t>();
  const std::string model = testing::WriteModelDir(testing::TinyConfig(), 1, [&](TensorToWrite& t) {
    if (t.name != "embed.weight") return;
    for (int64_t i = 0; i < D; ++i) t.bytes[2 * (7 * D + i)] = 0xc0, t.bytes[2 * (7 * D + i) + 1] = 0x7f;  // row 7
  });
  auto p = ServeProcess::Start({"--model", model, "--threads", "1", "--cache-mb", "64", "--max-model-len", "256"},
                               testing::ServeRanks());
  ASSERT_TRUE(p.ok()) << p.status();
  auto c = InferenceClient::Connect((*p)->address(), {});
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->WaitForServing(absl::Seconds(240)).ok()) << (*p)->Log();
  int tokens = 0;
  const absl::Status bad = (*c)->Generate(
      TokenRequest({0, 5, 7, 9}), [&](const v1::GenerateResponse& m) { tokens += m.token_ids_size(); },
      absl::Seconds(60));
  EXPECT_TRUE(absl::IsDataLoss(bad)) << bad;
  EXPECT_NE(bad.message().find("after layer 0"), std::string::npos) << bad;
  EXPECT_EQ(tokens, 0);  // never a sampled token from NaN logits
  Reply good = FreshGenerate((*p)->address(), TokenRequest({0, 5, 8, 9}), absl::Seconds(60));
  EXPECT_TRUE(good.status.ok()) << good.status;
  EXPECT_EQ(good.tokens, 4);
  auto info = (*c)->ServerInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->state(), v1::SERVER_STATE_SERVING);
  EXPECT_EQ(info->requests_failed(), 1);
}

// Weights that compute NaN for every input fail the warm-up: the job exits non-zero naming the
// layer instead of serving token 0 for ever.
TEST(ServeFinding8, NanWeightsFailTheWarmUp) {
  const std::string model = testing::WriteModelDir(testing::TinyConfig(), 1, [](TensorToWrite& t) {
    if (t.name == "layers.1.attn_norm.weight") t.bytes[0] = 0xc0, t.bytes[1] = 0x7f;
  });
  auto p = ServeProcess::Start({"--model", model, "--threads", "1", "--cache-mb", "64", "--max-model-len", "256"},
                               testing::ServeRanks());
  ASSERT_TRUE(p.ok()) << p.status();
  const int code = (*p)->Wait(absl::Seconds(240));
  EXPECT_NE(code, 0);
  EXPECT_NE(code, -1) << "still running";
  const std::string log = (*p)->Log();
  EXPECT_NE(log.find("the warm-up request failed"), std::string::npos) << log;
  EXPECT_NE(log.find("after layer 1"), std::string::npos) << log;
  EXPECT_FALSE(std::filesystem::exists((*p)->info_file()));
}

// Finding 10: a client pointed at the control plane's port got "dsv4: " and nothing else.
// Finding 11: the info file stayed behind after the job ended.
TEST(ServeFinding10, TheWrongPortIsNamedAndTheInfoFileGoesWithTheJob) {
  auto p = ServeProcess::Start(TinyArgs(), 1);
  ASSERT_TRUE(p.ok()) << p.status();
  auto c = InferenceClient::Connect((*p)->address(), {});
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->WaitForServing(absl::Seconds(240)).ok()) << (*p)->Log();
  const testing::RunResult r =
      testing::RunDsv4({"generate", "--server", (*p)->control(), "--prompt-ids", "1,2", "--timeout-s", "20"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_NE(r.err.find(absl::StrCat("the server at ", (*p)->control(), " does not serve dsv4.v1.Inference")),
            std::string::npos)
      << r.err;
  const testing::RunResult ctl = testing::RunDsv4({"ctl", "status", "--server", (*p)->address()});
  EXPECT_NE(ctl.err.find("does not serve dsv4.v1.ControlPlane"), std::string::npos) << ctl.err;

  ASSERT_TRUE(std::filesystem::exists((*p)->info_file()));
  (*p)->SignalLeader(SIGTERM);
  EXPECT_EQ((*p)->Wait(absl::Seconds(60)), 0) << (*p)->Log();
  EXPECT_FALSE(std::filesystem::exists((*p)->info_file()));
}

TEST(ServeFinding11, TheInfoFileGoesWithAJobEndedAtOnce) {
  auto p = ServeProcess::Start(TinyArgs(), 1);
  ASSERT_TRUE(p.ok()) << p.status();
  auto c = InferenceClient::Connect((*p)->address(), {});
  ASSERT_TRUE(c.ok());
  ASSERT_TRUE((*c)->WaitForServing(absl::Seconds(240)).ok()) << (*p)->Log();
  ASSERT_TRUE(std::filesystem::exists((*p)->info_file()));
  // A long request keeps the drain of the first signal going; the second ends the job at once.
  std::thread gen([&] {
    v1::GenerateRequest r = TokenRequest({0, 100, 200}, 4000);
    r.mutable_sampling()->set_ignore_eos(true);
    (void)(*c)->Generate(r, nullptr, absl::Seconds(120));
  });
  absl::SleepFor(absl::Seconds(1));
  (*p)->SignalLeader(SIGTERM);
  for (int i = 0; i < 200 && (*p)->Log().find("draining") == std::string::npos; ++i) absl::SleepFor(absl::Milliseconds(50));
  (*p)->SignalLeader(SIGTERM);
  EXPECT_EQ((*p)->Wait(absl::Seconds(60)), 1) << (*p)->Log();
  EXPECT_FALSE(std::filesystem::exists((*p)->info_file()));
  gen.join();
}

}  // namespace
}  // namespace dsv4
