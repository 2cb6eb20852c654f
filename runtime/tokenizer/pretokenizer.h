// The pre-tokenizer stage of a Hugging Face tokenizer.json: regex splits (PCRE2, because the
// DeepSeek patterns need lookahead) followed by the byte-level stage. It cuts a text into the
// pieces that BPE then works on independently.
//
// Supported (anything else is rejected at load time): `Sequence` of `Split` (Regex or String
// pattern, every behavior, invert) and `ByteLevel` (use_regex true or false, add_prefix_space
// false). A tokenizer without a `ByteLevel` step is rejected too: the model stage assumes bytes.
#pragma once

#include <cstddef>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv4 {

// A byte range [begin, end) of some text.
struct TextSpan {
  size_t begin = 0;
  size_t end = 0;
};

// A compiled PCRE2 pattern, UTF and Unicode-property mode. Immutable after Compile, so one object
// may be matched from many threads at once.
class Regex {
 public:
  // `pattern` is in the syntax tokenizer.json uses (Oniguruma's, which PCRE2 accepts for the
  // constructs these files use).
  static absl::StatusOr<std::unique_ptr<Regex>> Compile(std::string_view pattern);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  // Appends every match in `subject`, left to right and non-overlapping, as spans relative to
  // `subject`. Empty matches are skipped (the search then moves on one character). `subject` must
  // be valid UTF-8. A matching failure (PCRE2 resource limits) ends the search early.
  void FindAll(std::string_view subject, std::vector<TextSpan>& matches) const;

 private:
  struct Impl;
  explicit Regex(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

enum class SplitBehavior { kRemoved, kIsolated, kMergedWithPrevious, kMergedWithNext, kContiguous };

class PreTokenizer {
 public:
  // Builds the pipeline from tokenizer.json's "pre_tokenizer" value.
  static absl::StatusOr<std::unique_ptr<PreTokenizer>> FromJson(const nlohmann::json& j);

  // Appends the pieces of `text` (valid UTF-8) in order, as spans relative to `text`; every piece
  // is non-empty. Thread-safe.
  void Split(std::string_view text, std::vector<TextSpan>& pieces) const;

 private:
  struct Step {
    std::unique_ptr<Regex> regex;
    SplitBehavior behavior = SplitBehavior::kIsolated;
    bool invert = false;
  };
  absl::Status AddStep(const nlohmann::json& j, bool& saw_byte_level);
  void ApplyStep(const Step& step, std::string_view text, const std::vector<TextSpan>& in, std::vector<TextSpan>& out,
                 std::vector<TextSpan>& scratch) const;

  std::vector<Step> steps_;
};

}  // namespace dsv4
