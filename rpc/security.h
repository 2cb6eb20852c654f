// Transport security and the bearer token, for every server and client of dsv4.
//
// Server side, one choke point: the token is checked by an AuthMetadataProcessor on the server's
// credentials, so it guards every RPC of the server — the inference service, the control plane,
// health and reflection alike — and a missing or wrong token is UNAUTHENTICATED. gRPC runs such a
// processor only on secure credentials: with TLS, on the TLS credentials; without TLS, a token
// makes the server use gRPC's local credentials, which accept loopback (127.0.0.1, ::1) clients
// only — a token is never accepted in clear text from another machine.
#pragma once

#include <grpcpp/grpcpp.h>

#include <memory>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "base/flags.h"

namespace dsv4 {

struct ServerSecurity {
  std::string tls_cert_file;       // PEM certificate chain; with tls_key_file, turns TLS on
  std::string tls_key_file;        // PEM private key
  std::string tls_client_ca_file;  // PEM roots: clients must present a certificate they sign (mTLS)
  std::string token;               // bearer token every call must carry ("" = none)
};

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(const ServerSecurity& security);

struct ClientSecurity {
  bool tls = false;
  std::string tls_ca_file;    // PEM roots to verify the server ("" = the system's)
  std::string tls_cert_file;  // client certificate and key, for mTLS
  std::string tls_key_file;
  std::string token;  // sent as "authorization: Bearer <token>"
};

// OK for "host:port" or "[ipv6]:port" with a port in [1, 65535], and for gRPC target URIs
// ("dns:///...", "unix:..."); INVALID_ARGUMENT naming the address otherwise.
absl::Status CheckAddress(const std::string& address);
// A channel to `address` (checked as above) with bounded message sizes and keepalive pings.
absl::StatusOr<std::shared_ptr<grpc::Channel>> MakeChannel(const std::string& address, const ClientSecurity& security,
                                                           int max_message_bytes = 64 << 20);
// Adds the bearer token to a call.
void AddCredentials(grpc::ClientContext& context, const ClientSecurity& security);

// Equality in time that depends on the lengths only, not on where the first difference is (token
// checks). `want` must not be empty.
bool ConstantTimeEqual(std::string_view got, std::string_view want);

// Reads a whole (small) file, e.g. a PEM file.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path);
// The bearer token in `path` (trailing newlines dropped); an empty token is INVALID_ARGUMENT.
absl::StatusOr<std::string> ReadTokenFile(const std::string& path);

// The flags of every command that talks to a running server (generate, ctl, bench serve):
// --tls, --tls-ca, --token-file.
void AddClientFlags(Flags& flags);
absl::StatusOr<ClientSecurity> ClientSecurityFromFlags(const Flags& flags);

}  // namespace dsv4
