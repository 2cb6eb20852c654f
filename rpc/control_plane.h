// The control plane (DESIGN.md, "Control plane"): the leader's Coordinator and every other
// rank's WorkerAgent.
//
// Each worker Joins with its rank, host, devices, memory, build id and config digest; a mismatch
// with the leader's is FAILED_PRECONDITION for the worker and a fatal error for the leader, so
// every rank stops with the same message. Then it keeps a Heartbeat stream open, sending its step,
// per-expert load and cache bytes every interval. The coordinator declares a rank lost when its
// stream ends without a goodbye (a killed process: at once) or when it is silent for longer than
// the heartbeat timeout (a stopped process); a worker whose stream breaks, or who hears nothing
// for the timeout, has lost the coordinator. Both sides then fail stop: the callbacks decide how.
//
// Thread-safety: every method may be called from any thread; callbacks run on gRPC's or the
// watchdog's threads and must not block for long.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "dsv4/v1/control.grpc.pb.h"
#include "rpc/security.h"

namespace dsv4 {

struct CoordinatorOptions {
  int world_size = 1;
  std::string build_id, config_digest, layout;
  absl::Duration heartbeat_interval = absl::Milliseconds(500);
  absl::Duration heartbeat_timeout = absl::Seconds(5);
};

struct CoordinatorCallbacks {
  std::function<void(const absl::Status&)> on_rank_lost;  // first loss only; the job must fail
  std::function<void(absl::Duration grace)> on_drain;
  std::function<void()> on_shutdown;
  // The leader's own row of Status (rank 0) and the server state / error.
  std::function<void(v1::RankStatus*)> leader_status;
  std::function<std::string()> server_state;
  // Expert placement: Rebalance and GetPlacement (UNIMPLEMENTED when unset).
  std::function<absl::StatusOr<v1::RebalanceResponse>(const v1::RebalanceRequest&)> rebalance;
  std::function<absl::StatusOr<v1::PlacementResponse>()> placement;
};

class Coordinator final : public v1::ControlPlane::Service {
 public:
  Coordinator(CoordinatorOptions options, CoordinatorCallbacks callbacks);
  ~Coordinator() override;

  // Waits until every other rank has joined: OK, the first Join mismatch, or DEADLINE_EXCEEDED.
  absl::Status WaitForRanks(absl::Duration timeout);
  // Waits until every joined rank has said goodbye (or was lost): OK or DEADLINE_EXCEEDED.
  absl::Status WaitForRanksToLeave(absl::Duration timeout);
  // The job is failing for `reason` (reported by Status).
  void SetError(const std::string& reason);
  // What Status answers: every rank's last report (rank 0's from the leader_status callback).
  v1::ClusterStatus Snapshot();
  // The per-layer routed-token counts of every worker rank's latest heartbeat, summed
  // ([layers * experts]; empty before any beat carried them).
  std::vector<int64_t> WorkerExpertLoadByLayer() const;

  grpc::Status Join(grpc::ServerContext*, const v1::JoinRequest* req, v1::JoinResponse* resp) override;
  grpc::Status Heartbeat(grpc::ServerContext* ctx, grpc::ServerReaderWriter<v1::BeatAck, v1::Beat>* stream) override;
  grpc::Status Status(grpc::ServerContext*, const v1::StatusRequest*, v1::ClusterStatus* resp) override;
  grpc::Status Drain(grpc::ServerContext*, const v1::DrainRequest* req, v1::DrainResponse*) override;
  grpc::Status Shutdown(grpc::ServerContext*, const v1::ShutdownRequest*, v1::ShutdownResponse*) override;
  grpc::Status Rebalance(grpc::ServerContext*, const v1::RebalanceRequest* req, v1::RebalanceResponse* resp) override;
  grpc::Status GetPlacement(grpc::ServerContext*, const v1::PlacementRequest*, v1::PlacementResponse* resp) override;

 private:
  enum class RankState { kAbsent, kJoined, kAlive, kLeft, kLost };
  struct Rank {
    RankState state = RankState::kAbsent;
    v1::JoinRequest join;
    int64_t step = 0, cache_bytes = 0;
    std::vector<int64_t> expert_load, expert_layer_load;
    double step_seconds = 0;
    int64_t busy_steps = 0;
    absl::Time last_beat;
  };
  void Lost(int rank, const std::string& why) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Watchdog();

  const CoordinatorOptions opt_;
  const CoordinatorCallbacks cb_;
  mutable absl::Mutex mu_;
  std::vector<Rank> ranks_ ABSL_GUARDED_BY(mu_);
  absl::Status join_error_ ABSL_GUARDED_BY(mu_);
  bool lost_reported_ ABSL_GUARDED_BY(mu_) = false;
  std::string error_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread watchdog_;
};

// A gRPC server for the control plane on `host:port` (0 = any free port).
struct ControlServer {
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};
absl::StatusOr<ControlServer> StartControlServer(const std::string& host, int port, const ServerSecurity& security,
                                                 Coordinator* coordinator);

class WorkerAgent {
 public:
  // Joins the coordinator at `address`, retrying while it is not reachable yet, up to `timeout`.
  // FAILED_PRECONDITION when the coordinator refuses this rank (a mismatch).
  static absl::StatusOr<std::unique_ptr<WorkerAgent>> Join(const std::string& address, const ClientSecurity& security,
                                                           const v1::JoinRequest& request, absl::Duration timeout);
  ~WorkerAgent();

  // Starts the heartbeat: `beat` fills each beat (step, load, ...); `on_lost` runs once if the
  // coordinator goes away (the stream breaks, or no answer within the heartbeat timeout).
  void Start(std::function<void(v1::Beat*)> beat, std::function<void(const absl::Status&)> on_lost);
  // Says goodbye and closes the stream (the rank is stopping normally).
  void Leave();

 private:
  WorkerAgent() = default;
  void WriterLoop();
  void ReaderLoop();

  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::ControlPlane::Stub> stub_;
  ClientSecurity security_;
  int32_t rank_ = 0;
  absl::Duration interval_, timeout_;
  std::function<void(v1::Beat*)> beat_;
  std::function<void(const absl::Status&)> on_lost_;
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReaderWriter<v1::Beat, v1::BeatAck>> stream_;
  absl::Mutex mu_;
  absl::CondVar wake_;
  bool leaving_ ABSL_GUARDED_BY(mu_) = false;
  bool lost_reported_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time last_ack_ ABSL_GUARDED_BY(mu_);
  std::thread writer_, reader_;
};

}  // namespace dsv4
