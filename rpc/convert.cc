#include "rpc/convert.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "runtime/tokenizer/chat_format.h"
#include "runtime/tokenizer/utf8.h"

namespace dsv4 {
namespace {

absl::Status CheckText(const std::string& field, const std::string& text, const InputLimits& limits) {
  const int64_t cap = limits.max_model_len * limits.max_bytes_per_token;
  if (static_cast<int64_t>(text.size()) > cap)
    return absl::InvalidArgumentError(absl::StrCat(field, " is ", text.size(),
                                                   " bytes: more than the maximum context length of ",
                                                   limits.max_model_len, " tokens can hold (at most ", cap, " bytes)"));
  if (const size_t at = utf8::FirstInvalid(text); at != std::string_view::npos)
    return absl::InvalidArgumentError(absl::StrCat(field, " is not valid UTF-8 (at byte ", at, ")"));
  return absl::OkStatus();
}

absl::Status ToSampling(const v1::SamplingParams& in, SamplingParams& out) {
  if (in.has_temperature()) out.temperature = in.temperature();
  if (in.has_top_p()) out.top_p = in.top_p();
  if (in.has_top_k()) out.top_k = in.top_k();
  if (in.has_min_p()) out.min_p = in.min_p();
  if (in.has_repetition_penalty()) out.repetition_penalty = in.repetition_penalty();
  if (in.has_presence_penalty()) out.presence_penalty = in.presence_penalty();
  if (in.has_frequency_penalty()) out.frequency_penalty = in.frequency_penalty();
  if (in.has_seed()) out.seed = in.seed();
  if (in.has_max_tokens()) {
    if (in.max_tokens() < 1)
      return absl::InvalidArgumentError(absl::StrCat("sampling.max_tokens must be at least 1, got ", in.max_tokens()));
    out.max_tokens = in.max_tokens();
  }
  out.stop.assign(in.stop().begin(), in.stop().end());
  out.stop_token_ids.assign(in.stop_token_ids().begin(), in.stop_token_ids().end());
  out.ignore_eos = in.ignore_eos();
  out.skip_special_tokens = !in.keep_special_tokens();
  for (const auto& [id, bias] : in.logit_bias()) out.logit_bias.emplace_back(id, bias);
  std::sort(out.logit_bias.begin(), out.logit_bias.end());  // map order is unspecified
  out.logprobs = in.logprobs();
  if (in.n() != 0 && in.n() != 1)
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.n must be 1 (one sequence per request; send more requests), got ", in.n()));
  if (in.prompt_logprobs() != 0)
    return absl::InvalidArgumentError(
        absl::StrCat("sampling.prompt_logprobs is not supported and must be 0, got ", in.prompt_logprobs()));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<GenerateSpec> ToGenerateSpec(const v1::GenerateRequest& req, const Tokenizer* tok,
                                            const InputLimits& limits) {
  GenerateSpec spec;
  spec.request_id = req.request_id();
  spec.echo = req.echo();
  if (req.cache_salt().size() > 256)
    return absl::InvalidArgumentError(absl::StrCat("cache_salt is ", req.cache_salt().size(), " bytes; at most 256"));
  spec.cache_salt = req.cache_salt();
  DSV4_RETURN_IF_ERROR(ToSampling(req.sampling(), spec.sampling));
  switch (req.input_case()) {
    case v1::GenerateRequest::kTokens:
      spec.prompt.assign(req.tokens().ids().begin(), req.tokens().ids().end());
      if (spec.prompt.empty()) return absl::InvalidArgumentError("tokens.ids is empty");
      break;
    case v1::GenerateRequest::kText: {
      if (tok == nullptr) return absl::InvalidArgumentError("text input needs a tokenizer, and this model has none");
      DSV4_RETURN_IF_ERROR(CheckText("text", req.text(), limits));
      if (!req.skip_bos() && tok->bos_id() >= 0) spec.prompt.push_back(tok->bos_id());
      const std::vector<int32_t> ids = tok->Encode(req.text(), req.allow_special_tokens());
      spec.prompt.insert(spec.prompt.end(), ids.begin(), ids.end());
      if (spec.prompt.empty()) return absl::InvalidArgumentError("text is empty (and skip_bos leaves no token)");
      break;
    }
    case v1::GenerateRequest::kChat: {
      if (tok == nullptr) return absl::InvalidArgumentError("chat input needs a tokenizer, and this model has none");
      const std::string& json = req.chat().messages_json();
      DSV4_RETURN_IF_ERROR(CheckText("chat.messages_json", json, limits));
      auto messages = ParseChatMessages(json);
      if (!messages.ok())
        return absl::InvalidArgumentError(absl::StrCat("chat.messages_json: ", messages.status().message()));
      ChatOptions options;
      options.thinking = req.chat().thinking();
      options.reasoning_effort = req.chat().reasoning_effort();
      auto ids = tok->EncodeChat(*messages, options);
      if (!ids.ok()) return absl::InvalidArgumentError(absl::StrCat("chat: ", ids.status().message()));
      spec.prompt = std::move(*ids);
      break;
    }
    case v1::GenerateRequest::INPUT_NOT_SET:
      return absl::InvalidArgumentError("input: one of text, tokens or chat is required");
  }
  return spec;
}

void ToProto(const std::string& request_id, GenerateOutput&& out, v1::GenerateResponse* r) {
  r->set_request_id(request_id);
  r->mutable_token_ids()->Add(out.token_ids.begin(), out.token_ids.end());
  r->set_text(std::move(out.text));
  for (const TokenLogprobs& lp : out.logprobs) {
    v1::TokenLogprob* p = r->add_logprobs();
    p->set_token_id(lp.token_id);
    p->set_logprob(lp.logprob);
    for (const auto& [id, v] : lp.top) {
      p->add_top_ids(id);
      p->add_top_logprobs(v);
    }
  }
  r->mutable_prompt_token_ids()->Add(out.prompt_token_ids.begin(), out.prompt_token_ids.end());
  r->set_prompt_text(std::move(out.prompt_text));
  if (!out.finished) return;
  r->set_finished(true);
  switch (out.finish_reason) {
    case FinishReason::kStop:
      r->set_finish_reason(v1::FINISH_REASON_STOP);
      break;
    case FinishReason::kLength:
      r->set_finish_reason(v1::FINISH_REASON_LENGTH);
      break;
    case FinishReason::kAbort:
      r->set_finish_reason(v1::FINISH_REASON_ABORT);
      break;
    case FinishReason::kNone:
      break;
  }
  r->set_matched_stop(std::move(out.matched_stop));
  r->set_matched_stop_token_id(out.matched_stop_token_id);
  v1::Usage* u = r->mutable_usage();
  u->set_prompt_tokens(out.prompt_tokens);
  u->set_completion_tokens(out.completion_tokens);
  u->set_total_tokens(out.prompt_tokens + out.completion_tokens);
  r->set_seed(static_cast<int64_t>(out.seed));
  r->set_queue_ms(out.queue_ms);
  r->set_ttft_ms(out.ttft_ms);
}

}  // namespace dsv4
