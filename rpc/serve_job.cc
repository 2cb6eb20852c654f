#include "rpc/serve_job.h"

#include <signal.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/file.h"
#include "base/log.h"
#include "base/status.h"
#include "rpc/identity.h"
#include "rpc/listener.h"

namespace dsv4 {
namespace {

std::atomic<int> g_signals{0};

void OnSignal(int) { g_signals.fetch_add(1); }

std::string HostName() {
  char buf[256] = {};
  return gethostname(buf, sizeof(buf) - 1) == 0 ? std::string(buf) : "unknown";
}

// The leader's --info-file names a live job: it is removed however the job ends (a normal return,
// an error, ExitNow). Set once, by Listen, before any thread that may exit the process starts.
std::string g_info_file;

void RemoveInfoFile() {
  if (!g_info_file.empty()) ::unlink(g_info_file.c_str());
}

// Logs the error and ends this process at once with status 1 (no destructors: other threads may
// be inside MPI or blocked on a dead peer). mpirun then ends the other ranks.
[[noreturn]] void ExitNow(const std::string& message) {
  RemoveInfoFile();
  DSV4_LOG(kError, message);
  std::fflush(stdout);
  std::_Exit(1);
}

v1::ModelInfo MakeModelInfo(const std::string& model_name, const Model& m, const Tokenizer* tok,
                            int64_t max_model_len) {
  const ModelConfig& c = m.config();
  v1::ModelInfo info;
  info.set_model(model_name);
  info.set_model_type(c.model_type);
  info.set_vocab_size(c.vocab_size);
  info.set_max_context_length(max_model_len);
  info.set_bos_token_id(tok != nullptr && tok->bos_id() >= 0 ? tok->bos_id() : static_cast<int32_t>(c.bos_token_id));
  info.set_eos_token_id(tok != nullptr && tok->eos_id() >= 0 ? tok->eos_id() : static_cast<int32_t>(c.eos_token_id));
  info.set_num_layers(c.num_hidden_layers);
  info.set_hidden_size(c.hidden_size);
  info.set_num_routed_experts(c.n_routed_experts);
  info.set_experts_per_token(c.num_experts_per_tok);
  info.set_has_tokenizer(tok != nullptr);
  info.set_random_weights(model_name.rfind("builtin:", 0) == 0);
  return info;
}

// The control-plane address travels from the leader to every rank over MPI, in a fixed buffer.
absl::StatusOr<std::string> ShareAddress(Communicator& world, const std::string& address) {
  char buf[256] = {};
  if (world.rank() == 0) {
    if (address.size() >= sizeof(buf)) return absl::InvalidArgumentError("control-plane address too long");
    std::memcpy(buf, address.data(), address.size());
  }
  DSV4_RETURN_IF_ERROR(world.Broadcast(buf, sizeof(buf), 0), "sharing the control-plane address");
  buf[sizeof(buf) - 1] = '\0';
  return std::string(buf);
}

}  // namespace

void AddServeFlags(Flags& flags) {
  AddRuntimeFlags(flags);
  const ServeOptions d;
  const EngineOptions& e = d.engine;
  flags.String("host", d.endpoint.host, "address the inference endpoint binds to")
      .Int("port", 50051, "inference port (0 = any free port; see --info-file)", 0, 65535)
      .String("control-host", d.control_host, "the leader's cluster-internal address for the control plane")
      .Int("control-port", d.control_port, "control-plane port (0 = any free port)", 0, 65535)
      .Int("http-port", -1, "OpenAI-compatible HTTP, /health, /ready, /metrics on this port (-1 = off, 0 = any)", -1,
           65535)
      .String("http-host", "", "address the HTTP gateway binds to (default: --host)")
      .Int("http-threads", d.http_options.threads, "HTTP connections served at once", 1, 1 << 16)
      .String("info-file", "", "write {host, port, http_port, control, pid} as JSON here once listening")
      .Int("max-model-len", 4096, "prompt + completion tokens of one request (at most the model's)", 2,
           int64_t{1} << 24)
      .Int("default-max-tokens", e.default_max_tokens, "completion tokens when a request gives no max_tokens", 1,
           int64_t{1} << 24)
      .Int("max-batch-tokens", e.scheduler.max_batch_tokens, "token budget of one step (decodes + prompt chunks)", 1,
           int64_t{1} << 24)
      .Int("max-running", e.scheduler.max_running,
           "requests generating at once (unless given: as many as --cache-mb holds, at most this)", 1, 4096)
      .Int("max-queued", e.scheduler.max_queued, "requests waiting for a slot; beyond it RESOURCE_EXHAUSTED", 0,
           1 << 20)
      .Int("prefill-chunk", e.scheduler.prefill_chunk, "prompt tokens per forward pass", 1, int64_t{1} << 20)
      .Int("cache-mb", e.cache_bytes >> 20, "KV pool per rank, in MiB (backed as used)", 1, int64_t{1} << 30)
      .Int("max-request-mb", 4, "largest request message, in MiB", 1, 1024)
      .Int("max-streams", 1024, "concurrent streams per connection", 1, 1 << 20)
      .Double("stream-stall-timeout-s", absl::ToDoubleSeconds(d.endpoint.stream_stall_timeout),
              "a stream whose client reads nothing for this long is cancelled", 0.1, 86400)
      .Int("max-connections", d.endpoint.max_connections,
           "live connections to the inference port; more are closed at once (also kept under the open-files limit)", 1,
           1 << 20)
      .Double("idle-timeout-s", absl::ToDoubleSeconds(d.endpoint.idle_timeout),
              "an inference connection without calls for this long is closed", 1, 86400 * 7)
      .Bool("reflection", d.endpoint.reflection, "gRPC server reflection")
      .String("tls-cert", "", "PEM certificate chain: serve TLS")
      .String("tls-key", "", "PEM private key for --tls-cert")
      .String("tls-client-ca", "", "PEM roots: require client certificates they sign (mTLS)")
      .String("token-file", "", "file holding a bearer token every RPC must carry")
      .Double("drain-grace-s", absl::ToDoubleSeconds(d.drain_grace),
              "seconds in-flight requests get to finish on SIGTERM / Drain", 0, 86400)
      .Double("heartbeat-timeout-s", absl::ToDoubleSeconds(d.heartbeat_timeout),
              "silence after which a rank is declared lost", 0.5, 3600)
      .Double("join-timeout-s", absl::ToDoubleSeconds(d.join_timeout), "seconds the ranks get to load and join", 1,
              3600)
      .Int("rebalance-every", d.rebalance_every,
           "steps between automatic expert rebalances from the routed load (0 = only on `dsv4 ctl rebalance`)", 0,
           int64_t{1} << 40);
}

absl::StatusOr<ServeOptions> ServeOptionsFromFlags(const Flags& flags) {
  ServeOptions o;
  DSV4_ASSIGN_OR_RETURN(o.runtime, RuntimeOptionsFromFlags(flags));
  EngineOptions& e = o.engine;
  e.max_model_len = flags.GetInt("max-model-len");
  e.default_max_tokens = flags.GetInt("default-max-tokens");
  e.scheduler.max_batch_tokens = flags.GetInt("max-batch-tokens");
  e.scheduler.max_running = flags.GetInt("max-running");
  e.fit_max_running = !flags.Given("max-running");
  e.scheduler.max_queued = flags.GetInt("max-queued");
  e.scheduler.prefill_chunk = flags.GetInt("prefill-chunk");
  e.cache_bytes = flags.GetInt("cache-mb") << 20;
  EndpointOptions& ep = o.endpoint;
  ep.host = flags.GetString("host");
  ep.port = static_cast<int>(flags.GetInt("port"));
  ep.max_receive_bytes = static_cast<int>(flags.GetInt("max-request-mb") << 20);
  const int64_t streams = flags.GetInt("max-streams");
  ep.max_concurrent_streams = static_cast<int>(streams);
  ep.max_threads = static_cast<int>(std::min<int64_t>(streams + 64, 1 << 20));
  ep.reflection = flags.GetBool("reflection");
  ep.stream_stall_timeout = absl::Seconds(flags.GetDouble("stream-stall-timeout-s"));
  ep.max_connections = static_cast<int>(flags.GetInt("max-connections"));
  ep.idle_timeout = absl::Seconds(flags.GetDouble("idle-timeout-s"));
  ep.security.tls_cert_file = flags.GetString("tls-cert");
  ep.security.tls_key_file = flags.GetString("tls-key");
  ep.security.tls_client_ca_file = flags.GetString("tls-client-ca");
  if (!flags.GetString("token-file").empty()) {
    DSV4_ASSIGN_OR_RETURN(ep.security.token, ReadTokenFile(flags.GetString("token-file")));
  }
  o.http = flags.GetInt("http-port") >= 0;
  HttpOptions& h = o.http_options;
  h.host = flags.GetString("http-host").empty() ? ep.host : flags.GetString("http-host");
  h.port = static_cast<int>(std::max<int64_t>(0, flags.GetInt("http-port")));
  h.threads = static_cast<int>(flags.GetInt("http-threads"));
  h.max_body_bytes = flags.GetInt("max-request-mb") << 20;
  h.write_timeout = ep.stream_stall_timeout;
  h.tls_cert_file = ep.security.tls_cert_file, h.tls_key_file = ep.security.tls_key_file;
  h.token = ep.security.token;
  o.control_host = flags.GetString("control-host");
  o.control_port = static_cast<int>(flags.GetInt("control-port"));
  o.info_file = flags.GetString("info-file");
  o.drain_grace = absl::Seconds(flags.GetDouble("drain-grace-s"));
  o.heartbeat_timeout = absl::Seconds(flags.GetDouble("heartbeat-timeout-s"));
  o.join_timeout = absl::Seconds(flags.GetDouble("join-timeout-s"));
  o.rebalance_every = flags.GetInt("rebalance-every");
  return o;
}

ServeJob::ServeJob(ServeOptions options) : opt_(std::move(options)) {
  settings_ = RuntimeSettings(opt_.runtime);
  const LauncherPlace place = LauncherWorld();
  world_size_ = place.size, rank_ = place.rank;
}

ServeJob::~ServeJob() {
  // The endpoints first: their handlers use the engine, which is destroyed before them otherwise.
  if (http_) http_->Shutdown();
  server_.reset();
  RemoveInfoFile();
}

absl::Status ServeJob::Run() {
  DSV4_ASSIGN_OR_RETURN(digest_, ConfigDigest(opt_.runtime.model, settings_));
  log::SetRank(rank_);
  open_files_ = RaiseOpenFilesLimit();
  if (rank_ == 0) return RunLeader();
  signal(SIGTERM, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  return RunWorker();
}

absl::Status ServeJob::RunWorker() {
  DSV4_ASSIGN_OR_RETURN(runtime_, Runtime::Open(opt_.runtime));
  const int rank = runtime_->world().rank();
  DSV4_ASSIGN_OR_RETURN(const std::string address, ShareAddress(runtime_->world(), ""));
  v1::JoinRequest join;
  join.set_rank(rank);
  join.set_world_size(runtime_->world().size());
  join.set_host(HostName());
  join.set_pid(getpid());
  join.add_devices("cpu");
  struct sysinfo si;
  if (sysinfo(&si) == 0) join.set_memory_bytes(static_cast<int64_t>(si.totalram) * si.mem_unit);
  join.set_build_id(BuildId());
  join.set_config_digest(digest_);
  join.set_layout(settings_);
  ClientSecurity security;
  security.token = opt_.endpoint.security.token;
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<WorkerAgent> agent,
                        WorkerAgent::Join(address, security, join, opt_.join_timeout));
  FollowerCounters counters;
  Model& model = runtime_->model();
  agent->Start(
      [&](v1::Beat* b) {
        b->set_step(counters.steps.load(std::memory_order_relaxed));
        b->set_cache_bytes(counters.cache_bytes.load(std::memory_order_relaxed));
        b->set_busy_steps(counters.busy_steps.load(std::memory_order_relaxed));
        b->set_step_seconds(1e-9 * static_cast<double>(counters.busy_nanos.load(std::memory_order_relaxed)));
        const std::vector<int64_t> load = model.ExpertLoadByLayer();
        b->mutable_expert_layer_load()->Add(load.begin(), load.end());
        const std::vector<int64_t> total = model.ExpertLoad();
        b->mutable_expert_load()->Add(total.begin(), total.end());
      },
      [](const absl::Status& st) { ExitNow(absl::StrCat("lost the coordinator: ", st.message())); });
  EngineOptions eopt = opt_.engine;  // as the leader completes them
  eopt.max_model_len = std::min(eopt.max_model_len, model.config().max_position_embeddings);
  DSV4_RETURN_IF_ERROR(RunFollower(model, runtime_->world(), eopt, &counters));
  agent->Leave();
  return absl::OkStatus();
}

void ServeJob::SetState(v1::ServerState state) {
  if (server_) server_->SetState(state);
  if (http_) http_->SetState(state);
}

std::string ServeJob::RenderMetrics() {
  const EngineStats stats = engine_ptr_.load()->Stats();
  std::vector<RankFigures> ranks;
  const v1::ClusterStatus cluster = coordinator_->Snapshot();
  for (const v1::RankStatus& r : cluster.ranks()) {
    RankFigures f;
    f.rank = r.rank(), f.steps = r.busy_steps(), f.step_seconds = r.step_seconds(), f.cache_bytes = r.cache_bytes();
    f.expert_layer_load.assign(r.expert_layer_load().begin(), r.expert_layer_load().end());
    ranks.push_back(std::move(f));
  }
  return metrics_->Render(stats, ranks);
}

void ServeJob::FailStop(const absl::Status& st) {
  if (failing_.exchange(true)) return;
  SetState(v1::SERVER_STATE_FAILED);
  if (Engine* e = engine_ptr_.load()) e->Fail(st);
  // Give the stream handlers a moment to tell their clients, then end the job.
  std::thread([st, linger = opt_.linger] {
    absl::SleepFor(linger);
    ExitNow(absl::StrCat(st.message(), "; exiting"));
  }).detach();
}

void ServeJob::Drain(absl::Duration grace) {
  Engine* e = engine_ptr_.load();
  if (e == nullptr) ExitNow("stopped while loading");
  if (e->state() != EngineState::kServing) return;
  SetState(v1::SERVER_STATE_DRAINING);
  DSV4_LOG(kInfo, "draining (grace ", absl::FormatDuration(grace), ")");
  e->Drain(grace);
}

void ServeJob::Shutdown() {
  Engine* e = engine_ptr_.load();
  if (e == nullptr) ExitNow("shut down while loading");
  SetState(v1::SERVER_STATE_DRAINING);
  e->Stop();
}

void ServeJob::FillLeaderStatus(v1::RankStatus* s) {
  s->set_host(HostName());
  s->set_pid(getpid());
  if (Engine* e = engine_ptr_.load()) {
    const EngineStats st = e->Stats();
    s->set_step(st.step);
    s->set_cache_bytes(st.cache_bytes);
    s->set_step_seconds(st.step_seconds);
    s->set_busy_steps(st.busy_steps);
  }
  if (const Model* m = model_ptr_.load()) {
    const std::vector<int64_t> load = m->ExpertLoad(), by_layer = m->ExpertLoadByLayer();
    s->mutable_expert_load()->Add(load.begin(), load.end());
    s->mutable_expert_layer_load()->Add(by_layer.begin(), by_layer.end());
  }
}

absl::StatusOr<v1::RebalanceResponse> ServeJob::Rebalance(const v1::RebalanceRequest& req) {
  absl::MutexLock lock(&rebalance_mu_);
  Engine* engine = engine_ptr_.load();
  if (engine == nullptr) return absl::UnavailableError("the server is still loading");
  Model& model = runtime_->model();
  const std::shared_ptr<const ModelPlacement> current = model.placement();
  if (current == nullptr || runtime_->layout().ep < 2)
    return absl::FailedPreconditionError("the job has one EP rank: there is nothing to rebalance");
  // Every rank's counts: the workers' from their last heartbeats, the leader's own now.
  std::vector<int64_t> total = model.ExpertLoadByLayer();
  const std::vector<int64_t> workers = coordinator_->WorkerExpertLoadByLayer();
  if (!workers.empty() && workers.size() == total.size())
    for (size_t i = 0; i < total.size(); ++i) total[i] += workers[i];
  const int64_t L = model.config().num_hidden_layers, E = model.config().n_routed_experts;
  std::vector<std::vector<double>> load(L, std::vector<double>(E, 0.0));
  int64_t routed = 0;
  for (int64_t i = 0; i < L * E; ++i) {
    const int64_t since = total[i] - (rebalance_snapshot_.empty() ? 0 : rebalance_snapshot_[i]);
    load[i / E][i % E] = static_cast<double>(std::max<int64_t>(since, 0));
    routed += std::max<int64_t>(since, 0);
  }
  if (routed == 0)
    return absl::FailedPreconditionError("no token was routed since the last placement: nothing to balance");
  DSV4_ASSIGN_OR_RETURN(ModelPlacement next, dsv4::Rebalance(*current, load, runtime_->parallel().ep_ranks_per_node));
  const PlacementBalance before = Balance(*current, load), after = Balance(next, load);
  v1::RebalanceResponse resp;
  resp.set_step(-1);
  resp.set_routed(routed);
  resp.set_imbalance_before(before.mean), resp.set_worst_layer_before(before.worst);
  resp.set_imbalance_after(after.mean), resp.set_worst_layer_after(after.worst);
  if (!req.dry_run()) {
    const absl::Duration timeout = req.timeout_seconds() > 0 ? absl::Seconds(req.timeout_seconds()) : absl::Seconds(60);
    DSV4_ASSIGN_OR_RETURN(const int64_t step, engine->SwitchPlacement(next, timeout));
    resp.set_step(step);
    rebalance_snapshot_ = std::move(total);
    DSV4_LOG(kInfo, "rebalanced the experts at step ", step, " from ", routed, " routed pairs: max/mean per rank ",
             absl::StrFormat("%.3f -> %.3f (worst layer %.3f -> %.3f)", before.mean, after.mean, before.worst,
                             after.worst));
  }
  resp.set_placement(next.ToJson(req.dry_run() ? "dsv4 ctl rebalance --dry-run"
                                               : absl::StrCat("dsv4 rebalance at step ", resp.step())));
  return resp;
}

absl::StatusOr<v1::PlacementResponse> ServeJob::CurrentPlacement() const {
  const Model* m = model_ptr_.load();
  if (m == nullptr) return absl::UnavailableError("the server is still loading");
  const std::shared_ptr<const ModelPlacement> p = m->placement();
  if (p == nullptr) return absl::FailedPreconditionError("this job has no expert placement");
  v1::PlacementResponse resp;
  resp.set_placement(p->ToJson("dsv4 ctl placement"));
  if (Engine* e = engine_ptr_.load()) resp.set_switches(e->Stats().placement_switches);
  return resp;
}

// Rebalances whenever `steps` more steps have run, while the job serves.
void ServeJob::RebalanceEvery(int64_t steps) {
  int64_t last = 0;
  while (!done_.load()) {
    absl::SleepFor(absl::Milliseconds(50));
    Engine* e = engine_ptr_.load();
    if (e == nullptr || e->state() != EngineState::kServing) continue;
    const int64_t step = e->Stats().step;
    if (step - last < steps) continue;
    last = step;
    absl::StatusOr<v1::RebalanceResponse> r = Rebalance(v1::RebalanceRequest());
    if (!r.ok() && !absl::IsFailedPrecondition(r.status()))
      DSV4_LOG(kWarn, "automatic rebalance at step ", step, " failed: ", r.status().message());
  }
}

// Listen (health NOT_SERVING), start the control plane, publish the addresses.
absl::Status ServeJob::Listen() {
  EndpointOptions endpoint = opt_.endpoint;
  // Connections stay under the open-files limit with room for everything else (checkpoint files,
  // the control plane, MPI).
  const int64_t headroom = std::min<int64_t>(1024, open_files_ / 2);
  if (open_files_ > 0 && endpoint.max_connections > open_files_ - headroom) {
    endpoint.max_connections = static_cast<int>(std::max<int64_t>(1, open_files_ - headroom));
    DSV4_LOG(kInfo, "at most ", endpoint.max_connections, " inference connections (open-files limit ", open_files_,
             ")");
  }
  DSV4_ASSIGN_OR_RETURN(server_, InferenceServer::Start(endpoint, ServerIdentity{BuildId(), world_size_, settings_}));
  if (opt_.http) {
    DSV4_ASSIGN_OR_RETURN(http_, HttpGateway::Start(opt_.http_options, BuildId()));
  }
  CoordinatorOptions copt;
  copt.world_size = world_size_;
  copt.build_id = BuildId();
  copt.config_digest = digest_;
  copt.layout = settings_;
  copt.heartbeat_timeout = opt_.heartbeat_timeout;
  CoordinatorCallbacks cb;
  cb.on_rank_lost = [this](const absl::Status& st) { FailStop(st); };
  cb.on_drain = [this](absl::Duration grace) { Drain(grace > absl::ZeroDuration() ? grace : opt_.drain_grace); };
  cb.on_shutdown = [this] { Shutdown(); };
  cb.leader_status = [this](v1::RankStatus* s) { FillLeaderStatus(s); };
  cb.server_state = [this] {
    const std::string name = v1::ServerState_Name(server_->state());
    return name.substr(std::string("SERVER_STATE_").size());
  };
  cb.rebalance = [this](const v1::RebalanceRequest& r) { return Rebalance(r); };
  cb.placement = [this] { return CurrentPlacement(); };
  coordinator_ = std::make_unique<Coordinator>(copt, cb);
  ServerSecurity control_security;  // cluster-internal: the token, no TLS (workers dial it by address)
  control_security.token = opt_.endpoint.security.token;
  DSV4_ASSIGN_OR_RETURN(control_,
                        StartControlServer(opt_.control_host, opt_.control_port, control_security, coordinator_.get()));
  control_address_ = absl::StrCat(opt_.control_host, ":", control_.port);
  if (!opt_.info_file.empty()) {
    g_info_file = opt_.info_file;
    DSV4_RETURN_IF_ERROR(WriteFileAtomic(
        opt_.info_file,
        absl::StrFormat("{\"host\": \"%s\", \"port\": %d, \"http_port\": %d, \"control\": \"%s\", \"pid\": %d}\n",
                        opt_.endpoint.host, server_->port(), http_ ? http_->port() : -1, control_address_, getpid())));
  }
  DSV4_LOG(kInfo, "listening on ", opt_.endpoint.host, ":", server_->port(),
           http_ ? absl::StrCat(" (HTTP ", opt_.http_options.host, ":", http_->port(), ")") : "", " (control plane ",
           control_address_, "), loading ", opt_.runtime.model);
  return absl::OkStatus();
}

// Load this rank's share, wait for every rank, build the engine and attach it to the endpoint.
absl::Status ServeJob::Load() {
  DSV4_ASSIGN_OR_RETURN(runtime_, Runtime::Open(opt_.runtime));
  model_ptr_.store(&runtime_->model());
  DSV4_RETURN_IF_ERROR(ShareAddress(runtime_->world(), control_address_).status());
  if (absl::Status st = coordinator_->WaitForRanks(opt_.join_timeout); !st.ok()) {
    coordinator_->SetError(std::string(st.message()));
    return st;
  }
  if (auto path = FindTokenizerJson(opt_.runtime.model); path.ok()) {
    DSV4_ASSIGN_OR_RETURN(tokenizer_, Tokenizer::Load(*path));
  } else {
    DSV4_LOG(kWarn, path.status().message(), "; serving token ids only");
  }
  Model& model = runtime_->model();
  EngineOptions eopt = opt_.engine;
  eopt.max_model_len = std::min(eopt.max_model_len, model.config().max_position_embeddings);
  DSV4_ASSIGN_OR_RETURN(engine_, Engine::Create(model, tokenizer_.get(), runtime_->world(), eopt));
  InputLimits limits;
  limits.max_model_len = eopt.max_model_len;
  server_->Attach(engine_.get(), tokenizer_.get(),
                  MakeModelInfo(opt_.runtime.model, model, tokenizer_.get(), eopt.max_model_len), limits,
                  runtime_->layout().ToString());
  metrics_ = std::make_unique<ServingMetrics>(opt_.runtime.model, model.config().num_hidden_layers,
                                              model.config().n_routed_experts);
  engine_->SetObserver(metrics_.get());
  engine_ptr_.store(engine_.get());
  if (http_) {
    http_->Attach(engine_.get(), tokenizer_.get(), opt_.runtime.model, limits);
    http_->SetMetrics([this] { return RenderMetrics(); });
  }
  if (failing_.load()) engine_->Fail(absl::UnavailableError("a rank was lost while loading"));
  return absl::OkStatus();
}

// One request through every rank; health turns SERVING only after it.
void ServeJob::WarmUp() {
  GenerateSpec spec;
  spec.request_id = "dsv4-warmup";
  const int32_t bos = static_cast<int32_t>(runtime_->model().config().bos_token_id);
  spec.prompt = {bos, 100, 200, 300};
  spec.sampling.temperature = 0;
  spec.sampling.max_tokens = 2;
  auto h = engine_->Submit(spec);
  absl::Status st = h.status();
  while (st.ok()) {
    auto out = (*h)->Next(absl::Milliseconds(100));
    if (out.ok() || absl::IsDeadlineExceeded(out.status())) continue;
    if (!absl::IsOutOfRange(out.status())) st = out.status();
    break;
  }
  if (!st.ok()) {
    // A job that cannot answer its own warm-up (e.g. weights that compute NaN) never turns SERVING:
    // it fails loudly instead of sitting NOT_SERVING for ever.
    if (!absl::IsUnavailable(st) && engine_->state() != EngineState::kFailed &&
        engine_->state() != EngineState::kStopped)
      FailStop(absl::Status(st.code(), absl::StrCat("the warm-up request failed: ", st.message())));
    return;
  }
  if (server_->state() == v1::SERVER_STATE_LOADING && engine_->state() == EngineState::kServing) {
    SetState(v1::SERVER_STATE_SERVING);
    DSV4_LOG(kInfo, "serving ", opt_.runtime.model, " on ", opt_.endpoint.host, ":", server_->port(), " (",
             runtime_->layout().ToString(), ")");
  }
}

// The first SIGTERM/SIGINT drains; a second exits at once.
void ServeJob::WatchSignals() {
  int seen = 0;
  while (!done_.load()) {
    const int n = g_signals.load();
    if (n > seen) {
      if (n >= 2) ExitNow("second signal: exiting at once");
      seen = n;
      Drain(opt_.drain_grace);
    }
    absl::SleepFor(absl::Milliseconds(20));
  }
}

absl::Status ServeJob::Finish(const absl::Status& engine_status) {
  if (!engine_status.ok()) {
    FailStop(engine_status);
    coordinator_->SetError(std::string(engine_status.message()));
    absl::SleepFor(opt_.linger + absl::Seconds(5));  // FailStop's thread exits the process
    return engine_status;
  }
  SetState(v1::SERVER_STATE_STOPPED);
  DSV4_RETURN_IF_ERROR(coordinator_->WaitForRanksToLeave(absl::Seconds(30)));
  server_->Shutdown(absl::Seconds(1));
  if (http_) http_->Shutdown();
  control_.server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  const EngineStats stats = engine_->Stats();
  DSV4_LOG(kInfo, "stopped after ", stats.received, " requests (", stats.completed, " completed, ", stats.aborted,
           " aborted, ", stats.failed, " failed, ", stats.rejected, " rejected)");
  return absl::OkStatus();
}

absl::Status ServeJob::RunLeader() {
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);
  DSV4_RETURN_IF_ERROR(Listen());
  DSV4_RETURN_IF_ERROR(Load());
  std::thread warmup([this] { WarmUp(); });
  std::thread signals([this] { WatchSignals(); });
  std::thread rebalancer;
  if (opt_.rebalance_every > 0) rebalancer = std::thread([this] { RebalanceEvery(opt_.rebalance_every); });
  const absl::Status st = engine_->Run();
  done_.store(true);
  warmup.join();
  signals.join();
  if (rebalancer.joinable()) rebalancer.join();
  return Finish(st);
}

}  // namespace dsv4
