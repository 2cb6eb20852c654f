// `dsv4 serve --http-port` end to end with real clients, on 127.0.0.1: one rank, or under mpirun
// with DSV4_SERVE_NP (and DSV4_SERVE_ARGS for the layout). The cases share one server and run in
// order: OpenAI's own client (the `openai` npm package, run by node) lists the models and streams
// a chat completion, whose text equals the same request over gRPC; curl's /metrics parses as
// Prometheus text and agrees with GetServerInfo, every rank's step time and the routed tokens of a
// request included; four requests with a 2,000-token common prefix hold about one prefix's KV
// blocks and each stream equals the same request alone; a storm of 200 HTTP connections; a client
// that vanishes mid-stream; drain.
#include <gtest/gtest.h>
#include <httplib.h>
#include <signal.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "nlohmann/json.hpp"
#include "rpc/client.h"
#include "tests/rpc/prometheus_text.h"
#include "tests/rpc/serve_harness.h"
#include "tests/testutil.h"

namespace dsv4 {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using testing::ServeProcess;

constexpr char kModel[] = "builtin:v4-tiny";

struct Shared {
  std::unique_ptr<ServeProcess> server;
  std::unique_ptr<InferenceClient> client;
  std::string error;
};

Shared& S() {
  static Shared* s = [] {
    auto* s = new Shared;
    auto p = ServeProcess::Start({"--model", kModel, "--threads", "1", "--http-port", "0", "--max-model-len", "2304",
                                  "--max-running", "16", "--max-queued", "64", "--max-batch-tokens", "160",
                                  "--prefill-chunk", "64", "--drain-grace-s", "60"},
                                 testing::ServeRanks());
    if (!p.ok()) {
      s->error = std::string(p.status().message());
      return s;
    }
    s->server = std::move(*p);
    auto c = InferenceClient::Connect(s->server->address(), {});
    if (!c.ok() || !(*c)->WaitForServing(absl::Seconds(240)).ok()) {
      s->error = "the server never became SERVING:\n" + s->server->Log();
      return s;
    }
    s->client = std::move(*c);
    return s;
  }();
  return *s;
}

#define REQUIRE_SERVER()                                                                     \
  do {                                                                                       \
    ASSERT_TRUE(S().error.empty()) << S().error;                                             \
    ASSERT_FALSE(S().server->exited()) << "the server is gone:\n" << S().server->Log();      \
    ASSERT_GT(S().server->http_port(), 0) << "no http_port in the info file";                \
  } while (0)

std::string BaseUrl() { return absl::StrCat("http://127.0.0.1:", S().server->http_port()); }

// Runs a shell command with its stdout in a file; the exit status and the output.
std::pair<int, std::string> Shell(const std::string& cmd) {
  const std::string out = absl::StrCat(testing::TempDir(), "/cmd-", getpid(), ".out");
  const int rc = std::system(absl::StrCat(cmd, " > '", out, "'").c_str());
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, ReadFile(out).value_or("")};
}

TEST(ServeHttp, TheOpenAiClientStreamsAChatAndListsModels) {
  REQUIRE_SERVER();
  const std::string npm = DSV4_NPM_DIR;
  if (std::system("node --version >/dev/null 2>&1") != 0) GTEST_SKIP() << "node is not installed";
  if (!fs::exists(npm + "/node_modules/openai/package.json"))
    GTEST_SKIP() << "the npm package `openai` is missing (launch/setup.sh installs it)";
  const auto [rc, out] = Shell(absl::StrCat("timeout 600 node '", DSV4_SOURCE_DIR, "/tests/rpc/openai_client.js' --npm-dir '",
                                          npm, "' --base-url '", BaseUrl(), "/v1' --model '", kModel, "'"));
  ASSERT_EQ(rc, 0) << out << S().server->Log();
  const Json j = Json::parse(out, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << out;
  EXPECT_EQ(j["models"], Json::array({kModel}));
  const Json& st = j["stream"];
  EXPECT_EQ(st["role"], "assistant");
  EXPECT_EQ(st["ids"], 1) << "one id for every chunk of a completion";
  EXPECT_GE(st["chunks"].get<int>(), 3);
  EXPECT_EQ(st["finish_reason"], "length");
  EXPECT_EQ(st["usage"]["completion_tokens"], 12);
  EXPECT_EQ(st["usage"]["total_tokens"], st["usage"]["prompt_tokens"].get<int>() + 12);
  const Json& once = j["once"];
  EXPECT_EQ(once["object"], "chat.completion");
  EXPECT_EQ(once["text"], st["text"]) << "the same seeded request, streamed or not";
  EXPECT_EQ(once["usage"], st["usage"]);
  EXPECT_EQ(j["completion"]["object"], "text_completion");
  EXPECT_EQ(j["completion"]["usage"]["completion_tokens"], 4);
  EXPECT_EQ(j["error"]["status"], 400);
  EXPECT_EQ(j["error"]["param"], "temperature");
  // The same conversation over gRPC gives the same text.
  v1::GenerateRequest r;
  r.mutable_chat()->set_messages_json(R"([{"role": "system", "content": "Be brief."},
                                          {"role": "user", "content": "Tell me about the sea."}])");
  r.mutable_sampling()->set_max_tokens(12);
  r.mutable_sampling()->set_temperature(0.8);
  r.mutable_sampling()->set_seed(42);
  r.mutable_sampling()->set_ignore_eos(true);
  std::string grpc_text;
  ASSERT_TRUE(S().client->Generate(r, [&](const v1::GenerateResponse& m) { grpc_text += m.text(); }).ok());
  EXPECT_EQ(grpc_text, st["text"].get<std::string>());
}

