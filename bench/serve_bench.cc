// dsv4 bench serve: N concurrent streams over gRPC against the same workload run on the engine
// in-process, in one run. The ratio (gRPC tokens/s over in-process tokens/s) is what serving over
// the network costs; the latency figures use the names of `vllm bench serve` (TTFT: time to the
// first token; ITL: gaps between tokens as they arrive).
//
// Without --server the gRPC server is started in this process on 127.0.0.1, over the same engine
// the in-process phase uses; with --server ADDR a running server is driven instead (the
// in-process phase still runs here, on --model).
#include <algorithm>
#include <atomic>
#include <cstdio>
#include <thread>
#include <vector>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "base/status.h"
#include "bench/commands.h"
#include "rpc/client.h"
#include "rpc/inference_server.h"
#include "runtime/runtime.h"
#include "runtime/serving/engine.h"

namespace dsv4::bench {
namespace {

struct Workload {
  int64_t streams, requests, prompt_tokens, max_tokens;
  int64_t vocab;
};

// Request i: a deterministic prompt, seeded sampling, a fixed number of tokens (EOS ignored).
GenerateSpec MakeSpec(const Workload& w, int64_t i) {
  GenerateSpec s;
  for (int64_t t = 0; t < w.prompt_tokens; ++t)
    s.prompt.push_back(static_cast<int32_t>(100 + (t * 7919 + i * 104729) % (w.vocab - 200)));
  s.sampling.temperature = 0.8;
  s.sampling.top_p = 0.95;
  s.sampling.seed = i;
  s.sampling.max_tokens = w.max_tokens;
  s.sampling.ignore_eos = true;
  return s;
}

v1::GenerateRequest ToRequest(const GenerateSpec& s) {
  v1::GenerateRequest r;
  r.mutable_tokens()->mutable_ids()->Add(s.prompt.begin(), s.prompt.end());
  v1::SamplingParams* p = r.mutable_sampling();
  p->set_temperature(s.sampling.temperature);
  p->set_top_p(s.sampling.top_p);
  p->set_seed(s.sampling.seed);
  p->set_max_tokens(s.sampling.max_tokens);
  p->set_ignore_eos(true);
  return r;
}

// Timings of one phase.
struct Phase {
  absl::Mutex mu;
  std::vector<double> ttft_ms, itl_ms;
  int64_t tokens = 0, failed = 0;
  absl::Status first_error;
  double seconds = 0;

  // One request's arrivals: (time since its start, tokens in that message).
  void Record(const std::vector<std::pair<double, int>>& arrivals, const absl::Status& st) {
    absl::MutexLock l(&mu);
    if (!st.ok()) {
      ++failed;
      if (first_error.ok()) first_error = st;
      return;
    }
    double prev = -1;
    for (const auto& [t, n] : arrivals) {
      if (n == 0) continue;
      if (prev < 0) {
        ttft_ms.push_back(t);
      } else {
        for (int k = 0; k < n; ++k) itl_ms.push_back((t - prev) / n);
      }
      prev = t;
      tokens += n;
    }
  }
};

double Percentile(std::vector<double> v, double q) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = static_cast<size_t>(std::ceil(q * static_cast<double>(v.size()))) - (q > 0 ? 1 : 0);
  return v[std::min(i, v.size() - 1)];
}

// Runs `requests` requests with `streams` workers; `one(i, phase)` runs request i.
void Drive(const Workload& w, Phase& phase, const std::function<void(int64_t)>& one) {
  std::atomic<int64_t> next{0};
  std::vector<std::thread> workers;
  const absl::Time t0 = absl::Now();
  for (int64_t s = 0; s < w.streams; ++s)
    workers.emplace_back([&] {
      for (int64_t i = next.fetch_add(1); i < w.requests; i = next.fetch_add(1)) one(i);
    });
  for (auto& t : workers) t.join();
  phase.seconds = absl::ToDoubleSeconds(absl::Now() - t0);
}

void InProcessOne(Engine& engine, const Workload& w, int64_t i, Phase& phase) {
  const absl::Time t0 = absl::Now();
  std::vector<std::pair<double, int>> arrivals;
  auto h = engine.Submit(MakeSpec(w, i));
  absl::Status st = h.status();
  while (st.ok()) {
    // The same wait as the gRPC stream handler's (rpc/inference_server.cc): a consumer that
    // sleeps much longer gets woken with a scheduler boost that preempts the engine thread once
    // per token, which measurably slowed this baseline (not the engine) on a loaded machine.
    auto out = (*h)->Next(absl::Milliseconds(10));
    if (out.ok()) {
      arrivals.emplace_back(absl::ToDoubleMilliseconds(absl::Now() - t0), static_cast<int>(out->token_ids.size()));
      continue;
    }
    if (absl::IsDeadlineExceeded(out.status())) continue;
    if (!absl::IsOutOfRange(out.status())) st = out.status();
    break;
  }
  phase.Record(arrivals, st);
}

void GrpcOne(InferenceClient& client, const Workload& w, int64_t i, Phase& phase) {
  const v1::GenerateRequest req = ToRequest(MakeSpec(w, i));
  const absl::Time t0 = absl::Now();
  std::vector<std::pair<double, int>> arrivals;
  const absl::Status st = client.Generate(req, [&](const v1::GenerateResponse& m) {
    arrivals.emplace_back(absl::ToDoubleMilliseconds(absl::Now() - t0), m.token_ids_size());
  });
  phase.Record(arrivals, st);
}

}  // namespace

