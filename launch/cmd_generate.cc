// dsv4 generate --server ADDR --prompt TEXT [--max-tokens N] [--temperature T] ...
//
// Sends one request to a running `dsv4 serve` and prints the text as it streams, then a summary
// line (finish reason, usage, time to first token) on stderr. The prompt is a user message in
// the model's chat format unless --raw is on; --prompt-ids sends token ids instead.
#include <google/protobuf/util/json_util.h>

#include <cstdio>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "launch/client_flags.h"
#include "launch/commands.h"
#include "launch/common.h"
#include "nlohmann/json.hpp"
#include "rpc/client.h"

namespace dsv4 {

int RunGenerate(int argc, char** argv) {
  Flags flags;
  flags.Add("server", "127.0.0.1:50051", "address of a running dsv4 serve")
      .Add("prompt", "Hello! Who are you?", "the prompt text (a user message unless --raw on)")
      .Add("prompt-ids", "", "comma-separated token ids to send instead of text")
      .Add("raw", "off", "send --prompt as raw text instead of a chat message (on|off)")
      .Add("system", "", "a system message before the prompt (chat only)")
      .Add("thinking", "off", "chat: thinking mode (on|off)")
      .Add("max-tokens", "64", "tokens to generate at most")
      .Add("temperature", "0.7", "0 = greedy")
      .Add("top-p", "1", "nucleus sampling mass")
      .Add("top-k", "0", "0 = off")
      .Add("min-p", "0", "minimum probability relative to the best token")
      .Add("repetition-penalty", "1", "1 = off")
      .Add("seed", "-1", "-1 = chosen by the server (printed in the summary)")
      .Add("stop", "", "a stop string")
      .Add("ignore-eos", "off", "keep going past the end-of-sentence token (on|off)")
      .Add("request-id", "", "an id for Abort (default: chosen by the server)")
      .Add("timeout-s", "600", "deadline for the whole request")
      .Add("wait-ready-s", "0", "first wait up to this long for the server's health to be SERVING")
      .Add("json", "off", "print every streamed message as one JSON line instead of the text (on|off)");
  AddClientFlags(flags);
  if (WantsHelp(argc, argv)) return PrintHelp("generate", flags);
  if (auto st = flags.Parse(argc, argv, 2); !st.ok()) return Fail(st);
  auto security = ParseClientFlags(flags);
  if (!security.ok()) return Fail(security.status());
  auto raw = flags.OnOff("raw");
  auto thinking = flags.OnOff("thinking");
  auto ignore_eos = flags.OnOff("ignore-eos");
  auto json = flags.OnOff("json");
  auto ids = flags.IntList("prompt-ids");
  auto max_tokens = flags.Int("max-tokens");
  auto temperature = flags.Double("temperature");
  auto top_p = flags.Double("top-p");
  auto top_k = flags.Int("top-k");
  auto min_p = flags.Double("min-p");
  auto rep = flags.Double("repetition-penalty");
  auto seed = flags.Int("seed");
  auto timeout = flags.Double("timeout-s");
  auto wait_ready = flags.Double("wait-ready-s");
  for (const absl::Status& st : {raw.status(), thinking.status(), ignore_eos.status(), json.status(), ids.status(),
                                 max_tokens.status(), temperature.status(), top_p.status(), top_k.status(),
                                 min_p.status(), rep.status(), seed.status(), timeout.status(), wait_ready.status()})
    if (!st.ok()) return Fail(st);

  v1::GenerateRequest req;
  req.set_request_id(flags.Str("request-id"));
  if (!ids->empty()) {
    req.mutable_tokens()->mutable_ids()->Add(ids->begin(), ids->end());
  } else if (*raw) {
    req.set_text(flags.Str("prompt"));
  } else {
    nlohmann::json messages = nlohmann::json::array();
    if (!flags.Str("system").empty()) messages.push_back({{"role", "system"}, {"content", flags.Str("system")}});
    messages.push_back({{"role", "user"}, {"content", flags.Str("prompt")}});
    req.mutable_chat()->set_messages_json(messages.dump());
    req.mutable_chat()->set_thinking(*thinking);
  }
  v1::SamplingParams* p = req.mutable_sampling();
  p->set_max_tokens(*max_tokens);
  p->set_temperature(*temperature);
  p->set_top_p(*top_p);
  p->set_top_k(*top_k);
  p->set_min_p(*min_p);
  p->set_repetition_penalty(*rep);
  p->set_seed(*seed);
  if (!flags.Str("stop").empty()) p->add_stop(flags.Str("stop"));
  p->set_ignore_eos(*ignore_eos);

  auto client = InferenceClient::Connect(flags.Str("server"), *security);
  if (!client.ok()) return Fail(client.status());
  if (*wait_ready > 0)
    if (auto st = (*client)->WaitForServing(absl::Seconds(*wait_ready)); !st.ok()) return Fail(st);
  v1::GenerateResponse last;
  const absl::Time t0 = absl::Now();
  double ttft_ms = -1;
  const absl::Status st = (*client)->Generate(
      req,
      [&](const v1::GenerateResponse& m) {
        if (ttft_ms < 0 && m.token_ids_size() > 0) ttft_ms = absl::ToDoubleMilliseconds(absl::Now() - t0);
        if (*json) {
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
      absl::Seconds(*timeout));
  if (!*json) std::printf("\n");
  std::fflush(stdout);
  if (!st.ok()) return Fail(st);
  std::fprintf(stderr, "[finish: %s%s, prompt %lld tokens, completion %lld tokens, ttft %.1f ms, seed %lld]\n",
               v1::FinishReason_Name(last.finish_reason()).substr(std::string("FINISH_REASON_").size()).c_str(),
               last.matched_stop().empty() ? "" : absl::StrCat(" on '", last.matched_stop(), "'").c_str(),
               static_cast<long long>(last.usage().prompt_tokens()),
               static_cast<long long>(last.usage().completion_tokens()), ttft_ms, static_cast<long long>(last.seed()));
  return 0;
}

}  // namespace dsv4
