#include "runtime/tokenizer/pretokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <cctype>
#include <nlohmann/json.hpp>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "runtime/tokenizer/utf8.h"

namespace dsv4 {
namespace {

// The split pattern of `ByteLevel` with use_regex (the GPT-2 pattern).
constexpr char kByteLevelPattern[] = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

// Oniguruma's \s (what tokenizer.json patterns mean by it) is Unicode's White_Space property.
// PCRE2's \s differs (10.42 also matches U+180E, which stopped being a space in Unicode 6.3), so
// patterns get this class spelled out instead.
constexpr char kWhiteSpace[] = R"(\t-\r \x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}\x{205F}\x{3000})";

// Hugging Face's Oniguruma has Unicode 16.0 tables; PCRE2 may have older ones (10.42: 14.0). The
// major categories only gained code points since 14.0, so \p{L} becomes "\p{L} or one of L's
// additions", which is Unicode 16.0's \p{L} for any PCRE2 with Unicode 14.0 to 16.0.
struct CategoryAdditions {
  char category;
  const char* members;  // PCRE2 class members
};
constexpr CategoryAdditions kAdditions[] =
#include "runtime/tokenizer/unicode_additions.inc"
    ;

const char* AdditionsOf(std::string_view name) {
  for (const auto& a : kAdditions)
    if (name.size() == 1 && name[0] == a.category) return a.members;
  return nullptr;
}

// Rewrites \p{X} / \pX / \P{X} at pattern[i] (the 'p' or 'P') when X is a major category with
// additions; returns false (nothing consumed) for other properties.
absl::StatusOr<bool> TranslateProperty(std::string_view pattern, size_t& i, bool in_class, std::string& out) {
  const bool negated = pattern[i] == 'P';
  size_t end = i + 1;
  std::string_view name;
  if (end < pattern.size() && pattern[end] == '{') {
    const size_t close = pattern.find('}', end);
    if (close == std::string_view::npos) return false;
    name = pattern.substr(end + 1, close - end - 1);
    end = close + 1;
  } else if (end < pattern.size()) {
    name = pattern.substr(end, 1);
    end += 1;
  }
  const char* additions = AdditionsOf(name);
  if (additions == nullptr) return false;
  const std::string members = absl::StrCat("\\p{", std::string(name), "}", additions);
  if (in_class && negated)
    return absl::UnimplementedError(absl::StrCat("regex '", std::string(pattern), "': \\P{..} in a class"));
  out += in_class ? members : absl::StrCat(negated ? "[^" : "[", members, "]");
  i = end - 1;
  return true;
}

// Rewrites an Oniguruma pattern for PCRE2: \s and \S become explicit White_Space classes and major
// categories get their Unicode 16.0 additions. Fails on \S or \P{..} inside a character class,
// which have no class-member spelling.
absl::StatusOr<std::string> TranslatePattern(std::string_view pattern) {
  std::string out;
  bool in_class = false;
  for (size_t i = 0; i < pattern.size(); ++i) {
    const char c = pattern[i];
    if (c == '\\' && i + 1 < pattern.size()) {
      const char e = pattern[++i];
      if (e == 'p' || e == 'P') {
        DSV4_ASSIGN_OR_RETURN(const bool done, TranslateProperty(pattern, i, in_class, out));
        if (done) continue;
      }
      if (e == 's') {
        out += in_class ? std::string(kWhiteSpace) : absl::StrCat("[", kWhiteSpace, "]");
      } else if (e == 'S') {
        if (in_class)
          return absl::UnimplementedError(absl::StrCat("regex '", std::string(pattern), "': \\S in a class"));
        out += absl::StrCat("[^", kWhiteSpace, "]");
      } else {
        out.push_back(c);
        out.push_back(e);
      }
      continue;
    }
    if (!in_class && c == '[') {
      in_class = true;
      out.push_back(c);
      // A ']' right after '[' or '[^' is a literal member, not the end of the class.
      if (i + 1 < pattern.size() && pattern[i + 1] == '^') out.push_back(pattern[++i]);
      if (i + 1 < pattern.size() && pattern[i + 1] == ']') out.push_back(pattern[++i]);
      continue;
    }
    if (in_class && c == '[' && i + 1 < pattern.size() && pattern[i + 1] == ':') {
      const size_t close = pattern.find(":]", i + 2);  // a POSIX class such as [:alpha:]
      if (close != std::string_view::npos) {
        out.append(pattern.substr(i, close + 2 - i));
        i = close + 1;
        continue;
      }
    }
    if (in_class && c == ']') in_class = false;
    out.push_back(c);
  }
  return out;
}

// A regex that matches `literal` exactly: every ASCII punctuation byte is escaped.
std::string EscapeLiteral(std::string_view literal) {
  std::string out;
  for (char c : literal) {
    const auto u = static_cast<unsigned char>(c);
    if (u < 0x80 && !std::isalnum(u)) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

absl::StatusOr<SplitBehavior> ParseBehavior(const std::string& name) {
  if (name == "Removed") return SplitBehavior::kRemoved;
  if (name == "Isolated") return SplitBehavior::kIsolated;
  if (name == "MergedWithPrevious") return SplitBehavior::kMergedWithPrevious;
  if (name == "MergedWithNext") return SplitBehavior::kMergedWithNext;
  if (name == "Contiguous") return SplitBehavior::kContiguous;
  return absl::InvalidArgumentError(absl::StrCat("pre_tokenizer: unknown Split behavior '", name, "'"));
}

struct Part {
  TextSpan span;
  bool is_match;
};

// Applies a split behavior to the alternating match/non-match parts of one piece, following the
// Hugging Face semantics; appends the resulting non-empty spans to `out`.
void Combine(SplitBehavior behavior, const std::vector<Part>& parts, std::vector<TextSpan>& out) {
  std::vector<TextSpan> acc;
  bool previous_match = false;
  switch (behavior) {
    case SplitBehavior::kRemoved:
      for (const Part& p : parts)
        if (!p.is_match) acc.push_back(p.span);
      break;
    case SplitBehavior::kIsolated:
      for (const Part& p : parts) acc.push_back(p.span);
      break;
    case SplitBehavior::kMergedWithPrevious:
      for (const Part& p : parts) {
        if (p.is_match && !previous_match && !acc.empty())
          acc.back().end = p.span.end;
        else
          acc.push_back(p.span);
        previous_match = p.is_match;
      }
      break;
    case SplitBehavior::kMergedWithNext:
      // Mirror image of the above: walk backwards, extending the following part.
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->is_match && !previous_match && !acc.empty())
          acc.back().begin = it->span.begin;
        else
          acc.push_back(it->span);
        previous_match = it->is_match;
      }
      std::reverse(acc.begin(), acc.end());
      break;
    case SplitBehavior::kContiguous:
      for (const Part& p : parts) {
        if (p.is_match == previous_match && !acc.empty())
          acc.back().end = p.span.end;
        else
          acc.push_back(p.span);
        previous_match = p.is_match;
      }
      break;
  }
  for (const TextSpan& s : acc)
    if (s.end > s.begin) out.push_back(s);
}

}  // namespace

// ---- Regex ------------------------------------------------------------------------------------

struct Regex::Impl {
  pcre2_code* code = nullptr;
  bool jit = false;
  ~Impl() { pcre2_code_free(code); }
};

Regex::Regex(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Regex::~Regex() = default;

absl::StatusOr<std::unique_ptr<Regex>> Regex::Compile(std::string_view onig_pattern) {
  DSV4_ASSIGN_OR_RETURN(const std::string pattern, TranslatePattern(onig_pattern));
  int error = 0;
  PCRE2_SIZE offset = 0;
  auto impl = std::make_unique<Impl>();
  impl->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(), PCRE2_UTF | PCRE2_UCP,
                             &error, &offset, nullptr);
  if (impl->code == nullptr) {
    PCRE2_UCHAR message[256];
    pcre2_get_error_message(error, message, sizeof(message));
    return absl::InvalidArgumentError(absl::StrCat("regex '", std::string(onig_pattern),
                                                   "' does not compile at offset ", offset, ": ",
                                                   reinterpret_cast<const char*>(message)));
  }
  impl->jit = pcre2_jit_compile(impl->code, PCRE2_JIT_COMPLETE) == 0;
  return std::unique_ptr<Regex>(new Regex(std::move(impl)));
}

void Regex::FindAll(std::string_view subject, std::vector<TextSpan>& matches) const {
  pcre2_match_data* md = pcre2_match_data_create(1, nullptr);
  const auto* s = reinterpret_cast<PCRE2_SPTR>(subject.data());
  size_t start = 0;
  while (start < subject.size()) {
    int rc =
        impl_->jit ? pcre2_jit_match(impl_->code, s, subject.size(), start, 0, md, nullptr) : PCRE2_ERROR_JIT_BADOPTION;
    // The interpreter is the fallback when JIT is unavailable or runs out of its stack.
    if (rc == PCRE2_ERROR_JIT_BADOPTION || rc == PCRE2_ERROR_JIT_STACKLIMIT)
      rc = pcre2_match(impl_->code, s, subject.size(), start, PCRE2_NO_UTF_CHECK, md, nullptr);
    if (rc < 0) break;  // no match, or a resource limit: the rest is unmatched text
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    if (ov[1] == ov[0]) {
      start = ov[1] + utf8::ScanChar(subject.substr(ov[1])).length;
      continue;
    }
    matches.push_back({ov[0], ov[1]});
    start = ov[1];
  }
  pcre2_match_data_free(md);
}

// ---- PreTokenizer -----------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<PreTokenizer>> PreTokenizer::FromJson(const nlohmann::json& j) {
  auto pt = std::unique_ptr<PreTokenizer>(new PreTokenizer());
  bool saw_byte_level = false;
  if (!j.is_object()) return absl::InvalidArgumentError("pre_tokenizer: expected an object");
  const std::string type = j.value("type", "");
  if (type == "Sequence") {
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array())
      return absl::InvalidArgumentError("pre_tokenizer: Sequence without a 'pretokenizers' list");
    for (const auto& step : j["pretokenizers"]) DSV4_RETURN_IF_ERROR(pt->AddStep(step, saw_byte_level));
  } else {
    DSV4_RETURN_IF_ERROR(pt->AddStep(j, saw_byte_level));
  }
  if (!saw_byte_level)
    return absl::UnimplementedError("pre_tokenizer: only byte-level tokenizers are supported (no ByteLevel step)");
  return pt;
}

