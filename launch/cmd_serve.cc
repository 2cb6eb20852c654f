// dsv4 serve [--model M] [--host H] [--port P] [--tp N] [--ep M] ...
//
// Serves the model over gRPC until drained or stopped; under mpirun every rank runs it.
//
// The leader (world rank 0) starts listening first (health NOT_SERVING while it loads), then the
// control plane; loads its share of the model; tells the other ranks the control-plane address
// (MPI broadcast); waits for every rank to Join; sends one warm-up request through every rank;
// and only then turns health SERVING. Its main thread runs the engine loop (MPI calls stay on the
// main thread). Every other rank loads its share, joins, keeps a heartbeat and mirrors the
// leader's steps.
//
// Ending:
//  - SIGTERM or SIGINT to the leader, or Drain on the control plane: health NOT_SERVING, no new
//    requests, in-flight ones finish within --drain-grace-s (the rest end with UNAVAILABLE), every
//    rank stops, exit 0. A second signal exits at once (status 1).
//  - Shutdown on the control plane: the same with no grace.
//  - A lost rank: health NOT_SERVING, in-flight requests end with UNAVAILABLE, the job exits
//    non-zero. A worker that loses the leader exits non-zero.
// Workers ignore SIGTERM/SIGINT: they stop when the leader tells them, or when it is gone.
#include <signal.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <atomic>
#include <cstdio>
#include <fstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status.h"
#include "launch/commands.h"
#include "launch/common.h"
#include "rpc/control_plane.h"
#include "rpc/identity.h"
#include "rpc/inference_server.h"
#include "runtime/serving/engine.h"

