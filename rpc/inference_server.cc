#include "rpc/inference_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <chrono>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "rpc/grpc_status.h"

namespace dsv4 {
namespace {

constexpr const char* kServiceName = "dsv4.v1.Inference";

v1::ServerState FromEngineState(EngineState s) {
  switch (s) {
    case EngineState::kServing:
      return v1::SERVER_STATE_SERVING;
    case EngineState::kDraining:
      return v1::SERVER_STATE_DRAINING;
    case EngineState::kStopped:
      return v1::SERVER_STATE_STOPPED;
    case EngineState::kFailed:
      return v1::SERVER_STATE_FAILED;
  }
  return v1::SERVER_STATE_UNSPECIFIED;
}

class GenerateReactor;

// One Generate stream: its request in the engine, and at most one write in flight. Pump takes the
// engine's next piece and starts its write, or finishes the call once the request has ended; the
// write's completion pumps again. A reaction of gRPC (a completed write, a cancellation) and the
// delivery thread may race: `mu` orders them, and gRPC's own operations (StartWrite, Finish) are
// started outside it, as a reaction may run on the thread that starts an operation.
struct Stream {
  Engine* engine = nullptr;
  std::shared_ptr<RequestHandle> handle;
  grpc::CallbackServerContext* ctx = nullptr;  // valid until the reactor's OnDone
  GenerateReactor* reactor = nullptr;          // valid until Finish has been started

  absl::Mutex mu;
  bool writing ABSL_GUARDED_BY(mu) = false;   // a write started and not completed
  bool finished ABSL_GUARDED_BY(mu) = false;  // Finish started (nothing starts after it)
  bool stalled ABSL_GUARDED_BY(mu) = false;   // the watchdog cancelled it: its client reads nothing
  absl::Time writing_since ABSL_GUARDED_BY(mu) = absl::InfiniteFuture();
  v1::GenerateResponse response;  // the write in flight's message (written only while !writing)

  void Pump();
  void WriteDone(bool ok);
  void Cancelled();
};

class GenerateReactor final : public grpc::ServerWriteReactor<v1::GenerateResponse> {
 public:
  // `forget` runs in OnDone, before the reactor goes: the server drops the stream from its lists.
  explicit GenerateReactor(std::function<void(const std::shared_ptr<Stream>&)> forget) : forget_(std::move(forget)) {}

  void Attach(std::shared_ptr<Stream> stream) { stream_ = std::move(stream); }

  void OnWriteDone(bool ok) override {
    if (stream_) stream_->WriteDone(ok);
  }
  void OnCancel() override {
    if (stream_) stream_->Cancelled();
  }
  void OnDone() override {
    if (stream_) {
      stream_->handle->SetNotify(nullptr);  // no delivery is queued for it after this
      forget_(stream_);
    }
    delete this;
  }

 private:
  std::function<void(const std::shared_ptr<Stream>&)> forget_;
  std::shared_ptr<Stream> stream_;
};

void Stream::Pump() {
  GenerateReactor* r;
  bool write;
  grpc::Status end;
  {
    absl::MutexLock l(&mu);
    if (finished || writing) return;
    auto out = handle->Next(absl::ZeroDuration());
    if (absl::IsDeadlineExceeded(out.status())) return;  // nothing new yet
    r = reactor;
    write = out.ok();
    if (write) {
      response.Clear();
      ToProto(handle->id(), std::move(*out), &response);
      writing = true;
      writing_since = absl::Now();
    } else {
      finished = true;
      end = absl::IsOutOfRange(out.status()) ? grpc::Status::OK : ToGrpcStatus(out.status());
    }
  }
  if (write) {
    r->StartWrite(&response);
  } else {
    r->Finish(end);
  }
}

void Stream::WriteDone(bool ok) {
  GenerateReactor* r;
  std::string why;
  {
    absl::MutexLock l(&mu);
    writing = false;
    writing_since = absl::InfiniteFuture();
    if (ok) {
      r = nullptr;
    } else {  // the client is gone, or read nothing for the stall timeout
      if (finished) return;
      finished = true;
      r = reactor;
      why = stalled ? "the client stopped reading its stream" : "the client went away";
    }
  }
  if (r == nullptr) return Pump();
  engine->Abort(handle->id());
  r->Finish(grpc::Status(grpc::StatusCode::CANCELLED, why));
}

void Stream::Cancelled() {
  engine->Abort(handle->id());  // frees its cache within a step, whatever happens below
  GenerateReactor* r;
  {
    absl::MutexLock l(&mu);
    if (finished || writing) return;  // a write in flight completes as failed and finishes there
    finished = true;
    r = reactor;
  }
  r->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client"));
}

}  // namespace

class InferenceServer::Service final : public v1::Inference::WithCallbackMethod_Generate<v1::Inference::Service> {
 public:
  // Cancels every stream whose write has waited longer than `timeout` (its client reads nothing).
  void CancelStalled(absl::Time now, absl::Duration timeout) {
    absl::MutexLock l(&watch_mu_);
    for (const std::shared_ptr<Stream>& s : streams_) {
      {
        absl::MutexLock sl(&s->mu);
        if (s->stalled || now - s->writing_since <= timeout) continue;
        s->stalled = true;
      }
      s->ctx->TryCancel();  // valid: the stream is listed until its OnDone
    }
  }