absl::Status PreTokenizer::AddStep(const nlohmann::json& j, bool& saw_byte_level) {
  if (!j.is_object()) return absl::InvalidArgumentError("pre_tokenizer: a step is not an object");
  const std::string type = j.value("type", "");
  if (saw_byte_level) return absl::UnimplementedError(absl::StrCat("pre_tokenizer: step '", type, "' after ByteLevel"));
  Step step;
  if (type == "Split") {
    const auto& pattern = j.value("pattern", nlohmann::json::object());
    std::string regex;
    if (pattern.contains("Regex") && pattern["Regex"].is_string()) {
      regex = pattern["Regex"].get<std::string>();
    } else if (pattern.contains("String") && pattern["String"].is_string()) {
      regex = EscapeLiteral(pattern["String"].get<std::string>());
    } else {
      return absl::InvalidArgumentError("pre_tokenizer: Split needs a Regex or String pattern");
    }
    auto compiled = Regex::Compile(regex);
    if (!compiled.ok()) return absl::InvalidArgumentError(absl::StrCat("pre_tokenizer: ", compiled.status().message()));
    step.regex = std::move(*compiled);
    DSV4_ASSIGN_OR_RETURN(auto behavior, ParseBehavior(j.value("behavior", "")));
    step.behavior = behavior;
    step.invert = j.value("invert", false);
  } else if (type == "ByteLevel") {
    saw_byte_level = true;
    if (j.value("add_prefix_space", false))
      return absl::UnimplementedError("pre_tokenizer: ByteLevel with add_prefix_space is not supported");
    if (!j.value("use_regex", true)) return absl::OkStatus();
    DSV4_ASSIGN_OR_RETURN(auto compiled, Regex::Compile(kByteLevelPattern));
    step.regex = std::move(compiled);
  } else {
    return absl::UnimplementedError(absl::StrCat("pre_tokenizer: unsupported type '", type, "'"));
  }
  steps_.push_back(std::move(step));
  return absl::OkStatus();
}

