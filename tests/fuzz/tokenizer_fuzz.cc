// The DeepSeek tokenizer (the one builtin models use) on arbitrary bytes. Its contract
// (runtime/tokenizer/tokenizer.h): Decode(Encode(s)) == s for valid UTF-8 and == utf8::Sanitize(s)
// otherwise, ids always in the vocabulary, and the streaming decoder agrees with Decode.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <string>

#include "runtime/tokenizer/tokenizer.h"
#include "runtime/tokenizer/utf8.h"
#include "tests/fuzz/builtin_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const dsv4::Tokenizer* tok = dsv4::fuzz::BuiltinTokenizer("fuzz_tokenizer");
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const std::vector<int32_t> ids = tok->Encode(text, /*allow_special=*/false);
  for (int32_t id : ids)
    if (id < 0 || id >= tok->vocab_size()) std::abort();
  const std::string back = tok->Decode(ids);
  if (back != dsv4::utf8::Sanitize(text)) std::abort();
  dsv4::Tokenizer::StreamDecoder stream(*tok);
  std::string streamed;
  for (int32_t id : ids) streamed += stream.Push(id);
  streamed += stream.Flush();
  if (streamed != back) std::abort();
  (void)tok->Encode(text, /*allow_special=*/true);
  return 0;
}
