#include "rpc/http_gateway.h"

#include <httplib.h>
#include <sys/socket.h>

#include <ctime>
#include <random>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "nlohmann/json.hpp"
#include "rpc/openai.h"
#include "rpc/security.h"

namespace dsv4 {
namespace {

using Json = nlohmann::json;
using Clock = std::chrono::steady_clock;

constexpr absl::Duration kPoll = absl::Milliseconds(10);    // a stream's wait for the engine's next piece
constexpr auto kKeepAlive = std::chrono::seconds(1);        // SSE comment while no token is ready
constexpr char kJson[] = "application/json";
constexpr int kListenBacklog = 1024;  // connections the kernel holds before they are accepted

void SendError(httplib::Response& res, const absl::Status& status) {
  res.status = HttpStatusOf(status);
  res.set_content(ErrorBody(status), kJson);
}

// Engine errors name sampling fields as "sampling.<field>" and token ids as "tokens": the
// OpenAI parameter is the same name without the prefix, and "prompt".
absl::Status WithParam(absl::Status st) {
  if (!ParamOf(st).empty()) return st;
  absl::string_view m = st.message();
  std::string param;
  if (absl::StartsWith(m, "sampling.")) {
    m.remove_prefix(9);
    param = std::string(m.substr(0, m.find_first_of(" :[")));
  } else if (absl::StartsWith(m, "tokens") || absl::StartsWith(m, "text")) {
    param = "prompt";
  } else if (absl::StartsWith(m, "chat")) {
    param = "messages";
  }
  if (!param.empty()) st.SetPayload("dsv4.openai.param", absl::Cord(param));
  return st;
}

std::string NewId(const char* prefix) {
  thread_local std::mt19937_64 rng(std::random_device{}() ^ (static_cast<uint64_t>(std::random_device{}()) << 32));
  return absl::StrFormat("%s%016x%08x", prefix, rng(), static_cast<uint32_t>(rng()));
}

bool IsLoopback(const std::string& addr) {
  return absl::StartsWith(addr, "127.") || addr == "::1" || absl::StartsWith(addr, "::ffff:127.");
}

const char* StateName(v1::ServerState s) {
  switch (s) {
    case v1::SERVER_STATE_LOADING:
      return "loading";
    case v1::SERVER_STATE_SERVING:
      return "serving";
    case v1::SERVER_STATE_DRAINING:
      return "draining";
    case v1::SERVER_STATE_STOPPED:
      return "stopped";
    case v1::SERVER_STATE_FAILED:
      return "failed";
    default:
      return "unknown";
  }
}

// One streamed request, shared by the content provider and its releaser.
struct Stream {
  Engine* engine;
  std::shared_ptr<RequestHandle> handle;
  OpenAiResponse response;
  Clock::time_point last_write = Clock::now();
  bool finished = false;  // the last event went out: nothing to abort
};

}  // namespace

class HttpGateway::Impl {
 public:
  Impl(const HttpOptions& o, std::string build_id) : opt_(o), build_id_(std::move(build_id)), created_(std::time(nullptr)) {}

