#include "runtime/npy.h"

#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "base/file.h"

namespace dsv4 {

absl::Status WriteNpyF32(const std::string& path, const std::vector<int64_t>& shape, const float* data) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  // A Python tuple literal: "(a, b)", or "(a,)" for one dimension.
  std::string dims = absl::StrJoin(shape, ", ") + (shape.size() == 1 ? "," : "");
  std::string header = absl::StrCat("{'descr': '<f4', 'fortran_order': False, 'shape': (", dims, "), }");
  const size_t unpadded = 10 + header.size() + 1;
  header.append((64 - unpadded % 64) % 64, ' ');
  header.push_back('\n');
  const uint16_t hlen = static_cast<uint16_t>(header.size());
  std::string bytes;
  bytes.reserve(10 + header.size() + n * sizeof(float));
  bytes.append("\x93NUMPY\x01\x00", 8);
  bytes.append(reinterpret_cast<const char*>(&hlen), 2);
  bytes.append(header);
  bytes.append(reinterpret_cast<const char*>(data), n * sizeof(float));
  // A failed write leaves the file that was there (or none), never a truncated array.
  return WriteFileAtomic(path, bytes);
}

absl::StatusOr<NpyF32> ReadNpyF32(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open ", path));
  char magic[10];
  in.read(magic, 10);
  if (!in || std::memcmp(magic, "\x93NUMPY", 6) != 0 || magic[6] != 1)
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a version-1 .npy file"));
  uint16_t hlen;
  std::memcpy(&hlen, magic + 8, 2);
  std::string header(hlen, '\0');
  in.read(header.data(), hlen);
  if (header.find("'<f4'") == std::string::npos || header.find("'fortran_order': False") == std::string::npos)
    return absl::InvalidArgumentError(absl::StrCat(path, ": expected little-endian float32, C order"));
  const size_t a = header.find("'shape': ("), b = header.find(')', a);
  if (a == std::string::npos || b == std::string::npos) return absl::InvalidArgumentError(path + ": no shape");
  NpyF32 out;
  int64_t n = 1;
  for (absl::string_view part : absl::StrSplit(header.substr(a + 10, b - a - 10), ',', absl::SkipWhitespace())) {
    int64_t d;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(part), &d) || d < 0)
      return absl::InvalidArgumentError(path + ": bad shape");
    out.shape.push_back(d);
    n *= d;
  }
  out.data.resize(n);
  in.read(reinterpret_cast<char*>(out.data.data()), n * sizeof(float));
  if (!in) return absl::DataLossError(absl::StrCat(path, ": truncated data"));
  return out;
}

}  // namespace dsv4
