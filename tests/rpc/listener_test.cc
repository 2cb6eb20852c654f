// rpc/listener.h in-process: the connection cap, running out of file descriptors (health turns
// NOT_SERVING, and back once connections can be accepted), and binding a taken port.
#include "rpc/listener.h"

#include <dirent.h>
#include <gtest/gtest.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <vector>

#include "absl/time/clock.h"
#include "rpc/client.h"
#include "rpc/inference_server.h"
#include "tests/testutil.h"

namespace dsv4 {
namespace {

using grpc::health::v1::HealthCheckResponse;

// True once the server has closed the connection `fd` (EOF within `timeout`).
bool ClosedByServer(int fd, absl::Duration timeout) {
  pollfd p = {fd, POLLIN, 0};
  if (poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(timeout))) != 1) return false;
  char c;
  return recv(fd, &c, 1, MSG_DONTWAIT) == 0;
}

int OpenDescriptors() {
  int n = 0;
  DIR* d = opendir("/proc/self/fd");
  while (readdir(d) != nullptr) ++n;
  closedir(d);
  return n - 3;  // ".", "..", and the directory's own descriptor
}

std::unique_ptr<InferenceServer> StartServer(int max_connections) {
  EndpointOptions opt;
  opt.port = 0;
  opt.max_connections = max_connections;
  auto s = InferenceServer::Start(opt, ServerIdentity{});
  EXPECT_TRUE(s.ok()) << s.status();
  if (!s.ok()) return nullptr;
  (*s)->SetState(v1::SERVER_STATE_SERVING);
  return std::move(*s);
}

HealthCheckResponse::ServingStatus HealthOf(InferenceClient& c) {
  auto h = c.Health("", absl::Seconds(5));
  return h.ok() ? *h : HealthCheckResponse::UNKNOWN;
}

TEST(Listener, ConnectionsBeyondTheCapAreClosedAtOnce) {
  auto server = StartServer(4);
  ASSERT_NE(server, nullptr);
  std::vector<int> held;
  for (int i = 0; i < 4; ++i) held.push_back(testing::ConnectLoopback(server->port()));
  const int extra = testing::ConnectLoopback(server->port());
  ASSERT_GE(extra, 0);
  EXPECT_TRUE(ClosedByServer(extra, absl::Seconds(5)));
  close(extra);
  for (int fd : held) EXPECT_FALSE(ClosedByServer(fd, absl::Milliseconds(100)));  // within the cap: kept
  for (int fd : held) close(fd);
  // The closed ones no longer count: a gRPC client gets in (gRPC closes its side within moments).
  auto c = InferenceClient::Connect(absl::StrCat("127.0.0.1:", server->port()), {});
  ASSERT_TRUE(c.ok());
  HealthCheckResponse::ServingStatus h = HealthCheckResponse::UNKNOWN;
  for (int i = 0; i < 50 && h != HealthCheckResponse::SERVING; ++i) {
    h = HealthOf(**c);
    if (h != HealthCheckResponse::SERVING) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(h, HealthCheckResponse::SERVING);
}

// The process runs out of descriptors while clients keep connecting: the port answers each with a
// prompt close instead of leaving it in the backlog, health turns NOT_SERVING, and once
// descriptors are free again the next connection is served and health is SERVING.
TEST(Listener, OutOfDescriptorsIsReportedAndRecovered) {
  auto server = StartServer(1 << 20);
  ASSERT_NE(server, nullptr);
  auto client = InferenceClient::Connect(absl::StrCat("127.0.0.1:", server->port()), {});
  ASSERT_TRUE(client.ok());
  ASSERT_EQ(HealthOf(**client), HealthCheckResponse::SERVING);  // its connection is up before the squeeze

  struct rlimit old;
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
  struct rlimit tight = old;
  tight.rlim_cur = OpenDescriptors() + 40;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &tight), 0);
  std::vector<int> held;
  for (int i = 0; i < 200; ++i) {  // each costs two descriptors: the client's and the server's
    const int fd = testing::ConnectLoopback(server->port());
    if (fd < 0) break;
    held.push_back(fd);
  }
  EXPECT_LT(held.size(), 200u) << "the limit did not bind";
  HealthCheckResponse::ServingStatus h = HealthCheckResponse::UNKNOWN;
  for (int i = 0; i < 50 && h != HealthCheckResponse::NOT_SERVING; ++i) {
    h = HealthOf(**client);
    if (h != HealthCheckResponse::NOT_SERVING) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(h, HealthCheckResponse::NOT_SERVING);
  // The last connection the server could not keep was closed, not left hanging.
  ASSERT_FALSE(held.empty());
  EXPECT_TRUE(ClosedByServer(held.back(), absl::Seconds(5)));

  for (int fd : held) close(fd);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
  // A new connection is accepted again, and health follows.
  auto fresh = InferenceClient::Connect(absl::StrCat("127.0.0.1:", server->port()), {});
  ASSERT_TRUE(fresh.ok());
  h = HealthCheckResponse::UNKNOWN;
  for (int i = 0; i < 50 && h != HealthCheckResponse::SERVING; ++i) {
    h = HealthOf(**fresh);
    if (h != HealthCheckResponse::SERVING) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(h, HealthCheckResponse::SERVING);
  EXPECT_EQ(HealthOf(**client), HealthCheckResponse::SERVING);
}

TEST(Listener, ATakenPortIsAnErrorNamingIt) {
  auto first = Listener::Bind("127.0.0.1", 0);
  ASSERT_TRUE(first.ok()) << first.status();
  auto second = Listener::Bind("127.0.0.1", (*first)->port());
  ASSERT_FALSE(second.ok());
  EXPECT_NE(second.status().message().find(absl::StrCat("127.0.0.1:", (*first)->port())), std::string::npos);
  EXPECT_NE(second.status().message().find("in use by another process"), std::string::npos) << second.status();
  auto not_local = Listener::Bind("192.0.2.1", 0);  // TEST-NET-1: never an address of this machine
  ASSERT_FALSE(not_local.ok());
  EXPECT_NE(not_local.status().message().find("not an address of this machine"), std::string::npos)
      << not_local.status();
}

}  // namespace
}  // namespace dsv4
