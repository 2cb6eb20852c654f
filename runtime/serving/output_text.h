// The text of one request's output as it streams: detokenizes token by token, finds stop strings
// (also when they span tokens), and releases only text that can no longer turn out to be the start
// of a stop string. Released text is always whole UTF-8 characters (row TK-05).
//
// Not thread-safe: one per request, used by the engine thread.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "runtime/tokenizer/tokenizer.h"

namespace dsv4 {

class OutputText {
 public:
  // `tokenizer` may be null (no text); it must outlive this object. `stop` strings are non-empty.
  OutputText(const Tokenizer* tokenizer, bool skip_special, std::vector<std::string> stop);

  struct Delta {
    std::string text;      // released by this token
    bool stopped = false;  // a stop string completed: the request ends; its text is not released
    std::string matched;   // that stop string
  };
  Delta Push(int32_t token);
  // At the end of a request that did not stop on a stop string: everything still held back.
  std::string Finish();

 private:
  // Releases text up to `end` (a character boundary of text_).
  std::string Release(size_t end);

  std::unique_ptr<Tokenizer::StreamDecoder> decoder_;  // null without a tokenizer
  std::vector<std::string> stop_;
  size_t max_stop_ = 0;
  std::string text_;     // all complete text decoded so far
  size_t released_ = 0;  // bytes of text_ already released
};

}  // namespace dsv4
