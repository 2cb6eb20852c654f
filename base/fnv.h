// 64-bit FNV-1a, for fingerprints that ranks compare (build ids, model digests). Not for anything
// an adversary chooses to collide: it detects mistakes, not attacks.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/str_format.h"
#include "absl/strings/string_view.h"

namespace dsv4 {

struct Fnv64 {
  uint64_t h = 0xcbf29ce484222325ull;
  void Add(const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  }
  void Add(absl::string_view s) { Add(s.data(), s.size()); }
  // 16 lower-case hex digits.
  std::string Hex() const { return absl::StrFormat("%016x", h); }
};

}  // namespace dsv4