  explicit Service(ServerIdentity identity) : start_(absl::Now()), identity_(std::move(identity)) {
    deliverer_ = std::thread([this] { DeliveryLoop(); });
  }
  ~Service() override {
    {
      absl::MutexLock l(&deliver_mu_);
      stopping_ = true;
    }
    deliverer_.join();
  }

  void Attach(Engine* engine, const Tokenizer* tokenizer, v1::ModelInfo model, InputLimits limits,
              const std::string& layout) {
    absl::MutexLock l(&mu_);
    engine_ = engine, tokenizer_ = tokenizer, model_ = std::move(model), limits_ = limits;
    identity_.layout = layout;
  }
  void SetState(v1::ServerState s) {
    absl::MutexLock l(&mu_);
    state_ = s;
  }
  v1::ServerState state() const {
    absl::MutexLock l(&mu_);
    return state_;
  }

  grpc::ServerWriteReactor<v1::GenerateResponse>* Generate(grpc::CallbackServerContext* ctx,
                                                           const v1::GenerateRequest* req) override {
    auto* reactor = new GenerateReactor([this](const std::shared_ptr<Stream>& s) {
      absl::MutexLock l(&watch_mu_);
      streams_.erase(s);
    });
    auto refuse = [&](const grpc::Status& status) {
      reactor->Finish(status);
      return reactor;
    };
    Engine* engine;
    const Tokenizer* tokenizer;
    InputLimits limits;
    {
      absl::MutexLock l(&mu_);
      if (engine_ == nullptr || state_ != v1::SERVER_STATE_SERVING)
        return refuse(grpc::Status(grpc::StatusCode::UNAVAILABLE, NotServingMessage()));
      engine = engine_, tokenizer = tokenizer_, limits = limits_;
    }
    auto spec = ToGenerateSpec(*req, tokenizer, limits);
    if (!spec.ok()) {
      engine->CountRejected();
      return refuse(ToGrpcStatus(spec.status()));
    }
    if (ctx->IsCancelled()) return refuse(grpc::Status(grpc::StatusCode::CANCELLED, "cancelled before it started"));
    auto handle = engine->Submit(std::move(*spec));
    if (!handle.ok()) return refuse(ToGrpcStatus(handle.status()));
    auto stream = std::make_shared<Stream>();
    stream->engine = engine, stream->handle = std::move(*handle), stream->ctx = ctx, stream->reactor = reactor;
    reactor->Attach(stream);
    {
      absl::MutexLock l(&watch_mu_);
      streams_.insert(stream);
    }
    // The engine's news only queues the stream: the delivery thread takes the piece and writes.
    stream->handle->SetNotify([this, w = std::weak_ptr<Stream>(stream)] { Deliver(w); });
    return reactor;
  }

  grpc::Status Abort(grpc::ServerContext*, const v1::AbortRequest* req, v1::AbortResponse* resp) override {
    absl::MutexLock l(&mu_);
    resp->set_found(engine_ != nullptr && engine_->Abort(req->request_id()));
    return grpc::Status::OK;
  }

  grpc::Status GetModelInfo(grpc::ServerContext*, const v1::GetModelInfoRequest*, v1::ModelInfo* resp) override {
    absl::MutexLock l(&mu_);
    if (engine_ == nullptr) return grpc::Status(grpc::StatusCode::UNAVAILABLE, NotServingMessage());
    *resp = model_;
    return grpc::Status::OK;
  }

