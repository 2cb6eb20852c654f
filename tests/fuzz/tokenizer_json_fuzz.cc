// tokenizer.json (and, after a 0 byte, tokenizer_config.json): loading any bytes ends in a status;
// a tokenizer that loads encodes and decodes arbitrary text without crashing, and every id it
// produces is in its vocabulary.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "runtime/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view all(reinterpret_cast<const char*>(data), size);
  const size_t nul = all.find('\0');
  const std::string_view json = all.substr(0, nul);
  const std::string_view config = nul == std::string_view::npos ? std::string_view() : all.substr(nul + 1);
  auto tok = dsv4::Tokenizer::FromJson(json, "fuzz", config);
  if (!tok.ok()) return 0;
  for (const std::string_view text : {std::string_view("hello world 123 日本語 \xff"), config}) {
    for (bool special : {false, true}) {
      const std::vector<int32_t> ids = (*tok)->Encode(text, special);
      for (int32_t id : ids)
        if (id < 0 || id >= (*tok)->vocab_size()) std::abort();
      (void)(*tok)->Decode(ids);
    }
  }
  return 0;
}
