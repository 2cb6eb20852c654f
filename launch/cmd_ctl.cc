// dsv4 ctl status|drain|shutdown|rebalance|placement --server CONTROL_ADDR [...]
//
// The control plane of a running `dsv4 serve` job (its address is logged at start and written to
// --info-file): `status` prints every rank's state, step and per-expert load as JSON (--by-layer:
// per MoE layer too); `drain` stops admitting and lets in-flight requests finish within the grace
// period, then stops the job (exit 0); `shutdown` stops it now; `rebalance` plans an EPLB expert
// placement from the load routed since the last one and switches every rank to it at the next
// step (--dry-run: plan only), printing the balance before and after; `placement` prints the
// placement the job runs. Both write the placement file with --out.
#include <google/protobuf/util/json_util.h>

#include <cstdio>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

#include "base/file.h"
#include "base/status.h"
#include "launch/commands.h"
#include "rpc/client.h"

namespace dsv4 {
namespace {

constexpr const char* kService = "dsv4.v1.ControlPlane";

absl::StatusOr<std::unique_ptr<ControlClient>> Connect(const Flags& flags) {
  DSV4_ASSIGN_OR_RETURN(const ClientSecurity security, ClientSecurityFromFlags(flags));
  return ControlClient::Connect(flags.GetString("server"), security);
}

}  // namespace

void CtlFlags(Flags& flags) {
  flags.String("server", "127.0.0.1:0", "control-plane address of a running dsv4 serve (see its --info-file)")
      .Double("grace-s", 0, "drain: seconds in-flight requests get (0 = the server's --drain-grace-s)", 0, 86400)
      .Bool("by-layer", false, "status: include every rank's per-layer expert load")
      .Bool("dry-run", false, "rebalance: plan and report, do not switch")
      .Double("timeout-s", 60, "rebalance: seconds to wait for the switching step", 0.001, 86400)
      .String("out", "", "rebalance, placement: write the placement file here");
  AddClientFlags(flags);
}

namespace {

std::string ToJson(const google::protobuf::Message& m) {
  std::string json;
  google::protobuf::util::JsonPrintOptions opt;
  opt.preserve_proto_field_names = true;
  opt.add_whitespace = true;
  (void)google::protobuf::util::MessageToJsonString(m, &json, opt);
  return json;
}

}  // namespace

absl::Status CtlStatus(const Flags& flags) {
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<ControlClient> client, Connect(flags));
  auto status = client->Status(flags.GetBool("by-layer"));
  DSV4_RETURN_IF_ERROR(ServerError(status.status(), flags.GetString("server"), kService));
  std::printf("%s", ToJson(*status).c_str());
  return absl::OkStatus();
}

absl::Status CtlRebalance(const Flags& flags) {
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<ControlClient> client, Connect(flags));
  auto rebalanced = client->Rebalance(flags.GetBool("dry-run"), flags.GetDouble("timeout-s"));
  DSV4_RETURN_IF_ERROR(ServerError(rebalanced.status(), flags.GetString("server"), kService));
  const v1::RebalanceResponse& r = *rebalanced;
  const std::string& out = flags.GetString("out");
  if (!out.empty()) DSV4_RETURN_IF_ERROR(WriteFileAtomic(out, r.placement()));
  // The summary; the placement itself goes to --out (or `dsv4 ctl placement` prints it).
  std::printf(
      "{\"step\": %lld, \"routed\": %lld, \"imbalance_before\": %.4f, \"imbalance_after\": %.4f, "
      "\"worst_layer_before\": %.4f, \"worst_layer_after\": %.4f%s}\n",
      static_cast<long long>(r.step()), static_cast<long long>(r.routed()), r.imbalance_before(), r.imbalance_after(),
      r.worst_layer_before(), r.worst_layer_after(),
      out.empty() ? "" : absl::StrCat(", \"placement_file\": \"", absl::CEscape(out), "\"").c_str());
  return absl::OkStatus();
}

absl::Status CtlPlacement(const Flags& flags) {
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<ControlClient> client, Connect(flags));
  auto placement = client->GetPlacement();
  DSV4_RETURN_IF_ERROR(ServerError(placement.status(), flags.GetString("server"), kService));
  const v1::PlacementResponse& r = *placement;
  if (!flags.GetString("out").empty()) return WriteFileAtomic(flags.GetString("out"), r.placement());
  std::printf("%s", r.placement().c_str());
  return absl::OkStatus();
}

absl::Status CtlDrain(const Flags& flags) {
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<ControlClient> client, Connect(flags));
  return ServerError(client->Drain(flags.GetDouble("grace-s")), flags.GetString("server"), kService);
}

absl::Status CtlShutdown(const Flags& flags) {
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<ControlClient> client, Connect(flags));
  return ServerError(client->Shutdown(), flags.GetString("server"), kService);
}

}  // namespace dsv4