  grpc::Status GetServerInfo(grpc::ServerContext*, const v1::GetServerInfoRequest*, v1::ServerInfo* resp) override {
    absl::MutexLock l(&mu_);
    resp->set_state(state_);
    resp->set_build_id(identity_.build_id);
    resp->set_world_size(identity_.world_size);
    resp->set_layout(identity_.layout);
    resp->set_uptime_seconds(absl::ToDoubleSeconds(absl::Now() - start_));
    if (engine_ == nullptr) return grpc::Status::OK;
    const EngineStats s = engine_->Stats();
    if (state_ == v1::SERVER_STATE_SERVING || state_ == v1::SERVER_STATE_DRAINING) {
      // The engine may already be past the state the server announces (e.g. stopped after a drain).
      if (s.state != EngineState::kServing) resp->set_state(FromEngineState(s.state));
    }
    resp->set_active_requests(s.active);
    resp->set_queued_requests(s.queued);
    resp->set_max_queued_requests(s.max_queued);
    v1::CacheInfo* c = resp->mutable_cache();
    c->set_block_bytes(s.block_bytes);
    c->set_blocks_total(s.blocks_total);
    c->set_blocks_used(s.blocks_used);
    c->set_bytes_used(s.cache_bytes);
    c->set_sequences(s.cache_sequences);
    c->set_block_tokens(s.block_tokens);
    c->set_blocks_cached(s.blocks_cached);
    c->set_window_block_bytes(s.window_block_bytes);
    c->set_window_blocks_total(s.window_blocks_total);
    c->set_window_blocks_used(s.window_blocks_used);
    c->set_prefix_queried_tokens(s.prefix_queries);
    c->set_prefix_hit_tokens(s.prefix_hits);
    c->set_preemptions(s.preemptions);
    c->set_prefix_hit_rate(s.prefix_queries > 0 ? static_cast<double>(s.prefix_hits) / s.prefix_queries : 0.0);
    resp->set_step(s.step);
    resp->set_requests_received(s.received);
    resp->set_requests_completed(s.completed);
    resp->set_requests_aborted(s.aborted);
    resp->set_requests_failed(s.failed);
    resp->set_requests_rejected(s.rejected);
    resp->set_tokens_generated(s.tokens_generated);
    return grpc::Status::OK;
  }

 private:
  std::string NotServingMessage() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    switch (state_) {
      case v1::SERVER_STATE_LOADING:
        return "the server is loading the model and is not serving yet";
      case v1::SERVER_STATE_DRAINING:
      case v1::SERVER_STATE_STOPPED:
        return "the server is shutting down and admits no new requests";
      case v1::SERVER_STATE_FAILED:
        return "the server has failed and is exiting";
      default:
        return "the server is not serving";
    }
  }

  // Queues a stream with news for the delivery thread.
  void Deliver(std::weak_ptr<Stream> stream) {
    absl::MutexLock l(&deliver_mu_);
    ready_.push_back(std::move(stream));
  }

  // One thread for every stream: a step's pieces for N streams cost one wake-up, not N, and no
  // write is started under the engine's lock (a notification may run under it).
  void DeliveryLoop() {
    std::vector<std::weak_ptr<Stream>> batch;
    for (;;) {
      {
        absl::MutexLock l(&deliver_mu_);
        auto news = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(deliver_mu_) { return stopping_ || !ready_.empty(); };
        deliver_mu_.Await(absl::Condition(&news));
        if (ready_.empty()) return;  // stopping
        batch.swap(ready_);
      }
      for (const std::weak_ptr<Stream>& w : batch)
        if (std::shared_ptr<Stream> s = w.lock()) s->Pump();
      batch.clear();
    }
  }

  const absl::Time start_;
  absl::Mutex watch_mu_;
  absl::flat_hash_set<std::shared_ptr<Stream>> streams_ ABSL_GUARDED_BY(watch_mu_);  // until OnDone
  absl::Mutex deliver_mu_;
  std::vector<std::weak_ptr<Stream>> ready_ ABSL_GUARDED_BY(deliver_mu_);
  bool stopping_ ABSL_GUARDED_BY(deliver_mu_) = false;
  std::thread deliverer_;
  mutable absl::Mutex mu_;
  ServerIdentity identity_ ABSL_GUARDED_BY(mu_);
  Engine* engine_ ABSL_GUARDED_BY(mu_) = nullptr;
  const Tokenizer* tokenizer_ ABSL_GUARDED_BY(mu_) = nullptr;
  v1::ModelInfo model_ ABSL_GUARDED_BY(mu_);
  InputLimits limits_ ABSL_GUARDED_BY(mu_);
  v1::ServerState state_ ABSL_GUARDED_BY(mu_) = v1::SERVER_STATE_LOADING;
};

