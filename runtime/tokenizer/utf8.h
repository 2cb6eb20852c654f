// UTF-8 helpers for the tokenizer: one scanning rule shared by input cleaning, decoding and
// streaming, so the three can never disagree.
//
// The rule for ill-formed input is Unicode's "maximal subpart" practice (Unicode 15, section 3.9,
// U+FFFD substitution), which is also what Rust's String::from_utf8_lossy and the WHATWG
// TextDecoder do: each maximal prefix of a well-formed sequence that cannot be completed, and each
// byte that cannot start one, becomes one U+FFFD.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace dsv4::utf8 {

// The replacement character U+FFFD in UTF-8.
inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";

enum class Scan {
  kValid,      // a whole well-formed character of `length` bytes
  kInvalid,    // `length` bytes (>= 1) that form one maximal ill-formed subpart
  kTruncated,  // the `length` bytes left are a well-formed prefix cut off by the end of input
};

struct Step {
  Scan scan;
  size_t length;
};

// Scans the character starting at s[0]. Requires !s.empty().
Step ScanChar(std::string_view s);

// True when every byte of `s` belongs to a well-formed character.
bool IsValid(std::string_view s);
// The offset of the first byte that does not, or npos when `s` is valid.
size_t FirstInvalid(std::string_view s);

// `s` with each ill-formed subpart (truncated tails included) replaced by U+FFFD.
std::string Sanitize(std::string_view s);

// Appends code point `cp` (< 0x110000, not a surrogate) to `out`.
void AppendCodePoint(uint32_t cp, std::string& out);

// Decodes the well-formed character at s[0] (as reported by ScanChar), returning its code point.
uint32_t DecodeValid(std::string_view s, size_t length);

}  // namespace dsv4::utf8
