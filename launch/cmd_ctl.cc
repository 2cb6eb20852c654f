// dsv4 ctl status|drain|shutdown --server CONTROL_ADDR [--grace-s S]
//
// The control plane of a running `dsv4 serve` job (its address is logged at start and written to
// --info-file): `status` prints every rank's state, step and per-expert load as JSON; `drain`
// stops admitting and lets in-flight requests finish within the grace period, then stops the job
// (exit 0); `shutdown` stops it now.
#include <google/protobuf/util/json_util.h>

#include <cstdio>

#include "base/status.h"
#include "launch/commands.h"
#include "rpc/client.h"

namespace dsv4 {
namespace {

absl::StatusOr<std::unique_ptr<ControlClient>> Connect(const Flags& flags) {
  DSV4_ASSIGN_OR_RETURN(const ClientSecurity security, ClientSecurityFromFlags(flags));
  return ControlClient::Connect(flags.GetString("server"), security);
}

}  // namespace

void CtlFlags(Flags& flags) {
  flags.String("server", "127.0.0.1:0", "control-plane address of a running dsv4 serve (see its --info-file)")
      .Double("grace-s", 0, "drain: seconds in-flight requests get (0 = the server's --drain-grace-s)", 0, 86400);
  AddClientFlags(flags);
}

absl::Status CtlStatus(const Flags& flags) {
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<ControlClient> client, Connect(flags));
  DSV4_ASSIGN_OR_RETURN(const v1::ClusterStatus status, client->Status());
  std::string json;
  google::protobuf::util::JsonPrintOptions opt;
  opt.preserve_proto_field_names = true;
  opt.add_whitespace = true;
  (void)google::protobuf::util::MessageToJsonString(status, &json, opt);
  std::printf("%s", json.c_str());
  return absl::OkStatus();
}

absl::Status CtlDrain(const Flags& flags) {
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<ControlClient> client, Connect(flags));
  return client->Drain(flags.GetDouble("grace-s"));
}

absl::Status CtlShutdown(const Flags& flags) {
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<ControlClient> client, Connect(flags));
  return client->Shutdown();
}

}  // namespace dsv4