namespace dsv4 {
namespace {

std::atomic<int> g_signals{0};

void OnSignal(int) { g_signals.fetch_add(1); }

int EnvInt(const char* name, int fallback) {
  const char* v = std::getenv(name);
  return v != nullptr ? std::atoi(v) : fallback;
}

std::string HostName() {
  char buf[256] = {};
  return gethostname(buf, sizeof(buf) - 1) == 0 ? std::string(buf) : "unknown";
}

// Prints the error and ends this process at once with status 1 (no destructors: other threads
// may be inside MPI or blocked on a dead peer). mpirun then ends the other ranks.
[[noreturn]] void ExitNow(int rank, const std::string& message) {
  std::fprintf(stderr, "dsv4 serve (rank %d): %s\n", rank, message.c_str());
  std::fflush(stderr);
  std::fflush(stdout);
  std::_Exit(1);
}

struct ServeFlags {
  EngineOptions engine;
  EndpointOptions endpoint;
  ServerSecurity security;
  ClientSecurity control_client;
  std::string control_host;
  int control_port = 0;
  std::string info_file;
  absl::Duration drain_grace, heartbeat_timeout, join_timeout, linger;
};

absl::StatusOr<ServeFlags> ParseServeFlags(const Flags& flags) {
  ServeFlags f;
  auto get_int = [&](const char* name, int64_t lo, int64_t hi) -> absl::StatusOr<int64_t> {
    auto v = flags.Int(name);
    if (!v.ok()) return v.status();
    if (*v < lo || *v > hi)
      return absl::InvalidArgumentError(absl::StrCat("--", name, " must be in [", lo, ", ", hi, "], got ", *v));
    return *v;
  };
  auto get_secs = [&](const char* name, double lo, double hi) -> absl::StatusOr<absl::Duration> {
    auto v = flags.Double(name);
    if (!v.ok()) return v.status();
    if (!(*v >= lo && *v <= hi))
      return absl::InvalidArgumentError(absl::StrCat("--", name, " must be in [", lo, ", ", hi, "]"));
    return absl::Seconds(*v);
  };
#define DSV4_GET(lhs, expr)           \
  do {                                \
    auto _v = (expr);                 \
    if (!_v.ok()) return _v.status(); \
    lhs = *_v;                        \
  } while (0)
  int64_t port, control_port, cache_mb, request_mb, streams;
  DSV4_GET(port, get_int("port", 0, 65535));
  DSV4_GET(control_port, get_int("control-port", 0, 65535));
  DSV4_GET(f.engine.max_model_len, get_int("max-model-len", 2, int64_t{1} << 24));
  DSV4_GET(f.engine.default_max_tokens, get_int("default-max-tokens", 1, int64_t{1} << 24));
  DSV4_GET(f.engine.scheduler.max_batch_tokens, get_int("max-batch-tokens", 1, int64_t{1} << 24));
  DSV4_GET(f.engine.scheduler.max_running, get_int("max-running", 1, 4096));
  DSV4_GET(f.engine.scheduler.max_queued, get_int("max-queued", 0, 1 << 20));
  DSV4_GET(f.engine.scheduler.prefill_chunk, get_int("prefill-chunk", 1, int64_t{1} << 20));
  DSV4_GET(cache_mb, get_int("cache-mb", 1, int64_t{1} << 30));
  DSV4_GET(request_mb, get_int("max-request-mb", 1, 1024));
  DSV4_GET(streams, get_int("max-streams", 1, 1 << 20));
  DSV4_GET(f.drain_grace, get_secs("drain-grace-s", 0, 86400));
  DSV4_GET(f.heartbeat_timeout, get_secs("heartbeat-timeout-s", 0.5, 3600));
  DSV4_GET(f.join_timeout, get_secs("join-timeout-s", 1, 3600));
#undef DSV4_GET
  f.engine.cache_bytes = cache_mb << 20;
  f.endpoint.host = flags.Str("host");
  f.endpoint.port = static_cast<int>(port);
  f.endpoint.max_receive_bytes = static_cast<int>(request_mb << 20);
  f.endpoint.max_concurrent_streams = static_cast<int>(std::min<int64_t>(streams, 1 << 20));
  f.endpoint.max_threads = static_cast<int>(std::min<int64_t>(streams + 64, 1 << 20));
  auto reflection = flags.OnOff("reflection");
  if (!reflection.ok()) return reflection.status();
  f.endpoint.reflection = *reflection;
  f.security.tls_cert_file = flags.Str("tls-cert");
  f.security.tls_key_file = flags.Str("tls-key");
  f.security.tls_client_ca_file = flags.Str("tls-client-ca");
  if (!flags.Str("token-file").empty()) {
    auto token = ReadSmallFile(flags.Str("token-file"));
    if (!token.ok()) return token.status();
    while (!token->empty() && (token->back() == '\n' || token->back() == '\r')) token->pop_back();
    if (token->empty()) return absl::InvalidArgumentError("--token-file holds an empty token");
    f.security.token = *token;
  }
  f.endpoint.security = f.security;
  // The control plane is cluster-internal: plain TCP (or local credentials with a token).
  f.control_client.token = f.security.token;
  f.control_host = flags.Str("control-host");
  f.control_port = static_cast<int>(control_port);
  f.info_file = flags.Str("info-file");
  f.linger = absl::Seconds(1);
  return f;
}

absl::Status WriteInfoFile(const std::string& path, const std::string& json) {
  if (path.empty()) return absl::OkStatus();
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << json << "\n";
    if (!f) return absl::UnavailableError(absl::StrCat("cannot write ", tmp));
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
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
  DSV4_RETURN_IF_ERROR(world.Broadcast(buf, sizeof(buf), 0));
  buf[sizeof(buf) - 1] = '\0';
  return std::string(buf);
}

int RunWorker(const ServeFlags& f, Runtime& rt, const std::string& digest, const std::string& settings) {
  const int rank = rt.world().rank();
  auto address = ShareAddress(rt.world(), "");
  if (!address.ok()) return Fail(address.status());
  v1::JoinRequest join;
  join.set_rank(rank);
  join.set_world_size(rt.world().size());
  join.set_host(HostName());
  join.set_pid(getpid());
  join.add_devices("cpu");
  struct sysinfo si;
  if (sysinfo(&si) == 0) join.set_memory_bytes(static_cast<int64_t>(si.totalram) * si.mem_unit);
  join.set_build_id(BuildId());
  join.set_config_digest(digest);
  join.set_layout(settings);
  auto agent = WorkerAgent::Join(*address, f.control_client, join, f.join_timeout);
  if (!agent.ok()) return Fail(agent.status());
  std::atomic<int64_t> steps{0}, cache_bytes{0};
  const Model& model = *rt.model;
  (*agent)->Start(
      [&](v1::Beat* b) {
        b->set_step(steps.load(std::memory_order_relaxed));
        b->set_cache_bytes(cache_bytes.load(std::memory_order_relaxed));
        const std::vector<int64_t> load = model.ExpertLoad();
        b->mutable_expert_load()->Add(load.begin(), load.end());
      },
      [rank](const absl::Status& st) { ExitNow(rank, absl::StrCat("lost the coordinator: ", st.message())); });
  const absl::Status st = RunFollower(model, rt.world(), &steps, &cache_bytes);
  if (!st.ok()) return Fail(st);
  (*agent)->Leave();
  return 0;
}

int RunLeader(const Flags& flags, const ServeFlags& f, const std::string& digest, const std::string& settings) {
  const int world_size = LaunchedByMpirun() ? EnvInt("OMPI_COMM_WORLD_SIZE", 1) : 1;
  struct sigaction sa = {};
  sa.sa_handler = OnSignal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGTERM, &sa, nullptr);
  sigaction(SIGINT, &sa, nullptr);