void ServeFlags(Flags& flags) {
  AddRuntimeFlags(flags);
  flags.String("server", "", "address of a running dsv4 serve (default: start one in this process on 127.0.0.1)")
      .Int("streams", 16, "concurrent streams", 1, 1 << 20)
      .Int("requests", 0, "requests in all (0 = 2 x streams)", 0, 1 << 20)
      .Int("prompt-tokens", 32, "prompt length of each request", 1, 1 << 20)
      .Int("max-tokens", 16, "tokens generated by each request", 1, 1 << 20)
      .Int("max-batch-tokens", 256, "engine: token budget of one step", 1, 1 << 24)
      .Int("rounds", 3, "in-process and gRPC phases alternate this many times (medians reported)", 1, 100)
      .Bool("json", false, "print one JSON object");
  AddClientFlags(flags);
}

absl::Status Serve(const Flags& flags) {
  if (LaunchedByMpirun()) return absl::InvalidArgumentError("dsv4 bench serve runs as one process");
  Workload w{};
  w.streams = flags.GetInt("streams"), w.requests = flags.GetInt("requests");
  w.prompt_tokens = flags.GetInt("prompt-tokens"), w.max_tokens = flags.GetInt("max-tokens");
  if (w.requests == 0) w.requests = 2 * w.streams;
  const int64_t rounds = flags.GetInt("rounds"), budget = flags.GetInt("max-batch-tokens");
  DSV4_ASSIGN_OR_RETURN(const ClientSecurity security, ClientSecurityFromFlags(flags));
  DSV4_ASSIGN_OR_RETURN(const RuntimeOptions options, RuntimeOptionsFromFlags(flags));
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<Runtime> rt, Runtime::Open(options));
  const Model& model = rt->model();
  w.vocab = model.config().vocab_size;
  EngineOptions opt;
  opt.scheduler.max_running = std::max<int64_t>(w.streams, 1);
  opt.scheduler.max_queued = w.requests + 16;
  opt.scheduler.prefill_chunk = std::min<int64_t>(128, std::max<int64_t>(1, budget - opt.scheduler.max_running + 1));
  opt.scheduler.max_batch_tokens = std::max(budget, opt.scheduler.max_running - 1 + opt.scheduler.prefill_chunk);
  opt.max_model_len = w.prompt_tokens + w.max_tokens + 1;
  opt.cache_bytes = int64_t{8} << 30;
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<Engine> engine, Engine::Create(model, nullptr, rt->world(), opt));
  absl::Status run_status;
  std::unique_ptr<InferenceServer> server;
  std::thread loop([&] { run_status = engine->Run(); });
  // However the run ends (an error returns early), the endpoint stops before the engine it
  // serves, and the engine's thread is joined.
  absl::Cleanup stop = [&] {
    if (server) server->Shutdown(absl::Seconds(1));
    engine->Stop();
    loop.join();
  };

  // Warm-up: one request through the engine.
  {
    Phase warm;
    Workload one = w;
    one.requests = 1, one.streams = 1;
    Drive(one, warm, [&](int64_t i) { InProcessOne(*engine, one, i, warm); });
    if (warm.failed) return warm.first_error;
  }
  std::string address = flags.GetString("server");
  if (address.empty()) {
    EndpointOptions ep;
    ep.host = "127.0.0.1";
    ep.port = 0;
    DSV4_ASSIGN_OR_RETURN(server, InferenceServer::Start(ep, ServerIdentity{"bench", 1, "bench"}));
    InputLimits limits;
    limits.max_model_len = opt.max_model_len;
    server->Attach(engine.get(), nullptr, v1::ModelInfo(), limits, "bench");
    server->SetState(v1::SERVER_STATE_SERVING);
    address = absl::StrCat("127.0.0.1:", server->port());
  }
  std::vector<std::unique_ptr<InferenceClient>> clients;
  for (int64_t s = 0; s < w.streams; ++s) {
    DSV4_ASSIGN_OR_RETURN(std::unique_ptr<InferenceClient> c, InferenceClient::Connect(address, security));
    clients.push_back(std::move(c));
  }
  DSV4_RETURN_IF_ERROR(clients[0]->WaitForServing(absl::Seconds(30)));
  // The phases alternate so that drift in the machine's load hits both alike; each figure is the
  // median over rounds, and the latency percentiles pool every round.
  std::vector<std::unique_ptr<Phase>> inproc_rounds, grpc_rounds;
  for (int64_t round = 0; round < rounds; ++round) {
    auto in = std::make_unique<Phase>();
    Drive(w, *in, [&](int64_t i) { InProcessOne(*engine, w, i, *in); });
    if (in->failed) return in->first_error;
    auto g = std::make_unique<Phase>();
    std::atomic<int64_t> next_client{0};
    Drive(w, *g, [&](int64_t i) { GrpcOne(*clients[next_client.fetch_add(1) % w.streams], w, i, *g); });
    if (g->failed) return g->first_error;
    inproc_rounds.push_back(std::move(in));
    grpc_rounds.push_back(std::move(g));
  }
  std::move(stop).Invoke();
  auto pooled = [](const std::vector<std::unique_ptr<Phase>>& rs, Phase& out) {
    std::vector<double> tps;
    for (const auto& r : rs) {
      out.ttft_ms.insert(out.ttft_ms.end(), r->ttft_ms.begin(), r->ttft_ms.end());
      out.itl_ms.insert(out.itl_ms.end(), r->itl_ms.begin(), r->itl_ms.end());
      tps.push_back(r->tokens / r->seconds);
    }
    return Percentile(tps, 0.5);
  };
  Phase inproc, grpc_phase;
  const double in_tps = pooled(inproc_rounds, inproc), tps = pooled(grpc_rounds, grpc_phase);
  const double ratio = tps / in_tps;
  if (flags.GetBool("json")) {
    std::printf(
        "{\"streams\": %lld, \"requests\": %lld, \"prompt_tokens\": %lld, \"max_tokens\": %lld, "
        "\"ttft_ms_p50\": %.3f, \"ttft_ms_p99\": %.3f, \"itl_ms_p50\": %.3f, \"itl_ms_p99\": %.3f, "
        "\"tokens_per_s\": %.3f, \"inprocess_ttft_ms_p50\": %.3f, \"inprocess_itl_ms_p50\": %.3f, "
        "\"inprocess_tokens_per_s\": %.3f, \"ratio\": %.4f, \"rounds\": %lld}\n",
        static_cast<long long>(w.streams), static_cast<long long>(w.requests), static_cast<long long>(w.prompt_tokens),
        static_cast<long long>(w.max_tokens), Percentile(grpc_phase.ttft_ms, 0.5), Percentile(grpc_phase.ttft_ms, 0.99),
        Percentile(grpc_phase.itl_ms, 0.5), Percentile(grpc_phase.itl_ms, 0.99), tps, Percentile(inproc.ttft_ms, 0.5),
        Percentile(inproc.itl_ms, 0.5), in_tps, ratio, static_cast<long long>(rounds));
  } else {
    std::printf("serving %lld requests (%lld prompt + %lld generated tokens) over %lld concurrent streams\n",
                static_cast<long long>(w.requests), static_cast<long long>(w.prompt_tokens),
                static_cast<long long>(w.max_tokens), static_cast<long long>(w.streams));
    std::printf("  gRPC (%s)   : %.1f tokens/s, TTFT p50 %.1f ms p99 %.1f ms, ITL p50 %.1f ms p99 %.1f ms\n",
                address.c_str(), tps, Percentile(grpc_phase.ttft_ms, 0.5), Percentile(grpc_phase.ttft_ms, 0.99),
                Percentile(grpc_phase.itl_ms, 0.5), Percentile(grpc_phase.itl_ms, 0.99));
    std::printf("  in-process engine : %.1f tokens/s, TTFT p50 %.1f ms p99 %.1f ms, ITL p50 %.1f ms p99 %.1f ms\n",
                in_tps, Percentile(inproc.ttft_ms, 0.5), Percentile(inproc.ttft_ms, 0.99),
                Percentile(inproc.itl_ms, 0.5), Percentile(inproc.itl_ms, 0.99));
    std::printf("  ratio (gRPC / in-process) : %.3f\n", ratio);
  }
  return absl::OkStatus();
}

}  // namespace dsv4::bench
