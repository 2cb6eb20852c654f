// dsv4 bench serve: N concurrent streams over gRPC, against two limits measured in the same run:
// the same workload on the engine in-process (`ratio`: what serving over the network costs), and
// the model's batched decode rate at batch N, as `dsv4 bench decode --batch N` measures it (median
// step of N sequences at the served decodes' mean context; `ratio_to_batched`: what scheduling,
// prefill, sampling and streaming cost against the bare batched forward pass). The three phases
// alternate, round after round, so drift in the machine's load hits them alike; a ratio is the
// median of the per-round ratios. Latency figures use the names of `vllm bench serve` (TTFT: time
// to the first token; ITL: gaps between tokens as they arrive).
//
// Without --server the gRPC server is started in this process on 127.0.0.1, over the same engine
// the in-process phase uses; with --server ADDR a running server is driven instead (the
// in-process and batched phases still run here, on --model).
#include <algorithm>
#include <atomic>
#include <bit>
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
#include "bench/model_bench.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/thread_pool.h"
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
    // A consumer that sleeps much longer than a step gets woken with a scheduler boost that
    // preempts the engine thread once per token, which measurably slowed this baseline (not the
    // engine) on a loaded machine; waking every 10 ms keeps it from building that credit.
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
      .Int("rounds", 3, "batched, in-process and gRPC phases alternate this many times (medians reported)", 1, 100)
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
  Model& model = rt->model();
  w.vocab = model.config().vocab_size;
  EngineOptions opt;
  opt.scheduler.max_running = std::max<int64_t>(w.streams, 1);
  opt.scheduler.max_queued = w.requests + 16;
  // A power of two up to 128: it divides the KV block size (a multiple of 128).
  const int64_t room = std::min<int64_t>(128, std::max<int64_t>(1, budget - opt.scheduler.max_running + 1));
  opt.scheduler.prefill_chunk = int64_t{1} << (63 - std::countl_zero(static_cast<uint64_t>(room)));
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
  // The phases alternate so that drift in the machine's load hits them alike; each figure is the
  // median over rounds, each ratio the median of the rounds' ratios, and the latency percentiles
  // pool every round.
  DecodeBenchOptions dopt;
  dopt.batch = w.streams;
  dopt.context = w.prompt_tokens + w.max_tokens / 2;  // the mean context of the served decode steps
  dopt.steps = 8;
  dopt.warmup = 1;
  std::vector<std::unique_ptr<Phase>> inproc_rounds, grpc_rounds;
  std::vector<double> batched_tps, ratios, ratios_to_batched;
  for (int64_t round = 0; round < rounds; ++round) {
    dopt.seed = static_cast<uint64_t>(round + 1);
    DSV4_ASSIGN_OR_RETURN(const DecodeBenchResult batched, RunDecodeBench(model, dopt));
    auto in = std::make_unique<Phase>();
    Drive(w, *in, [&](int64_t i) { InProcessOne(*engine, w, i, *in); });
    if (in->failed) return in->first_error;
    auto g = std::make_unique<Phase>();
    std::atomic<int64_t> next_client{0};
    Drive(w, *g, [&](int64_t i) { GrpcOne(*clients[next_client.fetch_add(1) % w.streams], w, i, *g); });
    if (g->failed) return g->first_error;
    const double g_tps = g->tokens / g->seconds;
    batched_tps.push_back(batched.tokens_per_s);
    ratios.push_back(g_tps / (in->tokens / in->seconds));
    ratios_to_batched.push_back(g_tps / batched.tokens_per_s);
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
  const double ratio = Percentile(ratios, 0.5), ratio_to_batched = Percentile(ratios_to_batched, 0.5);
  const double batched = Percentile(batched_tps, 0.5);
  const auto pct = [](const std::vector<double>& v, double q) { return Percentile(v, q); };
  if (flags.GetBool("json")) {
    std::printf(
        "{\"streams\": %lld, \"requests\": %lld, \"prompt_tokens\": %lld, \"max_tokens\": %lld, \"threads\": %d, "
        "\"isa\": \"%s\", \"ttft_ms_p50\": %.3f, \"ttft_ms_p90\": %.3f, \"ttft_ms_p99\": %.3f, "
        "\"itl_ms_p50\": %.3f, \"itl_ms_p90\": %.3f, \"itl_ms_p99\": %.3f, \"tokens_per_s\": %.3f, "
        "\"inprocess_ttft_ms_p50\": %.3f, \"inprocess_itl_ms_p50\": %.3f, \"inprocess_tokens_per_s\": %.3f, "
        "\"ratio\": %.4f, \"batched_context\": %lld, \"batched_tokens_per_s\": %.3f, \"ratio_to_batched\": %.4f, "
        "\"rounds\": %lld}\n",
        static_cast<long long>(w.streams), static_cast<long long>(w.requests), static_cast<long long>(w.prompt_tokens),
        static_cast<long long>(w.max_tokens), kernels::NumThreads(), kernels::IsaName(kernels::ActiveIsa()),
        pct(grpc_phase.ttft_ms, 0.5), pct(grpc_phase.ttft_ms, 0.9), pct(grpc_phase.ttft_ms, 0.99),
        pct(grpc_phase.itl_ms, 0.5), pct(grpc_phase.itl_ms, 0.9), pct(grpc_phase.itl_ms, 0.99), tps,
        pct(inproc.ttft_ms, 0.5), pct(inproc.itl_ms, 0.5), in_tps, ratio, static_cast<long long>(dopt.context), batched,
        ratio_to_batched, static_cast<long long>(rounds));
  } else {
    std::printf("serving %lld requests (%lld prompt + %lld generated tokens) over %lld concurrent streams, %d threads\n",
                static_cast<long long>(w.requests), static_cast<long long>(w.prompt_tokens),
                static_cast<long long>(w.max_tokens), static_cast<long long>(w.streams), kernels::NumThreads());
    std::printf("  gRPC (%s)   : %.1f tokens/s, TTFT p50 %.1f ms p99 %.1f ms, ITL p50 %.1f ms p99 %.1f ms\n",
                address.c_str(), tps, pct(grpc_phase.ttft_ms, 0.5), pct(grpc_phase.ttft_ms, 0.99),
                pct(grpc_phase.itl_ms, 0.5), pct(grpc_phase.itl_ms, 0.99));
    std::printf("  in-process engine : %.1f tokens/s, TTFT p50 %.1f ms p99 %.1f ms, ITL p50 %.1f ms p99 %.1f ms\n",
                in_tps, pct(inproc.ttft_ms, 0.5), pct(inproc.ttft_ms, 0.99), pct(inproc.itl_ms, 0.5),
                pct(inproc.itl_ms, 0.99));
    std::printf("  batched decode    : %.1f tokens/s (batch %lld, context %lld: bench decode's measure)\n", batched,
                static_cast<long long>(w.streams), static_cast<long long>(dopt.context));
    std::printf("  ratio (gRPC / in-process) : %.3f\n", ratio);
    std::printf("  ratio (gRPC / batched decode) : %.3f\n", ratio_to_batched);
  }
  return absl::OkStatus();
}

}  // namespace dsv4::bench
