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
#include "base/status.h"
#include "launch/commands.h"
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

absl::Status TokenizeLines(const Tokenizer& tok, const std::string& text, bool special) {
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
  return std::fflush(stdout) == 0 ? absl::OkStatus() : absl::DataLossError("cannot write the output");
}

absl::Status TokenizeChat(const Tokenizer& tok, const std::string& json, bool thinking) {
  DSV4_ASSIGN_OR_RETURN(const std::vector<ChatMessage> messages, ParseChatMessages(json));
  ChatOptions options;
  options.thinking = thinking;
  DSV4_ASSIGN_OR_RETURN(const std::vector<int32_t> ids, tok.EncodeChat(messages, options));
  std::string out;
  PrintIds(ids, out);
  std::fwrite(out.data(), 1, out.size(), stdout);
  return std::fflush(stdout) == 0 ? absl::OkStatus() : absl::DataLossError("cannot write the output");
}

}  // namespace

void TokenizeFlags(Flags& flags) {
  flags.String("model", "builtin:v4-tiny", "checkpoint directory, tokenizer.json file, or built-in model name")
      .String("text-file", "", "text to tokenize, one input per line ('-' = stdin)")
      .Bool("special", true, "recognize added/special-token text in the input")
      .String("chat-file", "", "a JSON list of chat messages to encode in the DeepSeek-V4 format instead")
      .Bool("thinking", false, "with --chat-file: thinking mode");
}

absl::Status Tokenize(const Flags& flags) {
  const std::string& text_file = flags.GetString("text-file");
  const std::string& chat_file = flags.GetString("chat-file");
  if (text_file.empty() == chat_file.empty())
    return absl::InvalidArgumentError("give exactly one of --text-file and --chat-file");
  DSV4_ASSIGN_OR_RETURN(const std::string path, FindTokenizerJson(flags.GetString("model")));
  DSV4_ASSIGN_OR_RETURN(const std::unique_ptr<Tokenizer> tok, Tokenizer::Load(path));
  DSV4_ASSIGN_OR_RETURN(const std::string input, ReadInput(text_file.empty() ? chat_file : text_file));
  return text_file.empty() ? TokenizeChat(*tok, input, flags.GetBool("thinking"))
                           : TokenizeLines(*tok, input, flags.GetBool("special"));
}

}  // namespace dsv4
