// dsv4 generate --server ADDR --prompt TEXT [--max-tokens N] [--temperature T] ...
//
// Sends one request to a running `dsv4 serve` and prints the text as it streams, then a summary
// line (finish reason, usage, time to first token) on stderr. The prompt is a user message in
// the model's chat format unless --raw is given; --prompt-ids sends token ids instead.
#include <google/protobuf/util/json_util.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "base/status.h"
#include "launch/commands.h"
#include "nlohmann/json.hpp"
#include "rpc/client.h"
#include "runtime/tokenizer/utf8.h"

namespace dsv4 {
namespace {

// Text flags travel as proto3 strings and JSON, which hold UTF-8 only.
absl::Status CheckUtf8Flags(const Flags& flags) {
  for (const char* name : {"prompt", "system", "stop", "request-id"}) {
    const std::string& v = flags.GetString(name);
    if (const size_t at = utf8::FirstInvalid(v); at != std::string_view::npos)
      return absl::InvalidArgumentError(absl::StrCat("--", name, " is not valid UTF-8 (at byte ", at, ")"));
  }
  return absl::OkStatus();
}

}  // namespace

void GenerateFlags(Flags& flags) {
  flags.String("server", "127.0.0.1:50051", "address of a running dsv4 serve")
      .String("prompt", "Hello! Who are you?", "the prompt text (a user message unless --raw)")
      .IntList("prompt-ids", "", "comma-separated token ids to send instead of text")
      .Bool("raw", false, "send --prompt as raw text instead of a chat message")
      .String("system", "", "a system message before the prompt (chat only)")
      .Bool("thinking", false, "chat: thinking mode")
      .Int("max-tokens", 64, "tokens to generate at most")
      .Double("temperature", 0.7, "0 = greedy")
      .Double("top-p", 1, "nucleus sampling mass")
      .Int("top-k", 0, "0 = off")
      .Double("min-p", 0, "minimum probability relative to the best token")
      .Double("repetition-penalty", 1, "1 = off")
      .Int("seed", -1, "-1 = chosen by the server (printed in the summary)")
      .String("stop", "", "a stop string")
      .Bool("ignore-eos", false, "keep going past the end-of-sentence token")
      .String("request-id", "", "an id for Abort (default: chosen by the server)")
      .Double("timeout-s", 600, "deadline for the whole request", 0.001, 86400 * 7)
      .Double("wait-ready-s", 0, "first wait up to this long for the server's health to be SERVING", 0, 86400)
      .Bool("json", false, "print every streamed message as one JSON line instead of the text");
  AddClientFlags(flags);
}

absl::Status Generate(const Flags& flags) {
  DSV4_ASSIGN_OR_RETURN(const ClientSecurity security, ClientSecurityFromFlags(flags));
  const std::vector<int32_t>& ids = flags.GetIntList("prompt-ids");
  if (flags.Given("prompt-ids") && ids.empty())
    return absl::InvalidArgumentError("--prompt-ids is empty: give token ids, or --prompt for text");
  DSV4_RETURN_IF_ERROR(CheckUtf8Flags(flags));
  const bool json = flags.GetBool("json");

  v1::GenerateRequest req;
  req.set_request_id(flags.GetString("request-id"));
  if (!ids.empty()) {
    req.mutable_tokens()->mutable_ids()->Add(ids.begin(), ids.end());
  } else if (flags.GetBool("raw")) {
    req.set_text(flags.GetString("prompt"));
  } else {
    nlohmann::json messages = nlohmann::json::array();
    if (!flags.GetString("system").empty())
      messages.push_back({{"role", "system"}, {"content", flags.GetString("system")}});
    messages.push_back({{"role", "user"}, {"content", flags.GetString("prompt")}});
    req.mutable_chat()->set_messages_json(messages.dump());
    req.mutable_chat()->set_thinking(flags.GetBool("thinking"));
  }
  v1::SamplingParams* p = req.mutable_sampling();
  p->set_max_tokens(flags.GetInt("max-tokens"));
  p->set_temperature(flags.GetDouble("temperature"));
  p->set_top_p(flags.GetDouble("top-p"));
  p->set_top_k(flags.GetInt("top-k"));
  p->set_min_p(flags.GetDouble("min-p"));
  p->set_repetition_penalty(flags.GetDouble("repetition-penalty"));
  p->set_seed(flags.GetInt("seed"));
  if (!flags.GetString("stop").empty()) p->add_stop(flags.GetString("stop"));
  p->set_ignore_eos(flags.GetBool("ignore-eos"));

  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<InferenceClient> client,
                        InferenceClient::Connect(flags.GetString("server"), security));
  if (flags.GetDouble("wait-ready-s") > 0)
    DSV4_RETURN_IF_ERROR(ServerError(client->WaitForServing(absl::Seconds(flags.GetDouble("wait-ready-s"))),
                                     flags.GetString("server"), "grpc.health.v1.Health"));
  v1::GenerateResponse last;
  const absl::Time t0 = absl::Now();
  double ttft_ms = -1;
  const absl::Status st = client->Generate(
      req,
      [&](const v1::GenerateResponse& m) {
        if (ttft_ms < 0 && m.token_ids_size() > 0) ttft_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
        if (json) {
          std::string line;
          google::protobuf::util::JsonPrintOptions opt;
          opt.preserve_proto_field_names = true;
          (void)google::protobuf::util::MessageToJsonString(m, &line, opt);
          std::printf("%s\n", line.c_str());
        } else {
          std::fwrite(m.text().data(), 1, m.text().size(), stdout);
        }
        std::fflush(stdout);
        if (m.finished()) last = m;
      },
      absl::Seconds(flags.GetDouble("timeout-s")));
  if (!json) std::printf("\n");
  std::fflush(stdout);
  DSV4_RETURN_IF_ERROR(ServerError(st, flags.GetString("server"), "dsv4.v1.Inference"));
  std::fprintf(stderr, "[finish: %s%s, prompt %lld tokens, completion %lld tokens, ttft %.1f ms, seed %lld]\n",
               v1::FinishReason_Name(last.finish_reason()).substr(std::string("FINISH_REASON_").size()).c_str(),
               last.matched_stop().empty() ? "" : absl::StrCat(" on '", last.matched_stop(), "'").c_str(),
               static_cast<long long>(last.usage().prompt_tokens()),
               static_cast<long long>(last.usage().completion_tokens()), ttft_ms, static_cast<long long>(last.seed()));
  return absl::OkStatus();
}

}  // namespace dsv4