  absl::Status Start() {
    const bool tls = !opt_.tls_cert_file.empty() || !opt_.tls_key_file.empty();
    if (tls) {
      if (opt_.tls_cert_file.empty() || opt_.tls_key_file.empty())
        return absl::InvalidArgumentError("HTTPS needs both a certificate and a key file");
      auto ssl = std::make_unique<httplib::SSLServer>(opt_.tls_cert_file.c_str(), opt_.tls_key_file.c_str());
      if (!ssl->is_valid())
        return absl::InvalidArgumentError(absl::StrCat("cannot use the TLS certificate ", opt_.tls_cert_file,
                                                       " with key ", opt_.tls_key_file));
      server_ = std::move(ssl);
    } else {
      server_ = std::make_unique<httplib::Server>();
    }
    tls_ = tls;
    const int threads = opt_.threads;
    server_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
    server_->set_payload_max_length(static_cast<size_t>(opt_.max_body_bytes));
    server_->set_read_timeout(std::chrono::microseconds(absl::ToInt64Microseconds(opt_.read_timeout)));
    server_->set_write_timeout(std::chrono::microseconds(absl::ToInt64Microseconds(opt_.write_timeout)));
    server_->set_keep_alive_timeout(std::max<time_t>(1, absl::ToInt64Seconds(opt_.keep_alive)));
    server_->set_keep_alive_max_count(1000);
    Routes();
    // Debian's build listens with a backlog of 5 (CPPHTTPLIB_LISTEN_BACKLOG, compiled into the
    // library): a burst of connections overflows it and some of them are reset. The socket is
    // recorded as it is created, and listen() again raises its backlog (Linux allows this).
    int listen_fd = -1;
    server_->set_socket_options([&listen_fd](int fd) {
      const int yes = 1;
      setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));  // what the library's default sets
      listen_fd = fd;
    });
    port_ = opt_.port == 0 ? server_->bind_to_any_port(opt_.host)
                           : (server_->bind_to_port(opt_.host, opt_.port) ? opt_.port : -1);
    if (port_ <= 0)
      return absl::UnavailableError(
          absl::StrCat("cannot listen for HTTP on ", opt_.host, ":", opt_.port, " (in use, or not a local address?)"));
    if (listen_fd >= 0 && ::listen(listen_fd, kListenBacklog) != 0)
      return absl::UnavailableError(absl::StrCat("listen(", kListenBacklog, ") on the HTTP port failed"));
    thread_ = std::thread([this] { server_->listen_after_bind(); });
    return absl::OkStatus();
  }

  ~Impl() { Shutdown(); }

  void Shutdown() {
    if (server_ == nullptr) return;
    server_->stop();
    if (thread_.joinable()) thread_.join();
    server_.reset();
  }

  int port() const { return port_; }

  void Attach(Engine* engine, const Tokenizer* tokenizer, std::string model, InputLimits limits) {
    absl::MutexLock l(&mu_);
    engine_ = engine, tokenizer_ = tokenizer, model_ = std::move(model), limits_ = limits;
  }
  void SetState(v1::ServerState s) {
    absl::MutexLock l(&mu_);
    state_ = s;
  }
  void SetMetrics(std::function<std::string()> render) {
    absl::MutexLock l(&mu_);
    metrics_ = std::move(render);
  }

 private:
  struct Snapshot {
    Engine* engine;
    const Tokenizer* tokenizer;
    std::string model;
    InputLimits limits;
    v1::ServerState state;
  };
  Snapshot Take() const {
    absl::MutexLock l(&mu_);
    return {engine_, tokenizer_, model_, limits_, state_};
  }

  void Routes() {
    using httplib::Request;
    using httplib::Response;
    server_->set_pre_routing_handler([this](const Request& req, Response& res) {
      if (opt_.token.empty() || req.path == "/health" || req.path == "/ready")
        return httplib::Server::HandlerResponse::Unhandled;
      if (!tls_ && !IsLoopback(req.remote_addr)) {
        SendError(res, absl::UnauthenticatedError(
                           "this server takes its bearer token over TLS, or from a loopback client only"));
        return httplib::Server::HandlerResponse::Handled;
      }
      if (!ConstantTimeEqual(req.get_header_value("Authorization"), "Bearer " + opt_.token)) {
        SendError(res, absl::UnauthenticatedError("missing or wrong bearer token (Authorization: Bearer <token>)"));
        return httplib::Server::HandlerResponse::Handled;
      }
      return httplib::Server::HandlerResponse::Unhandled;
    });
    // Answers httplib produced itself (no route, wrong method, body too large, bad request line).
    server_->set_error_handler([this](const Request& req, Response& res) {
      if (!res.body.empty()) return;
      absl::Status st;
      switch (res.status) {
        case 404:
          st = absl::NotFoundError(absl::StrCat("no route ", req.method, " ", req.path));
          break;
        case 405:
          st = absl::InvalidArgumentError(absl::StrCat(req.method, " is not allowed on ", req.path));
          break;
        case 413:
          st = absl::InvalidArgumentError(
              absl::StrCat("the request body is larger than ", opt_.max_body_bytes, " bytes"));
          break;
        case 414:
        case 431:
          st = absl::InvalidArgumentError("the request line or headers are too long");
          break;
        default:
          st = absl::InvalidArgumentError(absl::StrCat("bad request (HTTP ", res.status, ")"));
      }
      const int code = res.status;
      SendError(res, st);
      res.status = code;
    });
    server_->set_exception_handler([](const Request&, Response& res, std::exception_ptr) {
      SendError(res, absl::InternalError("internal error"));
    });
    server_->Get("/health", [this](const Request&, Response& res) {
      const v1::ServerState s = Take().state;
      if (s == v1::SERVER_STATE_STOPPED || s == v1::SERVER_STATE_FAILED)
        return SendError(res, absl::UnavailableError(absl::StrCat("the server is ", StateName(s))));
      res.set_content(Json{{"status", "ok"}, {"state", StateName(s)}}.dump(), kJson);
    });
    server_->Get("/ready", [this](const Request&, Response& res) {
      const v1::ServerState s = Take().state;
      if (s != v1::SERVER_STATE_SERVING)
        return SendError(res, absl::UnavailableError(absl::StrCat("the server is ", StateName(s))));
      res.set_content(Json{{"status", "ready"}}.dump(), kJson);
    });
    server_->Get("/version", [this](const Request&, Response& res) {
      res.set_content(Json{{"version", build_id_}}.dump(), kJson);
    });
    server_->Get("/metrics", [this](const Request&, Response& res) {
      std::function<std::string()> render;
      {
        absl::MutexLock l(&mu_);
        render = metrics_;
      }
      if (!render) return SendError(res, absl::UnavailableError("metrics are not available yet"));
      res.set_content(render(), "text/plain; version=0.0.4; charset=utf-8");
    });
    server_->Get("/v1/models", [this](const Request&, Response& res) {
      const Snapshot s = Take();
      if (s.engine == nullptr) return SendError(res, absl::UnavailableError("the model is loading"));
      Json model{{"id", s.model},
                 {"object", "model"},
                 {"created", created_},
                 {"owned_by", "dsv4"},
                 {"max_model_len", s.limits.max_model_len}};
      res.set_content(Json{{"object", "list"}, {"data", Json::array({model})}}.dump(), kJson);
    });
    server_->Post("/v1/completions",
                  [this](const Request& req, Response& res) { Generate(OpenAiApi::kCompletions, req, res); });
    server_->Post("/v1/chat/completions",
                  [this](const Request& req, Response& res) { Generate(OpenAiApi::kChat, req, res); });
  }

  void Generate(OpenAiApi api, const httplib::Request& req, httplib::Response& res) {
    const Snapshot s = Take();
    if (s.engine == nullptr || s.state != v1::SERVER_STATE_SERVING)
      return SendError(res, absl::UnavailableError(absl::StrCat("the server is ", StateName(s.state),
                                                                " and admits no requests")));
    auto parsed = ParseOpenAiRequest(api, req.body, s.model);
    if (!parsed.ok()) {
      s.engine->CountRejected();
      return SendError(res, parsed.status());
    }
    const std::string id = NewId(api == OpenAiApi::kChat ? "chatcmpl-" : "cmpl-");
    parsed->request.set_request_id(id);
    auto spec = ToGenerateSpec(parsed->request, s.tokenizer, s.limits);
    if (!spec.ok()) {
      s.engine->CountRejected();
      return SendError(res, WithParam(spec.status()));
    }
    auto handle = s.engine->Submit(std::move(*spec));
    if (!handle.ok()) return SendError(res, WithParam(handle.status()));
    res.set_header("X-Request-Id", id);
    OpenAiResponse response(*parsed, id, static_cast<int64_t>(std::time(nullptr)), s.model, s.tokenizer, build_id_);
    if (!parsed->stream) {
      for (;;) {
        auto out = (*handle)->Next(absl::Milliseconds(100));
        if (out.ok()) {
          response.Add(std::move(*out));
        } else if (absl::IsOutOfRange(out.status())) {
          res.set_content(response.Body(), kJson);
          return;
        } else if (!absl::IsDeadlineExceeded(out.status())) {
          return SendError(res, out.status());
        }
      }
    }
    auto stream = std::make_shared<Stream>(Stream{s.engine, *handle, std::move(response)});
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [stream](size_t, httplib::DataSink& sink) {
          auto write = [&](const std::string& data) {
            stream->last_write = Clock::now();
            return sink.write(data.data(), data.size());
          };
          auto out = stream->handle->Next(kPoll);
          if (out.ok()) {
            const std::string events = stream->response.Events(*out);
            return events.empty() || write(events);
          }
          if (absl::IsDeadlineExceeded(out.status()))  // nothing yet: is the client still there?
            return Clock::now() - stream->last_write < kKeepAlive || write(": keep-alive\n\n");
          const std::string tail = absl::IsOutOfRange(out.status()) ? stream->response.End()
                                                                    : OpenAiResponse::ErrorEvent(out.status());
          stream->finished = true;
          if (!write(tail)) return false;
          sink.done();
          return true;
        },
        [stream](bool) {
          // The client went away (or the server stopped) before the end: free the request's cache.
          if (!stream->finished) stream->engine->Abort(stream->handle->id());
        });
  }

  const HttpOptions opt_;
  const std::string build_id_;
  const int64_t created_;
  std::unique_ptr<httplib::Server> server_;
  bool tls_ = false;
  int port_ = 0;
  std::thread thread_;
  mutable absl::Mutex mu_;
  Engine* engine_ ABSL_GUARDED_BY(mu_) = nullptr;
  const Tokenizer* tokenizer_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::string model_ ABSL_GUARDED_BY(mu_);
  InputLimits limits_ ABSL_GUARDED_BY(mu_);
  v1::ServerState state_ ABSL_GUARDED_BY(mu_) = v1::SERVER_STATE_LOADING;
  std::function<std::string()> metrics_ ABSL_GUARDED_BY(mu_);
};

absl::StatusOr<std::unique_ptr<HttpGateway>> HttpGateway::Start(const HttpOptions& options, std::string build_id) {
  auto impl = std::make_unique<Impl>(options, std::move(build_id));
  if (absl::Status st = impl->Start(); !st.ok()) return st;
  return std::unique_ptr<HttpGateway>(new HttpGateway(std::move(impl)));
}

HttpGateway::HttpGateway(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
HttpGateway::~HttpGateway() = default;
int HttpGateway::port() const { return impl_->port(); }
void HttpGateway::Attach(Engine* engine, const Tokenizer* tokenizer, std::string model, InputLimits limits) {
  impl_->Attach(engine, tokenizer, std::move(model), limits);
}
void HttpGateway::SetState(v1::ServerState state) { impl_->SetState(state); }
void HttpGateway::SetMetrics(std::function<std::string()> render) { impl_->SetMetrics(std::move(render)); }
void HttpGateway::Shutdown() { impl_->Shutdown(); }

}  // namespace dsv4