  // 1. Listen (health NOT_SERVING) and start the control plane.
  ServerIdentity identity{BuildId(), world_size, settings};
  auto server = InferenceServer::Start(f.endpoint, identity);
  if (!server.ok()) return Fail(server.status());
  std::atomic<Engine*> engine_ptr{nullptr};
  std::atomic<bool> failing{false};
  const Model* model_ptr = nullptr;
  auto fail_stop = [&](const absl::Status& st) {
    if (failing.exchange(true)) return;
    (*server)->SetState(v1::SERVER_STATE_FAILED);
    if (Engine* e = engine_ptr.load()) e->Fail(st);
    // Give the stream handlers a moment to tell their clients, then end the job.
    std::thread([st, linger = f.linger] {
      absl::SleepFor(linger);
      ExitNow(0, absl::StrCat(st.message(), "; exiting"));
    }).detach();
  };
  auto drain = [&](absl::Duration grace) {
    if (Engine* e = engine_ptr.load()) {
      if (e->state() != EngineState::kServing) return;
      (*server)->SetState(v1::SERVER_STATE_DRAINING);
      std::fprintf(stderr, "dsv4 serve: draining (grace %s)\n", absl::FormatDuration(grace).c_str());
      e->Drain(grace);
    } else {
      ExitNow(0, "stopped while loading");
    }
  };
  CoordinatorOptions copt;
  copt.world_size = world_size;
  copt.build_id = BuildId();
  copt.config_digest = digest;
  copt.layout = settings;
  copt.heartbeat_timeout = f.heartbeat_timeout;
  CoordinatorCallbacks cb;
  cb.on_rank_lost = fail_stop;
  cb.on_drain = [&](absl::Duration grace) { drain(grace > absl::ZeroDuration() ? grace : f.drain_grace); };
  cb.on_shutdown = [&] {
    if (Engine* e = engine_ptr.load()) {
      (*server)->SetState(v1::SERVER_STATE_DRAINING);
      e->Stop();
    } else {
      ExitNow(0, "shut down while loading");
    }
  };
  cb.leader_status = [&](v1::RankStatus* s) {
    s->set_host(HostName());
    s->set_pid(getpid());
    if (Engine* e = engine_ptr.load()) {
      const EngineStats st = e->Stats();
      s->set_step(st.step);
      s->set_cache_bytes(st.cache_bytes);
    }
    if (model_ptr != nullptr) {
      const std::vector<int64_t> load = model_ptr->ExpertLoad();
      s->mutable_expert_load()->Add(load.begin(), load.end());
    }
  };
  cb.server_state = [&] {
    std::string name = v1::ServerState_Name((*server)->state());
    return name.substr(std::string("SERVER_STATE_").size());
  };
  Coordinator coordinator(copt, cb);
  ServerSecurity control_security;  // cluster-internal: the token, no TLS (workers dial it by address)
  control_security.token = f.security.token;
  auto control = StartControlServer(f.control_host, f.control_port, control_security, &coordinator);
  if (!control.ok()) return Fail(control.status());
  const std::string control_address = absl::StrCat(f.control_host, ":", control->port);
  if (auto st =
          WriteInfoFile(f.info_file, absl::StrFormat(R"({"host": "%s", "port": %d, "control": "%s", "pid": %d})",
                                                     f.endpoint.host, (*server)->port(), control_address, getpid()));
      !st.ok())
    return Fail(st);
  std::printf("dsv4 serve: listening on %s:%d (control plane %s), loading %s\n", f.endpoint.host.c_str(),
              (*server)->port(), control_address.c_str(), flags.Str("model").c_str());
  std::fflush(stdout);