absl::StatusOr<testing::PromExposition> CurlMetrics() {
  const auto [rc, text] = Shell(absl::StrCat("curl -sS --fail --max-time 60 '", BaseUrl(), "/metrics'"));
  if (rc != 0) return absl::UnavailableError(absl::StrCat("curl exited with ", rc));
  return testing::ParsePrometheusText(text);
}

TEST(ServeHttp, CurlsMetricsAreStrictPrometheusTextThatAgreesWithServerInfo) {
  REQUIRE_SERVER();
  if (std::system("curl --version >/dev/null 2>&1") != 0) GTEST_SKIP() << "curl is not installed";
  // The other ranks' figures arrive with their heartbeats (every 0.5 s): start from a settled
  // exposition, one that a later one 1.2 s on agrees with.
  absl::StatusOr<testing::PromExposition> before = CurlMetrics();
  ASSERT_TRUE(before.ok()) << before.status();
  for (int i = 0; i < 30; ++i) {
    absl::SleepFor(absl::Milliseconds(1200));
    auto again = CurlMetrics();
    ASSERT_TRUE(again.ok()) << again.status();
    const bool settled =
        again->Sum("dsv4:expert_routed_tokens_total") == before->Sum("dsv4:expert_routed_tokens_total");
    before = std::move(again);
    if (settled) break;
  }
  // One request of P prompt tokens and G generated ones runs P + G - 1 tokens through every layer,
  // and each is routed to k experts: exactly that many more routed tokens, summed over the ranks.
  constexpr int kPrompt = 9, kGen = 5;
  httplib::Client c("127.0.0.1", S().server->http_port());
  c.set_read_timeout(120, 0);
  std::vector<int> prompt;
  for (int i = 0; i < kPrompt; ++i) prompt.push_back(1000 + 37 * i);
  auto r = c.Post("/v1/completions", Json{{"prompt", prompt}, {"max_tokens", kGen}, {"ignore_eos", true}}.dump(),
                  "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  auto model = S().client->ModelInfo();
  ASSERT_TRUE(model.ok());
  // Heartbeats carry the other ranks' figures: wait (bounded) until they show the request.
  const double layers = model->num_layers(), k = model->experts_per_token();
  const double want = before->Sum("dsv4:expert_routed_tokens_total") + (kPrompt + kGen - 1) * layers * k;
  absl::StatusOr<testing::PromExposition> after;
  for (int i = 0; i < 100; ++i) {
    after = CurlMetrics();
    ASSERT_TRUE(after.ok()) << after.status();
    if (after->Sum("dsv4:expert_routed_tokens_total") >= want) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(after->Sum("dsv4:expert_routed_tokens_total"), want);
  auto info = S().client->ServerInfo();
  ASSERT_TRUE(info.ok());
  const std::vector<std::pair<std::string, std::string>> m = {{"model_name", kModel}};
  EXPECT_EQ(*after->Value("dsv4:generation_tokens_total", m), info->tokens_generated());
  EXPECT_EQ(*after->Value("dsv4:kv_cache_blocks_total", m), info->cache().blocks_total());
  EXPECT_EQ(*after->Value("dsv4:num_requests_running", m), 0);
  EXPECT_GE(*after->Value("dsv4:request_success_total", {{"finished_reason", "length"}}), 1);
  EXPECT_GE(*after->Value("dsv4:time_to_first_token_seconds_count", m), 1);
  for (int rank = 0; rank < testing::ServeRanks(); ++rank)
    EXPECT_GT(*after->Value("dsv4:step_duration_seconds_count", {{"rank", absl::StrCat(rank)}}), 0) << rank;
}

// Four requests whose prompts share their first 2,000 tokens: once the first has run, the prefix's
// 15 full blocks (1,920 tokens) are cached and all four start after them, so while they run the
// pool holds about one prefix's blocks (15 shared + one of each request's own), not four; and each
// stream equals the same request computing everything itself (a unique cache_salt shares nothing).
TEST(ServeHttp, FourRequestsWithA2000TokenPrefixShareItsBlocks) {
  REQUIRE_SERVER();
  constexpr int kPrefix = 2000, kN = 4, kShared = 1920, kMaxTokens = 8;
  std::vector<int32_t> prefix;
  for (int i = 0; i < kPrefix; ++i) prefix.push_back(100 + (i * 7919) % 100000);
  auto request = [&](int i, const std::string& salt) {
    v1::GenerateRequest r;
    auto* ids = r.mutable_tokens()->mutable_ids();
    ids->Add(prefix.begin(), prefix.end());
    for (int t = 0; t < 20; ++t) ids->Add(5000 + 100 * i + t);
    r.set_cache_salt(salt);
    r.mutable_sampling()->set_max_tokens(kMaxTokens);
    r.mutable_sampling()->set_seed(i);
    r.mutable_sampling()->set_ignore_eos(true);
    return r;
  };
  auto run = [&](const v1::GenerateRequest& r) {
    std::vector<int32_t> tokens;
    const absl::Status st = S().client->Generate(
        r,
        [&](const v1::GenerateResponse& m) {
          tokens.insert(tokens.end(), m.token_ids().begin(), m.token_ids().end());
        },
        absl::Seconds(600));
    EXPECT_TRUE(st.ok()) << st;
    return tokens;
  };
  std::vector<std::vector<int32_t>> alone(kN);
  for (int i = 0; i < kN; ++i) alone[i] = run(request(i, absl::StrCat("alone-", i)));
  (void)run(request(0, ""));  // computes the prefix's blocks, which stay cached
  auto before = S().client->ServerInfo();
  ASSERT_TRUE(before.ok());
  auto metrics_before = CurlMetrics();
  ASSERT_TRUE(metrics_before.ok()) << metrics_before.status();

  std::vector<std::vector<int32_t>> shared(kN);
  std::atomic<int> done{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kN; ++i)
    threads.emplace_back([&, i] {
      auto c = InferenceClient::Connect(S().server->address(), {});
      ASSERT_TRUE(c.ok());
      std::vector<int32_t> tokens;
      const absl::Status st = (*c)->Generate(
          request(i, ""),
          [&](const v1::GenerateResponse& m) {
            tokens.insert(tokens.end(), m.token_ids().begin(), m.token_ids().end());
          },
          absl::Seconds(600));
      EXPECT_TRUE(st.ok()) << st;
      shared[i] = std::move(tokens);
      ++done;
    });
  int64_t max_used = 0;
  while (done.load() < kN) {
    auto info = S().client->ServerInfo();
    if (info.ok()) max_used = std::max(max_used, info->cache().blocks_used());
    absl::SleepFor(absl::Milliseconds(10));
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kN; ++i) EXPECT_EQ(shared[i], alone[i]) << "request " << i;
  auto after = S().client->ServerInfo();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->cache().block_tokens(), 128);
  EXPECT_EQ(after->cache().prefix_hit_tokens() - before->cache().prefix_hit_tokens(), kN * kShared);
  EXPECT_LE(max_used, kShared / 128 + kN + 2) << "about one prefix's blocks, not " << kN;
  std::printf("  at most %lld KV blocks in use for %d requests of %d tokens (one prompt alone: %d)\n",
              static_cast<long long>(max_used), kN, kPrefix + 20, (kPrefix + 20 + kMaxTokens + 127) / 128);
  auto metrics_after = CurlMetrics();
  ASSERT_TRUE(metrics_after.ok()) << metrics_after.status();
  const std::vector<std::pair<std::string, std::string>> m = {{"model_name", kModel}};
  EXPECT_EQ(*metrics_after->Value("dsv4:prefix_cache_hits_total", m) -
                *metrics_before->Value("dsv4:prefix_cache_hits_total", m),
            kN * kShared);
  EXPECT_GT(*metrics_after->Value("dsv4:prefix_cache_hit_rate", m), 0);
  EXPECT_DOUBLE_EQ(after->cache().prefix_hit_rate(), static_cast<double>(after->cache().prefix_hit_tokens()) /
                                                         static_cast<double>(after->cache().prefix_queried_tokens()));
  EXPECT_GE(*metrics_after->Value("dsv4:kv_cache_blocks_cached", m), kShared / 128);
}

// GR-08 over HTTP: 200 connections at once, each ends once (200 or 429), none hangs.
TEST(ServeHttp, AStormOf200Connections) {
  REQUIRE_SERVER();
  auto before = S().client->ServerInfo();
  ASSERT_TRUE(before.ok());
  constexpr int kClients = 200;
  std::vector<int> codes(kClients, -1);
  std::atomic<int> go{0};
  std::vector<std::thread> threads;
  for (int i = 0; i < kClients; ++i)
    threads.emplace_back([&, i] {
      httplib::Client c("127.0.0.1", S().server->http_port());
      c.set_read_timeout(300, 0);
      c.set_connection_timeout(60, 0);
      while (go.load() == 0) std::this_thread::yield();
      auto r = c.Post("/v1/completions",
                      Json{{"prompt", {1, 2, 3, i}}, {"max_tokens", 2}, {"ignore_eos", true}}.dump(), "application/json");
      codes[i] = r ? r->status : -static_cast<int>(r.error());
    });
  go = 1;
  for (auto& t : threads) t.join();
  int ok = 0, refused = 0;
  for (int i = 0; i < kClients; ++i) {
    EXPECT_TRUE(codes[i] == 200 || codes[i] == 429) << i << ": " << codes[i];
    ok += codes[i] == 200, refused += codes[i] == 429;
  }
  EXPECT_GE(ok, 64);  // the queue alone takes 64
  auto after = S().client->ServerInfo();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->requests_completed() - before->requests_completed(), ok);
  EXPECT_EQ(after->requests_rejected() - before->requests_rejected(), refused);
  EXPECT_EQ(after->cache().blocks_used(), 0);
}

