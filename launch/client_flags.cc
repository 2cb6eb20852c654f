#include "launch/client_flags.h"

namespace dsv4 {

void AddClientFlags(Flags& flags) {
  flags.Add("tls", "off", "connect with TLS (on|off)")
      .Add("tls-ca", "", "PEM roots that sign the server's certificate (implies --tls on)")
      .Add("token-file", "", "file holding the server's bearer token");
}

absl::StatusOr<ClientSecurity> ParseClientFlags(const Flags& flags) {
  ClientSecurity s;
  auto tls = flags.OnOff("tls");
  if (!tls.ok()) return tls.status();
  s.tls = *tls || !flags.Str("tls-ca").empty();
  s.tls_ca_file = flags.Str("tls-ca");
  if (!flags.Str("token-file").empty()) {
    auto token = ReadSmallFile(flags.Str("token-file"));
    if (!token.ok()) return token.status();
    while (!token->empty() && (token->back() == '\n' || token->back() == '\r')) token->pop_back();
    s.token = *token;
  }
  return s;
}

}  // namespace dsv4
