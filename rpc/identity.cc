#include "rpc/identity.h"

#include <fstream>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "base/fnv.h"

#ifndef DSV4_VERSION
#define DSV4_VERSION "unknown"
#endif

namespace dsv4 {

const std::string& BuildId() {
  static const std::string id = [] {
    Fnv64 f;
    std::ifstream exe("/proc/self/exe", std::ios::binary);
    char buf[1 << 16];
    while (exe.read(buf, sizeof(buf)) || exe.gcount() > 0) f.Add(buf, static_cast<size_t>(exe.gcount()));
    return absl::StrCat(DSV4_VERSION, "-", f.Hex());
  }();
  return id;
}

}  // namespace dsv4
