// The OpenAI API's requests and responses (/v1/completions, /v1/chat/completions), apart from
// HTTP (rpc/http_gateway.h serves them).
//
// A request body becomes the inference request of dsv4.v1 (rpc/convert.h takes it from there), so
// text, chat and token-id inputs get exactly the checks the gRPC endpoint applies; the fields and
// extensions accepted are those of OpenAI and vLLM (top_k, min_p, repetition_penalty, ignore_eos,
// stop_token_ids, skip_special_tokens, cache_salt, chat_template_kwargs.thinking / reasoning_effort).
// Fields this server cannot honour (n > 1, best_of > 1, suffix, tools, a JSON response_format,
// min_tokens) are INVALID_ARGUMENT rather than silently ignored; unknown fields are ignored, as
// vLLM does. The engine's outputs are written back as OpenAI's objects and as server-sent events
// ("data: {chunk}\n\n" ... "data: [DONE]\n\n").
//
// Errors are absl::Status with the OpenAI parameter they concern attached (ParamOf); ErrorBody and
// HttpStatusOf give OpenAI's error object and HTTP code for any status.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "dsv4/v1/inference.pb.h"
#include "nlohmann/json_fwd.hpp"
#include "runtime/serving/engine.h"
#include "runtime/tokenizer/tokenizer.h"

namespace dsv4 {

enum class OpenAiApi { kCompletions, kChat };

struct OpenAiRequest {
  OpenAiApi api = OpenAiApi::kCompletions;
  v1::GenerateRequest request;  // for ToGenerateSpec
  std::string model;            // as the client named it ("" = not given)
  bool stream = false;
  bool include_usage = false;   // stream_options.include_usage
  int32_t logprobs = -1;        // completions: `logprobs`; chat: `top_logprobs` when `logprobs` is true; -1: off
  bool echo = false;            // completions: the prompt's text leads the output
};

// Parses a request body. INVALID_ARGUMENT naming the field; NOT_FOUND when `model` names another
// model than `served_model`. `default_max_tokens`: completions without max_tokens (OpenAI's 16);
// chat without one gets the engine's default.
absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(OpenAiApi api, std::string_view body, const std::string& served_model,
                                                 int64_t completions_default_max_tokens = 16);

// The OpenAI parameter an error concerns ("" = none).
std::string ParamOf(const absl::Status& status);
// {"error": {"message", "type", "param", "code"}} for a status.
std::string ErrorBody(const absl::Status& status);
// 400 invalid argument, 401, 403, 404, 413 (payload), 429 (queue full), 503 (unavailable), 504, 500.
int HttpStatusOf(const absl::Status& status);

// Writes one request's response: the whole object (Add every output, then Body) or its
// server-sent events (Events for each output, then End). `tokenizer` (may be null) names tokens in
// logprobs.
class OpenAiResponse {
 public:
  OpenAiResponse(const OpenAiRequest& request, std::string id, int64_t created, std::string model,
                 const Tokenizer* tokenizer, std::string fingerprint);

  void Add(GenerateOutput&& out);
  std::string Body() const;

  // The events of one output ("" when it carries nothing to send).
  std::string Events(const GenerateOutput& out);
  // The usage chunk (stream_options.include_usage) and "data: [DONE]".
  std::string End() const;
  // An error after the stream started: an error event and "data: [DONE]".
  static std::string ErrorEvent(const absl::Status& status);

 private:
  nlohmann::json LogprobsJson(const GenerateOutput& out, int64_t text_offset) const;
  nlohmann::json Envelope(const char* object) const;
  std::string TokenText(int32_t id) const;

  const OpenAiApi api_;
  const int32_t logprobs_;
  const bool include_usage_;
  const std::string id_, model_, fingerprint_;
  const int64_t created_;
  const Tokenizer* tokenizer_;
  bool sent_first_ = false;    // chat streams open with the assistant role
  GenerateOutput all_;         // every output so far, merged: the body, and the final usage
  int64_t text_offset_ = 0;    // completions' logprobs: bytes of token text so far
};

}  // namespace dsv4