  // 2. Load, share the control-plane address, wait for every rank.
  auto rt = OpenRuntime(flags);
  if (!rt.ok()) return Fail(rt.status());
  Runtime& runtime = **rt;
  model_ptr = runtime.model.get();
  if (auto a = ShareAddress(runtime.world(), control_address); !a.ok()) return Fail(a.status());
  if (auto st = coordinator.WaitForRanks(f.join_timeout); !st.ok()) {
    coordinator.SetError(std::string(st.message()));
    return Fail(st);
  }
  std::unique_ptr<Tokenizer> tokenizer;
  if (auto path = FindTokenizerJson(flags.Str("model")); path.ok()) {
    auto t = Tokenizer::Load(*path);
    if (!t.ok()) return Fail(t.status());
    tokenizer = std::move(*t);
  } else {
    std::fprintf(stderr, "dsv4 serve: %s; serving token ids only\n", std::string(path.status().message()).c_str());
  }
  EngineOptions eopt = f.engine;
  eopt.max_model_len = std::min(eopt.max_model_len, runtime.model->config().max_position_embeddings);
  auto engine = Engine::Create(*runtime.model, tokenizer.get(), runtime.world(), eopt);
  if (!engine.ok()) return Fail(engine.status());
  InputLimits limits;
  limits.max_model_len = eopt.max_model_len;
  (*server)->Attach(engine->get(), tokenizer.get(),
                    MakeModelInfo(flags.Str("model"), *runtime.model, tokenizer.get(), eopt.max_model_len), limits,
                    runtime.groups->ctx.layout.ToString());
  engine_ptr.store(engine->get());
  if (failing.load()) (*engine)->Fail(absl::UnavailableError("a rank was lost while loading"));

  // 3. Warm up through every rank, then serve; signals drain.
  std::atomic<bool> done{false};
  std::thread warmup([&] {
    GenerateSpec spec;
    spec.request_id = "dsv4-warmup";
    const int32_t bos = static_cast<int32_t>(runtime.model->config().bos_token_id);
    spec.prompt = {bos, 100, 200, 300};
    spec.sampling.temperature = 0;
    spec.sampling.max_tokens = 2;
    auto h = (*engine)->Submit(spec);
    absl::Status st = h.status();
    while (st.ok()) {
      auto out = (*h)->Next(absl::Milliseconds(100));
      if (out.ok() || absl::IsDeadlineExceeded(out.status())) continue;
      if (!absl::IsOutOfRange(out.status())) st = out.status();
      break;
    }
    if (!st.ok()) {
      if ((*engine)->state() != EngineState::kFailed)
        std::fprintf(stderr, "dsv4 serve: warm-up failed: %s\n", std::string(st.message()).c_str());
      return;
    }
    if ((*server)->state() == v1::SERVER_STATE_LOADING && (*engine)->state() == EngineState::kServing) {
      (*server)->SetState(v1::SERVER_STATE_SERVING);
      std::printf("dsv4 serve: serving %s on %s:%d (%s)\n", flags.Str("model").c_str(), f.endpoint.host.c_str(),
                  (*server)->port(), runtime.groups->ctx.layout.ToString().c_str());
      std::fflush(stdout);
    }
  });
  std::thread signals([&] {
    int seen = 0;
    while (!done.load()) {
      const int n = g_signals.load();
      if (n > seen) {
        if (n >= 2) ExitNow(0, "second signal: exiting at once");
        seen = n;
        drain(f.drain_grace);
      }
      absl::SleepFor(absl::Milliseconds(20));
    }
  });
  const absl::Status st = (*engine)->Run();
  done.store(true);
  warmup.join();
  signals.join();
  if (!st.ok()) {
    fail_stop(st);
    coordinator.SetError(std::string(st.message()));
    absl::SleepFor(f.linger + absl::Seconds(5));  // fail_stop's thread exits the process
    return Fail(st);
  }
  (*server)->SetState(v1::SERVER_STATE_STOPPED);
  if (auto leave = coordinator.WaitForRanksToLeave(absl::Seconds(30)); !leave.ok()) return Fail(leave);
  (*server)->Shutdown(absl::Seconds(1));
  control->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
  const EngineStats stats = (*engine)->Stats();
  std::printf("dsv4 serve: stopped after %lld requests (%lld completed, %lld aborted, %lld failed, %lld rejected)\n",
              static_cast<long long>(stats.received), static_cast<long long>(stats.completed),
              static_cast<long long>(stats.aborted), static_cast<long long>(stats.failed),
              static_cast<long long>(stats.rejected));
  return 0;
}

}  // namespace

