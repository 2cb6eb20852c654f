// A client of the inference endpoint and the control plane, for `dsv4 generate`, `dsv4 ctl`,
// `dsv4 bench serve` and the end-to-end tests. Thread-safe (gRPC stubs are).
//
// Channels connect lazily. Until a channel has been connected once, every call first waits for
// the connection within the call's deadline (without one, kFirstConnectTimeout), while gRPC retries
// a refused or failed connect with backoff (100 ms growing to 1 s, rpc/security.h): a client
// started together with its server, or one of many connecting at once, does not fail on its first
// try. Once connected, a lost server is reported at once (UNAVAILABLE), never waited for: a call
// that may have reached the server is never sent twice.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dsv4/v1/control.grpc.pb.h"
#include "dsv4/v1/inference.grpc.pb.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "rpc/security.h"

namespace dsv4 {

// How long a call without a deadline waits for the first connection.
inline constexpr absl::Duration kFirstConnectTimeout = absl::Seconds(20);

// Waits, before a call, until `channel` has connected once (`connected` remembers it): UNAVAILABLE
// naming `address` and the channel's last state when it did not by `deadline`.
absl::Status AwaitFirstConnect(grpc::Channel& channel, std::atomic<bool>& connected, const std::string& address,
                               absl::Time deadline);

class InferenceClient {
 public:
  static absl::StatusOr<std::unique_ptr<InferenceClient>> Connect(const std::string& address,
                                                                  const ClientSecurity& security);

  // grpc.health.v1 Check of `service` ("" = the whole server).
  absl::StatusOr<grpc::health::v1::HealthCheckResponse::ServingStatus> Health(
      const std::string& service = "", absl::Duration timeout = absl::Seconds(5));
  // Polls health until SERVING, or DEADLINE_EXCEEDED after `timeout`.
  absl::Status WaitForServing(absl::Duration timeout);

  // Runs one Generate, calling `on_message` for each streamed message; returns the stream's
  // status. `timeout` (0 = none) becomes the call's deadline. `context_out`, when given, receives
  // the call's context so another thread may cancel it (TryCancel) while it runs.
  absl::Status Generate(const v1::GenerateRequest& request,
                        const std::function<void(const v1::GenerateResponse&)>& on_message,
                        absl::Duration timeout = absl::ZeroDuration(),
                        const std::function<void(grpc::ClientContext*)>& context_out = nullptr);
  absl::StatusOr<bool> Abort(const std::string& request_id);
  absl::StatusOr<v1::ModelInfo> ModelInfo();
  absl::StatusOr<v1::ServerInfo> ServerInfo();

  v1::Inference::Stub& stub() { return *stub_; }
  grpc::health::v1::Health::Stub& health_stub() { return *health_; }
  const ClientSecurity& security() const { return security_; }

 private:
  // The call's deadline (`timeout`, or none: infinite) after the first connection is up.
  absl::StatusOr<absl::Time> Ready(absl::Duration timeout);

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Inference::Stub> stub_;
  std::unique_ptr<grpc::health::v1::Health::Stub> health_;
  ClientSecurity security_;
  std::string address_;
  std::atomic<bool> connected_{false};
};

class ControlClient {
 public:
  static absl::StatusOr<std::unique_ptr<ControlClient>> Connect(const std::string& address,
                                                                const ClientSecurity& security);
  absl::StatusOr<v1::ClusterStatus> Status(bool expert_layer_load = false);
  absl::Status Drain(double grace_seconds);
  absl::Status Shutdown();
  absl::StatusOr<v1::RebalanceResponse> Rebalance(bool dry_run, double timeout_seconds);
  absl::StatusOr<v1::PlacementResponse> GetPlacement();

 private:
  absl::StatusOr<absl::Time> Ready(absl::Duration timeout);

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ControlPlane::Stub> stub_;
  ClientSecurity security_;
  std::string address_;
  std::atomic<bool> connected_{false};
};

}  // namespace dsv4
