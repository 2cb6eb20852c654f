// Row GR-09 of ecosystem_reliability.md: the bearer token guards every RPC of both servers (the
// inference service, health, the control plane), and TLS refuses plaintext and unknown
// certificate authorities. One rank, 127.0.0.1 only.
#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "rpc/client.h"
#include "tests/rpc/serve_harness.h"
#include "tests/testutil.h"

namespace dsv4 {
namespace {

using testing::ServeProcess;

const std::vector<std::string> kArgs = {"--model", "builtin:v4-tiny", "--threads", "1", "--max-model-len",
                                        "256",     "--cache-mb",      "64"};

std::string WriteFile(const std::string& name, const std::string& text) {
  const std::string path = testing::TempDir() + "/" + name;
  std::ofstream(path) << text;
  return path;
}

v1::GenerateRequest Small() {
  v1::GenerateRequest r;
  r.mutable_tokens()->add_ids(100);
  r.mutable_tokens()->add_ids(200);
  r.mutable_sampling()->set_max_tokens(2);
  return r;
}

TEST(ServeSecurity, TheTokenGuardsEveryRpc) {
  const std::string token_file = WriteFile("token", "s3cret-token\n");
  std::vector<std::string> args = kArgs;
  args.insert(args.end(), {"--token-file", token_file});
  auto server = ServeProcess::Start(args, 1);
  ASSERT_TRUE(server.ok()) << server.status();
  ClientSecurity good, none, wrong;
  good.token = "s3cret-token";
  wrong.token = "s3cret-tokem";
  auto client = InferenceClient::Connect((*server)->address(), good);
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->WaitForServing(absl::Seconds(120)).ok()) << (*server)->Log();
  EXPECT_TRUE((*client)->Generate(Small(), nullptr).ok());
  for (const ClientSecurity& bad : {none, wrong}) {
    auto c = InferenceClient::Connect((*server)->address(), bad);
    ASSERT_TRUE(c.ok());
    EXPECT_EQ((*c)->Health().status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ((*c)->Generate(Small(), nullptr).code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ((*c)->ServerInfo().status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ((*c)->Abort("x").status().code(), absl::StatusCode::kUnauthenticated);
    auto control = ControlClient::Connect((*server)->control(), bad);
    ASSERT_TRUE(control.ok());
    EXPECT_EQ((*control)->Status().status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_EQ((*control)->Drain(0).code(), absl::StatusCode::kUnauthenticated);
  }
  auto control = ControlClient::Connect((*server)->control(), good);
  ASSERT_TRUE(control.ok());
  ASSERT_TRUE((*control)->Status().ok());
  ASSERT_TRUE((*control)->Drain(5).ok());
  EXPECT_EQ((*server)->Wait(absl::Seconds(60)), 0) << (*server)->Log();
}

// Makes a self-signed certificate for 127.0.0.1 with openssl; false when openssl is missing.
bool MakeCert(const std::string& stem) {
  const std::string cmd = absl::StrCat(
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -addext "
      "subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout ",
      stem, ".key -out ", stem, ".crt >/dev/null 2>&1");
  return std::system(cmd.c_str()) == 0;
}

TEST(ServeSecurity, TlsRefusesPlaintextAndUnknownAuthorities) {
  const std::string dir = testing::TempDir();
  if (!MakeCert(dir + "/server") || !MakeCert(dir + "/other")) GTEST_SKIP() << "openssl is not available";
  std::vector<std::string> args = kArgs;
  args.insert(args.end(), {"--tls-cert", dir + "/server.crt", "--tls-key", dir + "/server.key"});
  auto server = ServeProcess::Start(args, 1);
  ASSERT_TRUE(server.ok()) << server.status();
  ClientSecurity tls;
  tls.tls = true;
  tls.tls_ca_file = dir + "/server.crt";
  auto client = InferenceClient::Connect((*server)->address(), tls);
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->WaitForServing(absl::Seconds(120)).ok()) << (*server)->Log();
  EXPECT_TRUE((*client)->Generate(Small(), nullptr).ok());
  ClientSecurity plain, other_ca;
  other_ca.tls = true;
  other_ca.tls_ca_file = dir + "/other.crt";
  for (const ClientSecurity& bad : {plain, other_ca}) {
    auto c = InferenceClient::Connect((*server)->address(), bad);
    ASSERT_TRUE(c.ok());
    EXPECT_EQ((*c)->Health("", absl::Seconds(5)).status().code(), absl::StatusCode::kUnavailable);
  }
  auto control = ControlClient::Connect((*server)->control(), {});
  ASSERT_TRUE(control.ok());
  ASSERT_TRUE((*control)->Shutdown().ok());
  EXPECT_EQ((*server)->Wait(absl::Seconds(60)), 0) << (*server)->Log();
}

}  // namespace
}  // namespace dsv4
