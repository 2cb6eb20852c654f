// dsv4 tokenize --model M --text-file F [--special on|off]
// dsv4 tokenize --model M --chat-file F.json [--thinking on|off]
//
// Prints the token ids of each line of F as one JSON array per line. Lines are separated by '\n'
// (which is not part of the line; a '\r' before it is); a final '\n' does not start another line.
// Invalid UTF-8 becomes U+FFFD (one per maximal ill-formed subpart) before tokenizing. With
// --special on (the default, matching Hugging Face's encode), added-token text such as
// <｜begin▁of▁sentence｜> becomes its id; with off it is tokenized as plain text.
// With --chat-file, prints the ids of a DeepSeek-V4 conversation (OpenAI-style JSON messages).
#include <cstdio>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "launch/commands.h"
#include "launch/common.h"
#include "runtime/tokenizer/tokenizer.h"

namespace dsv4 {
namespace {

absl::StatusOr<std::string> ReadInput(const std::string& path) {
  if (path == "-") return std::string(std::istreambuf_iterator<char>(std::cin), std::istreambuf_iterator<char>());
  return ReadFile(path);
}

void PrintIds(const std::vector<int32_t>& ids, std::string& out) {
  out.push_back('[');
  out += absl::StrJoin(ids, ",");
  out += "]\n";
}

int TokenizeLines(const Tokenizer& tok, const std::string& text, bool special) {
  std::string out;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    PrintIds(tok.Encode(std::string_view(text).substr(begin, end - begin), special), out);
    begin = end + 1;
    if (out.size() > (1 << 20)) {
      std::fwrite(out.data(), 1, out.size(), stdout);
      out.clear();
    }
  }
  std::fwrite(out.data(), 1, out.size(), stdout);
  return std::fflush(stdout) == 0 ? 0 : Fail(absl::DataLossError("cannot write the output"));
}

int TokenizeChat(const Tokenizer& tok, const std::string& json, bool thinking) {
  auto messages = ParseChatMessages(json);
  if (!messages.ok()) return Fail(messages.status());
  ChatOptions options;
  options.thinking = thinking;
  auto ids = tok.EncodeChat(*messages, options);
  if (!ids.ok()) return Fail(ids.status());
  std::string out;
  PrintIds(*ids, out);
  std::fwrite(out.data(), 1, out.size(), stdout);
  return std::fflush(stdout) == 0 ? 0 : Fail(absl::DataLossError("cannot write the output"));
}

}  // namespace

int RunTokenize(int argc, char** argv) {
  Flags flags;
  flags.Add("model", "builtin:v4-tiny", "checkpoint directory, tokenizer.json file, or built-in model name")
      .Add("text-file", "", "text to tokenize, one input per line ('-' = stdin)")
      .Add("special", "on", "recognize added/special-token text in the input (on|off)")
      .Add("chat-file", "", "a JSON list of chat messages to encode in the DeepSeek-V4 format instead")
      .Add("thinking", "off", "with --chat-file: thinking mode (on|off)");
  if (WantsHelp(argc, argv)) return PrintHelp("tokenize", flags);
  if (auto st = flags.Parse(argc, argv, 2); !st.ok()) return Fail(st);
  auto special = flags.OnOff("special");
  if (!special.ok()) return Fail(special.status());
  auto thinking = flags.OnOff("thinking");
  if (!thinking.ok()) return Fail(thinking.status());
  const std::string text_file = flags.Str("text-file"), chat_file = flags.Str("chat-file");
  if (text_file.empty() == chat_file.empty())
    return Fail(absl::InvalidArgumentError("give exactly one of --text-file and --chat-file"));

  auto path = FindTokenizerJson(flags.Str("model"));
  if (!path.ok()) return Fail(path.status());
  auto tok = Tokenizer::Load(*path);
  if (!tok.ok()) return Fail(tok.status());
  auto input = ReadInput(text_file.empty() ? chat_file : text_file);
  if (!input.ok()) return Fail(input.status());
  return text_file.empty() ? TokenizeChat(**tok, *input, *thinking) : TokenizeLines(**tok, *input, *special);
}

}  // namespace dsv4