absl::StatusOr<std::unique_ptr<InferenceServer>> InferenceServer::Start(const EndpointOptions& options,
                                                                        ServerIdentity identity) {
  DSV4_ASSIGN_OR_RETURN(auto creds, MakeServerCredentials(options.security));
  std::unique_ptr<InferenceServer> s(new InferenceServer());
  s->service_ = std::make_unique<Service>(std::move(identity));
  grpc::EnableDefaultHealthCheckService(true);
  if (options.reflection) grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  DSV4_ASSIGN_OR_RETURN(s->listener_, Listener::Bind(options.host, options.port));
  s->port_ = s->listener_->port();
  grpc::ServerBuilder builder;
  auto acceptor = builder.experimental().AddExternalConnectionAcceptor(
      grpc::ServerBuilder::experimental_type::ExternalConnectionType::FROM_FD, creds);
  builder.RegisterService(s->service_.get());
  builder.SetMaxReceiveMessageSize(options.max_receive_bytes);
  builder.SetMaxSendMessageSize(64 << 20);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options.max_concurrent_streams);
  // Clients that ping too often are told to go away (row GR-07); the server pings idle
  // connections to find dead peers; connections that never finish their handshake, or stay idle,
  // are closed.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 5000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, static_cast<int>(absl::ToInt64Milliseconds(options.keepalive)));
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(options.keepalive_timeout)));
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(options.handshake_timeout)));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS,
                             static_cast<int>(absl::ToInt64Milliseconds(options.idle_timeout)));
  grpc::ResourceQuota quota("dsv4-inference");
  quota.SetMaxThreads(options.max_threads);
  builder.SetResourceQuota(quota);
  s->server_ = builder.BuildAndStart();
  if (s->server_ == nullptr) return absl::InternalError(absl::StrCat("cannot start the gRPC server on port ", s->port_));
  s->SetState(v1::SERVER_STATE_LOADING);
  InferenceServer* raw = s.get();
  s->watchdog_ = std::thread([raw, timeout = options.stream_stall_timeout] { raw->Watchdog(timeout); });
  s->listener_->Start(std::move(acceptor), options.max_connections, [raw](bool accepting) {
    raw->accepting_.store(accepting);
    raw->UpdateHealth();
  });
  return s;
}

void InferenceServer::Watchdog(absl::Duration stall_timeout) {
  const absl::Duration period = std::clamp(stall_timeout / 10, absl::Milliseconds(10), absl::Seconds(1));
  absl::MutexLock l(&watchdog_mu_);
  while (!watchdog_mu_.AwaitWithTimeout(absl::Condition(&stopping_), period))
    service_->CancelStalled(absl::Now(), stall_timeout);
}

InferenceServer::~InferenceServer() { Shutdown(absl::ZeroDuration()); }

void InferenceServer::Attach(Engine* engine, const Tokenizer* tokenizer, v1::ModelInfo model, InputLimits limits,
                             const std::string& layout) {
  service_->Attach(engine, tokenizer, std::move(model), limits, layout);
}

void InferenceServer::SetState(v1::ServerState state) {
  service_->SetState(state);
  UpdateHealth();
}

void InferenceServer::UpdateHealth() {
  absl::MutexLock l(&health_mu_);
  if (server_ == nullptr) return;
  const bool serving = service_->state() == v1::SERVER_STATE_SERVING && accepting_.load();
  grpc::HealthCheckServiceInterface* health = server_->GetHealthCheckService();
  if (health == nullptr) return;
  health->SetServingStatus("", serving);
  health->SetServingStatus(kServiceName, serving);
}

v1::ServerState InferenceServer::state() const { return service_->state(); }

void InferenceServer::Shutdown(absl::Duration grace) {
  if (watchdog_.joinable()) {
    {
      absl::MutexLock l(&watchdog_mu_);
      stopping_ = true;
    }
    watchdog_.join();
  }
  if (server_ == nullptr) return;
  listener_->Stop();  // no connection is handed to a server that is going away
  SetState(v1::SERVER_STATE_STOPPED);
  // Health Watch streams end too (they would otherwise keep Shutdown waiting).
  if (auto* health = server_->GetHealthCheckService()) health->Shutdown();
  server_->Shutdown(std::chrono::system_clock::now() + absl::ToChronoMicroseconds(grace));
  server_->Wait();
  server_.reset();
}

}  // namespace dsv4
