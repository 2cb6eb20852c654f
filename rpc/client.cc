#include "rpc/client.h"

#include <chrono>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "rpc/grpc_status.h"

namespace dsv4 {
namespace {

void SetDeadline(grpc::ClientContext& ctx, absl::Time deadline) {
  if (deadline != absl::InfiniteFuture()) ctx.set_deadline(absl::ToChronoTime(deadline));
}

absl::Time DeadlineOf(absl::Duration timeout) {
  return timeout > absl::ZeroDuration() ? absl::Now() + timeout : absl::InfiniteFuture();
}

const char* ChannelStateName(grpc_connectivity_state s) {
  switch (s) {
    case GRPC_CHANNEL_IDLE:
      return "idle";
    case GRPC_CHANNEL_CONNECTING:
      return "connecting";
    case GRPC_CHANNEL_READY:
      return "ready";
    case GRPC_CHANNEL_TRANSIENT_FAILURE:
      return "failing to connect";
    case GRPC_CHANNEL_SHUTDOWN:
      return "shut down";
  }
  return "unknown";
}

}  // namespace

absl::Status AwaitFirstConnect(grpc::Channel& channel, std::atomic<bool>& connected, const std::string& address,
                               absl::Time deadline) {
  if (connected.load(std::memory_order_acquire)) return absl::OkStatus();
  const absl::Time start = absl::Now();
  if (deadline == absl::InfiniteFuture()) deadline = start + kFirstConnectTimeout;
  grpc_connectivity_state state = channel.GetState(/*try_to_connect=*/true);
  while (state != GRPC_CHANNEL_READY) {
    if (state == GRPC_CHANNEL_SHUTDOWN || !channel.WaitForStateChange(state, absl::ToChronoTime(deadline)))
      return absl::UnavailableError(absl::StrCat("cannot connect to ", address, ": still ", ChannelStateName(state),
                                                 " after ", absl::FormatDuration(absl::Now() - start)));
    state = channel.GetState(/*try_to_connect=*/true);
  }
  connected.store(true, std::memory_order_release);
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<InferenceClient>> InferenceClient::Connect(const std::string& address,
                                                                          const ClientSecurity& security) {
  DSV4_ASSIGN_OR_RETURN(auto channel, MakeChannel(address, security));
  auto c = std::make_unique<InferenceClient>();
  c->channel_ = channel;
  c->stub_ = v1::Inference::NewStub(c->channel_);
  c->health_ = grpc::health::v1::Health::NewStub(c->channel_);
  c->security_ = security;
  c->address_ = address;
  return c;
}

absl::StatusOr<absl::Time> InferenceClient::Ready(absl::Duration timeout) {
  const absl::Time deadline = DeadlineOf(timeout);
  if (absl::Status st = AwaitFirstConnect(*channel_, connected_, address_, deadline); !st.ok()) return st;
  return deadline;
}

absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> InferenceClient::Health(const std::string& service,
                                                                                             absl::Duration timeout) {
  auto deadline = Ready(timeout);
  if (!deadline.ok()) return deadline.status();
  grpc::ClientContext ctx;
  AddCredentials(ctx, security_);
  SetDeadline(ctx, *deadline);
  grpc::health::v1::HealthCheckRequest req;
  req.set_service(service);
  grpc::health::v1::HealthCheckResponse resp;
  const grpc::Status st = health_->Check(&ctx, req, &resp);
  if (!st.ok()) return FromGrpcStatus(st);
  return resp.status();
}

absl::Status InferenceClient::WaitForServing(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  absl::Status last = absl::UnavailableError("no answer yet");
  while (absl::Now() < deadline) {
    auto h = Health("", absl::Seconds(2));
    if (h.ok() && *h == grpc::health::v1::HealthCheckResponse::SERVING) return absl::OkStatus();
    last = h.ok() ? absl::UnavailableError("health is NOT_SERVING") : h.status();
    absl::SleepFor(absl::Milliseconds(100));
  }
  return absl::DeadlineExceededError(
      absl::StrCat("the server was not SERVING within ", absl::FormatDuration(timeout), ": ", last.message()));
}

absl::Status InferenceClient::Generate(const v1::GenerateRequest& request,
                                       const std::function<void(const v1::GenerateResponse&)>& on_message,
                                       absl::Duration timeout,
                                       const std::function<void(grpc::ClientContext*)>& context_out) {
  auto deadline = Ready(timeout);
  if (!deadline.ok()) return deadline.status();
  grpc::ClientContext ctx;
  AddCredentials(ctx, security_);
  SetDeadline(ctx, *deadline);
  if (context_out) context_out(&ctx);
  auto reader = stub_->Generate(&ctx, request);
  v1::GenerateResponse msg;
  while (reader->Read(&msg))
    if (on_message) on_message(msg);
  const grpc::Status st = reader->Finish();
  if (context_out) context_out(nullptr);
  return FromGrpcStatus(st);
}

absl::StatusOr<bool> InferenceClient::Abort(const std::string& request_id) {
  auto deadline = Ready(absl::Seconds(10));
  if (!deadline.ok()) return deadline.status();
  grpc::ClientContext ctx;
  AddCredentials(ctx, security_);
  SetDeadline(ctx, *deadline);
  v1::AbortRequest req;
  req.set_request_id(request_id);
  v1::AbortResponse resp;
  const grpc::Status st = stub_->Abort(&ctx, req, &resp);
  if (!st.ok()) return FromGrpcStatus(st);
  return resp.found();
}

absl::StatusOr<v1::ModelInfo> InferenceClient::ModelInfo() {
  auto deadline = Ready(absl::Seconds(10));
  if (!deadline.ok()) return deadline.status();
  grpc::ClientContext ctx;
  AddCredentials(ctx, security_);
  SetDeadline(ctx, *deadline);
  v1::ModelInfo resp;
  const grpc::Status st = stub_->GetModelInfo(&ctx, v1::GetModelInfoRequest(), &resp);
  if (!st.ok()) return FromGrpcStatus(st);
  return resp;
}

absl::StatusOr<v1::ServerInfo> InferenceClient::ServerInfo() {
  auto deadline = Ready(absl::Seconds(10));
  if (!deadline.ok()) return deadline.status();
  grpc::ClientContext ctx;
  AddCredentials(ctx, security_);
  SetDeadline(ctx, *deadline);
  v1::ServerInfo resp;
  const grpc::Status st = stub_->GetServerInfo(&ctx, v1::GetServerInfoRequest(), &resp);
  if (!st.ok()) return FromGrpcStatus(st);
  return resp;
}

absl::StatusOr<std::unique_ptr<ControlClient>> ControlClient::Connect(const std::string& address,
                                                                      const ClientSecurity& security) {
  // Statuses with per-layer loads and placement files of large models run to megabytes.
  DSV4_ASSIGN_OR_RETURN(auto channel, MakeChannel(address, security, 64 << 20));
  auto c = std::make_unique<ControlClient>();
  c->channel_ = channel;
  c->stub_ = v1::ControlPlane::NewStub(c->channel_);
  c->security_ = security;
  c->address_ = address;
  return c;
}

absl::StatusOr<absl::Time> ControlClient::Ready(absl::Duration timeout) {
  const absl::Time deadline = DeadlineOf(timeout);
  if (absl::Status st = AwaitFirstConnect(*channel_, connected_, address_, deadline); !st.ok()) return st;
  return deadline;
}

absl::StatusOr<v1::ClusterStatus> ControlClient::Status(bool expert_layer_load) {
  auto deadline = Ready(absl::Seconds(10));
  if (!deadline.ok()) return deadline.status();
  grpc::ClientContext ctx;
  AddCredentials(ctx, security_);
  SetDeadline(ctx, *deadline);
  v1::StatusRequest req;
  req.set_expert_layer_load(expert_layer_load);
  v1::ClusterStatus resp;
  const grpc::Status st = stub_->Status(&ctx, req, &resp);
  if (!st.ok()) return FromGrpcStatus(st);
  return resp;
}

absl::StatusOr<v1::RebalanceResponse> ControlClient::Rebalance(bool dry_run, double timeout_seconds) {
  // The switch waits for the next step; planning and loading views take a little more.
  auto deadline = Ready(absl::Seconds((timeout_seconds > 0 ? timeout_seconds : 60) + 30));
  if (!deadline.ok()) return deadline.status();
  grpc::ClientContext ctx;
  AddCredentials(ctx, security_);
  SetDeadline(ctx, *deadline);
  v1::RebalanceRequest req;
  req.set_dry_run(dry_run);
  req.set_timeout_seconds(timeout_seconds);
  v1::RebalanceResponse resp;
  const grpc::Status st = stub_->Rebalance(&ctx, req, &resp);
  if (!st.ok()) return FromGrpcStatus(st);
  return resp;
}

absl::StatusOr<v1::PlacementResponse> ControlClient::GetPlacement() {
  auto deadline = Ready(absl::Seconds(10));
  if (!deadline.ok()) return deadline.status();
  grpc::ClientContext ctx;
  AddCredentials(ctx, security_);
  SetDeadline(ctx, *deadline);
  v1::PlacementResponse resp;
  const grpc::Status st = stub_->GetPlacement(&ctx, v1::PlacementRequest(), &resp);
  if (!st.ok()) return FromGrpcStatus(st);
  return resp;
}

absl::Status ControlClient::Drain(double grace_seconds) {
  auto deadline = Ready(absl::Seconds(10));
  if (!deadline.ok()) return deadline.status();
  grpc::ClientContext ctx;
  AddCredentials(ctx, security_);
  SetDeadline(ctx, *deadline);
  v1::DrainRequest req;
  req.set_grace_seconds(grace_seconds);
  v1::DrainResponse resp;
  return FromGrpcStatus(stub_->Drain(&ctx, req, &resp));
}

absl::Status ControlClient::Shutdown() {
  auto deadline = Ready(absl::Seconds(10));
  if (!deadline.ok()) return deadline.status();
  grpc::ClientContext ctx;
  AddCredentials(ctx, security_);
  SetDeadline(ctx, *deadline);
  v1::ShutdownResponse resp;
  return FromGrpcStatus(stub_->Shutdown(&ctx, v1::ShutdownRequest(), &resp));
}

}  // namespace dsv4
