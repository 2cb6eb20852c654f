// Flags shared by the commands that talk to a running server (generate, ctl, bench serve).
#pragma once

#include "absl/status/statusor.h"
#include "launch/flags.h"
#include "rpc/security.h"

namespace dsv4 {

// --tls, --tls-ca, --token-file.
void AddClientFlags(Flags& flags);
absl::StatusOr<ClientSecurity> ParseClientFlags(const Flags& flags);

}  // namespace dsv4
