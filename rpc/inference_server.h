// The public inference endpoint (leader only): dsv4.v1.Inference, grpc.health.v1.Health and
// server reflection on one port.
//
// The server listens from the start, before the model is loaded: while loading, health is
// NOT_SERVING, GetServerInfo answers state LOADING, and Generate answers UNAVAILABLE. Health turns
// SERVING only when SetState(SERVING) is called — after a real warm-up request went through every
// rank (row DF-10) — and NOT_SERVING again on drain or failure.
//
// The port is bound and accepted by rpc/listener.h, not by gRPC: a port another process holds is
// an error, live connections are capped, and running out of file descriptors turns health
// NOT_SERVING until connections can be accepted again (instead of a port that never answers).
//
// Generate is asynchronous (gRPC's callback API): no thread waits per stream. It submits to the
// engine; the engine's notification queues the stream for one delivery thread, which takes the
// new piece and starts its write (one write in flight per stream; its completion takes the next).
// So a step's pieces for N streams cost one wake-up, and a write never starts on the engine's
// thread. A client that cancels, disconnects or passes its deadline aborts the request at once
// (OnCancel), freeing its cache within a step. A client that stops reading fills its stream's
// flow-control window and the write waits: after `stream_stall_timeout` a watchdog cancels that
// stream (row GR-04), so a reader that never drains holds no cache blocks for longer; the
// engine's own buffering of a request is bounded by its max_tokens.
//
// Thread-safety: every method may be called from any thread.
#pragma once

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "dsv4/v1/inference.grpc.pb.h"
#include "rpc/convert.h"
#include "rpc/listener.h"
#include "rpc/security.h"
#include "runtime/serving/engine.h"

namespace dsv4 {

struct EndpointOptions {
  std::string host = "127.0.0.1";
  int port = 0;  // 0 = any free port (see InferenceServer::port)
  ServerSecurity security;
  int max_receive_bytes = 4 << 20;   // larger requests: RESOURCE_EXHAUSTED (row GR-01)
  int max_concurrent_streams = 256;  // per HTTP/2 connection
  int max_threads = 1024;            // gRPC's resource quota for the synchronous calls (all but Generate)
  bool reflection = true;
  absl::Duration stream_stall_timeout = absl::Seconds(30);  // a write waiting this long cancels the stream
  // Transport limits (rpc/listener.h): live connections at most (further ones are closed at once;
  // also kept under the open-files limit), keepalive pings to find dead peers, and how long a
  // connection may take to handshake or stay idle before it is closed.
  int max_connections = 4096;
  absl::Duration keepalive = absl::Seconds(60), keepalive_timeout = absl::Seconds(20);
  absl::Duration handshake_timeout = absl::Seconds(10);
  absl::Duration idle_timeout = absl::Minutes(30);
};

// What GetServerInfo reports besides the engine's figures.
struct ServerIdentity {
  std::string build_id;
  int world_size = 1;
  std::string layout;
};

class InferenceServer {
 public:
  static absl::StatusOr<std::unique_ptr<InferenceServer>> Start(const EndpointOptions& options,
                                                                ServerIdentity identity);
  ~InferenceServer();

  int port() const { return port_; }
  // The engine to serve; it must outlive the server or be detached (nullptr) first. `layout` is
  // the job's parallel layout, for GetServerInfo.
  void Attach(Engine* engine, const Tokenizer* tokenizer, v1::ModelInfo model, InputLimits limits,
              const std::string& layout);
  // SERVING turns health SERVING (while the port accepts connections); every other state turns
  // it NOT_SERVING.
  void SetState(v1::ServerState state);
  v1::ServerState state() const;
  // Stops accepting calls; calls still running after `grace` are cancelled.
  void Shutdown(absl::Duration grace);

  class Service;  // the dsv4.v1.Inference implementation

 private:
  InferenceServer() = default;

  void Watchdog(absl::Duration stall_timeout);
  // Health from the state and whether the listener accepts.
  void UpdateHealth();

  std::unique_ptr<Service> service_;
  std::unique_ptr<Listener> listener_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  absl::Mutex watchdog_mu_;
  bool stopping_ ABSL_GUARDED_BY(watchdog_mu_) = false;
  std::thread watchdog_;
  std::atomic<bool> accepting_{true};
  absl::Mutex health_mu_;  // one health update at a time (state and listener threads)
};

}  // namespace dsv4
