// Faults of a `dsv4 serve` job under mpirun (2 ranks), rows DF-04 to DF-06 of
// ecosystem_reliability.md: a worker killed (SIGKILL) or stopped (SIGSTOP) mid-generation, and the
// leader killed. The client must get UNAVAILABLE within 10 s, health must turn NOT_SERVING, and
// mpirun must exit non-zero — never hang (every wait here is bounded).
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "rpc/client.h"
#include "tests/rpc/serve_harness.h"

namespace dsv4 {
namespace {

using grpc::health::v1::HealthCheckResponse;
using testing::ServeProcess;

struct Job {
  std::unique_ptr<ServeProcess> server;
  std::unique_ptr<InferenceClient> client;
};

Job StartJob(std::vector<std::string> extra = {}) {
  std::vector<std::string> args = {
      "--model", "builtin:v4-tiny",  "--threads", "1", "--max-model-len", "4096", "--cache-mb",
      "256",     "--comm-timeout-s", "30"};
  args.insert(args.end(), extra.begin(), extra.end());
  Job job;
  auto p = ServeProcess::Start(args, 2);
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return job;
  job.server = std::move(*p);
  auto c = InferenceClient::Connect(job.server->address(), {});
  EXPECT_TRUE(c.ok());
  job.client = std::move(*c);
  const absl::Status st = job.client->WaitForServing(absl::Seconds(240));
  EXPECT_TRUE(st.ok()) << st << "\n" << job.server->Log();
  if (!st.ok()) job.client.reset();
  return job;
}

int64_t WorkerPid(const Job& job) {
  auto control = ControlClient::Connect(job.server->control(), {});
  if (!control.ok()) return -1;
  auto s = (*control)->Status();
  if (!s.ok()) return -1;
  for (const auto& r : s->ranks())
    if (r.rank() == 1) return r.pid();
  return -1;
}

// A long generation running on its own thread, and a health Watch running on another.
struct Observed {
  absl::Mutex mu;
  int messages = 0;
  absl::Status status;
  bool done = false;
  absl::Time ended;
  std::vector<HealthCheckResponse::ServingStatus> health;
};

void Observe(Job& job, Observed& obs, std::thread& gen, std::thread& watch, grpc::ClientContext& wctx) {
  v1::GenerateRequest r;
  for (int i = 0; i < 8; ++i) r.mutable_tokens()->add_ids(100 + 37 * i);
  r.mutable_sampling()->set_max_tokens(3000);
  r.mutable_sampling()->set_ignore_eos(true);
  gen = std::thread([&job, &obs, r] {
    const absl::Status st = job.client->Generate(
        r,
        [&](const v1::GenerateResponse&) {
          absl::MutexLock l(&obs.mu);
          ++obs.messages;
        },
        absl::Seconds(120));
    absl::MutexLock l(&obs.mu);
    obs.status = st, obs.done = true, obs.ended = absl::Now();
  });
  wctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(120));
  watch = std::thread([&job, &obs, &wctx] {
    auto reader = job.client->health_stub().Watch(&wctx, grpc::health::v1::HealthCheckRequest());
    HealthCheckResponse h;
    while (reader->Read(&h)) {
      absl::MutexLock l(&obs.mu);
      obs.health.push_back(h.status());
    }
    (void)reader->Finish();
  });
  absl::MutexLock l(&obs.mu);
  obs.mu.AwaitWithTimeout(absl::Condition(
                              +[](int* m) { return *m >= 3; }, &obs.messages),
                          absl::Seconds(120));
}

void ExpectFailedFast(Observed& obs, absl::Time t_fault, ServeProcess& server, absl::Duration bound) {
  {
    absl::MutexLock l(&obs.mu);
    obs.mu.AwaitWithTimeout(absl::Condition(&obs.done), absl::Seconds(60));
    ASSERT_TRUE(obs.done) << "the client never heard back";
    EXPECT_EQ(obs.status.code(), absl::StatusCode::kUnavailable) << obs.status;
    EXPECT_LT(obs.ended - t_fault, bound) << "the client waited too long";
  }
  const int code = server.Wait(absl::Seconds(60));
  EXPECT_NE(code, -1) << "mpirun hung\n" << server.Log();
  EXPECT_NE(code, 0) << server.Log();
  absl::MutexLock l(&obs.mu);
  ASSERT_FALSE(obs.health.empty());
  EXPECT_EQ(obs.health.front(), HealthCheckResponse::SERVING);
  EXPECT_EQ(obs.health.back(), HealthCheckResponse::NOT_SERVING) << "health never turned NOT_SERVING";
}

// A generation in flight and a health watch, then worker rank 1 gets `sig`: the client must see the
// failure within 10 s, health turn NOT_SERVING and mpirun exit non-zero (ExpectFailedFast).
void FaultWorkerMidGeneration(Job& job, int sig) {
  Observed obs;
  std::thread gen, watch;
  grpc::ClientContext wctx;
  Observe(job, obs, gen, watch, wctx);
  const int64_t pid = WorkerPid(job);
  ASSERT_GT(pid, 0);
  const absl::Time t_fault = absl::Now();
  ASSERT_EQ(kill(static_cast<pid_t>(pid), sig), 0);
  ExpectFailedFast(obs, t_fault, *job.server, absl::Seconds(10));
  if (sig != SIGKILL) kill(static_cast<pid_t>(pid), SIGKILL);  // in case mpirun left it stopped
  wctx.TryCancel();
  gen.join();
  watch.join();
}

TEST(ServeFault, KilledWorkerMidGenerationFailsTheJobFast) {
  Job job = StartJob();
  ASSERT_TRUE(job.client != nullptr);
  FaultWorkerMidGeneration(job, SIGKILL);
  EXPECT_NE(job.server->Log().find("rank 1"), std::string::npos) << job.server->Log();
}

// A stopped worker never closes its connections: the heartbeat timeout finds it.
TEST(ServeFault, StoppedWorkerIsDeclaredLostAfterTheHeartbeatTimeout) {
  Job job = StartJob({"--heartbeat-timeout-s", "2"});
  ASSERT_TRUE(job.client != nullptr);
  FaultWorkerMidGeneration(job, SIGSTOP);
  EXPECT_NE(job.server->Log().find("no heartbeat"), std::string::npos) << job.server->Log();
}

// The leader killed: the workers must not linger; mpirun exits non-zero.
TEST(ServeFault, KilledLeaderEndsTheJob) {
  Job job = StartJob();
  ASSERT_TRUE(job.client != nullptr);
  job.server->SignalLeader(SIGKILL);
  const int code = job.server->Wait(absl::Seconds(60));
  EXPECT_NE(code, -1) << "the job hung after its leader died\n" << job.server->Log();
  EXPECT_NE(code, 0);
}

}  // namespace
}  // namespace dsv4
