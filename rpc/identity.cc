#include "rpc/identity.h"

#include <fstream>
#include <iterator>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
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
    auto j = BuiltinConfigJson(model.substr(8));
    if (!j.ok()) return j.status();
    text = *j;
  } else {
    std::ifstream f(model + "/config.json", std::ios::binary);
    if (!f) return absl::NotFoundError(absl::StrCat(model, "/config.json: cannot open"));
    text.assign(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
  }
  Fnv f;
  f.Add(text.data(), text.size());
  f.Add("\n", 1);
  f.Add(settings.data(), settings.size());
  return f.Hex();
}

}  // namespace dsv4
