// The chat format: OpenAI-style messages JSON, parsed and encoded in the DeepSeek-V4 format (with
// and without thinking). Any bytes end in a status; encoded ids are in the vocabulary.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "runtime/tokenizer/chat_format.h"
#include "runtime/tokenizer/tokenizer.h"

namespace {

const dsv4::Tokenizer* Load() {
  auto path = dsv4::FindTokenizerJson("builtin:v4-tiny");
  if (!path.ok()) {
    std::fprintf(stderr, "fuzz_chat: %s\n", std::string(path.status().message()).c_str());
    std::exit(1);
  }
  auto tok = dsv4::Tokenizer::Load(*path);
  if (!tok.ok()) std::abort();
  return tok->release();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const dsv4::Tokenizer* tok = Load();
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
