// The life of a `dsv4 serve` job on one rank, from listening to the last exit.
//
// The leader (world rank 0) starts listening first (health NOT_SERVING while it loads; with
// --http-port, the OpenAI-compatible HTTP gateway too, /ready 503), then the control plane; loads its share of the model; tells the other ranks the control-plane address
// (MPI broadcast); waits for every rank to Join; sends one warm-up request through every rank;
// and only then turns health SERVING. Its main thread runs the engine loop (MPI calls stay on the
// main thread). Every other rank loads its share, joins, keeps a heartbeat and mirrors the
// leader's steps.
//
// Ending:
//  - SIGTERM or SIGINT to the leader, or Drain on the control plane: health NOT_SERVING, no new
//    requests, in-flight ones finish within drain_grace (the rest end with UNAVAILABLE), every
//    rank stops, exit 0. A second signal exits at once (status 1).
//  - Shutdown on the control plane: the same with no grace.
//  - A lost rank: health NOT_SERVING, in-flight requests end with UNAVAILABLE, the job exits
//    non-zero. A worker that loses the leader exits non-zero.
//
// Expert rebalancing (leader): Rebalance on the control plane, or every --rebalance-every steps,
// plans EPLB from the routed-token counts the heartbeats carried since the last placement and
// switches every rank at the next step (the step plan carries the placement).
// Workers ignore SIGTERM/SIGINT: they stop when the leader tells them, or when it is gone.
#pragma once

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "base/flags.h"
#include "rpc/control_plane.h"
#include "rpc/http_gateway.h"
#include "rpc/inference_server.h"
#include "rpc/metrics.h"
#include "runtime/runtime.h"
#include "runtime/serving/engine.h"

namespace dsv4 {

struct ServeOptions {
  RuntimeOptions runtime;
  EngineOptions engine;
  EndpointOptions endpoint;  // the inference port, with its security
  bool http = false;         // the HTTP gateway (its token and TLS files are the endpoint's)
  HttpOptions http_options;
  std::string control_host = "127.0.0.1";
  int control_port = 0;
  std::string info_file;  // {host, port, http_port, control, pid} as JSON once listening ("" = none)
  absl::Duration drain_grace = absl::Seconds(30);
  absl::Duration heartbeat_timeout = absl::Seconds(10);
  absl::Duration join_timeout = absl::Seconds(300);
  absl::Duration linger = absl::Seconds(1);  // stream handlers' time to tell clients before a failed job exits
  int64_t rebalance_every = 0;  // steps between automatic expert rebalances (0: only `dsv4 ctl rebalance`)
};

// `dsv4 serve`'s flags (the runtime's included), and the options they give.
void AddServeFlags(Flags& flags);
absl::StatusOr<ServeOptions> ServeOptionsFromFlags(const Flags& flags);

class ServeJob {
 public:
  explicit ServeJob(ServeOptions options);
  ~ServeJob();

  // Runs this rank's part until the job is drained or shut down (OK) or fails. May end the
  // process itself where peers or other threads could otherwise hang (see the header comment).
  absl::Status Run();

 private:
  absl::Status RunLeader();
  absl::Status RunWorker();
  // Leader steps, in order.
  absl::Status Listen();
  absl::Status Load();
  void WarmUp();
  void WatchSignals();
  absl::Status Finish(const absl::Status& engine_status);
  // Leader reactions.
  void FailStop(const absl::Status& status);
  void Drain(absl::Duration grace);
  void Shutdown();
  void FillLeaderStatus(v1::RankStatus* status);
  // The state both endpoints announce (health, /ready).
  void SetState(v1::ServerState state);
  // The /metrics exposition: the engine's figures and every rank's.
  std::string RenderMetrics();
  // Plans (and unless dry_run applies) a rebalanced expert placement; one at a time.
  absl::StatusOr<v1::RebalanceResponse> Rebalance(const v1::RebalanceRequest& request);
  absl::StatusOr<v1::PlacementResponse> CurrentPlacement() const;
  void RebalanceEvery(int64_t steps);

  const ServeOptions opt_;
  std::string settings_, digest_;  // what every rank must agree on
  int world_size_ = 1, rank_ = 0;
  int64_t open_files_ = -1;  // the open-files soft limit, raised to the hard limit at start

  std::unique_ptr<InferenceServer> server_;
  std::unique_ptr<HttpGateway> http_;
  std::unique_ptr<ServingMetrics> metrics_;
  std::unique_ptr<Coordinator> coordinator_;
  ControlServer control_;
  std::string control_address_;
  std::unique_ptr<Runtime> runtime_;
  std::unique_ptr<Tokenizer> tokenizer_;
  std::unique_ptr<Engine> engine_;
  std::atomic<Engine*> engine_ptr_{nullptr};  // set once the engine can take calls
  std::atomic<const Model*> model_ptr_{nullptr};
  std::atomic<bool> failing_{false}, done_{false};
  absl::Mutex rebalance_mu_;
  // Every rank's per-layer routed-token counts at the last placement switch (the next plan balances
  // what was routed since).
  std::vector<int64_t> rebalance_snapshot_ ABSL_GUARDED_BY(rebalance_mu_);
};

}  // namespace dsv4