// GR-03 over SSE: a client reset mid-stream has its request aborted and its cache freed.
TEST(ServeHttp, AStreamWhoseClientVanishesIsAborted) {
  REQUIRE_SERVER();
  auto before = S().client->ServerInfo();
  ASSERT_TRUE(before.ok());
  std::atomic<bool> got{false};
  // Receiving the first event, the client ends the request: httplib closes the connection.
  std::thread t([&] {
    httplib::Client s("127.0.0.1", S().server->http_port());
    s.set_read_timeout(120, 0);
    httplib::Request req;
    req.method = "POST";
    req.path = "/v1/completions";
    req.body = Json{{"prompt", {5, 6, 7}}, {"max_tokens", 450}, {"ignore_eos", true}, {"stream", true}}.dump();
    req.set_header("Content-Type", "application/json");
    req.content_receiver = [&](const char*, size_t, uint64_t, uint64_t) {
      got = true;
      return false;  // stop reading: the connection is closed
    };
    (void)s.send(req);
  });
  t.join();
  EXPECT_TRUE(got.load());
  v1::ServerInfo info;
  for (int i = 0; i < 300; ++i) {  // bounded: 30 s
    auto s = S().client->ServerInfo();
    ASSERT_TRUE(s.ok());
    info = *s;
    if (info.active_requests() == 0 && info.cache().blocks_used() == 0 &&
        info.requests_aborted() > before->requests_aborted())
      break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(info.active_requests(), 0);
  EXPECT_EQ(info.cache().blocks_used(), 0);
  EXPECT_EQ(info.requests_aborted() - before->requests_aborted(), 1);
}

// Last: drain. /ready turns 503 at once, new requests are refused with 503, the job exits 0.
TEST(ServeHttp, ZzDrainTurnsReadyOffAndExitsZero) {
  REQUIRE_SERVER();
  httplib::Client c("127.0.0.1", S().server->http_port());
  auto ready = c.Get("/ready");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200);
  // A long request keeps the server draining for a while.
  std::thread t([] {
    httplib::Client l("127.0.0.1", S().server->http_port());
    l.set_read_timeout(300, 0);
    (void)l.Post("/v1/completions", Json{{"prompt", {8, 9}}, {"max_tokens", 60}, {"ignore_eos", true}}.dump(),
                 "application/json");
  });
  absl::SleepFor(absl::Milliseconds(200));
  S().server->SignalLeader(SIGTERM);
  int seen = 0;
  for (int i = 0; i < 300 && seen != 503; ++i) {
    auto r = c.Get("/ready");
    seen = r ? r->status : 0;
    if (seen != 503) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_EQ(seen, 503);
  auto refused = c.Post("/v1/completions", R"({"prompt": [1], "max_tokens": 1})", "application/json");
  if (refused) {  // no answer at all (the listener already closed) is a refusal too
    EXPECT_EQ(refused->status, 503) << refused->body;
  }
  t.join();
  EXPECT_EQ(S().server->Wait(absl::Seconds(120)), 0) << S().server->Log();
}

}  // namespace
}  // namespace dsv4