void PreTokenizer::ApplyStep(const Step& step, std::string_view text, const std::vector<TextSpan>& in,
                             std::vector<TextSpan>& out, std::vector<TextSpan>& scratch) const {
  std::vector<Part> parts;
  for (const TextSpan& piece : in) {
    scratch.clear();
    step.regex->FindAll(text.substr(piece.begin, piece.end - piece.begin), scratch);
    // After this loop `parts` covers the piece exactly, alternating unmatched and matched text.
    parts.clear();
    size_t prev = piece.begin;
    for (const TextSpan& m : scratch) {
      const TextSpan abs{piece.begin + m.begin, piece.begin + m.end};
      if (abs.begin != prev) parts.push_back({{prev, abs.begin}, step.invert});
      parts.push_back({abs, !step.invert});
      prev = abs.end;
    }
    if (prev != piece.end) parts.push_back({{prev, piece.end}, step.invert});
    Combine(step.behavior, parts, out);
  }
}

void PreTokenizer::Split(std::string_view text, std::vector<TextSpan>& pieces) const {
  if (text.empty()) return;
  std::vector<TextSpan> current{{0, text.size()}}, next, scratch;
  for (const Step& step : steps_) {
    next.clear();
    ApplyStep(step, text, current, next, scratch);
    current.swap(next);
  }
  pieces.insert(pieces.end(), current.begin(), current.end());
}

}  // namespace dsv4
