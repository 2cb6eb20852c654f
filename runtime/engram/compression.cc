#include "runtime/engram/compression.h"

#include <utf8proc.h>

#include <array>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "base/file.h"
#include "base/status.h"

namespace dsv4 {
namespace {

constexpr int32_t kSentinel = 0xE000;  // protects a text that is exactly one space from Strip
constexpr int64_t kMaxVocab = int64_t{1} << 26;

// GPT-2's byte alphabet: printable Latin-1 bytes stand for themselves, the other 68 bytes take
// code points 256, 257, ... in byte order. Index: code point; value: byte, or -1.
struct ByteAlphabet {
  std::array<int16_t, 512> byte_of{};
  ByteAlphabet() {
    byte_of.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      byte_of[printable ? b : next++] = static_cast<int16_t>(b);
    }
  }
};

// Code points of valid UTF-8 text (the caller guarantees validity).
std::vector<int32_t> CodePoints(const std::string& s) {
  std::vector<int32_t> out;
  const auto* p = reinterpret_cast<const utf8proc_uint8_t*>(s.data());
  utf8proc_ssize_t left = static_cast<utf8proc_ssize_t>(s.size());
  while (left > 0) {
    utf8proc_int32_t cp;
    const utf8proc_ssize_t n = utf8proc_iterate(p, left, &cp);
    DSV4_CHECK(n > 0, "invalid UTF-8 reached CodePoints");
    out.push_back(cp);
    p += n, left -= n;
  }
  return out;
}

std::string Utf8(const std::vector<int32_t>& cps) {
  std::string out;
  utf8proc_uint8_t buf[4];
  for (int32_t cp : cps) out.append(reinterpret_cast<char*>(buf), utf8proc_encode_char(cp, buf));
  return out;
}

// Well-formed UTF-8 exactly as Rust's from_utf8 accepts it (no overlongs, surrogates or code
// points above U+10FFFF).
bool IsValidUtf8(const std::string& s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  auto cont = [&](size_t i, unsigned lo = 0x80, unsigned hi = 0xBF) { return i < n && p[i] >= lo && p[i] <= hi; };
  for (size_t i = 0; i < n;) {
    const unsigned c = p[i];
    if (c < 0x80) {
      i += 1;
    } else if (c >= 0xC2 && c <= 0xDF) {
      if (!cont(i + 1)) return false;
      i += 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      const unsigned lo = c == 0xE0 ? 0xA0 : 0x80, hi = c == 0xED ? 0x9F : 0xBF;
      if (!cont(i + 1, lo, hi) || !cont(i + 2)) return false;
      i += 3;
    } else if (c >= 0xF0 && c <= 0xF4) {
      const unsigned lo = c == 0xF0 ? 0x90 : 0x80, hi = c == 0xF4 ? 0x8F : 0xBF;
      if (!cont(i + 1, lo, hi) || !cont(i + 2) || !cont(i + 3)) return false;
      i += 4;
    } else {
      return false;
    }
  }
  return true;
}

// from_utf8_lossy(bytes) contains U+FFFD exactly when the bytes are not valid UTF-8 or encode a
// literal U+FFFD; otherwise it is the bytes unchanged.
bool LossyDecodeHasReplacement(const std::string& bytes) {
  return !IsValidUtf8(bytes) || bytes.find("\xEF\xBF\xBD") != std::string::npos;
}

std::string Utf8procMap(const std::string& s, int options) {
  utf8proc_uint8_t* out = nullptr;
  const utf8proc_ssize_t n = utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(s.data()),
                                          static_cast<utf8proc_ssize_t>(s.size()), &out,
                                          static_cast<utf8proc_option_t>(options));
  DSV4_CHECK(n >= 0, "utf8proc_map failed: ", utf8proc_errmsg(n));
  std::string result(reinterpret_cast<char*>(out), n);
  std::free(out);
  return result;
}

bool IsMark(int32_t cp) {
  const utf8proc_category_t c = utf8proc_category(cp);
  return c == UTF8PROC_CATEGORY_MN || c == UTF8PROC_CATEGORY_MC || c == UTF8PROC_CATEGORY_ME;
}

// Unicode White_Space (Rust's char::is_whitespace): the Zs/Zl/Zp separators plus the controls
// U+0009..U+000D and U+0085. U+001C..U+001F are not White_Space.
bool IsWhiteSpace(int32_t cp) {
  if ((cp >= 0x09 && cp <= 0x0D) || cp == 0x85) return true;
  const utf8proc_category_t c = utf8proc_category(cp);
  return c == UTF8PROC_CATEGORY_ZS || c == UTF8PROC_CATEGORY_ZL || c == UTF8PROC_CATEGORY_ZP;
}

// Lowercases one code point into `out` as Rust's char::to_lowercase: the simple mapping, except
// U+0130 whose full lowercase is "i" + U+0307 (the only unconditional multi-character lowercase).
void AppendLower(int32_t cp, std::vector<int32_t>& out) {
  if (cp == 0x130) {
    out.push_back('i');
    out.push_back(0x307);
    return;
  }
  out.push_back(utf8proc_tolower(cp));
}

