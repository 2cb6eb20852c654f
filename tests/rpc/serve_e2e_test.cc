// `dsv4 serve` end to end over real gRPC on 127.0.0.1: one rank, or under mpirun when
// DSV4_SERVE_NP > 1. The cases of Serve.* share one server and run in order: start (health
// NOT_SERVING while loading, then SERVING), concurrent streams equal to the same requests alone,
// every bad request of the RQ and TK rows refused with INVALID_ARGUMENT, Abort and client
// disconnect freeing the cache, then drain (health NOT_SERVING, in-flight requests finish, exit 0).
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <gtest/gtest.h>
#include <signal.h>

#include <atomic>
#include <cmath>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "nlohmann/json.hpp"
#include "rpc/client.h"
#include "tests/rpc/serve_harness.h"

namespace dsv4 {
namespace {

using grpc::health::v1::HealthCheckResponse;
using testing::ServeProcess;

constexpr int kMaxModelLen = 512;

std::vector<std::string> ServeArgs() {
  return {"--model",
          "builtin:v4-tiny",
          "--threads",
          "1",
          "--max-model-len",
          std::to_string(kMaxModelLen),
          "--cache-mb",
          "256",
          "--max-running",
          "32",
          "--max-batch-tokens",
          "160",
          "--prefill-chunk",
          "64",
          "--max-queued",
          "64",
          "--drain-grace-s",
          "60"};
}

// A stream's outcome as the client saw it.
struct Stream {
  std::vector<int32_t> tokens;
  std::string text;
  v1::GenerateResponse last;
  int messages = 0;
  absl::Status status;
};

Stream RunStream(InferenceClient& c, const v1::GenerateRequest& req, absl::Duration timeout = absl::Seconds(300)) {
  Stream s;
  s.status = c.Generate(
      req,
      [&](const v1::GenerateResponse& m) {
        s.tokens.insert(s.tokens.end(), m.token_ids().begin(), m.token_ids().end());
        s.text += m.text();
        ++s.messages;
        if (m.finished()) s.last = m;
      },
      timeout);
  return s;
}

v1::GenerateRequest TokensRequest(std::vector<int32_t> ids, int64_t max_tokens) {
  v1::GenerateRequest r;
  r.mutable_tokens()->mutable_ids()->Add(ids.begin(), ids.end());
  r.mutable_sampling()->set_max_tokens(max_tokens);
  return r;
}

std::vector<int32_t> Prompt(int n, int salt) {
  std::vector<int32_t> p;
  for (int i = 0; i < n; ++i) p.push_back(100 + (i * 7919 + salt * 104729) % 100000);
  return p;
}

// The shared server of the Serve.* cases and what its start looked like.
struct Shared {
  std::unique_ptr<ServeProcess> server;
  std::unique_ptr<InferenceClient> client;
  std::vector<HealthCheckResponse::ServingStatus> health_seen;  // distinct statuses, in order
  std::string start_error;
};

Shared& S() {
  static Shared* s = [] {
    auto* s = new Shared;
    auto p = ServeProcess::Start(ServeArgs(), testing::ServeRanks());
    if (!p.ok()) {
      s->start_error = std::string(p.status().message());
      return s;
    }
    s->server = std::move(*p);
    auto c = InferenceClient::Connect(s->server->address(), {});
    if (!c.ok()) {
      s->start_error = std::string(c.status().message());
      return s;
    }
    s->client = std::move(*c);
    // Poll health from the moment the port is known until SERVING (loading takes seconds).
    const absl::Time deadline = absl::Now() + absl::Seconds(240);
    while (absl::Now() < deadline) {
      auto h = s->client->Health("", absl::Seconds(5));
      if (h.ok() && (s->health_seen.empty() || s->health_seen.back() != *h)) s->health_seen.push_back(*h);
      if (h.ok() && *h == HealthCheckResponse::SERVING) return s;
      absl::SleepFor(absl::Milliseconds(20));
    }
    s->start_error = "the server never became SERVING:\n" + s->server->Log();
    return s;
  }();
  return *s;
}

// The raw bytes of the server reflection answer to list_services (through the generic API, so
// the test needs no reflection .proto: Debian ships none).
std::string ReflectionListServices(const std::string& address) {
  auto channel = grpc::CreateChannel(address, grpc::InsecureChannelCredentials());
  grpc::GenericStub stub(channel);
  grpc::CompletionQueue cq;
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  auto call = stub.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  auto step = [&](intptr_t want) {
    void* tag;
    bool ok = false;
    return cq.Next(&tag, &ok) && ok && reinterpret_cast<intptr_t>(tag) == want;
  };
  std::string out;
  call->StartCall(reinterpret_cast<void*>(1));
  if (step(1)) {
    // ServerReflectionRequest{list_services: ""}: field 7, length-delimited, empty.
    grpc::Slice slice(std::string("\x3a\x00", 2));
    grpc::ByteBuffer request(&slice, 1);
    call->Write(request, reinterpret_cast<void*>(2));
    grpc::ByteBuffer response;
    if (step(2)) {
      call->Read(&response, reinterpret_cast<void*>(3));
      if (step(3)) {
        std::vector<grpc::Slice> slices;
        (void)response.Dump(&slices);
        for (const auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
      }
    }
  }
  ctx.TryCancel();
  grpc::Status st;
  call->Finish(&st, reinterpret_cast<void*>(4));
  void* tag;
  bool ok;
  while (cq.Next(&tag, &ok) && reinterpret_cast<intptr_t>(tag) != 4) {
  }
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
  return out;
}

#define REQUIRE_SERVER()                                                                   \
  do {                                                                                     \
    ASSERT_TRUE(S().start_error.empty()) << S().start_error;                               \
    ASSERT_TRUE(S().server != nullptr && S().client != nullptr);                           \
    ASSERT_FALSE(S().server->exited()) << "the server is gone (an earlier case ended it)"; \
  } while (0)

TEST(Serve, HealthIsNotServingWhileLoadingThenServing) {
  REQUIRE_SERVER();
  const auto& seen = S().health_seen;
  ASSERT_GE(seen.size(), 2u);
  EXPECT_EQ(seen.front(), HealthCheckResponse::NOT_SERVING);
  EXPECT_EQ(seen.back(), HealthCheckResponse::SERVING);
  auto svc = S().client->Health("dsv4.v1.Inference");
  ASSERT_TRUE(svc.ok()) << svc.status();
  EXPECT_EQ(*svc, HealthCheckResponse::SERVING);
  EXPECT_EQ(S().client->Health("no.such.Service").status().code(), absl::StatusCode::kNotFound);
  auto info = S().client->ServerInfo();
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state(), v1::SERVER_STATE_SERVING);
  EXPECT_EQ(info->world_size(), testing::ServeRanks());
  auto model = S().client->ModelInfo();
  ASSERT_TRUE(model.ok());
  EXPECT_EQ(model->vocab_size(), 129280);
  EXPECT_EQ(model->max_context_length(), kMaxModelLen);
  EXPECT_TRUE(model->random_weights());
  // Server reflection lists the services.
  const std::string listing = ReflectionListServices(S().server->address());
  EXPECT_NE(listing.find("dsv4.v1.Inference"), std::string::npos) << listing;
  EXPECT_NE(listing.find("grpc.health.v1.Health"), std::string::npos) << listing;
}

TEST(Serve, ConcurrentStreamsGetTheTokensTheyGetAlone) {
  REQUIRE_SERVER();
  const int n = 32;
  std::vector<v1::GenerateRequest> reqs(n);
  for (int i = 0; i < n; ++i) {
    v1::GenerateRequest& r = reqs[i];
    if (i % 8 == 3) {
      r.set_text(absl::StrCat("Request number ", i, ": tell me about the sea."));
    } else if (i % 8 == 5) {
      r.mutable_chat()->set_messages_json(
          nlohmann::json::array({{{"role", "user"}, {"content", absl::StrCat("Hello ", i)}}}).dump());
    } else {
      const std::vector<int32_t> ids = Prompt(3 + (i * 13) % 100, i);  // up to 102 tokens: crosses chunks of 64
      r.mutable_tokens()->mutable_ids()->Add(ids.begin(), ids.end());
    }
    v1::SamplingParams* p = r.mutable_sampling();
    p->set_max_tokens(6 + i % 3);
    p->set_seed(7000 + i);
    p->set_temperature(i % 4 == 0 ? 0.0 : 0.8);
    if (i % 3 == 0) p->set_top_p(0.9);
    if (i % 2 == 0) p->set_top_k(40);
    if (i % 5 == 1) p->set_min_p(0.05);
    if (i % 5 == 2) p->set_repetition_penalty(1.3);
    if (i % 7 == 3) p->set_frequency_penalty(0.5);
    if (i % 7 == 4) p->set_presence_penalty(-0.5);
    p->set_ignore_eos(true);
  }
  std::vector<Stream> alone(n), together(n);
  for (int i = 0; i < n; ++i) {
    alone[i] = RunStream(*S().client, reqs[i]);
    ASSERT_TRUE(alone[i].status.ok()) << i << ": " << alone[i].status;
    ASSERT_EQ(alone[i].tokens.size(), static_cast<size_t>(6 + i % 3));
  }
  std::vector<std::thread> threads;
  std::vector<std::unique_ptr<InferenceClient>> clients(n);
  for (int i = 0; i < n; ++i) {
    auto c = InferenceClient::Connect(S().server->address(), {});
    ASSERT_TRUE(c.ok());
    clients[i] = std::move(*c);
    // Channels connect lazily, and one of 32 first connects racing on loopback can fail (gRPC
    // fails such a call fast with UNAVAILABLE); this test is about the streams, so each channel
    // is up before they start.
    ASSERT_TRUE(clients[i]->WaitForServing(absl::Seconds(60)).ok()) << "client " << i;
  }
  for (int i = 0; i < n; ++i) threads.emplace_back([&, i] { together[i] = RunStream(*clients[i], reqs[i]); });
  for (auto& t : threads) t.join();
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(together[i].status.ok()) << i << ": " << together[i].status;
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << "request " << i;
    EXPECT_EQ(together[i].text, alone[i].text) << "request " << i;
    EXPECT_EQ(together[i].last.finish_reason(), v1::FINISH_REASON_LENGTH);
    EXPECT_EQ(together[i].last.usage().completion_tokens(), static_cast<int64_t>(alone[i].tokens.size()));
    EXPECT_EQ(together[i].last.seed(), 7000 + i);
  }
}

// Every bad request of rows RQ-01..RQ-09 and TK-02, TK-03, TK-07, TK-08 (ecosystem_reliability.md
// B4) is INVALID_ARGUMENT, and the message names the field.
TEST(Serve, BadRequestsAreInvalidArgumentNamingTheField) {
  REQUIRE_SERVER();
  const double nan = std::nan(""), inf = INFINITY;
  struct Case {
    std::string name, field;
    std::function<void(v1::GenerateRequest&)> edit;
  };
  auto sampling = [](auto set) { return [set](v1::GenerateRequest& r) { set(*r.mutable_sampling()); }; };
  std::vector<Case> cases = {
      // RQ-01
      {"max_tokens 0", "max_tokens", sampling([](auto& p) { p.set_max_tokens(0); })},
      {"max_tokens -1", "max_tokens", sampling([](auto& p) { p.set_max_tokens(-1); })},
      {"max_tokens 2^31", "maximum context length", sampling([](auto& p) { p.set_max_tokens(int64_t{1} << 31); })},
      {"prompt + max_tokens > context", "maximum context length is 512 tokens",
       sampling([](auto& p) { p.set_max_tokens(kMaxModelLen); })},
      {"prompt at the context, no max_tokens", "maximum context length",
       [](v1::GenerateRequest& r) {
         r = TokensRequest(Prompt(kMaxModelLen, 1), 1);
         r.mutable_sampling()->clear_max_tokens();
       }},
      // RQ-02
      {"temperature NaN", "temperature", sampling([=](auto& p) { p.set_temperature(nan); })},
      {"temperature +Inf", "temperature", sampling([=](auto& p) { p.set_temperature(inf); })},
      {"temperature -Inf", "temperature", sampling([=](auto& p) { p.set_temperature(-inf); })},
      {"temperature -0.1", "temperature", sampling([](auto& p) { p.set_temperature(-0.1); })},
      {"temperature 2.1", "temperature", sampling([](auto& p) { p.set_temperature(2.1); })},
      {"temperature 999999", "temperature", sampling([](auto& p) { p.set_temperature(999999); })},
      {"top_p 0", "top_p", sampling([](auto& p) { p.set_top_p(0); })},
      {"top_p -1", "top_p", sampling([](auto& p) { p.set_top_p(-1); })},
      {"top_p 1.5", "top_p", sampling([](auto& p) { p.set_top_p(1.5); })},
      {"top_p NaN", "top_p", sampling([=](auto& p) { p.set_top_p(nan); })},
      {"top_k -2", "top_k", sampling([](auto& p) { p.set_top_k(-2); })},
      {"top_k 1e12", "top_k", sampling([](auto& p) { p.set_top_k(1000000000000); })},
      {"min_p -0.1", "min_p", sampling([](auto& p) { p.set_min_p(-0.1); })},
      {"min_p 1.1", "min_p", sampling([](auto& p) { p.set_min_p(1.1); })},
      {"presence_penalty 2.1", "presence_penalty", sampling([](auto& p) { p.set_presence_penalty(2.1); })},
      {"presence_penalty -2.1", "presence_penalty", sampling([](auto& p) { p.set_presence_penalty(-2.1); })},
      {"frequency_penalty 2.1", "frequency_penalty", sampling([](auto& p) { p.set_frequency_penalty(2.1); })},
      {"frequency_penalty NaN", "frequency_penalty", sampling([=](auto& p) { p.set_frequency_penalty(nan); })},
      {"repetition_penalty 0", "repetition_penalty", sampling([](auto& p) { p.set_repetition_penalty(0); })},
      {"repetition_penalty NaN", "repetition_penalty", sampling([=](auto& p) { p.set_repetition_penalty(nan); })},
      // RQ-03
      {"n 10^6", "sampling.n", sampling([](auto& p) { p.set_n(1000000); })},
      {"n 2", "sampling.n", sampling([](auto& p) { p.set_n(2); })},
      // RQ-04
      {"logprobs -1", "logprobs", sampling([](auto& p) { p.set_logprobs(-1); })},
      {"logprobs 10^6", "logprobs", sampling([](auto& p) { p.set_logprobs(1000000); })},
      {"prompt_logprobs -1", "prompt_logprobs", sampling([](auto& p) { p.set_prompt_logprobs(-1); })},
      // RQ-05
      {"logit_bias id >= vocab", "logit_bias", sampling([](auto& p) { (*p.mutable_logit_bias())[129280] = 1; })},
      {"logit_bias id < 0", "logit_bias", sampling([](auto& p) { (*p.mutable_logit_bias())[-5] = 1; })},
      {"logit_bias NaN", "logit_bias", sampling([=](auto& p) { (*p.mutable_logit_bias())[5] = nan; })},
      {"logit_bias 2000 entries", "logit_bias", sampling([](auto& p) {
         for (int i = 0; i < 2000; ++i) (*p.mutable_logit_bias())[i] = 1;
       })},
      // RQ-06
      {"stop empty", "stop", sampling([](auto& p) { p.add_stop(""); })},
      {"stop 100 strings", "stop", sampling([](auto& p) {
         for (int i = 0; i < 100; ++i) p.add_stop("x");
       })},
      {"stop 1 MB", "stop", sampling([](auto& p) { p.add_stop(std::string(1 << 20, 'a')); })},
      {"stop invalid UTF-8", "stop", sampling([](auto& p) { p.add_stop("\xff\xfe"); })},
      {"stop_token_ids >= vocab", "stop_token_ids", sampling([](auto& p) { p.add_stop_token_ids(129280); })},
      {"stop_token_ids < 0", "stop_token_ids", sampling([](auto& p) { p.add_stop_token_ids(-1); })},
      // RQ-07
      {"seed -2", "seed", sampling([](auto& p) { p.set_seed(-2); })},
      // RQ-08
      {"echo with max_tokens 0", "max_tokens",
       [](v1::GenerateRequest& r) {
         r.set_echo(true);
         r.mutable_sampling()->set_max_tokens(0);
       }},
      // TK-07
      {"token id -1", "tokens", [](v1::GenerateRequest& r) { r.mutable_tokens()->set_ids(1, -1); }},
      {"token id = vocab", "tokens", [](v1::GenerateRequest& r) { r.mutable_tokens()->set_ids(0, 129280); }},
      {"token id INT32_MAX", "tokens", [](v1::GenerateRequest& r) { r.mutable_tokens()->set_ids(2, 2147483647); }},
      // TK-08
      {"empty token list", "tokens", [](v1::GenerateRequest& r) { r.mutable_tokens()->clear_ids(); }},
      {"no input", "input", [](v1::GenerateRequest& r) { r.clear_tokens(); }},
      {"empty text without BOS", "text",
       [](v1::GenerateRequest& r) {
         r.set_text("");
         r.set_skip_bos(true);
       }},
      {"empty messages", "chat", [](v1::GenerateRequest& r) { r.mutable_chat()->set_messages_json("[]"); }},
      {"messages not JSON", "chat.messages_json",
       [](v1::GenerateRequest& r) { r.mutable_chat()->set_messages_json("{not json"); }},
      {"unknown role", "chat",
       [](v1::GenerateRequest& r) { r.mutable_chat()->set_messages_json(R"([{"role": "wizard", "content": "hi"}])"); }},
      // TK-02
      {"text invalid UTF-8", "text", [](v1::GenerateRequest& r) { r.set_text("abc\xff\xfe"); }},
      {"text lone surrogate", "text", [](v1::GenerateRequest& r) { r.set_text("a\xed\xa0\x80z"); }},
      {"chat invalid UTF-8", "chat.messages_json",
       [](v1::GenerateRequest& r) {
         r.mutable_chat()->set_messages_json("[{\"role\": \"user\", \"content\": \"\xc3\"}]");
       }},
      // TK-03: a 1 MB word, far more than the context can hold, is refused before tokenizing.
      {"1 MB word", "text", [](v1::GenerateRequest& r) { r.set_text(std::string(1 << 20, 'x')); }},
      {"1 MB of digits", "text", [](v1::GenerateRequest& r) { r.set_text(std::string(1 << 20, '7')); }},
  };
  for (const Case& c : cases) {
    v1::GenerateRequest r = TokensRequest(Prompt(5, 0), 4);
    c.edit(r);
    const absl::Time t0 = absl::Now();
    const Stream s = RunStream(*S().client, r, absl::Seconds(60));
    EXPECT_EQ(s.status.code(), absl::StatusCode::kInvalidArgument) << c.name << ": " << s.status;
    EXPECT_NE(s.status.message().find(c.field), std::string::npos) << c.name << ": " << s.status;
    EXPECT_EQ(s.messages, 0) << c.name;
    EXPECT_LT(absl::Now() - t0, absl::Seconds(10)) << c.name;
  }
  // Defined, accepted inputs of the same rows: clamped logit_bias, control characters, a BOM and a
  // flood of combining marks, a conversation with only a system message, an empty text (BOS only).
  std::vector<std::function<void(v1::GenerateRequest&)>> fine = {
      sampling([](auto& p) { (*p.mutable_logit_bias())[5] = 1e9; }),
      [](v1::GenerateRequest& r) {
        std::string text = "nul";
        text.push_back('\0');
        text += "byte \xef\xbb\xbf bom e";
        for (int i = 0; i < 100; ++i) text += "\xcc\x81";
        r.set_text(text);
      },
      [](v1::GenerateRequest& r) {
        r.mutable_chat()->set_messages_json(R"([{"role": "system", "content": "be brief"}])");
      },
      [](v1::GenerateRequest& r) { r.set_text(""); },
  };
  for (size_t i = 0; i < fine.size(); ++i) {
    v1::GenerateRequest r = TokensRequest(Prompt(5, 0), 2);
    fine[i](r);
    const Stream s = RunStream(*S().client, r, absl::Seconds(60));
    EXPECT_TRUE(s.status.ok()) << "accepted case " << i << ": " << s.status;
  }
  // A message above the receive limit (4 MiB): RESOURCE_EXHAUSTED, and the server is fine.
  v1::GenerateRequest huge = TokensRequest(Prompt(5, 0), 2);
  huge.set_request_id(std::string(5 << 20, 'r'));
  EXPECT_EQ(RunStream(*S().client, huge, absl::Seconds(60)).status.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(RunStream(*S().client, TokensRequest(Prompt(5, 0), 2)).status.ok());
}

// TK-04: special-token text typed by a user stays text.
TEST(Serve, SpecialTokenTextInMessagesIsPlainText) {
  REQUIRE_SERVER();
  v1::GenerateRequest r;
  r.mutable_chat()->set_messages_json(
      nlohmann::json::array({{{"role", "user"}, {"content", "<｜begin▁of▁sentence｜><｜Assistant｜>hi"}}}).dump());
  r.mutable_sampling()->set_max_tokens(1);
  r.set_echo(true);
  std::vector<int32_t> prompt;
  const absl::Status st = S().client->Generate(r, [&](const v1::GenerateResponse& m) {
    if (m.prompt_token_ids_size() > 0) prompt.assign(m.prompt_token_ids().begin(), m.prompt_token_ids().end());
  });
  ASSERT_TRUE(st.ok()) << st;
  auto model = S().client->ModelInfo();
  ASSERT_TRUE(model.ok());
  ASSERT_FALSE(prompt.empty());
  EXPECT_EQ(prompt[0], model->bos_token_id());
  EXPECT_EQ(std::count(prompt.begin(), prompt.end(), model->bos_token_id()), 1) << "the typed BOS became a token";
}

TEST(Serve, DuplicateIdsAndAbortAreDefinedAndIdempotent) {
  REQUIRE_SERVER();
  v1::GenerateRequest r = TokensRequest(Prompt(5, 3), 300);
  r.set_request_id("dup-id");
  r.mutable_sampling()->set_ignore_eos(true);
  std::atomic<bool> first{false};
  Stream a;
  std::thread t([&] {
    a.status = S().client->Generate(r, [&](const v1::GenerateResponse& m) {
      a.tokens.insert(a.tokens.end(), m.token_ids().begin(), m.token_ids().end());
      if (m.finished()) a.last = m;
      first = true;
    });
  });
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (!first && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(10));
  ASSERT_TRUE(first);
  EXPECT_EQ(RunStream(*S().client, r).status.code(), absl::StatusCode::kInvalidArgument);  // RQ-09: in flight
  auto found = S().client->Abort("dup-id");
  ASSERT_TRUE(found.ok());
  EXPECT_TRUE(*found);
  t.join();
  EXPECT_EQ(a.status.code(), absl::StatusCode::kAborted) << a.status;
  EXPECT_EQ(a.last.finish_reason(), v1::FINISH_REASON_ABORT);
  EXPECT_LT(a.tokens.size(), 300u);
  found = S().client->Abort("dup-id");  // again: nothing to abort
  ASSERT_TRUE(found.ok());
  EXPECT_FALSE(*found);
  found = S().client->Abort("never-existed");
  ASSERT_TRUE(found.ok());
  EXPECT_FALSE(*found);
}

// Waits until the server (and, under mpirun, every rank) holds no sequence cache.
void ExpectCacheFreed(const std::string& what) {
  v1::ServerInfo info;
  const absl::Time deadline = absl::Now() + absl::Seconds(10);
  bool freed = false;
  while (absl::Now() < deadline && !freed) {
    auto i = S().client->ServerInfo();
    ASSERT_TRUE(i.ok());
    info = *i;
    freed = info.cache().bytes_used() == 0 && info.cache().blocks_used() == 0 && info.cache().sequences() == 0 &&
            info.active_requests() == 0;
    if (!freed) absl::SleepFor(absl::Milliseconds(20));
  }
  EXPECT_TRUE(freed) << what << ": " << info.DebugString();
  if (testing::ServeRanks() == 1) return;
  auto control = ControlClient::Connect(S().server->control(), {});
  ASSERT_TRUE(control.ok());
  bool all = false;
  v1::ClusterStatus st;
  while (absl::Now() < deadline + absl::Seconds(5) && !all) {
    auto s = (*control)->Status();
    ASSERT_TRUE(s.ok());
    st = *s;
    all = true;
    for (const auto& r : st.ranks()) all = all && r.cache_bytes() == 0;
    if (!all) absl::SleepFor(absl::Milliseconds(100));
  }
  EXPECT_TRUE(all) << what << ": a rank still holds cache: " << st.DebugString();
}

TEST(Serve, AbortDisconnectAndDeadlineFreeTheCache) {
  REQUIRE_SERVER();
  auto before = S().client->ServerInfo();
  ASSERT_TRUE(before.ok());
  // Abort, a client that cancels (disconnects), a client whose deadline passes (row GR-02).
  enum Mode { kAbort, kDisconnect, kDeadline };
  // The deadline must pass mid-stream whatever this machine's speed: a sixth of the time the same
  // request takes alone (the second token comes within a few steps).
  absl::Duration deadline = absl::Seconds(3);
  {
    v1::GenerateRequest r = TokensRequest(Prompt(40, 9), 450);
    r.set_request_id("to-end-timing");
    r.mutable_sampling()->set_ignore_eos(true);
    const absl::Time t0 = absl::Now();
    ASSERT_TRUE(RunStream(*S().client, r).status.ok());
    deadline = std::max(absl::Milliseconds(200), (absl::Now() - t0) / 6);
  }
  std::vector<Mode> modes = {kAbort, kDisconnect, kDeadline};
  for (size_t i = 0; i < modes.size(); ++i) {
    const Mode mode = modes[i];
    const bool disconnect = mode == kDisconnect;
    SCOPED_TRACE(mode == kAbort ? "Abort" : disconnect ? "client disconnect" : "deadline");
    SCOPED_TRACE(absl::StrCat("deadline ", absl::FormatDuration(deadline)));
    v1::GenerateRequest r = TokensRequest(Prompt(40, 9), 450);
    r.set_request_id(absl::StrCat("to-end-", mode, "-", i));
    r.mutable_sampling()->set_ignore_eos(true);
    absl::Mutex mu;
    grpc::ClientContext* live = nullptr;
    int got = 0;
    absl::Status status;
    std::thread t([&] {
      status = S().client->Generate(
          r,
          [&](const v1::GenerateResponse&) {
            absl::MutexLock l(&mu);
            ++got;
          },
          mode == kDeadline ? deadline : absl::Seconds(300),
          [&](grpc::ClientContext* c) {
            absl::MutexLock l(&mu);
            live = c;
          });
    });
    {
      absl::MutexLock l(&mu);
      mu.AwaitWithTimeout(absl::Condition(
                              +[](int* g) { return *g >= 2; }, &got),
                          absl::Seconds(120));
      ASSERT_GE(got, 2);
    }
    auto during = S().client->ServerInfo();
    ASSERT_TRUE(during.ok());
    EXPECT_GT(during->cache().bytes_used(), 0);
    EXPECT_GT(during->cache().blocks_used(), 0);
    if (disconnect) {
      absl::MutexLock l(&mu);
      ASSERT_NE(live, nullptr);
      live->TryCancel();
    } else if (mode == kAbort) {
      auto found = S().client->Abort(r.request_id());
      ASSERT_TRUE(found.ok());
      EXPECT_TRUE(*found);
    }
    t.join();
    // The stream ended before its deadline: the timing run above was slowed by other work that has
    // gone since (ctest runs two tests at once). Again with a third of it, down to 200 ms: a server
    // that ignored deadlines would still end every try OK and fail below.
    if (mode == kDeadline && status.ok() && deadline > absl::Milliseconds(200)) {
      ExpectCacheFreed("after a stream that beat its deadline");
      deadline = std::max(absl::Milliseconds(200), deadline / 3);
      modes.push_back(kDeadline);
      continue;
    }
    const absl::StatusCode want = mode == kAbort        ? absl::StatusCode::kAborted
                                  : mode == kDisconnect ? absl::StatusCode::kCancelled
                                                        : absl::StatusCode::kDeadlineExceeded;
    EXPECT_EQ(status.code(), want) << status;
    ExpectCacheFreed("after the request ended");
  }
  auto after = S().client->ServerInfo();
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->requests_aborted() - before->requests_aborted(), 3);
}

// KV blocks run out while requests decode: each rank's pool holds about a dozen blocks beside the
// windows of 8 running sequences, and 8 requests that each grow to four blocks (250 prompt + 140
// generated positions, blocks of 128) need 32, or 16 in each of two dp groups. The newest are
// preempted and recomputed, each stream still equals the same request alone, none is lost, and
// every block comes back. Under mpirun this runs in each layout the suite starts (ep 2: two dp
// groups with a pool each, taking different requests; tp 2: one group).
TEST(Serve, PreemptedRequestsAreRecomputedAndGetTheirOwnTokens) {
  std::vector<std::string> args = ServeArgs();
  for (size_t i = 0; i + 1 < args.size(); ++i) {
    if (args[i] == "--cache-mb") args[i + 1] = "9";
    if (args[i] == "--max-running") args[i + 1] = "8";
  }
  auto server = ServeProcess::Start(args, testing::ServeRanks());
  ASSERT_TRUE(server.ok()) << server.status();
  auto client = InferenceClient::Connect((*server)->address(), {});
  ASSERT_TRUE(client.ok());
  ASSERT_TRUE((*client)->WaitForServing(absl::Seconds(240)).ok()) << (*server)->Log();
  auto info = (*client)->ServerInfo();
  ASSERT_TRUE(info.ok());
  const int n = 8;
  std::vector<v1::GenerateRequest> reqs;
  for (int i = 0; i < n; ++i) {
    v1::GenerateRequest r = TokensRequest(Prompt(250, 500 + i), 140);
    r.mutable_sampling()->set_ignore_eos(true);
    r.mutable_sampling()->set_seed(600 + i);
    r.mutable_sampling()->set_temperature(i % 2 == 0 ? 0.0 : 0.8);
    reqs.push_back(r);
  }
  std::vector<Stream> alone(n), together(n);
  for (int i = 0; i < n; ++i) {
    alone[i] = RunStream(**client, reqs[i]);
    ASSERT_TRUE(alone[i].status.ok()) << i << ": " << alone[i].status;
    ASSERT_EQ(alone[i].tokens.size(), 140u);
  }
  info = (*client)->ServerInfo();
  ASSERT_TRUE(info.ok());
  ASSERT_EQ(info->cache().preemptions(), 0) << "one request at a time fits";
  std::vector<std::unique_ptr<InferenceClient>> clients(n);
  for (int i = 0; i < n; ++i) {
    auto c = InferenceClient::Connect((*server)->address(), {});
    ASSERT_TRUE(c.ok());
    clients[i] = std::move(*c);
    ASSERT_TRUE(clients[i]->WaitForServing(absl::Seconds(60)).ok()) << "client " << i;
  }
  std::vector<std::thread> threads;
  for (int i = 0; i < n; ++i) threads.emplace_back([&, i] { together[i] = RunStream(*clients[i], reqs[i]); });
  for (auto& t : threads) t.join();
  for (int i = 0; i < n; ++i) {
    ASSERT_TRUE(together[i].status.ok()) << i << ": " << together[i].status;
    EXPECT_EQ(together[i].tokens, alone[i].tokens) << "request " << i;
    EXPECT_EQ(together[i].last.finish_reason(), v1::FINISH_REASON_LENGTH) << "request " << i;
  }
  info = (*client)->ServerInfo();
  ASSERT_TRUE(info.ok());
  EXPECT_GT(info->cache().preemptions(), 0) << info->DebugString();
  EXPECT_EQ(info->cache().blocks_used(), 0) << info->DebugString();
  EXPECT_EQ(info->active_requests(), 0);
}

// Last: drain with a request in flight. Health turns NOT_SERVING, new requests are refused with
// UNAVAILABLE, the in-flight one finishes normally, and the job exits 0.
TEST(Serve, ZzDrainFinishesInFlightAndExitsZero) {
  REQUIRE_SERVER();
  v1::GenerateRequest r = TokensRequest(Prompt(8, 4), 24);
  r.mutable_sampling()->set_ignore_eos(true);
  std::atomic<int> got{0};
  Stream s;
  std::thread t([&] {
    s.status = S().client->Generate(r, [&](const v1::GenerateResponse& m) {
      s.tokens.insert(s.tokens.end(), m.token_ids().begin(), m.token_ids().end());
      if (m.finished()) s.last = m;
      ++got;
    });
  });
  const absl::Time deadline = absl::Now() + absl::Seconds(60);
  while (got == 0 && absl::Now() < deadline) absl::SleepFor(absl::Milliseconds(5));
  ASSERT_GT(got.load(), 0);
  // A health Watch sees the change as it happens.
  std::vector<HealthCheckResponse::ServingStatus> watched;
  grpc::ClientContext wctx;
  wctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(60));
  auto watch = S().client->health_stub().Watch(&wctx, grpc::health::v1::HealthCheckRequest());
  HealthCheckResponse hr;
  ASSERT_TRUE(watch->Read(&hr));
  watched.push_back(hr.status());
  S().server->SignalLeader(SIGTERM);  // the drain
  while (watch->Read(&hr)) {
    watched.push_back(hr.status());
    if (hr.status() == HealthCheckResponse::NOT_SERVING) break;
  }
  wctx.TryCancel();
  EXPECT_EQ(watched.front(), HealthCheckResponse::SERVING);
  EXPECT_EQ(watched.back(), HealthCheckResponse::NOT_SERVING);
  const Stream refused = RunStream(*S().client, TokensRequest(Prompt(5, 1), 2), absl::Seconds(30));
  EXPECT_EQ(refused.status.code(), absl::StatusCode::kUnavailable) << refused.status;
  t.join();
  EXPECT_TRUE(s.status.ok()) << s.status;
  EXPECT_EQ(s.tokens.size(), 24u);
  EXPECT_EQ(s.last.finish_reason(), v1::FINISH_REASON_LENGTH);
  const int code = S().server->Wait(absl::Seconds(60));
  EXPECT_EQ(code, 0) << S().server->Log();
}

}  // namespace
}  // namespace dsv4
