// The OpenAI-compatible HTTP endpoint of the leader, beside gRPC (cpp-httplib, from Debian):
//
//   POST /v1/completions, /v1/chat/completions   OpenAI's API (rpc/openai.h), streamed as
//                                                server-sent events with "stream": true
//   GET  /v1/models                              the served model
//   GET  /health                                 200 while the process can serve or is starting or
//                                                draining; 503 once it stopped or failed (liveness)
//   GET  /ready                                  200 only while SERVING (readiness)
//   GET  /metrics                                Prometheus text (rpc/metrics.h)
//   GET  /version                                the build id
//
// Like the gRPC endpoint it listens from the start: while the model loads, /ready and the /v1 routes
// answer 503. Errors use OpenAI's JSON error object with the matching HTTP code (400 bad request,
// 401 missing token, 404 unknown model or route, 413 body too large, 429 queue full, 503 not
// serving). A streamed request whose client goes away (a failed write, or the keep-alive comment
// sent every second while no token is ready) is aborted within a step; a client that stops reading
// is cut off after `write_timeout`. A non-streamed request runs to its end (at most max_tokens).
//
// With a token, /v1/* and /metrics need "Authorization: Bearer <token>"; /health and /ready stay
// open for probes. Without TLS a token is accepted from loopback clients only, as on the gRPC
// port. Thread-safety: every method may be called from any thread.
#pragma once

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "dsv4/v1/inference.pb.h"
#include "rpc/convert.h"
#include "runtime/serving/engine.h"

namespace dsv4 {

struct HttpOptions {
  std::string host = "127.0.0.1";
  int port = 0;                 // 0 = any free port (see HttpGateway::port)
  int threads = 256;            // connections served at once (a streaming request holds one)
  int64_t max_body_bytes = 4 << 20;
  absl::Duration read_timeout = absl::Seconds(10);
  absl::Duration write_timeout = absl::Seconds(30);  // a client that reads nothing for this long is cut off
  absl::Duration keep_alive = absl::Seconds(5);
  std::string tls_cert_file, tls_key_file;  // PEM; both set: HTTPS
  std::string token;                        // bearer token ("" = none)
};

class HttpGateway {
 public:
  static absl::StatusOr<std::unique_ptr<HttpGateway>> Start(const HttpOptions& options, std::string build_id);
  ~HttpGateway();

  int port() const;
  // The engine to serve (null detaches it); it must outlive the gateway or be detached first.
  // `model` is the name clients use (/v1/models and the requests' "model").
  void Attach(Engine* engine, const Tokenizer* tokenizer, std::string model, InputLimits limits);
  // SERVING opens the /v1 routes and /ready.
  void SetState(v1::ServerState state);
  // The /metrics body (null: 503).
  void SetMetrics(std::function<std::string()> render);
  // Stops accepting; streams in flight end (their requests are aborted).
  void Shutdown();

  class Impl;

 private:
  explicit HttpGateway(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace dsv4
