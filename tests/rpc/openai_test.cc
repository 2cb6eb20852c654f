// The OpenAI API's mapping (rpc/openai.h): request fields to the inference request, errors with
// their parameter and HTTP code, and the shape of responses and server-sent events.
#include "rpc/openai.h"

#include <gtest/gtest.h>

#include "absl/strings/match.h"
#include "absl/strings/str_split.h"
#include "nlohmann/json.hpp"

namespace dsv4 {
namespace {

using Json = nlohmann::json;

absl::StatusOr<OpenAiRequest> Parse(OpenAiApi api, const Json& body) {
  return ParseOpenAiRequest(api, body.dump(), "builtin:v4-tiny");
}

TEST(OpenAiRequest, CompletionFieldsMapToTheInferenceRequest) {
  auto r = Parse(OpenAiApi::kCompletions,
                 {{"model", "builtin:v4-tiny"}, {"prompt", "Hello"}, {"max_tokens", 7}, {"temperature", 0.5},
                  {"top_p", 0.9}, {"top_k", 40}, {"min_p", 0.1}, {"seed", 3}, {"stop", "\n"},
                  {"presence_penalty", 0.5}, {"frequency_penalty", -0.5}, {"repetition_penalty", 1.1},
                  {"logit_bias", {{"42", 5}}}, {"logprobs", 2}, {"stream", true},
                  {"stream_options", {{"include_usage", true}}}, {"user", "ignored"}, {"unknown_field", 1}});
  ASSERT_TRUE(r.ok()) << r.status();
  const v1::SamplingParams& p = r->request.sampling();
  EXPECT_EQ(r->request.text(), "Hello");
  EXPECT_EQ(p.max_tokens(), 7);
  EXPECT_EQ(p.temperature(), 0.5);
  EXPECT_EQ(p.top_p(), 0.9);
  EXPECT_EQ(p.top_k(), 40);
  EXPECT_EQ(p.min_p(), 0.1);
  EXPECT_EQ(p.seed(), 3);
  ASSERT_EQ(p.stop_size(), 1);
  EXPECT_EQ(p.stop(0), "\n");
  EXPECT_EQ(p.presence_penalty(), 0.5);
  EXPECT_EQ(p.frequency_penalty(), -0.5);
  EXPECT_EQ(p.repetition_penalty(), 1.1);
  EXPECT_EQ(p.logit_bias().at(42), 5);
  EXPECT_EQ(p.logprobs(), 2);
  EXPECT_EQ(r->logprobs, 2);
  EXPECT_TRUE(r->stream);
  EXPECT_TRUE(r->include_usage);
  // Defaults: OpenAI's 16 tokens for completions; token-id prompts in every accepted form.
  r = Parse(OpenAiApi::kCompletions, {{"prompt", Json::array({1, 2, 3})}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request.sampling().max_tokens(), 16);
  EXPECT_EQ(r->request.tokens().ids_size(), 3);
  r = Parse(OpenAiApi::kCompletions, {{"prompt", Json::array({Json::array({4, 5})})}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->request.tokens().ids_size(), 2);
  r = Parse(OpenAiApi::kCompletions, {{"prompt", Json::array({"one"})}, {"logprobs", 0}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->request.text(), "one");
  EXPECT_EQ(r->logprobs, 0);
  EXPECT_EQ(r->request.sampling().logprobs(), 1);  // the engine reports the chosen token with one alternative
}

TEST(OpenAiRequest, ChatFieldsMapToTheInferenceRequest) {
  const Json messages = Json::array({{{"role", "system"}, {"content", "be brief"}},
                                     {{"role", "user"}, {"content", Json::array({{{"type", "text"}, {"text", "hi"}}})}}});
  auto r = Parse(OpenAiApi::kChat, {{"messages", messages}, {"max_tokens", 3}, {"max_completion_tokens", 9},
                                    {"logprobs", true}, {"top_logprobs", 4},
                                    {"chat_template_kwargs", {{"thinking", true}}}, {"reasoning_effort", "high"}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->request.sampling().max_tokens(), 9);  // max_completion_tokens wins
  EXPECT_EQ(Json::parse(r->request.chat().messages_json())["messages"], messages);
  EXPECT_TRUE(r->request.chat().thinking());
  EXPECT_EQ(r->request.chat().reasoning_effort(), "high");
  EXPECT_EQ(r->logprobs, 4);
  r = Parse(OpenAiApi::kChat, {{"messages", messages}});
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(r->request.sampling().has_max_tokens());  // the engine's default
  EXPECT_EQ(r->logprobs, -1);
}

TEST(OpenAiRequest, BadRequestsNameTheParameter) {
  struct Case {
    OpenAiApi api;
    std::string body, param;
    int http = 400;
  };
  const std::string msgs = R"("messages": [{"role": "user", "content": "x"}])";
  const std::vector<Case> cases = {
      {OpenAiApi::kCompletions, "not json", ""},
      {OpenAiApi::kCompletions, "[1, 2]", ""},
      {OpenAiApi::kCompletions, std::string(100, '[') + std::string(100, ']'), ""},
      {OpenAiApi::kCompletions, R"({})", "prompt"},
      {OpenAiApi::kCompletions, R"({"prompt": ["a", "b"]})", "prompt"},
      {OpenAiApi::kCompletions, R"({"prompt": [1, "b"]})", "prompt"},
      {OpenAiApi::kCompletions, R"({"prompt": [9999999999]})", "prompt"},
      {OpenAiApi::kCompletions, R"({"prompt": "x", "model": "gpt-4"})", "model", 404},
      {OpenAiApi::kCompletions, R"({"prompt": "x", "model": 5})", "model"},
      {OpenAiApi::kCompletions, R"({"prompt": "x", "temperature": "hot"})", "temperature"},
      {OpenAiApi::kCompletions, R"({"prompt": "x", "max_tokens": 0})", "max_tokens"},
      {OpenAiApi::kCompletions, R"({"prompt": "x", "max_tokens": 2.5})", "max_tokens"},
      {OpenAiApi::kCompletions, R"({"prompt": "x", "n": 2})", "n"},
      {OpenAiApi::kCompletions, R"({"prompt": "x", "best_of": 3})", "best_of"},
      {OpenAiApi::kCompletions, R"({"prompt": "x", "suffix": "y"})", "suffix"},
      {OpenAiApi::kCompletions, R"({"prompt": "x", "seed": -5})", "seed"},
      {OpenAiApi::kCompletions, R"({"prompt": "x", "stop": [1]})", "stop"},
      {OpenAiApi::kCompletions, R"({"prompt": "x", "logit_bias": {"abc": 1}})", "logit_bias"},
      {OpenAiApi::kCompletions, R"({"prompt": "x", "logprobs": 21})", "logprobs"},
      {OpenAiApi::kCompletions, R"({"prompt": "x", "logprobs": 1, "echo": true})", "logprobs"},
      {OpenAiApi::kCompletions, R"({"prompt": "x", "stream_options": {"include_usage": true}})", "stream_options"},
      {OpenAiApi::kCompletions, R"({"prompt": "x", "min_tokens": 3})", "min_tokens"},
      {OpenAiApi::kChat, R"({})", "messages"},
      {OpenAiApi::kChat, R"({"messages": []})", "messages"},
      {OpenAiApi::kChat, "{" + msgs + R"(, "tools": [{"type": "function"}]})", "tools"},
      {OpenAiApi::kChat, "{" + msgs + R"(, "response_format": {"type": "json_object"}})", "response_format"},
      {OpenAiApi::kChat, "{" + msgs + R"(, "top_logprobs": 2})", "top_logprobs"},
      {OpenAiApi::kChat, "{" + msgs + R"(, "logprobs": 3})", "logprobs"},
  };
  for (const Case& c : cases) {
    auto r = ParseOpenAiRequest(c.api, c.body, "builtin:v4-tiny");
    ASSERT_FALSE(r.ok()) << c.body;
    EXPECT_EQ(ParamOf(r.status()), c.param) << c.body << ": " << r.status();
    EXPECT_EQ(HttpStatusOf(r.status()), c.http) << c.body;
    const Json err = Json::parse(ErrorBody(r.status()));
    EXPECT_EQ(err["error"]["message"], std::string(r.status().message()));
    EXPECT_TRUE(err["error"]["type"].is_string());
    EXPECT_EQ(err["error"]["param"], c.param.empty() ? Json(nullptr) : Json(c.param));
  }
}

TEST(OpenAiErrors, HttpCodesByStatus) {
  EXPECT_EQ(HttpStatusOf(absl::ResourceExhaustedError("queue full")), 429);
  EXPECT_EQ(HttpStatusOf(absl::UnavailableError("draining")), 503);
  EXPECT_EQ(HttpStatusOf(absl::UnauthenticatedError("token")), 401);
  EXPECT_EQ(HttpStatusOf(absl::InternalError("bug")), 500);
  EXPECT_EQ(Json::parse(ErrorBody(absl::ResourceExhaustedError("q")))["error"]["type"], "rate_limit_error");
}

// Parses "data: ..." events; "[DONE]" becomes the string "[DONE]".
std::vector<Json> Events(const std::string& sse) {
  std::vector<Json> out;
  for (absl::string_view event : absl::StrSplit(sse, "\n\n", absl::SkipEmpty())) {
    EXPECT_TRUE(absl::StartsWith(event, "data: ")) << event;
    event.remove_prefix(6);
    out.push_back(event == "[DONE]" ? Json("[DONE]") : Json::parse(event));
  }
  return out;
}

TEST(OpenAiResponse, ChatStreamFraming) {
  auto req = Parse(OpenAiApi::kChat, {{"messages", Json::array({{{"role", "user"}, {"content", "x"}}})},
                                      {"stream", true}, {"stream_options", {{"include_usage", true}}}});
  ASSERT_TRUE(req.ok());
  OpenAiResponse r(*req, "chatcmpl-1", 1700000000, "m", nullptr, "fp");
  GenerateOutput a;
  a.token_ids = {5};
  a.text = "Hel";
  GenerateOutput b;
  b.token_ids = {6, 7};
  b.text = "lo";
  b.finished = true;
  b.finish_reason = FinishReason::kLength;
  b.prompt_tokens = 4, b.completion_tokens = 3;
  std::string sse = r.Events(a);
  sse += r.Events(b);
  sse += r.End();
  const std::vector<Json> ev = Events(sse);
  ASSERT_EQ(ev.size(), 5u);  // role, "Hel", "lo" with the finish, usage, [DONE]
  for (int i = 0; i < 4; ++i) {
    EXPECT_EQ(ev[i]["id"], "chatcmpl-1");
    EXPECT_EQ(ev[i]["object"], "chat.completion.chunk");
    EXPECT_EQ(ev[i]["model"], "m");
  }
  EXPECT_EQ(ev[0]["choices"][0]["delta"]["role"], "assistant");
  EXPECT_TRUE(ev[0]["usage"].is_null());
  EXPECT_EQ(ev[1]["choices"][0]["delta"]["content"], "Hel");
  EXPECT_TRUE(ev[1]["choices"][0]["finish_reason"].is_null());
  EXPECT_EQ(ev[2]["choices"][0]["delta"]["content"], "lo");
  EXPECT_EQ(ev[2]["choices"][0]["finish_reason"], "length");
  EXPECT_TRUE(ev[3]["choices"].empty());
  EXPECT_EQ(ev[3]["usage"]["prompt_tokens"], 4);
  EXPECT_EQ(ev[3]["usage"]["completion_tokens"], 3);
  EXPECT_EQ(ev[3]["usage"]["total_tokens"], 7);
  EXPECT_EQ(ev[4], "[DONE]");
  const std::vector<Json> err = Events(OpenAiResponse::ErrorEvent(absl::UnavailableError("drain expired")));
  ASSERT_EQ(err.size(), 2u);
  EXPECT_EQ(err[0]["error"]["message"], "drain expired");
  EXPECT_EQ(err[1], "[DONE]");
}

TEST(OpenAiResponse, CompletionBodyWithEchoAndLogprobs) {
  auto req = Parse(OpenAiApi::kCompletions, {{"prompt", "x"}, {"echo", true}});
  ASSERT_TRUE(req.ok());
  OpenAiResponse r(*req, "cmpl-1", 1, "m", nullptr, "fp");
  GenerateOutput a;
  a.token_ids = {5};
  a.text = " y";
  a.prompt_text = "x";
  GenerateOutput b;
  b.finished = true;
  b.finish_reason = FinishReason::kStop;
  b.prompt_tokens = 2, b.completion_tokens = 1;
  r.Add(std::move(a));
  r.Add(std::move(b));
  const Json j = Json::parse(r.Body());
  EXPECT_EQ(j["object"], "text_completion");
  EXPECT_EQ(j["choices"][0]["text"], "x y");
  EXPECT_EQ(j["choices"][0]["finish_reason"], "stop");
  EXPECT_TRUE(j["choices"][0]["logprobs"].is_null());
  EXPECT_EQ(j["usage"]["total_tokens"], 3);

  auto lreq = Parse(OpenAiApi::kCompletions, {{"prompt", "x"}, {"logprobs", 1}});
  ASSERT_TRUE(lreq.ok());
  OpenAiResponse l(*lreq, "cmpl-2", 1, "m", nullptr, "fp");
  GenerateOutput c;
  c.token_ids = {9};
  c.logprobs = {TokenLogprobs{9, -0.5, {{9, -0.5}, {3, -1.5}}}};
  c.finished = true;
  c.finish_reason = FinishReason::kLength;
  l.Add(std::move(c));
  const Json lj = Json::parse(l.Body())["choices"][0]["logprobs"];
  EXPECT_EQ(lj["tokens"], Json::array({"token_id:9"}));
  EXPECT_EQ(lj["token_logprobs"], Json::array({-0.5}));
  EXPECT_EQ(lj["top_logprobs"][0].size(), 1u);  // logprobs 1: one alternative
  EXPECT_EQ(lj["top_logprobs"][0]["token_id:9"], -0.5);
  EXPECT_EQ(lj["text_offset"], Json::array({0}));
}

}  // namespace
}  // namespace dsv4
