#include "runtime/tokenizer/utf8.h"

namespace dsv4::utf8 {
namespace {

// The well-formed sequences (Unicode table 3-7) by lead byte: total length and the allowed range
// of the second byte; later bytes are always 80..BF.
struct Lead {
  uint8_t length;  // 0: the byte cannot start a character
  uint8_t lo, hi;  // range of the second byte
};

Lead LeadOf(uint8_t b) {
  if (b < 0x80) return {1, 0, 0};
  if (b < 0xC2) return {0, 0, 0};
  if (b < 0xE0) return {2, 0x80, 0xBF};
  if (b == 0xE0) return {3, 0xA0, 0xBF};
  if (b == 0xED) return {3, 0x80, 0x9F};
  if (b < 0xF0) return {3, 0x80, 0xBF};
  if (b == 0xF0) return {4, 0x90, 0xBF};
  if (b < 0xF4) return {4, 0x80, 0xBF};
  if (b == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

}  // namespace

Step ScanChar(std::string_view s) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  const Lead lead = LeadOf(p[0]);
  if (lead.length == 1) return {Scan::kValid, 1};
  if (lead.length == 0) return {Scan::kInvalid, 1};
  // After this loop, `got` bytes (lead included) form a well-formed prefix.
  size_t got = 1;
  while (got < lead.length) {
    if (got == s.size()) return {Scan::kTruncated, got};
    const uint8_t lo = got == 1 ? lead.lo : 0x80;
    const uint8_t hi = got == 1 ? lead.hi : 0xBF;
    if (p[got] < lo || p[got] > hi) return {Scan::kInvalid, got};
    ++got;
  }
  return {Scan::kValid, got};
}

size_t FirstInvalid(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    if (static_cast<uint8_t>(s[i]) < 0x80) {
      ++i;
      continue;
    }
    const Step step = ScanChar(s.substr(i));
    if (step.scan != Scan::kValid) return i;
    i += step.length;
  }
  return std::string_view::npos;
}

bool IsValid(std::string_view s) { return FirstInvalid(s) == std::string_view::npos; }

std::string Sanitize(std::string_view s) {
  if (IsValid(s)) return std::string(s);
  std::string out;
  out.reserve(s.size() + 16);
  size_t i = 0;
  while (i < s.size()) {
    const Step step = ScanChar(s.substr(i));
    if (step.scan == Scan::kValid)
      out.append(s.substr(i, step.length));
    else
      out.append(kReplacement);
    i += step.length;
  }
  return out;
}

void AppendCodePoint(uint32_t cp, std::string& out) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

uint32_t DecodeValid(std::string_view s, size_t length) {
  const auto* p = reinterpret_cast<const uint8_t*>(s.data());
  switch (length) {
    case 1:
      return p[0];
    case 2:
      return ((p[0] & 0x1Fu) << 6) | (p[1] & 0x3Fu);
    case 3:
      return ((p[0] & 0x0Fu) << 12) | ((p[1] & 0x3Fu) << 6) | (p[2] & 0x3Fu);
    default:
      return ((p[0] & 0x07u) << 18) | ((p[1] & 0x3Fu) << 12) | ((p[2] & 0x3Fu) << 6) | (p[3] & 0x3Fu);
  }
}

}  // namespace dsv4::utf8