int RunServe(int argc, char** argv) {
  Flags flags;
  AddModelFlags(flags);
  flags.Add("host", "127.0.0.1", "address the inference endpoint binds to")
      .Add("port", "50051", "inference port (0 = any free port; see --info-file)")
      .Add("control-host", "127.0.0.1", "the leader's cluster-internal address for the control plane")
      .Add("control-port", "0", "control-plane port (0 = any free port)")
      .Add("info-file", "", "write {host, port, control, pid} as JSON here once listening")
      .Add("max-model-len", "4096", "prompt + completion tokens of one request (at most the model's)")
      .Add("default-max-tokens", "256", "completion tokens when a request gives no max_tokens")
      .Add("max-batch-tokens", "256", "token budget of one step (decodes + prompt chunks)")
      .Add("max-running", "32", "requests generating at once (cache slots)")
      .Add("max-queued", "256", "requests waiting for a slot; beyond it RESOURCE_EXHAUSTED")
      .Add("prefill-chunk", "128", "prompt tokens per forward pass")
      .Add("cache-mb", "1024", "sequence-cache budget per rank, in MiB")
      .Add("max-request-mb", "4", "largest request message, in MiB")
      .Add("max-streams", "1024", "concurrent streams per connection (and handler threads)")
      .Add("reflection", "on", "gRPC server reflection (on|off)")
      .Add("tls-cert", "", "PEM certificate chain: serve TLS")
      .Add("tls-key", "", "PEM private key for --tls-cert")
      .Add("tls-client-ca", "", "PEM roots: require client certificates they sign (mTLS)")
      .Add("token-file", "", "file holding a bearer token every RPC must carry")
      .Add("drain-grace-s", "30", "seconds in-flight requests get to finish on SIGTERM / Drain")
      .Add("heartbeat-timeout-s", "10", "silence after which a rank is declared lost")
      .Add("join-timeout-s", "300", "seconds the ranks get to load and join");
  if (WantsHelp(argc, argv)) return PrintHelp("serve", flags);
  if (auto st = flags.Parse(argc, argv, 2); !st.ok()) return Fail(st);
  auto f = ParseServeFlags(flags);
  if (!f.ok()) return Fail(f.status());
  const std::string settings = absl::StrCat("qdq=", flags.Str("qdq"), " tp=", flags.Str("tp"), " ep=", flags.Str("ep"));
  auto digest = ConfigDigest(flags.Str("model"), settings);
  if (!digest.ok()) return Fail(digest.status());
  const int rank = LaunchedByMpirun() ? EnvInt("OMPI_COMM_WORLD_RANK", 0) : 0;
  if (rank == 0) return RunLeader(flags, *f, *digest, settings);
  signal(SIGTERM, SIG_IGN);
  signal(SIGINT, SIG_IGN);
  auto rt = OpenRuntime(flags);
  if (!rt.ok()) return Fail(rt.status());
  return RunWorker(*f, **rt, *digest, settings);
}

}  // namespace dsv4
