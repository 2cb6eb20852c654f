#include "rpc/identity.h"

#include <fstream>
#include <iterator>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/file.h"
#include "base/status.h"
#include "runtime/builtin.h"

#ifndef DSV4_VERSION
#define DSV4_VERSION "unknown"
#endif

namespace dsv4 {
namespace {

struct Fnv {
  uint64_t h = 0xcbf29ce484222325ull;
  void Add(const char* p, size_t n) {
    for (size_t i = 0; i < n; ++i) h = (h ^ static_cast<unsigned char>(p[i])) * 0x100000001b3ull;
  }
  std::string Hex() const { return absl::StrFormat("%016x", h); }
};

}  // namespace

const std::string& BuildId() {
  static const std::string id = [] {
    Fnv f;
    std::ifstream exe("/proc/self/exe", std::ios::binary);
    char buf[1 << 16];
    while (exe.read(buf, sizeof(buf)) || exe.gcount() > 0) f.Add(buf, static_cast<size_t>(exe.gcount()));
    return absl::StrCat(DSV4_VERSION, "-", f.Hex());
  }();
  return id;
}

absl::StatusOr<std::string> ConfigDigest(const std::string& model, const std::string& settings) {
  std::string text;
  if (absl::StartsWith(model, "builtin:")) {
    DSV4_ASSIGN_OR_RETURN(text, BuiltinConfigJson(model.substr(8)));
  } else {
    DSV4_ASSIGN_OR_RETURN(text, ReadFile(model + "/config.json", int64_t{64} << 20));
  }
  Fnv f;
  f.Add(text.data(), text.size());
  f.Add("\n", 1);
  f.Add(settings.data(), settings.size());
  return f.Hex();
}

}  // namespace dsv4
