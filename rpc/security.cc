#include "rpc/security.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_metadata_processor.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <memory>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
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

// The first OpenSSL error on this thread's queue, as text (and the queue cleared).
std::string OpenSslError() {
  const unsigned long e = ERR_get_error();
  ERR_clear_error();
  if (e == 0) return "no PEM block found";
  char buf[256];
  ERR_error_string_n(e, buf, sizeof(buf));
  return buf;
}

// gRPC takes PEM text and fails on a bad one without saying why (with an external acceptor, not at
// all): the certificate chain, the key and the client roots are parsed here first, so a bad file
// is an error naming it, and a key that does not belong to the certificate is caught too.
absl::Status CheckTlsFiles(const ServerSecurity& s, const std::string& cert, const std::string& key,
                           const std::string* client_ca) {
  ERR_clear_error();
  std::unique_ptr<BIO, decltype(&BIO_free)> cert_bio(BIO_new_mem_buf(cert.data(), static_cast<int>(cert.size())),
                                                     BIO_free);
  std::unique_ptr<X509, decltype(&X509_free)> x509(PEM_read_bio_X509(cert_bio.get(), nullptr, nullptr, nullptr),
                                                   X509_free);
  if (x509 == nullptr)
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-cert ", s.tls_cert_file, " is not a PEM certificate chain (", OpenSslError(), ")"));
  std::unique_ptr<BIO, decltype(&BIO_free)> key_bio(BIO_new_mem_buf(key.data(), static_cast<int>(key.size())),
                                                    BIO_free);
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> pkey(
      PEM_read_bio_PrivateKey(key_bio.get(), nullptr, nullptr, nullptr), EVP_PKEY_free);
  if (pkey == nullptr)
    return absl::InvalidArgumentError(
        absl::StrCat("--tls-key ", s.tls_key_file, " is not a PEM private key (", OpenSslError(), ")"));
  if (X509_check_private_key(x509.get(), pkey.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat("--tls-key ", s.tls_key_file,
                                                   " is not the private key of the certificate in --tls-cert ",
                                                   s.tls_cert_file));
  }
  if (client_ca != nullptr) {
    std::unique_ptr<BIO, decltype(&BIO_free)> ca_bio(
        BIO_new_mem_buf(client_ca->data(), static_cast<int>(client_ca->size())), BIO_free);
    std::unique_ptr<X509, decltype(&X509_free)> ca(PEM_read_bio_X509(ca_bio.get(), nullptr, nullptr, nullptr),
                                                   X509_free);
    if (ca == nullptr)
      return absl::InvalidArgumentError(absl::StrCat("--tls-client-ca ", s.tls_client_ca_file,
                                                     " holds no PEM certificate (", OpenSslError(), ")"));
  }
  return absl::OkStatus();
}

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
    DSV4_ASSIGN_OR_RETURN(auto cert, ReadSmallFile(s.tls_cert_file), "--tls-cert");
    DSV4_ASSIGN_OR_RETURN(auto key, ReadSmallFile(s.tls_key_file), "--tls-key");
    grpc::SslServerCredentialsOptions opt;
    opt.pem_key_cert_pairs.push_back({key, cert});
    std::string ca;
    if (!s.tls_client_ca_file.empty()) {
      DSV4_ASSIGN_OR_RETURN(ca, ReadSmallFile(s.tls_client_ca_file), "--tls-client-ca");
      opt.pem_root_certs = ca;
      opt.client_certificate_request = GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY;
    }
    DSV4_RETURN_IF_ERROR(CheckTlsFiles(s, cert, key, s.tls_client_ca_file.empty() ? nullptr : &ca));
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

absl::Status CheckAddress(const std::string& address) {
  // gRPC target URIs ("dns:///h:p", "ipv4:...", "unix:/path") are gRPC's to check.
  const size_t colon = address.rfind(':');
  const bool bracketed = !address.empty() && address[0] == '[';
  if (address.find("://") != std::string::npos || absl::StartsWith(address, "unix:") ||
      absl::StartsWith(address, "ipv4:") || absl::StartsWith(address, "ipv6:"))
    return absl::OkStatus();
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("server address '", address, "' ", why));
  };
  if (colon == std::string::npos || colon == 0 || (bracketed && address[colon - 1] != ']'))
    return bad("must be host:port (or [ipv6]:port)");
  const std::string port = address.substr(colon + 1);
  int value = 0;
  if (port.empty() || port.size() > 5 || !std::all_of(port.begin(), port.end(), ::isdigit) ||
      !absl::SimpleAtoi(port, &value))
    return bad(absl::StrCat("has port '", port, "', not a number"));
  if (value < 1 || value > 65535) return bad(absl::StrCat("has port ", value, ", outside [1, 65535]"));
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& address, const ClientSecurity& s,
                                                           int max_message_bytes) {
  DSV4_RETURN_IF_ERROR(CheckAddress(address));
  std::shared_ptr<grpc::ChannelCredentials> creds;
  if (s.tls) {
    grpc::SslCredentialsOptions opt;
    if (!s.tls_ca_file.empty()) {
      DSV4_ASSIGN_OR_RETURN(auto ca, ReadSmallFile(s.tls_ca_file), "--tls-ca");
      ERR_clear_error();
      std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new_mem_buf(ca.data(), static_cast<int>(ca.size())), BIO_free);
      std::unique_ptr<X509, decltype(&X509_free)> x509(PEM_read_bio_X509(bio.get(), nullptr, nullptr, nullptr),
                                                       X509_free);
      if (x509 == nullptr)
        return absl::InvalidArgumentError(
            absl::StrCat("--tls-ca ", s.tls_ca_file, " holds no PEM certificate (", OpenSslError(), ")"));
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
