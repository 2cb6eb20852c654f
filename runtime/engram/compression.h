// Engram's tokenizer compression (MODEL.md section 2.7): token ids whose text normalizes alike
// share one compressed id, so " The", "the" and "THE" hash as the same n-gram.
//
// For each token id in order: decode the single token with the byte-level decoder and Rust's
// String::from_utf8_lossy. If the text contains U+FFFD the key is the raw token string. Otherwise
// the key is the text after NFKC -> NFD -> drop General_Category M* -> per-character lowercase ->
// [ \t\r\n]+ to " " -> (a text that is exactly " " is kept) -> strip White_Space -> U+E000 to " ",
// or the text itself when that comes out empty. Keys are numbered in first-seen order.
// (golden/engram/README.md spells out each step; compression_map.bin checks the whole vocabulary.)
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv4 {

struct TokenCompression {
  std::vector<int32_t> map;  // [num tokens]: token id -> compressed id
  int64_t num_keys = 0;      // the compressed vocabulary size
};

// The raw token strings of a tokenizer.json (model.vocab overridden by added_tokens), indexed by id.
// Every id in [0, max id] must have a token. `source` names the file in errors.
absl::StatusOr<std::vector<std::string>> ReadTokenizerVocab(const std::string& json_text, const std::string& source);

// GPT-2 byte-level decoding of one token: each character maps back to its byte; a token with any
// character outside the byte alphabet passes through as its own UTF-8 bytes (as the Rust decoder).
std::string ByteLevelDecode(const std::string& token);

// The compression key of one raw token string (the rule above).
std::string EngramCompressionKey(const std::string& token);

// The map over a whole vocabulary, and from tokenizer.json text.
TokenCompression BuildTokenCompression(const std::vector<std::string>& vocab);
absl::StatusOr<TokenCompression> LoadTokenCompression(const std::string& tokenizer_json_path);

}  // namespace dsv4
