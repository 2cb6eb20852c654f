// The tokenizer the builtin models use, loaded once for a fuzz target: a missing tokenizer.json
// ends the run with a message naming the target and how to get the file, so a fuzzing session never
// reports a setup problem as a finding.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

#include "runtime/tokenizer/tokenizer.h"

namespace dsv4::fuzz {

inline const Tokenizer* BuiltinTokenizer(const char* target) {
  auto path = FindTokenizerJson("builtin:v4-tiny");
  if (!path.ok()) {
    std::fprintf(stderr, "%s: %s (launch/setup.sh installs it; or set DSV4_TOKENIZER)\n", target,
                 std::string(path.status().message()).c_str());
    std::exit(1);
  }
  auto tok = Tokenizer::Load(*path);
  if (!tok.ok()) {
    std::fprintf(stderr, "%s: %s\n", target, std::string(tok.status().message()).c_str());
    std::abort();
  }
  return tok->release();
}

}  // namespace dsv4::fuzz
