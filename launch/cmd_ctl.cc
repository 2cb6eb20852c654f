// dsv4 ctl --server CONTROL_ADDR status|drain|shutdown [--grace-s S]
//
// The control plane of a running `dsv4 serve` job (its address is printed at start and written to
// --info-file): `status` prints every rank's state, step and per-expert load as JSON; `drain`
// stops admitting and lets in-flight requests finish within the grace period, then stops the job
// (exit 0); `shutdown` stops it now.
#include <google/protobuf/util/json_util.h>

#include <cstdio>
#include <cstring>

#include "launch/client_flags.h"
#include "launch/commands.h"
#include "launch/common.h"
#include "rpc/client.h"

namespace dsv4 {

int RunCtl(int argc, char** argv) {
  Flags flags;
  flags.Add("server", "127.0.0.1:0", "control-plane address of a running dsv4 serve (see its --info-file)")
      .Add("grace-s", "0", "drain: seconds in-flight requests get (0 = the server's --drain-grace-s)");
  AddClientFlags(flags);
  if (argc < 3 || WantsHelp(argc, argv) || argv[2][0] == '-') {
    std::printf("usage: dsv4 ctl status|drain|shutdown [flags]\n%s", flags.Help().c_str());
    return argc < 3 ? 2 : 0;
  }
  const std::string what = argv[2];
  if (auto st = flags.Parse(argc, argv, 3); !st.ok()) return Fail(st);
  auto security = ParseClientFlags(flags);
  if (!security.ok()) return Fail(security.status());
  auto grace = flags.Double("grace-s");
  if (!grace.ok()) return Fail(grace.status());
  auto client = ControlClient::Connect(flags.Str("server"), *security);
  if (!client.ok()) return Fail(client.status());
  if (what == "status") {
    auto s = (*client)->Status();
    if (!s.ok()) return Fail(s.status());
    std::string json;
    google::protobuf::util::JsonPrintOptions opt;
    opt.preserve_proto_field_names = true;
    opt.add_whitespace = true;
    (void)google::protobuf::util::MessageToJsonString(*s, &json, opt);
    std::printf("%s", json.c_str());
    return 0;
  }
  if (what == "drain") {
    if (auto st = (*client)->Drain(*grace); !st.ok()) return Fail(st);
    return 0;
  }
  if (what == "shutdown") {
    if (auto st = (*client)->Shutdown(); !st.ok()) return Fail(st);
    return 0;
  }
  return Fail(absl::InvalidArgumentError("dsv4 ctl: expected status, drain or shutdown, got '" + what + "'"));
}

}  // namespace dsv4
