// The chat format: OpenAI-style messages JSON, parsed and encoded in the DeepSeek-V4 format (with
// and without thinking). Any bytes end in a status; encoded ids are in the vocabulary.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "runtime/tokenizer/chat_format.h"
#include "runtime/tokenizer/tokenizer.h"
#include "tests/fuzz/builtin_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const dsv4::Tokenizer* tok = dsv4::fuzz::BuiltinTokenizer("fuzz_chat");
  const std::string json(reinterpret_cast<const char*>(data), size);
  auto messages = dsv4::ParseChatMessages(json);
  if (!messages.ok()) return 0;
  for (bool thinking : {false, true}) {
    dsv4::ChatOptions options;
    options.thinking = thinking;
    auto ids = tok->EncodeChat(*messages, options);
    if (!ids.ok()) continue;
    for (int32_t id : *ids)
      if (id < 0 || id >= tok->vocab_size()) std::abort();
  }
  return 0;
}
