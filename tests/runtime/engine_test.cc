// The serving engine in-process on builtin:v4-tiny (one rank): batching does not change a
// request's tokens, Abort frees the cache, drain and failure end every request exactly once.
// One process for all cases (the model takes seconds to build): registered as a single ctest.
#include "runtime/serving/engine.h"

#include <gtest/gtest.h>

#include <atomic>
#include <thread>

#include <nlohmann/json.hpp>

#include "runtime/builtin.h"
#include "runtime/model/cache.h"
#include "runtime/weights.h"

namespace dsv4 {
namespace {

struct Shared {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Communicator> world = MakeLocalCommunicator();
};

Shared& S() {
  static Shared* s = [] {
    auto* s = new Shared;
    auto w = LoadModel("builtin:v4-tiny");
    if (!w.ok()) {
      ADD_FAILURE() << w.status();
      return s;
    }
    s->model = std::make_unique<Model>(std::shared_ptr<const ModelWeights>(std::move(*w)));
    if (auto path = FindTokenizerJson("builtin:v4-tiny"); path.ok())
      if (auto t = Tokenizer::Load(*path); t.ok()) s->tokenizer = std::move(*t);
    return s;
  }();
  return *s;
}

// An engine running on its own thread for the length of a test.
class Running {
 public:
  explicit Running(EngineOptions opt = Small(), Model* model = nullptr, const Tokenizer* tokenizer = nullptr) {
    if (model == nullptr) model = S().model.get(), tokenizer = S().tokenizer.get();
    auto e = Engine::Create(*model, tokenizer, *S().world, opt);
    EXPECT_TRUE(e.ok()) << e.status();
    engine = std::move(*e);
    thread = std::thread([this] { result = engine->Run(); });
  }
  ~Running() {
    engine->Stop();
    thread.join();
  }
  static EngineOptions Small() {
    EngineOptions o;
    o.scheduler.max_running = 8;
    o.scheduler.prefill_chunk = 16;
    o.scheduler.max_batch_tokens = 32;
    o.scheduler.max_queued = 64;
    o.max_model_len = 256;
    o.cache_bytes = 64 << 20;
    return o;
  }
  std::unique_ptr<Engine> engine;
  std::thread thread;
  absl::Status result;
};

struct Result {
  std::vector<int32_t> tokens;
  std::string text;
  GenerateOutput last;
  absl::Status status;  // OK when the stream finished normally
};

Result Collect(RequestHandle& h, absl::Duration limit = absl::Seconds(120)) {
  Result r;
  const absl::Time deadline = absl::Now() + limit;
  while (absl::Now() < deadline) {
    auto o = h.Next(absl::Milliseconds(100));
    if (o.ok()) {
      r.tokens.insert(r.tokens.end(), o->token_ids.begin(), o->token_ids.end());
      r.text += o->text;
      if (o->finished) r.last = *o;
      continue;
    }
    if (absl::IsDeadlineExceeded(o.status())) continue;
    r.status = absl::IsOutOfRange(o.status()) ? absl::OkStatus() : o.status();
    return r;
  }
  r.status = absl::DeadlineExceededError("the test's own time limit");
  return r;
}

std::vector<int32_t> Prompt(int n, int salt) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back(100 + (i * 7919 + salt * 104729) % 100000);
  return p;
}

GenerateSpec Spec(int i) {
  GenerateSpec s;
  s.prompt = Prompt(3 + 5 * i, i);  // 3 .. 38 tokens: some cross the 16-token chunk boundaries
  s.sampling.max_tokens = 6;
  s.sampling.seed = 1000 + i;
  s.sampling.temperature = i % 4 == 0 ? 0.0 : 0.9;
  s.sampling.top_p = i % 3 == 0 ? 0.8 : 1.0;
  s.sampling.top_k = i % 2 == 0 ? 50 : 0;
  s.sampling.repetition_penalty = i % 5 == 0 ? 1.2 : 1.0;
  s.sampling.frequency_penalty = i % 3 == 1 ? 0.5 : 0.0;
  s.sampling.ignore_eos = true;
  return s;
}

TEST(Engine, ConcurrentRequestsGetTheTokensTheyGetAlone) {
  ASSERT_NE(S().model, nullptr);
  Running run;
  const int n = 8;
  std::vector<Result> alone(n), together(n);
  for (int i = 0; i < n; ++i) {
    auto h = run.engine->Submit(Spec(i));
    ASSERT_TRUE(h.ok()) << h.status();
    alone[i] = Collect(**h);
    ASSERT_TRUE(alone[i].status.ok()) << alone[i].status;
    EXPECT_EQ(alone[i].tokens.size(), 6u);
    EXPECT_EQ(alone[i].last.finish_reason, FinishReason::kLength);
  }
  std::vector<std::shared_ptr<RequestHandle>> handles;
  for (int i = 0; i < n; ++i) {
    auto h = run.engine->Submit(Spec(i));
    ASSERT_TRUE(h.ok()) << h.status();
    handles.push_back(*h);
  }
  for (int i = 0; i < n; ++i) {
    together[i] = Collect(*handles[i]);
    ASSERT_TRUE(together[i].status.ok()) << together[i].status;
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << "request " << i;
    EXPECT_EQ(together[i].text, alone[i].text) << "request " << i;
    EXPECT_EQ(together[i].last.completion_tokens, 6);
    EXPECT_EQ(together[i].last.prompt_tokens, static_cast<int64_t>(Spec(i).prompt.size()));
  }
  const EngineStats st = run.engine->Stats();
  EXPECT_EQ(st.completed, 2 * n);
  EXPECT_EQ(st.tokens_generated, 2 * n * 6);
}

// Prefix sharing: requests whose prompts start with the same 300 tokens (two full blocks of 128)
// reuse the first request's blocks (they compute only from position 256) and still get exactly the
// tokens they get computing everything themselves (a unique cache_salt shares nothing).
TEST(Engine, SharedPromptPrefixesReuseBlocksAndChangeNoToken) {
  ASSERT_NE(S().model, nullptr);
  EngineOptions o = Running::Small();
  o.max_model_len = 512;
  Running run(o);
  const std::vector<int32_t> prefix = Prompt(300, 77);
  auto spec = [&](int i, const std::string& salt) {
    GenerateSpec s = Spec(i);
    s.prompt = prefix;
    const std::vector<int32_t> tail = Prompt(5 + i, 500 + i);
    s.prompt.insert(s.prompt.end(), tail.begin(), tail.end());
    s.sampling.max_tokens = 5;
    s.cache_salt = salt;
    return s;
  };
  const int n = 4;
  std::vector<Result> cold(n), warm(n);
  for (int i = 0; i < n; ++i) {
    auto h = run.engine->Submit(spec(i, "cold-" + std::to_string(i)));
    ASSERT_TRUE(h.ok()) << h.status();
    cold[i] = Collect(**h);
    ASSERT_TRUE(cold[i].status.ok()) << cold[i].status;
  }
  const EngineStats before = run.engine->Stats();
  // The first one computes the prefix; the others, submitted once it has, share it.
  auto first = run.engine->Submit(spec(0, ""));
  ASSERT_TRUE(first.ok());
  ASSERT_TRUE((*first)->Next(absl::Seconds(120)).ok());  // its prompt is in the cache now
  std::vector<std::shared_ptr<RequestHandle>> handles = {*first};
  for (int i = 1; i < n; ++i) {
    auto h = run.engine->Submit(spec(i, ""));
    ASSERT_TRUE(h.ok());
    handles.push_back(*h);
  }
  for (int i = 0; i < n; ++i) {
    warm[i] = Collect(*handles[i]);
    ASSERT_TRUE(warm[i].status.ok()) << warm[i].status;
    if (i == 0) warm[i].tokens.insert(warm[i].tokens.begin(), cold[0].tokens[0]);  // its first piece was taken
    EXPECT_EQ(warm[i].tokens, cold[i].tokens) << "request " << i;
  }
  const EngineStats after = run.engine->Stats();
  EXPECT_EQ(after.prefix_hits - before.prefix_hits, (n - 1) * 256) << "three requests found two blocks each";
  EXPECT_EQ(after.blocks_used, 0);
  EXPECT_GE(after.blocks_cached, 2);
}

// Too few blocks for three requests at once (each grows to two blocks; the pool has four): the
// newest running one is preempted, recomputed later, and every request still gets exactly the
// tokens it gets alone; the blocks all come back.
TEST(Engine, PreemptedRequestsAreRecomputedAndGetTheirOwnTokens) {
  ASSERT_NE(S().model, nullptr);
  EngineOptions o = Running::Small();
  o.scheduler.max_running = 3;
  o.max_model_len = 384;  // three blocks
  // Three sequences' windows and chunks (three window blocks each), and four compressed blocks.
  const ModelConfig& c = S().model->config();
  const int64_t B = KvPool::DefaultBlockTokens(c);
  o.cache_bytes = 3 * 3 * KvPool::WindowBlockBytes(c, B) + 4 * KvPool::BlockBytes(c, B) * 4 / 3 + 1024;
  Running run(o);
  ASSERT_EQ(run.engine->Stats().blocks_total, 4);
  const int n = 3;
  auto spec = [&](int i) {
    GenerateSpec s = Spec(i);
    s.prompt = Prompt(100 + 7 * i, 900 + i);
    s.sampling.max_tokens = 60;  // 160 .. 174 positions: two blocks each
    return s;
  };
  std::vector<Result> alone(n), together(n);
  for (int i = 0; i < n; ++i) {
    auto h = run.engine->Submit(spec(i));
    ASSERT_TRUE(h.ok()) << h.status();
    alone[i] = Collect(**h);
    ASSERT_TRUE(alone[i].status.ok()) << alone[i].status;
  }
  ASSERT_EQ(run.engine->Stats().preemptions, 0);
  std::vector<std::shared_ptr<RequestHandle>> handles;
  for (int i = 0; i < n; ++i) {
    auto h = run.engine->Submit(spec(i));
    ASSERT_TRUE(h.ok()) << h.status();
    handles.push_back(*h);
  }
  for (int i = 0; i < n; ++i) {
    together[i] = Collect(*handles[i]);
    ASSERT_TRUE(together[i].status.ok()) << together[i].status;
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << "request " << i;
  }
  const EngineStats st = run.engine->Stats();
  EXPECT_GT(st.preemptions, 0) << "the pool was meant to be too small for all four";
  EXPECT_EQ(st.blocks_used, 0);
  EXPECT_EQ(st.active, 0);
  EXPECT_EQ(st.completed, 2 * n);
}

// A budget too small for the default number of running sequences' windows: with max_running as
// a default, the engine runs as many as fit (and requests beyond them queue and complete); given
// explicitly, the same budget is an error naming the numbers.
TEST(Engine, DefaultMaxRunningFitsTheCacheBudget) {
  ASSERT_NE(S().model, nullptr);
  const ModelConfig& c = S().model->config();
  EngineOptions o = Running::Small();
  const int64_t B = KvPool::DefaultBlockTokens(c);
  const int64_t per_seq = (c.sliding_window - 1 + B - 1) / B + (o.scheduler.prefill_chunk + B - 1) / B + 1;
  const int64_t one = (o.max_model_len + B - 1) / B * KvPool::BlockBytes(c, B);
  o.cache_bytes = one + 3 * per_seq * KvPool::WindowBlockBytes(c, B) + 1024;  // three sequences' windows
  ASSERT_EQ(RunningThatFit(c, o), 3);
  o.scheduler.max_running = 8;
  {
    auto refused = Engine::Create(*S().model, S().tokenizer.get(), *S().world, o);
    ASSERT_FALSE(refused.ok());
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(refused.status().message().find("windows of 8 running sequences"), absl::string_view::npos)
        << refused.status();
  }
  o.fit_max_running = true;
  Running run(o);
  ASSERT_NE(run.engine, nullptr);
  EXPECT_EQ(run.engine->options().scheduler.max_running, 3);
  std::vector<std::shared_ptr<RequestHandle>> handles;
  for (int i = 0; i < 5; ++i) {
    auto h = run.engine->Submit(Spec(i));
    ASSERT_TRUE(h.ok()) << h.status();
    handles.push_back(*h);
  }
  for (auto& h : handles) EXPECT_TRUE(Collect(*h).status.ok());
  EXPECT_EQ(run.engine->Stats().completed, 5);
}

// The contract an asynchronous consumer relies on (rpc/inference_server.cc): a notification after
// every piece and after the close, one at once for what is already waiting, none once cleared.
TEST(Engine, NotifyAnnouncesEveryPieceAndTheEnd) {
  ASSERT_NE(S().model, nullptr);
  Running run;
  GenerateSpec s = Spec(2);
  s.sampling.max_tokens = 12;
  std::atomic<int> calls{0};
  auto h = run.engine->Submit(s);
  ASSERT_TRUE(h.ok()) << h.status();
  (*h)->SetNotify([&] { calls.fetch_add(1); });
  // Next calls that returned pieces. A piece is announced just after it is queued, so Next may
  // take the newest piece before its notice runs; every earlier piece's notice has run (the
  // engine's thread queues the next piece only after announcing the last).
  int taken = 0;
  size_t tokens = 0;
  bool ended = false;
  const absl::Time deadline = absl::Now() + absl::Seconds(120);
  while (!ended && absl::Now() < deadline) {
    absl::SleepFor(absl::Milliseconds(1));
    auto o = (*h)->Next(absl::ZeroDuration());
    if (absl::IsDeadlineExceeded(o.status())) continue;
    if (!o.ok()) {
      EXPECT_EQ(o.status().code(), absl::StatusCode::kOutOfRange) << o.status();
      ended = true;
      break;
    }
    ++taken;
    tokens += o->token_ids.size();
    EXPECT_GE(calls.load(), taken - 1);
  }
  ASSERT_TRUE(ended);
  EXPECT_EQ(tokens, 12u);
  // The close's notice follows the last piece's (it may land just after Next saw the end).
  for (int i = 0; i < 500 && calls.load() < taken + 1; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_GE(calls.load(), taken + 1);
  // Set on a request that has ended: called once at once; cleared: never again.
  std::atomic<int> late{0};
  (*h)->SetNotify([&] { late.fetch_add(1); });
  EXPECT_EQ(late.load(), 1);
  (*h)->SetNotify(nullptr);
  EXPECT_EQ(late.load(), 1);
}

TEST(Engine, AbortFreesTheCacheWithinAStep) {
  ASSERT_NE(S().model, nullptr);
  Running run;
  GenerateSpec s = Spec(1);
  s.request_id = "long";
  s.sampling.max_tokens = 200;
  auto h = run.engine->Submit(s);
  ASSERT_TRUE(h.ok());
  auto first = (*h)->Next(absl::Seconds(60));
  ASSERT_TRUE(first.ok()) << first.status();
  // The first token streams out during its step; the step's cache accounting lands when the step
  // ends, so give it a moment (bounded) before reading the stats.
  for (int i = 0; i < 100 && run.engine->Stats().cache_bytes == 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_GT(run.engine->Stats().cache_bytes, 0);
  EXPECT_GT(run.engine->Stats().blocks_used, 0);
  EXPECT_TRUE(run.engine->Abort("long"));
  Result r = Collect(**h);
  EXPECT_EQ(r.status.code(), absl::StatusCode::kAborted) << r.status;
  EXPECT_EQ(r.last.finish_reason, FinishReason::kAbort);
  EXPECT_FALSE(run.engine->Abort("long"));  // idempotent: now unknown
  EXPECT_FALSE(run.engine->Abort("never-existed"));
  EngineStats st;
  for (int i = 0; i < 100; ++i) {
    st = run.engine->Stats();
    if (st.cache_bytes == 0 && st.blocks_used == 0) break;
    absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(st.cache_bytes, 0);
  EXPECT_EQ(st.cache_sequences, 0);
  EXPECT_EQ(st.blocks_used, 0);
  EXPECT_EQ(st.active, 0);
  EXPECT_EQ(st.aborted, 1);
}

// A budget too small for the running sequences' windows and one sequence of max_model_len is an
// error that says so; a pool the machine cannot reserve is RESOURCE_EXHAUSTED naming its size.
TEST(Engine, APoolThatCannotBeHadIsAClearError) {
  ASSERT_NE(S().model, nullptr);
  EngineOptions o = Running::Small();
  o.cache_bytes = 64 << 10;
  auto e = Engine::Create(*S().model, nullptr, *S().world, o);
  ASSERT_EQ(e.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(e.status().message().find("cache budget"), std::string::npos) << e.status();
  const ModelConfig& c = S().model->config();
  auto huge = KvPool::Create(S().model->backend(), c, KvPool::DefaultBlockTokens(c), int64_t{1} << 40, 1);
  ASSERT_EQ(huge.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(huge.status().message().find("--cache-mb"), std::string::npos) << huge.status();
}

TEST(Engine, RejectsBadRequestsNamingTheField) {
  ASSERT_NE(S().model, nullptr);
  Running run;
  auto code_of = [&](GenerateSpec s) { return run.engine->Submit(std::move(s)).status(); };
  GenerateSpec s = Spec(0);
  s.prompt = {};
  EXPECT_EQ(code_of(s).code(), absl::StatusCode::kInvalidArgument);
  s = Spec(0);
  s.prompt = {5, -1};
  EXPECT_EQ(code_of(s).code(), absl::StatusCode::kInvalidArgument);
  s.prompt = {5, 129280};
  EXPECT_EQ(code_of(s).code(), absl::StatusCode::kInvalidArgument);
  s = Spec(0);
  s.sampling.max_tokens = 0;
  EXPECT_NE(code_of(s).message().find("max_tokens"), std::string::npos);
  s.sampling.max_tokens = 1000;  // 3 + 1000 > 256
  const absl::Status ctx = code_of(s);
  EXPECT_EQ(ctx.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(ctx.message().find("maximum context length is 256 tokens"), std::string::npos) << ctx;
  s = Spec(0);
  s.prompt = Prompt(256, 0);  // no room, max_tokens absent
  s.sampling.max_tokens = -1;
  EXPECT_NE(code_of(s).message().find("maximum context length"), std::string::npos);
  s = Spec(0);
  s.sampling.temperature = -1;
  EXPECT_NE(code_of(s).message().find("sampling.temperature"), std::string::npos);
  // A duplicate in-flight id.
  s = Spec(0);
  s.request_id = "dup";
  s.sampling.max_tokens = 100;
  auto h = run.engine->Submit(s);
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(code_of(s).code(), absl::StatusCode::kInvalidArgument);
  run.engine->Abort("dup");
  Collect(**h);
}

// Admission control (row LD-01): past the running and queued limits a request is refused at once
// with RESOURCE_EXHAUSTED, and the admitted ones are unaffected.
TEST(Engine, AFullQueueIsResourceExhausted) {
  ASSERT_NE(S().model, nullptr);
  EngineOptions o = Running::Small();
  o.scheduler.max_running = 1;
  o.scheduler.max_queued = 1;
  Running run(o);
  GenerateSpec s = Spec(1);
  s.sampling.max_tokens = 50;
  s.request_id = "running";
  auto a = run.engine->Submit(s);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE((*a)->Next(absl::Seconds(60)).ok());  // admitted and generating
  s.request_id = "queued";
  auto b = run.engine->Submit(s);
  ASSERT_TRUE(b.ok());
  s.request_id = "refused";
  const auto c = run.engine->Submit(s);
  EXPECT_EQ(c.status().code(), absl::StatusCode::kResourceExhausted) << c.status();
  EXPECT_EQ(run.engine->Stats().queued, 1);
  run.engine->Abort("running");
  run.engine->Abort("queued");
  EXPECT_EQ(Collect(**a).status.code(), absl::StatusCode::kAborted);
  EXPECT_EQ(Collect(**b).status.code(), absl::StatusCode::kAborted);
  EXPECT_EQ(run.engine->Stats().rejected, 1);
}

TEST(Engine, DrainFinishesInFlightThenRefuses) {
  ASSERT_NE(S().model, nullptr);
  auto e = Engine::Create(*S().model, S().tokenizer.get(), *S().world, Running::Small());
  ASSERT_TRUE(e.ok());
  Engine& engine = **e;
  absl::Status result = absl::UnknownError("not run");
  std::thread t([&] { result = engine.Run(); });
  auto a = engine.Submit(Spec(2));
  ASSERT_TRUE(a.ok());
  engine.Drain(absl::Seconds(60));
  EXPECT_EQ(engine.Submit(Spec(3)).status().code(), absl::StatusCode::kUnavailable);
  Result r = Collect(**a);
  EXPECT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.tokens.size(), 6u);
  t.join();
  EXPECT_TRUE(result.ok()) << result;
  EXPECT_EQ(engine.state(), EngineState::kStopped);
}

TEST(Engine, DrainGraceExpiryAndFailureEndRequestsWithUnavailable) {
  ASSERT_NE(S().model, nullptr);
  {
    auto e = Engine::Create(*S().model, S().tokenizer.get(), *S().world, Running::Small());
    ASSERT_TRUE(e.ok());
    Engine& engine = **e;
    std::thread t([&] { (void)engine.Run(); });
    GenerateSpec s = Spec(1);
    s.sampling.max_tokens = 200;
    auto a = engine.Submit(s);
    ASSERT_TRUE(a.ok());
    ASSERT_TRUE((*a)->Next(absl::Seconds(60)).ok());
    engine.Drain(absl::ZeroDuration());
    EXPECT_EQ(Collect(**a).status.code(), absl::StatusCode::kUnavailable);
    t.join();
  }
  {
    auto e = Engine::Create(*S().model, S().tokenizer.get(), *S().world, Running::Small());
    ASSERT_TRUE(e.ok());
    Engine& engine = **e;
    absl::Status result;
    std::thread t([&] { result = engine.Run(); });
    GenerateSpec s = Spec(1);
    s.sampling.max_tokens = 200;
    auto a = engine.Submit(s);
    ASSERT_TRUE(a.ok());
    engine.Fail(absl::UnavailableError("rank 1 was lost"));
    const Result r = Collect(**a);
    EXPECT_EQ(r.status.code(), absl::StatusCode::kUnavailable);
    EXPECT_NE(r.status.message().find("rank 1 was lost"), std::string::npos);
    t.join();
    EXPECT_EQ(result.code(), absl::StatusCode::kUnavailable);
    EXPECT_EQ(engine.Submit(Spec(0)).status().code(), absl::StatusCode::kUnavailable);
  }
}

TEST(Engine, StopStringsEndTheRequestAndEchoReturnsThePrompt) {
  ASSERT_NE(S().model, nullptr);
  if (!S().tokenizer) GTEST_SKIP() << "the builtin tokenizer is missing";
  Running run;
  // Find what greedy generation says, then stop on a piece of it.
  GenerateSpec s = Spec(0);
  s.sampling.temperature = 0;
  s.sampling.max_tokens = 8;
  auto h = run.engine->Submit(s);
  ASSERT_TRUE(h.ok());
  const Result full = Collect(**h);
  ASSERT_TRUE(full.status.ok());
  if (full.text.size() < 4) GTEST_SKIP() << "greedy output too short to cut";
  // A stop string from the middle of the text, starting at a character boundary.
  size_t at = full.text.size() / 2;
  while (at > 0 && (static_cast<unsigned char>(full.text[at]) & 0xC0) == 0x80) --at;
  size_t end = at + 1;
  while (end < full.text.size() && (static_cast<unsigned char>(full.text[end]) & 0xC0) == 0x80) ++end;
  s.sampling.stop = {full.text.substr(at, end - at)};
  s.echo = true;
  h = run.engine->Submit(s);
  ASSERT_TRUE(h.ok());
  auto first = (*h)->Next(absl::Seconds(60));
  ASSERT_TRUE(first.ok());
  EXPECT_EQ(first->prompt_token_ids, s.prompt);
  Result r = Collect(**h);
  r.text = first->text + r.text;
  if (first->finished) r.last = *first;
  ASSERT_TRUE(r.status.ok()) << r.status;
  EXPECT_EQ(r.last.finish_reason, FinishReason::kStop);
  EXPECT_EQ(r.last.matched_stop, s.sampling.stop[0]);
  EXPECT_EQ(full.text.substr(0, r.text.size()), r.text);
  EXPECT_EQ(r.text.find(s.sampling.stop[0]), std::string::npos);
}

}  // namespace
}  // namespace dsv4

namespace dsv4 {
namespace {

// Prefix sharing and preemption on both families, with every cache the pool keeps: V4 (overlapping
// ratio-4 compressors, whose rows at a block end a resuming sequence needs), V4.1 (compressed KV
// and index keys shared across layers; ratio 1 and 2), and builtin:v41-tiny with Engram (its n-gram
// history at a block end) when the tokenizer is installed. Three requests share a 300-token
// prefix (two blocks of 128) and each grows into a fourth block; the pool holds six, so the newest
// is preempted and recomputed. Each stream equals the same request run alone (a unique salt:
// nothing shared, nothing preempted), token for token.
TEST(Engine, SharingAndPreemptionAreExactOnV4AndV41) {
  struct Family {
    std::string name;
    std::unique_ptr<Model> model;
    int64_t vocab;
  };
  std::vector<Family> families;
  auto v41 = nlohmann::json::parse(*BuiltinConfigJson("v41-tiny"));
  nlohmann::json& t = v41["text_config"];
  for (auto it = t.begin(); it != t.end();) it = it.key().rfind("engram_", 0) == 0 ? t.erase(it) : std::next(it);
  t["vocab_size"] = 512;
  auto v4 = nlohmann::json::parse(*BuiltinConfigJson("v4-tiny"));
  v4["vocab_size"] = 512;
  for (const auto& [name, j] : {std::pair<std::string, nlohmann::json>{"V4", v4}, {"V4.1", v41}}) {
    auto b = MakeRandomModel(j.dump(), 9, "sharing");
    ASSERT_TRUE(b.ok()) << b.status();
    auto w = LoadWeights(b->checkpoint, b->config);
    ASSERT_TRUE(w.ok()) << w.status();
    families.push_back({name, std::make_unique<Model>(std::shared_ptr<const ModelWeights>(std::move(*w))), 512});
  }
  if (FindTokenizerJson("builtin:v41-tiny").ok()) {
    auto w = LoadModel("builtin:v41-tiny");
    ASSERT_TRUE(w.ok()) << w.status();
    families.push_back({"V4.1 with Engram", std::make_unique<Model>(std::shared_ptr<const ModelWeights>(std::move(*w))),
                        100000});  // ids with a compressed id in the npm tokenizer
  }
  for (Family& f : families) {
    SCOPED_TRACE(f.name);
    const ModelConfig& c = f.model->config();
    const int64_t B = KvPool::DefaultBlockTokens(c);
    ASSERT_EQ(B, 128);
    EngineOptions o = Running::Small();
    o.scheduler.max_running = 3;
    o.max_model_len = 512;
    // Each running sequence's window and chunk (three window blocks), and six compressed blocks.
    o.cache_bytes = 3 * 3 * KvPool::WindowBlockBytes(c, B) + 6 * KvPool::BlockBytes(c, B) * 4 / 3 + 1024;
    Running run(o, f.model.get(), nullptr);
    ASSERT_EQ(run.engine->Stats().blocks_total, 6);
    auto tokens = [&](int n, int salt) {
      std::vector<int32_t> p;
      for (int i = 0; i < n; ++i) p.push_back(static_cast<int32_t>((i * 7919 + salt * 104729) % f.vocab));
      return p;
    };
    const std::vector<int32_t> prefix = tokens(300, 1);
    auto spec = [&](int i, const std::string& salt) {
      GenerateSpec s;
      s.prompt = prefix;
      const std::vector<int32_t> tail = tokens(70 + i, 10 + i);
      s.prompt.insert(s.prompt.end(), tail.begin(), tail.end());
      s.sampling.max_tokens = 40;  // 410 .. 412 positions: into a fourth block
      s.sampling.seed = 7 + i;
      s.sampling.temperature = i == 0 ? 0.0 : 0.8;
      s.sampling.ignore_eos = true;
      s.cache_salt = salt;
      return s;
    };
    const int n = 3;
    std::vector<Result> alone(n), together(n);
    for (int i = 0; i < n; ++i) {
      auto h = run.engine->Submit(spec(i, "alone-" + std::to_string(i)));
      ASSERT_TRUE(h.ok()) << h.status();
      alone[i] = Collect(**h);
      ASSERT_TRUE(alone[i].status.ok()) << alone[i].status;
      ASSERT_EQ(alone[i].tokens.size(), 40u);
    }
    ASSERT_EQ(run.engine->Stats().preemptions, 0);
    // A first request leaves the prefix's two blocks cached.
    GenerateSpec warm = spec(5, "");
    warm.sampling.max_tokens = 1;
    auto h = run.engine->Submit(warm);
    ASSERT_TRUE(h.ok()) << h.status();
    ASSERT_TRUE(Collect(**h).status.ok());
    const EngineStats before = run.engine->Stats();
    std::vector<std::shared_ptr<RequestHandle>> handles;
    for (int i = 0; i < n; ++i) {
      auto h = run.engine->Submit(spec(i, ""));
      ASSERT_TRUE(h.ok()) << h.status();
      handles.push_back(*h);
    }
    for (int i = 0; i < n; ++i) {
      together[i] = Collect(*handles[i]);
      ASSERT_TRUE(together[i].status.ok()) << together[i].status;
      EXPECT_EQ(together[i].tokens, alone[i].tokens) << "request " << i;
    }
    const EngineStats after = run.engine->Stats();
    EXPECT_GT(after.preemptions, 0) << "six blocks were meant to be too few for three requests of four";
    EXPECT_GE(after.prefix_hits - before.prefix_hits, n * 2 * B) << "each found the prefix's two blocks";
    EXPECT_EQ(after.blocks_used, 0);
    EXPECT_EQ(after.active, 0);
  }
}

}  // namespace
}  // namespace dsv4
