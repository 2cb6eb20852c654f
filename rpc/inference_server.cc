#include "rpc/inference_server.h"

#include <grpcpp/ext/proto_server_reflection_plugin.h>
#include <grpcpp/health_check_service_interface.h>

#include <algorithm>
#include <chrono>

#include "absl/container/flat_hash_set.h"

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "rpc/grpc_status.h"

namespace dsv4 {
namespace {

constexpr const char* kServiceName = "dsv4.v1.Inference";
// How often a waiting stream handler looks at its client (cancellation, disconnect, deadline).
constexpr absl::Duration kPoll = absl::Milliseconds(10);

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

}  // namespace

class InferenceServer::Service final : public v1::Inference::Service {
 public:
  // A stream's write in progress, for the stall watchdog.
  struct Watch {
    grpc::ServerContext* ctx;
    absl::Time writing_since = absl::InfiniteFuture();
    bool cancelled = false;
  };

  // Cancels every stream whose write has waited longer than `timeout` (its client reads nothing).
  void CancelStalled(absl::Time now, absl::Duration timeout) {
    absl::MutexLock l(&watch_mu_);
    for (Watch* w : watches_)
      if (!w->cancelled && now - w->writing_since > timeout) {
        w->ctx->TryCancel();
        w->cancelled = true;
      }
  }

  explicit Service(ServerIdentity identity) : start_(absl::Now()), identity_(std::move(identity)) {}

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

  grpc::Status Generate(grpc::ServerContext* ctx, const v1::GenerateRequest* req,
                        grpc::ServerWriter<v1::GenerateResponse>* writer) override {
    Engine* engine;
    const Tokenizer* tokenizer;
    InputLimits limits;
    {
      absl::MutexLock l(&mu_);
      if (engine_ == nullptr || state_ != v1::SERVER_STATE_SERVING)
        return grpc::Status(grpc::StatusCode::UNAVAILABLE, NotServingMessage());
      engine = engine_, tokenizer = tokenizer_, limits = limits_;
    }
    auto spec = ToGenerateSpec(*req, tokenizer, limits);
    if (!spec.ok()) {
      engine->CountRejected();
      return ToGrpcStatus(spec.status());
    }
    if (ctx->IsCancelled()) return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled before it started");
    auto handle = engine->Submit(std::move(*spec));
    if (!handle.ok()) return ToGrpcStatus(handle.status());
    const std::string& id = (*handle)->id();
    Watch watch{ctx};
    {
      absl::MutexLock l(&watch_mu_);
      watches_.insert(&watch);
    }
    struct Unwatch {
      Service* s;
      Watch* w;
      ~Unwatch() {
        absl::MutexLock l(&s->watch_mu_);
        s->watches_.erase(w);
      }
    } unwatch{this, &watch};
    for (;;) {
      auto out = (*handle)->Next(kPoll);
      if (out.ok()) {
        v1::GenerateResponse resp;
        ToProto(id, std::move(*out), &resp);
        {
          absl::MutexLock l(&watch_mu_);
          watch.writing_since = absl::Now();
        }
        const bool written = writer->Write(resp);
        absl::MutexLock l(&watch_mu_);
        watch.writing_since = absl::InfiniteFuture();
        if (!written) {  // the client is gone, or read nothing for the stall timeout
          engine->Abort(id);
          return grpc::Status(grpc::StatusCode::CANCELLED,
                              watch.cancelled ? "the client stopped reading its stream" : "the client went away");
        }
        continue;
      }
      if (absl::IsDeadlineExceeded(out.status())) {  // nothing yet: is the client still there?
        if (ctx->IsCancelled()) {
          engine->Abort(id);
          return grpc::Status(grpc::StatusCode::CANCELLED, "cancelled by the client");
        }
        continue;
      }
      if (absl::IsOutOfRange(out.status())) return grpc::Status::OK;  // finished
      return ToGrpcStatus(out.status());
    }
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

  const absl::Time start_;
  absl::Mutex watch_mu_;
  absl::flat_hash_set<Watch*> watches_ ABSL_GUARDED_BY(watch_mu_);
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
