#include "rpc/openai.h"

#include <cmath>
#include <limits>

#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "nlohmann/json.hpp"

namespace dsv4 {
namespace {

using Json = nlohmann::json;

constexpr char kParamPayload[] = "dsv4.openai.param";
constexpr int kMaxDepth = 64;  // JSON nesting accepted in a request body

absl::Status Invalid(const std::string& param, const std::string& message) {
  absl::Status st = absl::InvalidArgumentError(message);
  st.SetPayload(kParamPayload, absl::Cord(param));
  return st;
}

// The deepest nesting of arrays and objects in `body` (strings skipped), without parsing it: the
// parser and the JSON value are recursive, and a body of 4 MiB of '[' must not reach them.
int NestingDepth(std::string_view body) {
  int depth = 0, max_depth = 0;
  bool in_string = false;
  for (size_t i = 0; i < body.size(); ++i) {
    const char c = body[i];
    if (in_string) {
      if (c == '\\') {
        ++i;
      } else if (c == '"') {
        in_string = false;
      }
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      max_depth = std::max(max_depth, ++depth);
    } else if (c == ']' || c == '}') {
      --depth;
    }
  }
  return max_depth;
}

const Json* Field(const Json& j, const char* name) {
  auto it = j.find(name);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

absl::StatusOr<std::optional<double>> Number(const Json& j, const char* name) {
  const Json* v = Field(j, name);
  if (v == nullptr) return std::optional<double>();
  if (!v->is_number()) return Invalid(name, absl::StrCat(name, " must be a number"));
  return std::optional<double>(v->get<double>());
}

absl::StatusOr<std::optional<int64_t>> Integer(const Json& j, const char* name) {
  const Json* v = Field(j, name);
  if (v == nullptr) return std::optional<int64_t>();
  if (v->is_number_integer()) return std::optional<int64_t>(v->get<int64_t>());
  // 2.0 is an integer; 2.5 and 1e30 are not.
  if (v->is_number_float()) {
    const double d = v->get<double>();
    if (std::nearbyint(d) == d && std::fabs(d) < 9e18) return std::optional<int64_t>(static_cast<int64_t>(d));
  }
  return Invalid(name, absl::StrCat(name, " must be an integer"));
}

absl::StatusOr<std::optional<bool>> Bool(const Json& j, const char* name) {
  const Json* v = Field(j, name);
  if (v == nullptr) return std::optional<bool>();
  if (!v->is_boolean()) return Invalid(name, absl::StrCat(name, " must be true or false"));
  return std::optional<bool>(v->get<bool>());
}

absl::Status Strings(const Json& j, const char* name, std::vector<std::string>* out) {
  const Json* v = Field(j, name);
  if (v == nullptr) return absl::OkStatus();
  if (v->is_string()) {
    out->push_back(v->get<std::string>());
    return absl::OkStatus();
  }
  if (!v->is_array()) return Invalid(name, absl::StrCat(name, " must be a string or a list of strings"));
  for (const Json& s : *v) {
    if (!s.is_string()) return Invalid(name, absl::StrCat(name, " must be a string or a list of strings"));
    out->push_back(s.get<std::string>());
  }
  return absl::OkStatus();
}

bool AllIntegers(const Json& a) {
  for (const Json& v : a)
    if (!v.is_number_integer()) return false;
  return true;
}

absl::Status TokenIds(const Json& a, v1::GenerateRequest& r) {
  for (const Json& v : a) {
    const int64_t id = v.get<int64_t>();
    if (id < std::numeric_limits<int32_t>::min() || id > std::numeric_limits<int32_t>::max())
      return Invalid("prompt", absl::StrCat("prompt: token id ", id, " is out of range"));
    r.mutable_tokens()->add_ids(static_cast<int32_t>(id));
  }
  if (r.tokens().ids_size() == 0) return Invalid("prompt", "prompt: the token list is empty");
  return absl::OkStatus();
}

absl::Status Prompt(const Json& j, v1::GenerateRequest& r) {
  const Json* p = Field(j, "prompt");
  if (p == nullptr) return Invalid("prompt", "prompt is required");
  if (p->is_string()) {
    r.set_text(p->get<std::string>());
    return absl::OkStatus();
  }
  if (p->is_array()) {
    if (!p->empty() && AllIntegers(*p)) return TokenIds(*p, r);
    if (p->size() == 1 && (*p)[0].is_string()) {
      r.set_text((*p)[0].get<std::string>());
      return absl::OkStatus();
    }
    if (p->size() == 1 && (*p)[0].is_array() && AllIntegers((*p)[0])) return TokenIds((*p)[0], r);
    if (p->size() > 1) return Invalid("prompt", "prompt: one prompt per request (send several requests)");
  }
  return Invalid("prompt", "prompt must be a string, a list of token ids, or a list holding one of those");
}

absl::Status Sampling(const Json& j, OpenAiApi api, int64_t completions_default, OpenAiRequest& out) {
  v1::SamplingParams* p = out.request.mutable_sampling();
  DSV4_ASSIGN_OR_RETURN(auto temperature, Number(j, "temperature"));
  if (temperature) p->set_temperature(*temperature);
  DSV4_ASSIGN_OR_RETURN(auto top_p, Number(j, "top_p"));
  if (top_p) p->set_top_p(*top_p);
  DSV4_ASSIGN_OR_RETURN(auto top_k, Integer(j, "top_k"));
  if (top_k) p->set_top_k(*top_k);
  DSV4_ASSIGN_OR_RETURN(auto min_p, Number(j, "min_p"));
  if (min_p) p->set_min_p(*min_p);
  DSV4_ASSIGN_OR_RETURN(auto repetition, Number(j, "repetition_penalty"));
  if (repetition) p->set_repetition_penalty(*repetition);
  DSV4_ASSIGN_OR_RETURN(auto presence, Number(j, "presence_penalty"));
  if (presence) p->set_presence_penalty(*presence);
  DSV4_ASSIGN_OR_RETURN(auto frequency, Number(j, "frequency_penalty"));
  if (frequency) p->set_frequency_penalty(*frequency);
  DSV4_ASSIGN_OR_RETURN(auto seed, Integer(j, "seed"));
  if (seed) {
    if (*seed < 0) return Invalid("seed", absl::StrCat("seed must be >= 0, got ", *seed));
    p->set_seed(*seed);
  }
  // max_tokens (chat: max_completion_tokens, its newer name, wins).
  DSV4_ASSIGN_OR_RETURN(auto max_tokens, Integer(j, "max_tokens"));
  const char* max_name = "max_tokens";
  if (api == OpenAiApi::kChat) {
    DSV4_ASSIGN_OR_RETURN(auto max_completion, Integer(j, "max_completion_tokens"));
    if (max_completion) max_tokens = max_completion, max_name = "max_completion_tokens";
  }
  if (max_tokens) {
    if (*max_tokens < 1) return Invalid(max_name, absl::StrCat(max_name, " must be at least 1, got ", *max_tokens));
    p->set_max_tokens(*max_tokens);
  } else if (api == OpenAiApi::kCompletions) {
    p->set_max_tokens(completions_default);
  }
  DSV4_ASSIGN_OR_RETURN(auto n, Integer(j, "n"));
  if (n && *n != 1) return Invalid("n", absl::StrCat("n must be 1 (one choice per request), got ", *n));
  DSV4_ASSIGN_OR_RETURN(auto best_of, Integer(j, "best_of"));
  if (best_of && *best_of != 1) return Invalid("best_of", "best_of must be 1");
  DSV4_ASSIGN_OR_RETURN(auto min_tokens, Integer(j, "min_tokens"));
  if (min_tokens && *min_tokens != 0) return Invalid("min_tokens", "min_tokens is not supported (must be 0)");
  std::vector<std::string> stop;
  DSV4_RETURN_IF_ERROR(Strings(j, "stop", &stop));
  for (std::string& s : stop) p->add_stop(std::move(s));
  if (const Json* ids = Field(j, "stop_token_ids")) {
    if (!ids->is_array() || !AllIntegers(*ids)) return Invalid("stop_token_ids", "stop_token_ids must be a list of ids");
    for (const Json& id : *ids) {
      const int64_t v = id.get<int64_t>();
      if (v < std::numeric_limits<int32_t>::min() || v > std::numeric_limits<int32_t>::max())
        return Invalid("stop_token_ids", absl::StrCat("stop_token_ids: ", v, " is out of range"));
      p->add_stop_token_ids(static_cast<int32_t>(v));
    }
  }
  DSV4_ASSIGN_OR_RETURN(auto ignore_eos, Bool(j, "ignore_eos"));
  p->set_ignore_eos(ignore_eos.value_or(false));
  DSV4_ASSIGN_OR_RETURN(auto skip_special, Bool(j, "skip_special_tokens"));
  p->set_keep_special_tokens(!skip_special.value_or(true));
  if (const Json* bias = Field(j, "logit_bias")) {
    if (!bias->is_object()) return Invalid("logit_bias", "logit_bias must map token ids to numbers");
    for (const auto& [key, value] : bias->items()) {
      int32_t id;
      if (!absl::SimpleAtoi(key, &id)) return Invalid("logit_bias", absl::StrCat("logit_bias: '", key, "' is not a token id"));
      if (!value.is_number()) return Invalid("logit_bias", absl::StrCat("logit_bias[", key, "] must be a number"));
      (*p->mutable_logit_bias())[id] = value.get<double>();
    }
  }
  // logprobs: an integer count (completions) or a flag with top_logprobs (chat). The engine reports
  // alternatives only with a count >= 1: 0 asks it for one and drops it again.
  if (api == OpenAiApi::kCompletions) {
    DSV4_ASSIGN_OR_RETURN(auto logprobs, Integer(j, "logprobs"));
    if (logprobs) {
      if (*logprobs < 0 || *logprobs > 20) return Invalid("logprobs", "logprobs must be in [0, 20]");
      out.logprobs = static_cast<int32_t>(*logprobs);
    }
  } else {
    DSV4_ASSIGN_OR_RETURN(auto logprobs, Bool(j, "logprobs"));
    DSV4_ASSIGN_OR_RETURN(auto top, Integer(j, "top_logprobs"));
    if (top && (*top < 0 || *top > 20)) return Invalid("top_logprobs", "top_logprobs must be in [0, 20]");
    if (top && !logprobs.value_or(false)) return Invalid("top_logprobs", "top_logprobs needs logprobs: true");
    if (logprobs.value_or(false)) out.logprobs = static_cast<int32_t>(top.value_or(0));
  }
  if (out.logprobs >= 0) p->set_logprobs(std::max(out.logprobs, 1));
  return absl::OkStatus();
}

absl::Status Chat(const Json& j, OpenAiRequest& out) {
  const Json* messages = Field(j, "messages");
  if (messages == nullptr) return Invalid("messages", "messages is required");
  if (!messages->is_array() || messages->empty())
    return Invalid("messages", "messages must be a non-empty list of messages");
  if (const Json* tools = Field(j, "tools"); tools != nullptr && !(tools->is_array() && tools->empty()))
    return Invalid("tools", "tools are not supported by this endpoint");
  if (const Json* rf = Field(j, "response_format")) {
    const Json* type = rf->is_object() ? Field(*rf, "type") : nullptr;
    if (type == nullptr || !type->is_string() || type->get<std::string>() != "text")
      return Invalid("response_format", "response_format: only {\"type\": \"text\"} is supported");
  }
  v1::ChatInput* chat = out.request.mutable_chat();
  chat->set_messages_json(Json{{"messages", *messages}}.dump());
  std::string effort;
  if (const Json* kwargs = Field(j, "chat_template_kwargs")) {
    if (!kwargs->is_object()) return Invalid("chat_template_kwargs", "chat_template_kwargs must be an object");
    DSV4_ASSIGN_OR_RETURN(auto thinking, Bool(*kwargs, "thinking"));
    chat->set_thinking(thinking.value_or(false));
    if (const Json* e = Field(*kwargs, "reasoning_effort")) {
      if (!e->is_string()) return Invalid("chat_template_kwargs", "chat_template_kwargs.reasoning_effort must be a string");
      effort = e->get<std::string>();
    }
  }
  if (const Json* e = Field(j, "reasoning_effort")) {
    if (!e->is_string()) return Invalid("reasoning_effort", "reasoning_effort must be a string");
    effort = e->get<std::string>();
  }
  chat->set_reasoning_effort(effort);
  return absl::OkStatus();
}

// The finish_reason field: null while a request runs (kNone), else the engine's name.
const char* FinishName(FinishReason r) { return r == FinishReason::kNone ? nullptr : FinishReasonName(r); }

Json Usage(const GenerateOutput& out) {
  return Json{{"prompt_tokens", out.prompt_tokens},
              {"completion_tokens", out.completion_tokens},
              {"total_tokens", out.prompt_tokens + out.completion_tokens}};
}

std::string Event(const Json& j) { return absl::StrCat("data: ", j.dump(-1, ' ', false, Json::error_handler_t::replace), "\n\n"); }

}  // namespace

absl::StatusOr<OpenAiRequest> ParseOpenAiRequest(OpenAiApi api, std::string_view body, const std::string& served_model,
                                                 int64_t completions_default_max_tokens) {
  if (NestingDepth(body) > kMaxDepth)
    return Invalid("", absl::StrCat("the request body nests deeper than ", kMaxDepth, " levels"));
  const Json j = Json::parse(body.begin(), body.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return Invalid("", "the request body is not valid JSON");
  if (!j.is_object()) return Invalid("", "the request body must be a JSON object");
  OpenAiRequest out;
  out.api = api;
  if (const Json* model = Field(j, "model")) {
    if (!model->is_string()) return Invalid("model", "model must be a string");
    out.model = model->get<std::string>();
    if (!out.model.empty() && out.model != served_model) {
      absl::Status st = absl::NotFoundError(absl::StrCat("The model `", out.model, "` does not exist."));
      st.SetPayload(kParamPayload, absl::Cord("model"));
      return st;
    }
  }
  if (const Json* salt = Field(j, "cache_salt")) {
    if (!salt->is_string()) return Invalid("cache_salt", "cache_salt must be a string");
    out.request.set_cache_salt(salt->get<std::string>());
  }
  DSV4_ASSIGN_OR_RETURN(auto stream, Bool(j, "stream"));
  out.stream = stream.value_or(false);
  if (const Json* so = Field(j, "stream_options")) {
    if (!out.stream) return Invalid("stream_options", "stream_options is only allowed with stream: true");
    if (!so->is_object()) return Invalid("stream_options", "stream_options must be an object");
    DSV4_ASSIGN_OR_RETURN(auto usage, Bool(*so, "include_usage"));
    out.include_usage = usage.value_or(false);
  }
  if (api == OpenAiApi::kCompletions) {
    DSV4_RETURN_IF_ERROR(Prompt(j, out.request));
    DSV4_ASSIGN_OR_RETURN(auto echo, Bool(j, "echo"));
    out.echo = echo.value_or(false);
    out.request.set_echo(out.echo);
    if (const Json* suffix = Field(j, "suffix"); suffix != nullptr && !(suffix->is_string() && suffix->empty()))
      return Invalid("suffix", "suffix is not supported");
  } else {
    DSV4_RETURN_IF_ERROR(Chat(j, out));
  }
  DSV4_RETURN_IF_ERROR(Sampling(j, api, completions_default_max_tokens, out));
  if (out.echo && out.logprobs >= 0)
    return Invalid("logprobs", "logprobs with echo would need the prompt's logprobs, which are not supported");
  return out;
}

std::string ParamOf(const absl::Status& status) {
  auto p = status.GetPayload(kParamPayload);
  return p.has_value() ? std::string(*p) : "";
}

int HttpStatusOf(const absl::Status& status) {
  switch (status.code()) {
    case absl::StatusCode::kOk:
      return 200;
    case absl::StatusCode::kInvalidArgument:
    case absl::StatusCode::kOutOfRange:
    case absl::StatusCode::kFailedPrecondition:
      return 400;
    case absl::StatusCode::kUnauthenticated:
      return 401;
    case absl::StatusCode::kPermissionDenied:
      return 403;
    case absl::StatusCode::kNotFound:
      return 404;
    case absl::StatusCode::kResourceExhausted:
      return 429;
    case absl::StatusCode::kCancelled:
    case absl::StatusCode::kAborted:
      return 499;  // the client's request was ended (nginx's "client closed request")
    case absl::StatusCode::kUnavailable:
      return 503;
    case absl::StatusCode::kDeadlineExceeded:
      return 504;
    default:
      return 500;
  }
}

std::string ErrorBody(const absl::Status& status) {
  const int http = HttpStatusOf(status);
  const char* type = http == 400   ? "invalid_request_error"
                     : http == 401 ? "authentication_error"
                     : http == 403 ? "permission_error"
                     : http == 404 ? "not_found_error"
                     : http == 429 ? "rate_limit_error"
                     : http == 503 ? "service_unavailable_error"
                                   : "server_error";
  const std::string param = ParamOf(status);
  Json err{{"message", std::string(status.message())},
           {"type", type},
           {"param", param.empty() ? Json(nullptr) : Json(param)},
           {"code", http == 404 && param == "model" ? Json("model_not_found") : Json(nullptr)}};
  return Json{{"error", err}}.dump(-1, ' ', false, Json::error_handler_t::replace);
}

OpenAiResponse::OpenAiResponse(const OpenAiRequest& request, std::string id, int64_t created, std::string model,
                               const Tokenizer* tokenizer, std::string fingerprint)
    : api_(request.api),
      logprobs_(request.logprobs),
      include_usage_(request.include_usage),
      id_(std::move(id)),
      model_(std::move(model)),
      fingerprint_(std::move(fingerprint)),
      created_(created),
      tokenizer_(tokenizer) {}

std::string OpenAiResponse::TokenText(int32_t id) const {
  if (tokenizer_ == nullptr) return absl::StrCat("token_id:", id);
  const int32_t ids[1] = {id};
  return tokenizer_->Decode(ids);
}

// OpenAI's logprobs object for the tokens of `out` (null without logprobs): chat's "content" list,
// or the completions' parallel lists, text offsets counted from `text_offset`.
nlohmann::json OpenAiResponse::LogprobsJson(const GenerateOutput& out, int64_t text_offset) const {
  if (logprobs_ < 0 || out.logprobs.empty()) return nullptr;
  if (api_ == OpenAiApi::kChat) {
    auto entry = [&](int32_t id, double lp) {
      const std::string text = TokenText(id);
      return Json{{"token", text}, {"logprob", lp}, {"bytes", std::vector<uint8_t>(text.begin(), text.end())}};
    };
    Json content = Json::array();
    for (const TokenLogprobs& lp : out.logprobs) {
      Json e = entry(lp.token_id, lp.logprob);
      Json top = Json::array();
      for (int32_t i = 0; i < logprobs_ && i < static_cast<int32_t>(lp.top.size()); ++i)
        top.push_back(entry(lp.top[i].first, lp.top[i].second));
      e["top_logprobs"] = std::move(top);
      content.push_back(std::move(e));
    }
    return Json{{"content", std::move(content)}};
  }
  Json tokens = Json::array(), token_lps = Json::array(), tops = Json::array(), offsets = Json::array();
  for (const TokenLogprobs& lp : out.logprobs) {
    const std::string text = TokenText(lp.token_id);
    tokens.push_back(text);
    token_lps.push_back(lp.logprob);
    Json top = Json::object();
    for (int32_t i = 0; i < logprobs_ && i < static_cast<int32_t>(lp.top.size()); ++i)
      top[TokenText(lp.top[i].first)] = lp.top[i].second;
    tops.push_back(logprobs_ > 0 ? std::move(top) : Json(nullptr));
    offsets.push_back(text_offset);
    text_offset += static_cast<int64_t>(text.size());
  }
  return Json{{"tokens", tokens}, {"token_logprobs", token_lps}, {"top_logprobs", tops}, {"text_offset", offsets}};
}

nlohmann::json OpenAiResponse::Envelope(const char* object) const {
  return Json{{"id", id_}, {"object", object}, {"created", created_}, {"model", model_},
              {"system_fingerprint", fingerprint_}};
}

void OpenAiResponse::Add(GenerateOutput&& out) { all_.MergeFrom(std::move(out)); }

std::string OpenAiResponse::Body() const {
  const char* finish = FinishName(all_.finish_reason);
  Json choice{{"index", 0}, {"logprobs", LogprobsJson(all_, 0)}, {"finish_reason", finish ? Json(finish) : Json()}};
  Json j;
  if (api_ == OpenAiApi::kChat) {
    j = Envelope("chat.completion");
    choice["message"] = Json{{"role", "assistant"}, {"content", all_.text}};
  } else {
    j = Envelope("text_completion");
    choice["text"] = all_.prompt_text + all_.text;  // prompt_text: only with echo
  }
  j["choices"] = Json::array({std::move(choice)});
  j["usage"] = Usage(all_);
  return j.dump(-1, ' ', false, Json::error_handler_t::replace);
}

std::string OpenAiResponse::Events(const GenerateOutput& out) {
  std::string events;
  const char* object = api_ == OpenAiApi::kChat ? "chat.completion.chunk" : "text_completion";
  auto chunk = [&](Json choice) {
    Json j = Envelope(object);
    j["choices"] = Json::array({std::move(choice)});
    if (include_usage_) j["usage"] = nullptr;
    events += Event(j);
  };
  if (api_ == OpenAiApi::kChat && !sent_first_)
    chunk(Json{{"index", 0}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr},
               {"finish_reason", nullptr}});
  sent_first_ = true;
  const std::string text = (api_ == OpenAiApi::kCompletions ? out.prompt_text : std::string()) + out.text;
  const char* finish = out.finished ? FinishName(out.finish_reason) : nullptr;
  if (!text.empty() || !out.logprobs.empty() || finish != nullptr) {
    Json choice{{"index", 0}, {"logprobs", LogprobsJson(out, text_offset_)}, {"finish_reason", finish ? Json(finish) : Json()}};
    if (api_ == OpenAiApi::kChat) {
      choice["delta"] = text.empty() ? Json::object() : Json{{"content", text}};
    } else {
      choice["text"] = text;
    }
    chunk(std::move(choice));
  }
  for (const TokenLogprobs& lp : out.logprobs) text_offset_ += static_cast<int64_t>(TokenText(lp.token_id).size());
  GenerateOutput copy = out;
  all_.MergeFrom(std::move(copy));
  return events;
}

std::string OpenAiResponse::End() const {
  std::string events;
  if (include_usage_) {
    Json j = Envelope(api_ == OpenAiApi::kChat ? "chat.completion.chunk" : "text_completion");
    j["choices"] = Json::array();
    j["usage"] = Usage(all_);
    events += Event(j);
  }
  return events + "data: [DONE]\n\n";
}

std::string OpenAiResponse::ErrorEvent(const absl::Status& status) {
  return absl::StrCat("data: ", ErrorBody(status), "\n\ndata: [DONE]\n\n");
}

}  // namespace dsv4
