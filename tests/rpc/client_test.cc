// The gRPC client's first connection: a server that starts listening after the client's first
// call is still reached within the call's deadline (gRPC retries the refused connects with
// backoff); a server that never listens is UNAVAILABLE naming the address once the deadline
// passes; and an UNAVAILABLE the server itself answers is returned as it is, never retried.
#include "rpc/client.h"

#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "rpc/inference_server.h"

namespace dsv4 {
namespace {

// A loopback port that was free a moment ago.
int FreePort() {
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  close(fd);
  return ntohs(a.sin_port);
}

TEST(InferenceClient, FirstConnectIsRetriedWithinTheDeadline) {
  const int port = FreePort();
  auto client = InferenceClient::Connect("127.0.0.1:" + std::to_string(port), {});
  ASSERT_TRUE(client.ok());
  std::unique_ptr<InferenceServer> server;
  std::thread late([&] {
    absl::SleepFor(absl::Milliseconds(700));  // the client's first connects are refused meanwhile
    EndpointOptions o;
    o.port = port;
    auto s = InferenceServer::Start(o, ServerIdentity{"test", 1, "test"});
    ASSERT_TRUE(s.ok()) << s.status();
    server = std::move(*s);
  });
  // Generous: the server starts after 0.7 s; the deadline only bounds a failure.
  auto health = (*client)->Health("", absl::Seconds(30));
  late.join();
  ASSERT_TRUE(health.ok()) << health.status();
  EXPECT_EQ(*health, grpc::health::v1::HealthCheckResponse::NOT_SERVING);  // no engine attached: loading
  // The server's own UNAVAILABLE (it is loading) comes back as it is, not retried.
  v1::GenerateRequest req;
  req.mutable_tokens()->add_ids(1);
  const absl::Status st = (*client)->Generate(req, nullptr, absl::Seconds(30));
  EXPECT_EQ(st.code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(st.message().find("loading"), std::string::npos) << st;
  server->Shutdown(absl::ZeroDuration());
}

TEST(InferenceClient, NoServerIsUnavailableAtTheDeadline) {
  const int port = FreePort();
  auto client = InferenceClient::Connect("127.0.0.1:" + std::to_string(port), {});
  ASSERT_TRUE(client.ok());
  const absl::Time t0 = absl::Now();
  auto health = (*client)->Health("", absl::Milliseconds(800));
  ASSERT_FALSE(health.ok());
  EXPECT_EQ(health.status().code(), absl::StatusCode::kUnavailable);
  EXPECT_NE(health.status().message().find("cannot connect to 127.0.0.1:" + std::to_string(port)), std::string::npos)
      << health.status();
  EXPECT_GE(absl::Now() - t0, absl::Milliseconds(800));  // it kept trying until the deadline
}

}  // namespace
}  // namespace dsv4
