#include "rpc/security.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_metadata_processor.h>

#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "base/status.h"

namespace dsv4 {

bool ConstantTimeEqual(std::string_view got, std::string_view want) {
  unsigned char diff = got.size() == want.size() ? 0 : 1;
  for (size_t i = 0; i < got.size(); ++i) diff |= static_cast<unsigned char>(got[i] ^ want[i % want.size()]);
  return diff == 0;
}

namespace {

class BearerTokenProcessor final : public grpc::AuthMetadataProcessor {
 public:
  explicit BearerTokenProcessor(std::string token) : expected_("Bearer " + std::move(token)) {}
  bool IsBlocking() const override { return false; }
  grpc::Status Process(const InputMetadata& auth_metadata, grpc::AuthContext*, OutputMetadata*,
                       OutputMetadata*) override {
    auto it = auth_metadata.find("authorization");
    if (it == auth_metadata.end())
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "missing bearer token (authorization metadata)");
    if (!ConstantTimeEqual(std::string_view(it->second.data(), it->second.size()), expected_))
      return grpc::Status(grpc::StatusCode::UNAUTHENTICATED, "invalid bearer token");
    return grpc::Status::OK;
  }

 private:
  const std::string expected_;
};

}  // namespace

absl::StatusOr<std::string> ReadSmallFile(const std::string& path) { return ReadFile(path, 1 << 20); }

absl::StatusOr<std::string> ReadTokenFile(const std::string& path) {
  DSV4_ASSIGN_OR_RETURN(std::string token, ReadSmallFile(path), "--token-file");
  while (!token.empty() && (token.back() == '\n' || token.back() == '\r')) token.pop_back();
  if (token.empty()) return absl::InvalidArgumentError(absl::StrCat("--token-file ", path, " holds an empty token"));
  return token;
}

void AddClientFlags(Flags& flags) {
  flags.Bool("tls", false, "connect with TLS")
      .String("tls-ca", "", "PEM roots that sign the server's certificate (implies --tls)")
      .String("token-file", "", "file holding the server's bearer token");
}

absl::StatusOr<ClientSecurity> ClientSecurityFromFlags(const Flags& flags) {
  ClientSecurity s;
  s.tls_ca_file = flags.GetString("tls-ca");
  s.tls = flags.GetBool("tls") || !s.tls_ca_file.empty();
  if (!flags.GetString("token-file").empty()) {
    DSV4_ASSIGN_OR_RETURN(s.token, ReadTokenFile(flags.GetString("token-file")));
  }
  return s;
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const ServerSecurity& s) {
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (s.tls_cert_file.empty() != s.tls_key_file.empty())
    return absl::InvalidArgumentError("--tls-cert and --tls-key must be given together");
  if (!s.tls_cert_file.empty()) {
    DSV4_ASSIGN_OR_RETURN(auto cert, ReadSmallFile(s.tls_cert_file));
    DSV4_ASSIGN_OR_RETURN(auto key, ReadSmallFile(s.tls_key_file));
    grpc::SslServerCredentialsOptions opt;
    opt.pem_key_cert_pairs.push_back({key, cert});
    if (!s.tls_client_ca_file.empty()) {
      auto ca = ReadSmallFile(s.tls_client_ca_file);
      if (!ca.ok()) return ca.status();
      opt.pem_root_certs = *ca;
      opt.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    creds = grpc::SslServerCredentials(opt);
  } else if (!s.tls_client_ca_file.empty()) {
    return absl::InvalidArgumentError("--tls-client-ca needs --tls-cert and --tls-key");
  } else if (!s.token.empty()) {
    creds = grpc::experimental::LocalServerCredentials(LOCAL_TCP);
  } else {
    return grpc::InsecureServerCredentials();
  }
  if (!s.token.empty()) creds->SetAuthMetadataProcessor(std::make_shared<BearerTokenProcessor>(s.token));
  return creds;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& address, const ClientSecurity& s,
                                                           int max_message_bytes) {
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (s.tls) {
    grpc::SslCredentialsOptions opt;
    if (!s.tls_ca_file.empty()) {
      DSV4_ASSIGN_OR_RETURN(auto ca, ReadSmallFile(s.tls_ca_file));
      opt.pem_root_certs = ca;
    }
    if (!s.tls_cert_file.empty()) {
      DSV4_ASSIGN_OR_RETURN(auto cert, ReadSmallFile(s.tls_cert_file));
      DSV4_ASSIGN_OR_RETURN(auto key, ReadSmallFile(s.tls_key_file));
      opt.pem_cert_chain = cert;
      opt.pem_private_key = key;
    }
    creds = grpc::SslCredentials(opt);
  } else {
    creds = grpc::InsecureChannelCredentials();
  }
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(max_message_bytes);
  args.SetMaxSendMessageSize(max_message_bytes);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 10000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 5000);
  // Each client gets its own connection (tests and benchmarks open many channels on purpose).
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  // A refused or failed connect is retried after 100 ms, then with growing gaps up to 1 s (gRPC's
  // defaults start at 1 s and reach 2 minutes: too slow for a server that is just starting).
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MIN_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  return grpc::CreateCustomChannel(address, creds, args);
}

void AddCredentials(grpc::ClientContext& context, const ClientSecurity& s) {
  if (!s.token.empty()) context.AddMetadata("authorization", "Bearer " + s.token);
}

}  // namespace dsv4
