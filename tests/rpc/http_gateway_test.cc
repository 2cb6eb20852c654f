// The HTTP gateway over an engine in this process (builtin:v4-tiny, one rank), driven by
// cpp-httplib's client and by raw sockets: health and readiness, OpenAI responses equal to the
// engine's own output for the same seeded request, SSE framing, errors in OpenAI's shape with their
// HTTP codes, the bearer token, a client that vanishes mid-stream, and /metrics.
#include "rpc/http_gateway.h"

#include <gtest/gtest.h>
#include <httplib.h>
#include <sys/socket.h>
#include <unistd.h>

#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"
#include "rpc/metrics.h"
#include "runtime/weights.h"
#include "tests/rpc/prometheus_text.h"
#include "tests/testutil.h"

namespace dsv4 {
namespace {

using Json = nlohmann::json;
constexpr char kModel[] = "builtin:v4-tiny";

struct Shared {
  std::unique_ptr<Model> model;
  std::unique_ptr<Tokenizer> tokenizer;
  std::unique_ptr<Communicator> world = MakeLocalCommunicator();
  std::unique_ptr<Engine> engine;
  std::thread loop;
  std::unique_ptr<ServingMetrics> metrics;
  std::unique_ptr<HttpGateway> gateway;
  std::string error;
};

Shared& S() {
  static Shared* s = [] {
    auto* s = new Shared;
    auto w = LoadModel(kModel);
    if (!w.ok()) {
      s->error = std::string(w.status().message());
      return s;
    }
    s->model = std::make_unique<Model>(std::shared_ptr<const ModelWeights>(std::move(*w)));
    if (auto path = FindTokenizerJson(kModel); path.ok())
      if (auto t = Tokenizer::Load(*path); t.ok()) s->tokenizer = std::move(*t);
    EngineOptions o;
    o.scheduler.max_running = 8, o.scheduler.prefill_chunk = 32, o.scheduler.max_batch_tokens = 64;
    o.max_model_len = 512, o.cache_bytes = 128 << 20;
    auto e = Engine::Create(*s->model, s->tokenizer.get(), *s->world, o);
    if (!e.ok()) {
      s->error = std::string(e.status().message());
      return s;
    }
    s->engine = std::move(*e);
    s->loop = std::thread([s] { (void)s->engine->Run(); });
    s->metrics = std::make_unique<ServingMetrics>(kModel, s->model->config().num_hidden_layers,
                                                  s->model->config().n_routed_experts);
    s->engine->SetObserver(s->metrics.get());
    auto g = HttpGateway::Start(HttpOptions{}, "test-build");
    if (!g.ok()) {
      s->error = std::string(g.status().message());
      return s;
    }
    s->gateway = std::move(*g);
    return s;
  }();
  return *s;
}

// The gateway before it serves; then attached and SERVING.
HttpGateway& Serving() {
  static bool attached = [] {
    InputLimits limits;
    limits.max_model_len = 512;
    S().gateway->Attach(S().engine.get(), S().tokenizer.get(), kModel, limits);
    S().gateway->SetMetrics([] {
      const EngineStats st = S().engine->Stats();
      RankFigures r;
      r.steps = st.busy_steps, r.step_seconds = st.step_seconds, r.cache_bytes = st.cache_bytes;
      r.expert_layer_load = S().model->ExpertLoadByLayer();
      return S().metrics->Render(st, {&r, 1});
    });
    S().gateway->SetState(v1::SERVER_STATE_SERVING);
    return true;
  }();
  (void)attached;
  return *S().gateway;
}

httplib::Client Client() {
  httplib::Client c("127.0.0.1", S().gateway->port());
  c.set_read_timeout(120, 0);
  return c;
}

#define REQUIRE_GATEWAY() ASSERT_TRUE(S().error.empty() && S().gateway != nullptr) << S().error

// Parses an SSE body into its data payloads ("[DONE]" kept as a string).
std::vector<Json> SseEvents(const std::string& body) {
  std::vector<Json> out;
  for (absl::string_view event : absl::StrSplit(body, "\n\n", absl::SkipEmpty())) {
    if (absl::StartsWith(event, ":")) continue;  // keep-alive comments
    EXPECT_TRUE(absl::StartsWith(event, "data: ")) << event;
    event.remove_prefix(6);
    out.push_back(event == "[DONE]" ? Json("[DONE]") : Json::parse(event));
  }
  return out;
}

void ExpectOpenAiError(const httplib::Result& r, int code, const std::string& in_message) {
  ASSERT_TRUE(r) << "no response";
  EXPECT_EQ(r->status, code) << r->body;
  const Json j = Json::parse(r->body, nullptr, false);
  ASSERT_FALSE(j.is_discarded()) << r->body;
  ASSERT_TRUE(j.contains("error")) << r->body;
  EXPECT_TRUE(j["error"]["message"].is_string());
  EXPECT_TRUE(j["error"]["type"].is_string());
  EXPECT_TRUE(j["error"].contains("param"));
  EXPECT_TRUE(j["error"].contains("code"));
  EXPECT_NE(j["error"]["message"].get<std::string>().find(in_message), std::string::npos) << r->body;
}

// First, before Serving(): loading answers.
TEST(HttpGateway, AHealthAndReadinessWhileLoading) {
  REQUIRE_GATEWAY();
  auto c = Client();
  auto h = c.Get("/health");
  ASSERT_TRUE(h);
  EXPECT_EQ(h->status, 200);
  EXPECT_EQ(Json::parse(h->body)["state"], "loading");
  ExpectOpenAiError(c.Get("/ready"), 503, "loading");
  ExpectOpenAiError(c.Post("/v1/completions", R"({"prompt": "x"})", "application/json"), 503, "loading");
  ExpectOpenAiError(c.Get("/v1/models"), 503, "loading");
}

TEST(HttpGateway, ReadyModelsAndVersion) {
  REQUIRE_GATEWAY();
  Serving();
  auto c = Client();
  auto r = c.Get("/ready");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->status, 200);
  auto m = c.Get("/v1/models");
  ASSERT_TRUE(m);
  ASSERT_EQ(m->status, 200);
  const Json j = Json::parse(m->body);
  EXPECT_EQ(j["object"], "list");
  ASSERT_EQ(j["data"].size(), 1u);
  EXPECT_EQ(j["data"][0]["id"], kModel);
  EXPECT_EQ(j["data"][0]["object"], "model");
  EXPECT_EQ(j["data"][0]["max_model_len"], 512);
  auto v = c.Get("/version");
  ASSERT_TRUE(v);
  EXPECT_EQ(Json::parse(v->body)["version"], "test-build");
}

// The engine alone, for the same seeded request.
struct Direct {
  std::vector<int32_t> tokens;
  std::string text;
};
Direct RunDirect(GenerateSpec spec) {
  Direct d;
  auto h = S().engine->Submit(std::move(spec));
  EXPECT_TRUE(h.ok()) << h.status();
  if (!h.ok()) return d;
  for (;;) {
    auto o = (*h)->Next(absl::Seconds(60));
    if (!o.ok()) break;
    d.tokens.insert(d.tokens.end(), o->token_ids.begin(), o->token_ids.end());
    d.text += o->text;
  }
  return d;
}

TEST(HttpGateway, CompletionsEqualTheEngineAloneStreamedOrNot) {
  REQUIRE_GATEWAY();
  Serving();
  GenerateSpec spec;
  spec.prompt = {0, 100, 200, 300, 400};
  spec.sampling.temperature = 0.9, spec.sampling.top_p = 0.95, spec.sampling.seed = 11, spec.sampling.max_tokens = 12;
  spec.sampling.ignore_eos = true;
  const Direct want = RunDirect(spec);
  ASSERT_EQ(want.tokens.size(), 12u);
  const Json body = {{"model", kModel}, {"prompt", spec.prompt},  {"temperature", 0.9}, {"top_p", 0.95},
                     {"seed", 11},      {"max_tokens", 12},       {"ignore_eos", true}};
  auto c = Client();
  auto r = c.Post("/v1/completions", body.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  EXPECT_NE(r->get_header_value("Content-Type").find("application/json"), std::string::npos);
  const Json j = Json::parse(r->body);
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_TRUE(absl::StartsWith(j["id"].get<std::string>(), "cmpl-"));
  EXPECT_EQ(j["model"], kModel);
  EXPECT_EQ(j["choices"][0]["text"], want.text);
  EXPECT_EQ(j["choices"][0]["finish_reason"], "length");
  EXPECT_EQ(j["usage"]["prompt_tokens"], 5);
  EXPECT_EQ(j["usage"]["completion_tokens"], 12);
  EXPECT_EQ(j["usage"]["total_tokens"], 17);
  // Streamed: the same text in pieces, the finish reason on the last chunk, then [DONE].
  Json sbody = body;
  sbody["stream"] = true;
  auto s = c.Post("/v1/completions", sbody.dump(), "application/json");
  ASSERT_TRUE(s);
  ASSERT_EQ(s->status, 200) << s->body;
  EXPECT_NE(s->get_header_value("Content-Type").find("text/event-stream"), std::string::npos);
  const std::vector<Json> ev = SseEvents(s->body);
  ASSERT_GE(ev.size(), 2u);
  EXPECT_EQ(ev.back(), "[DONE]");
  std::string text;
  for (size_t i = 0; i + 1 < ev.size(); ++i) {
    EXPECT_EQ(ev[i]["object"], "text_completion");
    text += ev[i]["choices"][0]["text"].get<std::string>();
    if (i + 2 < ev.size()) {
      EXPECT_TRUE(ev[i]["choices"][0]["finish_reason"].is_null());
    }
  }
  EXPECT_EQ(text, want.text);
  EXPECT_EQ(ev[ev.size() - 2]["choices"][0]["finish_reason"], "length");
}

TEST(HttpGateway, ChatStreamWithUsageAndLogprobs) {
  REQUIRE_GATEWAY();
  Serving();
  if (S().tokenizer == nullptr) GTEST_SKIP() << "the builtin tokenizer is missing";
  const Json body = {{"model", kModel},
                     {"messages", Json::array({{{"role", "user"}, {"content", "Say something."}}})},
                     {"max_tokens", 6},
                     {"seed", 5},
                     {"ignore_eos", true},
                     {"logprobs", true},
                     {"top_logprobs", 2},
                     {"stream", true},
                     {"stream_options", {{"include_usage", true}}}};
  auto c = Client();
  auto s = c.Post("/v1/chat/completions", body.dump(), "application/json");
  ASSERT_TRUE(s);
  ASSERT_EQ(s->status, 200) << s->body;
  const std::vector<Json> ev = SseEvents(s->body);
  ASSERT_GE(ev.size(), 4u);
  EXPECT_EQ(ev[0]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_EQ(ev.back(), "[DONE]");
  const Json& usage = ev[ev.size() - 2];
  EXPECT_TRUE(usage["choices"].empty());
  EXPECT_EQ(usage["usage"]["completion_tokens"], 6);
  int tokens = 0;
  std::string finish;
  for (size_t i = 0; i + 2 < ev.size(); ++i) {
    EXPECT_EQ(ev[i]["object"], "chat.completion.chunk");
    EXPECT_TRUE(ev[i]["usage"].is_null());
    const Json& lp = ev[i]["choices"][0]["logprobs"];
    if (lp.is_object())
      for (const Json& t : lp["content"]) {
        ++tokens;
        EXPECT_LE(t["logprob"].get<double>(), 0.0);
        EXPECT_EQ(t["top_logprobs"].size(), 2u);
      }
    if (!ev[i]["choices"][0]["finish_reason"].is_null()) finish = ev[i]["choices"][0]["finish_reason"];
  }
  EXPECT_EQ(tokens, 6);
  EXPECT_EQ(finish, "length");
  // Not streamed: the message object.
  Json once = body;
  once.erase("stream");
  once.erase("stream_options");
  auto r = c.Post("/v1/chat/completions", once.dump(), "application/json");
  ASSERT_TRUE(r);
  ASSERT_EQ(r->status, 200) << r->body;
  const Json j = Json::parse(r->body);
  EXPECT_EQ(j["object"], "chat.completion");
  EXPECT_EQ(j["choices"][0]["message"]["role"], "assistant");
  EXPECT_TRUE(j["choices"][0]["message"]["content"].is_string());
  EXPECT_EQ(j["choices"][0]["logprobs"]["content"].size(), 6u);
}

TEST(HttpGateway, ErrorsHaveOpenAiShapeAndCodes) {
  REQUIRE_GATEWAY();
  Serving();
  auto c = Client();
  const std::string json = "application/json";
  ExpectOpenAiError(c.Post("/v1/completions", "{not json", json), 400, "not valid JSON");
  ExpectOpenAiError(c.Post("/v1/completions", R"({"prompt": "x", "temperature": 3})", json), 400, "temperature");
  ExpectOpenAiError(c.Post("/v1/completions", R"({"prompt": [1, 2, 999999]})", json), 400, "vocabulary");
  ExpectOpenAiError(c.Post("/v1/completions", R"({"prompt": "x", "max_tokens": 600})", json), 400,
                    "maximum context length is 512 tokens");
  ExpectOpenAiError(c.Post("/v1/completions", R"({"prompt": "x", "model": "gpt-4o"})", json), 404, "gpt-4o");
  ExpectOpenAiError(c.Post("/v1/chat/completions", R"({"messages": [{"role": "wizard", "content": "x"}]})", json),
                    400, "role");
  ExpectOpenAiError(c.Get("/v1/nothing"), 404, "no route");
  ExpectOpenAiError(c.Post("/v1/completions", std::string(5 << 20, ' '), json), 413, "larger than");
  auto r = c.Post("/v1/completions", R"({"prompt": "x", "temperature": 3})", json);
  ASSERT_TRUE(r);
  EXPECT_EQ(Json::parse(r->body)["error"]["param"], "temperature");
  // The server is fine afterwards.
  auto ok = c.Post("/v1/completions", R"({"prompt": [5, 6], "max_tokens": 2})", json);
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200) << ok->body;
}

TEST(HttpGateway, BearerTokenGuardsTheApiButNotTheProbes) {
  REQUIRE_GATEWAY();
  Serving();
  HttpOptions o;
  o.token = "s3cret";
  auto g = HttpGateway::Start(o, "test-build");
  ASSERT_TRUE(g.ok()) << g.status();
  InputLimits limits;
  (*g)->Attach(S().engine.get(), S().tokenizer.get(), kModel, limits);
  (*g)->SetState(v1::SERVER_STATE_SERVING);
  httplib::Client c("127.0.0.1", (*g)->port());
  ExpectOpenAiError(c.Get("/v1/models"), 401, "token");
  ExpectOpenAiError(c.Get("/metrics"), 401, "token");
  ExpectOpenAiError(c.Get("/v1/models", {{"Authorization", "Bearer wrong"}}), 401, "token");
  auto ok = c.Get("/v1/models", {{"Authorization", "Bearer s3cret"}});
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 200);
  auto health = c.Get("/health");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  (*g)->Shutdown();
}

// A raw connection to the gateway, whose reads give up after a minute.
int Connect(int port) {
  const int fd = testing::ConnectLoopback(port);
  if (fd < 0) return -1;
  timeval tv{60, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

// Row GR-03 over SSE: a client that vanishes mid-stream (its connection reset) has its request
// aborted and its cache freed, within a step or two.
TEST(HttpGateway, AClientThatVanishesMidStreamIsAborted) {
  REQUIRE_GATEWAY();
  Serving();
  const EngineStats before = S().engine->Stats();
  const std::string body = R"({"prompt": [1, 2, 3, 4], "max_tokens": 400, "ignore_eos": true, "stream": true})";
  const int fd = Connect(S().gateway->port());
  ASSERT_GE(fd, 0);
  const std::string req = absl::StrCat("POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n",
                                       "Content-Length: ", body.size(), "\r\n\r\n", body);
  ASSERT_EQ(write(fd, req.data(), req.size()), static_cast<ssize_t>(req.size()));
  std::string got;
  char buf[4096];
  while (got.find("data: ") == std::string::npos) {  // the first token arrived
    const ssize_t n = read(fd, buf, sizeof(buf));
    ASSERT_GT(n, 0) << got;
    got.append(buf, n);
  }
  EXPECT_GT(S().engine->Stats().active, 0);
  linger l{1, 0};  // close with a reset, as a killed client's kernel would
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  close(fd);
  EngineStats st;
  for (int i = 0; i < 600; ++i) {  // bounded: 60 s
    st = S().engine->Stats();
    if (st.active == 0 && st.cache_bytes == 0 && st.aborted > before.aborted) break;
    absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_EQ(st.active, 0);
  EXPECT_EQ(st.cache_bytes, 0);
  EXPECT_EQ(st.blocks_used, 0);
  EXPECT_EQ(st.aborted, before.aborted + 1);
  EXPECT_LT(st.tokens_generated - before.tokens_generated, 400);
}

TEST(HttpGateway, MetricsParseAsPrometheusTextAndCount) {
  REQUIRE_GATEWAY();
  Serving();
  auto c = Client();
  auto ok = c.Post("/v1/completions", R"({"prompt": [7, 8, 9], "max_tokens": 3, "ignore_eos": true})",
                   "application/json");
  ASSERT_TRUE(ok);
  ASSERT_EQ(ok->status, 200);
  auto m = c.Get("/metrics");
  ASSERT_TRUE(m);
  ASSERT_EQ(m->status, 200);
  EXPECT_EQ(m->get_header_value("Content-Type"), "text/plain; version=0.0.4; charset=utf-8");
  auto p = testing::ParsePrometheusText(m->body);
  ASSERT_TRUE(p.ok()) << p.status();
  const EngineStats st = S().engine->Stats();
  EXPECT_EQ(*p->Value("dsv4:generation_tokens_total"), static_cast<double>(st.tokens_generated));
  EXPECT_GE(*p->Value("dsv4:request_success_total", {{"finished_reason", "length"}}), 1);
  EXPECT_GE(*p->Value("dsv4:time_to_first_token_seconds_count"), 1);
  // Every routed token of every layer is counted once per expert it went to.
  const ModelConfig& cfg = S().model->config();
  EXPECT_GT(p->Sum("dsv4:expert_routed_tokens_total"), 0);
  EXPECT_EQ(std::fmod(p->Sum("dsv4:expert_routed_tokens_total"), static_cast<double>(cfg.num_experts_per_tok)), 0);
}

}  // namespace
}  // namespace dsv4