// The normalizer sequence of the reference, on valid UTF-8 text.
std::string NormalizeForKey(const std::string& text) {
  const std::string nfkc = Utf8procMap(text, UTF8PROC_STABLE | UTF8PROC_COMPOSE | UTF8PROC_COMPAT);
  const std::string nfd = Utf8procMap(nfkc, UTF8PROC_STABLE | UTF8PROC_DECOMPOSE);
  std::vector<int32_t> lowered;
  for (int32_t cp : CodePoints(nfd))
    if (!IsMark(cp)) AppendLower(cp, lowered);
  // [ \t\r\n]+ -> " "
  std::vector<int32_t> collapsed;
  for (int32_t cp : lowered) {
    const bool ws = cp == ' ' || cp == '\t' || cp == '\r' || cp == '\n';
    if (!ws) {
      collapsed.push_back(cp);
    } else if (collapsed.empty() || collapsed.back() != ' ') {
      collapsed.push_back(' ');
    }
  }
  if (collapsed.size() == 1 && collapsed[0] == ' ') collapsed[0] = kSentinel;
  size_t begin = 0, end = collapsed.size();
  while (begin < end && IsWhiteSpace(collapsed[begin])) ++begin;
  while (end > begin && IsWhiteSpace(collapsed[end - 1])) --end;
  std::vector<int32_t> stripped(collapsed.begin() + begin, collapsed.begin() + end);
  for (int32_t& cp : stripped)
    if (cp == kSentinel) cp = ' ';
  return Utf8(stripped);
}

}  // namespace

std::string ByteLevelDecode(const std::string& token) {
  static const ByteAlphabet alphabet;
  std::string bytes;
  for (int32_t cp : CodePoints(token)) {
    if (cp < 0 || cp >= static_cast<int32_t>(alphabet.byte_of.size()) || alphabet.byte_of[cp] < 0) return token;
    bytes.push_back(static_cast<char>(alphabet.byte_of[cp]));
  }
  return bytes;
}

std::string EngramCompressionKey(const std::string& token) {
  const std::string bytes = ByteLevelDecode(token);
  if (LossyDecodeHasReplacement(bytes)) return token;
  std::string key = NormalizeForKey(bytes);
  return key.empty() ? bytes : key;
}

TokenCompression BuildTokenCompression(const std::vector<std::string>& vocab) {
  TokenCompression out;
  out.map.resize(vocab.size());
  std::unordered_map<std::string, int32_t> ids;
  for (size_t t = 0; t < vocab.size(); ++t) {
    auto [it, inserted] = ids.try_emplace(EngramCompressionKey(vocab[t]), static_cast<int32_t>(ids.size()));
    out.map[t] = it->second;
  }
  out.num_keys = static_cast<int64_t>(ids.size());
  return out;
}

absl::StatusOr<std::vector<std::string>> ReadTokenizerVocab(const std::string& json_text, const std::string& source) {
  using nlohmann::json;
  const json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  auto model = j.find("model");
  if (model == j.end() || !model->is_object() || !model->contains("vocab") || !(*model)["vocab"].is_object())
    return absl::InvalidArgumentError(absl::StrCat(source, ": field 'model.vocab' is missing or not an object"));
  std::vector<std::string> vocab;
  std::vector<bool> present, from_added;
  auto put = [&](const std::string& token, const json& id, bool added) -> absl::Status {
    if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= kMaxVocab)
      return absl::InvalidArgumentError(absl::StrCat(source, ": token '", token, "' has id ", id.dump(),
                                                     ", expected an integer in [0, ", kMaxVocab, ")"));
    const size_t i = static_cast<size_t>(id.get<int64_t>());
    if (i >= vocab.size()) vocab.resize(i + 1), present.resize(i + 1), from_added.resize(i + 1);
    if (present[i] && !added && !from_added[i])
      return absl::InvalidArgumentError(absl::StrCat(source, ": id ", i, " is given to both '", vocab[i], "' and '",
                                                     token, "' in model.vocab"));
    if (added || !from_added[i]) vocab[i] = token, from_added[i] = added;
    present[i] = true;
    return absl::OkStatus();
  };
  for (const auto& [token, id] : (*model)["vocab"].items()) DSV4_RETURN_IF_ERROR(put(token, id, false));
  // Added tokens take precedence over model.vocab when ids coincide (as the Rust decoder looks them up first).
  if (auto added = j.find("added_tokens"); added != j.end() && added->is_array()) {
    for (const json& a : *added) {
      if (!a.is_object() || !a.contains("content") || !a["content"].is_string() || !a.contains("id"))
        return absl::InvalidArgumentError(absl::StrCat(source, ": an entry of 'added_tokens' lacks content or id"));
      DSV4_RETURN_IF_ERROR(put(a["content"].get<std::string>(), a["id"], true));
    }
  }
  for (size_t i = 0; i < vocab.size(); ++i)
    if (!present[i])
      return absl::InvalidArgumentError(absl::StrCat(source, ": token id ", i, " has no token (ids must be 0..",
                                                     vocab.size() - 1, " without gaps)"));
  if (vocab.empty()) return absl::InvalidArgumentError(absl::StrCat(source, ": the vocabulary is empty"));
  return vocab;
}

absl::StatusOr<TokenCompression> LoadTokenCompression(const std::string& tokenizer_json_path) {
  DSV4_ASSIGN_OR_RETURN(const std::string text, ReadFile(tokenizer_json_path), "tokenizer file");
  DSV4_ASSIGN_OR_RETURN(std::vector<std::string> vocab, ReadTokenizerVocab(text, tokenizer_json_path));
  return BuildTokenCompression(vocab);
}

}  // namespace dsv4
