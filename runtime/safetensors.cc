#include "runtime/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <nlohmann/json.hpp>
#include <string_view>
#include <unordered_set>
#include <utility>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "base/fnv.h"
#include "base/status.h"

namespace dsv4 {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr uint64_t kLengthBytes = 8;  // the little-endian u64 header length in front of the JSON
constexpr int kMaxJsonDepth = 8;      // a valid header nests 3 deep; anything far deeper is an attack
constexpr uint64_t kMaxIndexBytes = 100'000'000;
constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr const char* kMetadataKey = "__metadata__";

struct DTypeEntry {
  const char* name;
  DType type;
  int bits;
};

constexpr DTypeEntry kDTypes[] = {
    {"BOOL", DType::kBOOL, 8},       {"U8", DType::kU8, 8},           {"I8", DType::kI8, 8},
    {"I16", DType::kI16, 16},        {"U16", DType::kU16, 16},        {"F16", DType::kF16, 16},
    {"BF16", DType::kBF16, 16},      {"I32", DType::kI32, 32},        {"U32", DType::kU32, 32},
    {"F32", DType::kF32, 32},        {"F64", DType::kF64, 64},        {"I64", DType::kI64, 64},
    {"U64", DType::kU64, 64},        {"F8_E4M3", DType::kF8_E4M3, 8}, {"F8_E5M2", DType::kF8_E5M2, 8},
    {"F8_E8M0", DType::kF8_E8M0, 8}, {"F4", DType::kF4, 4},
};

// Dtypes the safetensors format defines but this runtime does not handle.
constexpr const char* kUnsupportedDTypes[] = {"C64", "F6_E2M3", "F6_E3M2", "F8_E4M3FNUZ", "F8_E5M2FNUZ"};

const DTypeEntry* FindDType(std::string_view name) {
  for (const DTypeEntry& e : kDTypes) {
    if (name == e.name) return &e;
  }
  return nullptr;
}

bool IsUnsupportedDType(std::string_view name) {
  return std::find(std::begin(kUnsupportedDTypes), std::end(kUnsupportedDTypes), name) != std::end(kUnsupportedDTypes);
}

// ---- messages -----------------------------------------------------------------------------------

// A name from an untrusted file, safe to print: control bytes escaped, length bounded.
std::string Quote(std::string_view s) {
  constexpr size_t kMax = 200;
  std::string out = absl::StrCat("'", absl::CHexEscape(absl::string_view(s.data(), std::min(s.size(), kMax))), "'");
  if (s.size() > kMax) absl::StrAppend(&out, "... (", s.size(), " bytes)");
  return out;
}

// A JSON value for an error message, bounded in length.
std::string Brief(const json& v) {
  constexpr size_t kMax = 100;
  std::string s = v.dump(-1, ' ', true, json::error_handler_t::replace);
  if (s.size() > kMax) s = absl::StrCat(s.substr(0, kMax), "...");
  return s;
}

template <typename... Args>
absl::Status FileError(const std::string& path, const Args&... args) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": ", args...));
}

// Where an error was found: the file and the tensor.
struct Where {
  const std::string& path;
  const std::string& tensor;
};

template <typename... Args>
absl::Status TensorError(const Where& w, const Args&... args) {
  return FileError(w.path, "tensor ", Quote(w.tensor), ": ", args...);
}

std::string ShapeText(const std::vector<int64_t>& shape) { return absl::StrCat("[", absl::StrJoin(shape, ", "), "]"); }

// ---- sizes --------------------------------------------------------------------------------------

enum class SizeError { kNone, kOverflow, kMisaligned };

// Bytes of a tensor with non-negative dims; the element count must fit int64 and the bit count u64.
SizeError TensorBytes(DType dtype, const std::vector<int64_t>& shape, uint64_t* bytes) {
  uint64_t numel = 1;
  for (int64_t d : shape) {
    if (__builtin_mul_overflow(numel, static_cast<uint64_t>(d), &numel)) return SizeError::kOverflow;
  }
  if (numel > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) return SizeError::kOverflow;
  uint64_t bits = 0;
  if (__builtin_mul_overflow(numel, static_cast<uint64_t>(DTypeBits(dtype)), &bits)) return SizeError::kOverflow;
  if (bits % 8 != 0) return SizeError::kMisaligned;
  *bytes = bits / 8;
  return SizeError::kNone;
}

// ---- UTF-8 and JSON -----------------------------------------------------------------------------

// Strict UTF-8 (as Rust's str::from_utf8): no overlong forms, surrogates or code points past U+10FFFF.
bool IsValidUtf8(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<uint8_t>(s[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    uint32_t cp = 0, min = 0;
    if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return false;
    }
    if (s.size() - i < len) return false;
    for (size_t k = 1; k < len; ++k) {
      const auto cc = static_cast<uint8_t>(s[i + k]);
      if ((cc & 0xC0) != 0x80) return false;
      cp = (cp << 6) | (cc & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return false;
    i += len;
  }
  return true;
}

// A first, streaming pass over the JSON text: syntax (one value, trailing whitespace only), a JSON
// object at the top, bounded nesting, and no key twice in one object (nlohmann's DOM parser would
// silently keep the last one). Memory stays linear in the text.
class StrictJsonScanner {
 public:
  explicit StrictJsonScanner(const char* top_key_kind) : top_key_kind_(top_key_kind) {}

  bool null() { return Scalar("null"); }
  bool boolean(bool) { return Scalar("boolean"); }
  bool number_integer(json::number_integer_t) { return Scalar("number"); }
  bool number_unsigned(json::number_unsigned_t) { return Scalar("number"); }
  bool number_float(json::number_float_t, const json::string_t&) { return Scalar("number"); }
  bool string(json::string_t&) { return Scalar("string"); }
  bool binary(json::binary_t&) { return Scalar("binary"); }

  bool start_object(std::size_t) {
    if (!Enter()) return false;
    keys_.emplace_back();
    return true;
  }
  bool key(json::string_t& k) {
    if (!keys_.back().insert(k).second) {
      error_ = keys_.size() == 1 ? absl::StrCat("duplicate ", top_key_kind_, " ", Quote(k))
                                 : absl::StrCat("duplicate key ", Quote(k), " inside ", Quote(top_key_));
      return false;
    }
    if (keys_.size() == 1) top_key_ = k;
    return true;
  }
  bool end_object() {
    keys_.pop_back();
    --depth_;
    return true;
  }
  bool start_array(std::size_t) {
    if (depth_ == 0) return Fail("must be a JSON object, not an array");
    return Enter();
  }
  bool end_array() {
    --depth_;
    return true;
  }
  bool parse_error(std::size_t, const std::string&, const nlohmann::detail::exception& ex) {
    constexpr size_t kMax = 300;  // the message quotes the last token, which may be huge
    const std::string what = ex.what();
    error_ = absl::StrCat("invalid JSON: ", what.substr(0, kMax), what.size() > kMax ? "..." : "");
    return false;
  }

  const std::string& error() const { return error_; }

 private:
  bool Scalar(const char* kind) { return depth_ > 0 || Fail(absl::StrCat("must be a JSON object, not a ", kind)); }
  bool Enter() {
    if (++depth_ > kMaxJsonDepth) return Fail(absl::StrCat("JSON nested deeper than ", kMaxJsonDepth, " levels"));
    return true;
  }
  bool Fail(std::string msg) {
    error_ = std::move(msg);
    return false;
  }

  const char* top_key_kind_;
  int depth_ = 0;
  std::vector<std::unordered_set<std::string>> keys_;  // one set per open object
  std::string top_key_;                                // the current key of the top-level object
  std::string error_;
};

// Parses `text` (valid UTF-8) as one JSON object. `what` names the text in errors ("header");
// `top_key_kind` names the top-level keys ("tensor name").
absl::StatusOr<json> ParseStrictObject(std::string_view text, const std::string& path, const char* what,
                                       const char* top_key_kind) {
  const char* first = text.data();
  const char* last = text.data() + text.size();
  try {
    StrictJsonScanner scanner(top_key_kind);
    if (!json::sax_parse(first, last, &scanner) || !scanner.error().empty()) {
      return FileError(path, what, ": ", scanner.error().empty() ? "invalid JSON" : scanner.error());
    }
    json parsed = json::parse(first, last, nullptr, /*allow_exceptions=*/false);
    if (parsed.is_discarded() || !parsed.is_object()) return FileError(path, what, ": invalid JSON");
    return parsed;
  } catch (const std::exception& e) {  // only allocation failures can get here
    return absl::ResourceExhaustedError(absl::StrCat(path, ": ", what, ": ", e.what()));
  }
}

// ---- header entries -----------------------------------------------------------------------------

struct Entry {
  const std::string* name;  // key in the parsed header
  DType dtype = DType::kU8;
  std::vector<int64_t> shape;
  uint64_t begin = 0, end = 0;
  uint64_t nbytes = 0;
};

std::string OffsetsText(const Entry& e) { return absl::StrCat("data_offsets [", e.begin, ", ", e.end, "]"); }

absl::StatusOr<DType> ParseDType(const Where& w, const json& v) {
  if (!v.is_string()) return TensorError(w, "field 'dtype' must be a string, got ", Brief(v));
  const std::string& name = v.get_ref<const std::string&>();
  if (const DTypeEntry* e = FindDType(name)) return e->type;
  if (IsUnsupportedDType(name)) return TensorError(w, "unsupported dtype ", Quote(name), " (field 'dtype')");
  return TensorError(w, "unknown dtype ", Quote(name), " (field 'dtype')");
}

absl::StatusOr<std::vector<int64_t>> ParseShape(const Where& w, const json& v) {
  if (!v.is_array()) return TensorError(w, "field 'shape' must be an array of non-negative integers, got ", Brief(v));
  std::vector<int64_t> shape;
  shape.reserve(v.size());
  for (const json& d : v) {
    if (d.is_number_integer() && !d.is_number_unsigned()) {
      return TensorError(w, "field 'shape' ", Brief(v), " has a negative dimension");
    }
    if (!d.is_number_unsigned()) {
      return TensorError(w, "field 'shape' ", Brief(v), " must hold non-negative integers");
    }
    const uint64_t dim = d.get<uint64_t>();
    if (dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return TensorError(w, "field 'shape' ", Brief(v), " has a dimension past 2^63-1 (overflow)");
    }
    shape.push_back(static_cast<int64_t>(dim));
  }
  return shape;
}

absl::Status ParseOffsets(const Where& w, const json& v, Entry* e) {
  if (!v.is_array() || v.size() != 2 || !v[0].is_number_unsigned() || !v[1].is_number_unsigned()) {
    return TensorError(w, "field 'data_offsets' must be two non-negative integers [begin, end], got ", Brief(v));
  }
  e->begin = v[0].get<uint64_t>();
  e->end = v[1].get<uint64_t>();
  if (e->end < e->begin) return TensorError(w, OffsetsText(*e), " end before they begin (invalid offset)");
  return absl::OkStatus();
}

absl::Status CheckSize(const Where& w, Entry* e) {
  const std::string what = absl::StrCat("shape ", ShapeText(e->shape), " of ", DTypeName(e->dtype));
  switch (TensorBytes(e->dtype, e->shape, &e->nbytes)) {
    case SizeError::kOverflow:
      return TensorError(w, what, " is too large: its size overflows 64 bits (overflow)");
    case SizeError::kMisaligned:
      return TensorError(w, what, " is not a whole number of bytes (misaligned)");
    case SizeError::kNone:
      break;
  }
  if (e->nbytes != e->end - e->begin) {
    return TensorError(w, OffsetsText(*e), " give ", e->end - e->begin, " bytes but ", what, " needs ", e->nbytes);
  }
  return absl::OkStatus();
}

absl::StatusOr<Entry> ParseEntry(const std::string& path, const std::string& name, const json& v) {
  const Where w{path, name};
  if (!v.is_object()) return TensorError(w, "entry must be an object with dtype, shape and data_offsets");
  for (const auto& [key, unused] : v.get_ref<const json::object_t&>()) {
    if (key != "dtype" && key != "shape" && key != "data_offsets")
      return TensorError(w, "unexpected field ", Quote(key));
  }
  for (const char* field : {"dtype", "shape", "data_offsets"}) {
    if (!v.contains(field)) return TensorError(w, "missing field '", field, "'");
  }
  Entry e;
  e.name = &name;
  DSV4_ASSIGN_OR_RETURN(e.dtype, ParseDType(w, v["dtype"]));
  DSV4_ASSIGN_OR_RETURN(e.shape, ParseShape(w, v["shape"]));
  DSV4_RETURN_IF_ERROR(ParseOffsets(w, v["data_offsets"], &e));
  DSV4_RETURN_IF_ERROR(CheckSize(w, &e));
  return e;
}

absl::Status ParseMetadata(const std::string& path, const json& v, std::map<std::string, std::string>* out) {
  if (!v.is_object()) return FileError(path, "'__metadata__' must be an object of strings, got ", Brief(v));
  for (const auto& [key, value] : v.get_ref<const json::object_t&>()) {
    if (!value.is_string()) {
      return FileError(path, "'__metadata__' value for key ", Quote(key), " must be a string, got ", Brief(value));
    }
    (*out)[key] = value.get<std::string>();
  }
  return absl::OkStatus();
}

// Sorts the entries by offset and checks that they tile [0, end) with no gap or overlap, as the
// reference reader does (so a small file cannot expand into many large, overlapping tensors).
// Returns the end of the last tensor.
absl::StatusOr<uint64_t> CheckContiguous(const std::string& path, std::vector<Entry>* entries) {
  std::stable_sort(entries->begin(), entries->end(), [](const Entry& a, const Entry& b) {
    return std::pair(a.begin, a.end) < std::pair(b.begin, b.end);
  });
  uint64_t pos = 0;
  const Entry* prev = nullptr;
  for (const Entry& e : *entries) {
    const Where w{path, *e.name};
    if (prev == nullptr && e.begin != 0) {
      return TensorError(w, OffsetsText(e), " but the first tensor must start at 0 (invalid offset)");
    }
    if (e.begin < pos) {
      return TensorError(w, OffsetsText(e), " overlap tensor ", Quote(*prev->name), " ", OffsetsText(*prev),
                         " (invalid offset)");
    }
    if (e.begin > pos) {
      return TensorError(w, OffsetsText(e), " leave a gap of ", e.begin - pos, " bytes after tensor ",
                         Quote(*prev->name), " ", OffsetsText(*prev), " (invalid offset)");
    }
    pos = e.end;
    prev = &e;
  }
  return pos;
}

// The tensors must end exactly at the end of the file.
absl::Status CheckFileSize(const std::string& path, uint64_t header_len, uint64_t data_end, uint64_t file_size) {
  const uint64_t buffer = file_size - kLengthBytes - header_len;
  if (data_end > buffer) {
    // Offsets come from the file, so the expected size may not even fit 64 bits.
    const std::string expected = data_end <= std::numeric_limits<uint64_t>::max() - kLengthBytes - header_len
                                     ? absl::StrCat(data_end + kLengthBytes + header_len)
                                     : absl::StrCat("8 + ", header_len, " + ", data_end);
    return absl::DataLossError(absl::StrCat(path, ": file is truncated: the header needs ", data_end,
                                            " bytes of tensor data, so the file should be ", expected,
                                            " bytes, but it is ", file_size, " bytes (incomplete buffer)"));
  }
  if (data_end < buffer) {
    return FileError(path, "the data buffer holds ", buffer, " bytes but the tensors end at ", data_end, ": ",
                     buffer - data_end, " trailing bytes belong to no tensor (incomplete buffer)");
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> ReadHeaderLength(const std::string& path, const uint8_t* base, uint64_t size) {
  if (size < kLengthBytes) {
    return FileError(path, "file is ", size, " bytes, too short for the 8-byte header length (header too small)");
  }
  uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | base[i];
  if (n > SafetensorsFile::kMaxHeaderBytes) {
    return FileError(path, "header length ", n, " exceeds the limit of ", SafetensorsFile::kMaxHeaderBytes,
                     " bytes (header too large)");
  }
  uint64_t stop = 0;
  if (__builtin_add_overflow(n, kLengthBytes, &stop) || stop > size) {
    return FileError(path, "header length ", n, " runs past the end of the ", size,
                     "-byte file (invalid header length)");
  }
  return n;
}

// ---- mapping ------------------------------------------------------------------------------------

absl::Status ErrnoError(const std::string& path, const char* op, int err) {
  std::string msg = absl::StrCat(path, ": ", op, ": ", std::strerror(err));
  return err == ENOENT ? absl::NotFoundError(msg) : absl::FailedPreconditionError(msg);
}

struct Mapping {
  void* addr = nullptr;  // nullptr for files too short to hold a header (nothing to map)
  uint64_t size = 0;
};

absl::StatusOr<Mapping> MapFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(path, "cannot open", errno);
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError(path, "cannot stat", err);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return FileError(path, "not a regular file");
  }
  Mapping m;
  m.size = static_cast<uint64_t>(st.st_size);
  if (m.size >= kLengthBytes) {
    void* addr = ::mmap(nullptr, m.size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (addr == MAP_FAILED) {
      const int err = errno;
      ::close(fd);
      return ErrnoError(path, "cannot mmap", err);
    }
    m.addr = addr;
  }
  ::close(fd);
  return m;
}

// ---- checkpoints --------------------------------------------------------------------------------

using FileList = std::vector<std::unique_ptr<SafetensorsFile>>;
using TensorIndex = std::map<std::string, const TensorInfo*>;

absl::StatusOr<TensorIndex> BuildIndex(const FileList& files) {
  TensorIndex index;
  for (const auto& file : files) {
    for (const auto& [name, info] : file->tensors()) {
      auto [it, inserted] = index.emplace(name, &info);
      if (!inserted) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor ", Quote(name), " is in both ", it->second->file, " and ", file->path()));
      }
    }
  }
  return index;
}

// weight_map of an index: tensor name -> shard file name.
absl::StatusOr<std::map<std::string, std::string>> ReadIndex(const fs::path& index_path) {
  const std::string where = index_path.string();
  DSV4_ASSIGN_OR_RETURN(const std::string text, ReadFile(where, kMaxIndexBytes));
  if (!IsValidUtf8(text)) return FileError(where, "not valid UTF-8");
  DSV4_ASSIGN_OR_RETURN(const json index, ParseStrictObject(text, where, "index", "key"));
  auto it = index.find("weight_map");
  if (it == index.end() || !it->is_object()) return FileError(where, "field 'weight_map' must be an object");
  std::map<std::string, std::string> weight_map;
  for (const auto& [tensor, shard] : it->get_ref<const json::object_t&>()) {
    if (!shard.is_string()) {
      return FileError(where, "weight_map: tensor ", Quote(tensor), " must map to a file name, got ", Brief(shard));
    }
    weight_map[tensor] = shard.get<std::string>();
  }
  if (weight_map.empty()) return FileError(where, "weight_map is empty");
  return weight_map;
}

// A shard named by the index must be a file of the model directory: a relative path, no '..',
// each folder on the way a real folder of the directory (not a symlink). The file itself may be a
// symlink, followed as the operating system does: that is how the Hugging Face hub stores a
// snapshot (snapshots/<rev>/model-00001-of-00002.safetensors -> ../../blobs/<sha256>), and the
// same link is followed when the directory is read without an index. So the index, which is
// data, can only pick among the directory's own files; where those files live is the directory's
// owner's choice.
absl::Status CheckShardPath(const std::string& where, const fs::path& dir, const std::string& tensor,
                            const std::string& shard) {
  const std::string what = absl::StrCat("shard ", Quote(shard), " (for tensor ", Quote(tensor), ")");
  const fs::path p(shard);
  if (shard.empty() || shard.find('\0') != std::string::npos || p.filename().empty())
    return FileError(where, what, " is not a file name");
  if (p.is_absolute()) return FileError(where, what, " is an absolute path; shards must be inside the model dir");
  for (const fs::path& part : p) {
    if (part == "..") return FileError(where, what, " contains '..' and escapes the model directory");
  }
  fs::path at = dir;
  std::error_code ec;
  for (auto it = p.begin(); std::next(it) != p.end(); ++it) {
    if (*it == ".") continue;
    at /= *it;
    const fs::file_status st = fs::symlink_status(at, ec);
    if (fs::is_symlink(st))
      return FileError(where, what, " goes through ", Quote(at.string()),
                       ", a symlink; shards must be files of the model directory or of its own folders");
    if (!fs::is_directory(st))
      return absl::NotFoundError(absl::StrCat(where, ": ", what, " does not exist (no folder ", at.string(), ")"));
  }
  const fs::path file = dir / p;
  if (!fs::exists(fs::symlink_status(file, ec)))
    return absl::NotFoundError(absl::StrCat(where, ": ", what, " does not exist"));
  const fs::file_status target = fs::status(file, ec);
  if (!fs::exists(target))
    return absl::NotFoundError(absl::StrCat(where, ": ", what, " is a symlink to ", fs::read_symlink(file, ec).string(),
                                            ", which does not exist (an incomplete download?)"));
  if (!fs::is_regular_file(target)) return FileError(where, what, " is not a regular file");
  return absl::OkStatus();
}

// Every tensor the index lists must be in the shard it names.
absl::Status CheckListedTensors(const std::string& where, const std::map<std::string, std::string>& weight_map,
                                const std::map<std::string, const SafetensorsFile*>& shards) {
  for (const auto& [tensor, shard] : weight_map) {
    const SafetensorsFile* file = shards.at(shard);
    if (file->tensors().count(tensor) == 0) {
      return FileError(where, "tensor ", Quote(tensor), " is listed for shard ", Quote(shard), " but ", file->path(),
                       " does not contain it");
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<FileList> OpenIndexedShards(const fs::path& dir, const fs::path& index_path) {
  const std::string where = index_path.string();
  DSV4_ASSIGN_OR_RETURN(const auto weight_map, ReadIndex(index_path));
  std::map<std::string, const SafetensorsFile*> shards;
  FileList files;
  for (const auto& [tensor, shard] : weight_map) {
    if (shards.count(shard) != 0) continue;
    DSV4_RETURN_IF_ERROR(CheckShardPath(where, dir, tensor, shard));
    DSV4_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open((dir / shard).string()));
    shards[shard] = file.get();
    files.push_back(std::move(file));
  }
  DSV4_RETURN_IF_ERROR(CheckListedTensors(where, weight_map, shards));
  return files;
}

absl::StatusOr<FileList> OpenAllFiles(const fs::path& dir) {
  std::vector<std::string> paths;
  std::error_code ec;
  for (auto it = fs::directory_iterator(dir, ec); !ec && it != fs::directory_iterator(); it.increment(ec)) {
    if (it->path().extension() == ".safetensors" && it->is_regular_file()) paths.push_back(it->path().string());
  }
  if (ec) return absl::FailedPreconditionError(absl::StrCat(dir.string(), ": cannot list: ", ec.message()));
  if (paths.empty()) return absl::NotFoundError(absl::StrCat("no .safetensors files in ", dir.string()));
  std::sort(paths.begin(), paths.end());
  FileList files;
  for (const std::string& path : paths) {
    DSV4_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(path));
    files.push_back(std::move(file));
  }
  return files;
}

}  // namespace

// ---- dtypes and tensors -------------------------------------------------------------------------

const char* DTypeName(DType t) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.type == t) return e.name;
  }
  return "?";
}

int DTypeBits(DType t) {
  for (const DTypeEntry& e : kDTypes) {
    if (e.type == t) return e.bits;
  }
  return 0;
}

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string TensorInfo::ShapeString() const { return ShapeText(shape); }

// ---- SafetensorsFile ----------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  DSV4_ASSIGN_OR_RETURN(const Mapping m, MapFile(path));
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = path;
  file->mapping_ = m.addr;
  file->base_ = static_cast<const uint8_t*>(m.addr);
  file->size_ = m.size;
  DSV4_RETURN_IF_ERROR(file->Parse());
  return file;
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::FromMemory(
    std::shared_ptr<const std::vector<uint8_t>> bytes, const std::string& name) {
  if (bytes == nullptr) return FileError(name, "no file image");
  std::unique_ptr<SafetensorsFile> file(new SafetensorsFile());
  file->path_ = name;
  file->base_ = bytes->data();
  file->size_ = bytes->size();
  file->memory_ = std::move(bytes);
  DSV4_RETURN_IF_ERROR(file->Parse());
  return file;
}

SafetensorsFile::~SafetensorsFile() {
  if (mapping_ != nullptr) ::munmap(mapping_, size_);
}

absl::Status SafetensorsFile::Parse() {
  DSV4_ASSIGN_OR_RETURN(const uint64_t header_len, ReadHeaderLength(path_, base_, size_));
  const std::string_view text(reinterpret_cast<const char*>(base_ + kLengthBytes), header_len);
  if (!IsValidUtf8(text)) return FileError(path_, "header is not valid UTF-8 (invalid header)");
  DSV4_ASSIGN_OR_RETURN(const json header, ParseStrictObject(text, path_, "header", "tensor name"));

  std::vector<Entry> entries;
  for (const auto& [name, value] : header.get_ref<const json::object_t&>()) {
    if (name == kMetadataKey) {
      DSV4_RETURN_IF_ERROR(ParseMetadata(path_, value, &metadata_));
      continue;
    }
    DSV4_ASSIGN_OR_RETURN(Entry e, ParseEntry(path_, name, value));
    entries.push_back(std::move(e));
  }
  DSV4_ASSIGN_OR_RETURN(const uint64_t data_end, CheckContiguous(path_, &entries));
  DSV4_RETURN_IF_ERROR(CheckFileSize(path_, header_len, data_end, size_));

  const uint8_t* data = base_ + kLengthBytes + header_len;
  for (Entry& e : entries) {
    TensorInfo t;
    t.name = *e.name;
    t.dtype = e.dtype;
    t.shape = std::move(e.shape);
    t.data = data + e.begin;
    t.nbytes = e.nbytes;
    t.file = path_;
    tensors_.emplace(t.name, std::move(t));
  }
  return absl::OkStatus();
}

// ---- writer -------------------------------------------------------------------------------------

std::vector<uint8_t> WriteSafetensors(const std::vector<TensorToWrite>& tensors,
                                      const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) header[kMetadataKey] = metadata;
  uint64_t offset = 0;
  for (const TensorToWrite& t : tensors) {
    DSV4_CHECK(t.name != kMetadataKey && !header.contains(t.name), "duplicate tensor name ", t.name);
    DSV4_CHECK(IsValidUtf8(t.name), "tensor name is not UTF-8");
    for (int64_t d : t.shape) DSV4_CHECK(d >= 0, t.name, ": negative dimension");
    uint64_t nbytes = 0;
    DSV4_CHECK(TensorBytes(t.dtype, t.shape, &nbytes) == SizeError::kNone && (t.fill || nbytes == t.bytes.size()),
               t.name, ": ", t.bytes.size(), " bytes do not match shape ", ShapeText(t.shape), " of ",
               DTypeName(t.dtype));
    json entry = json::object();
    entry["dtype"] = DTypeName(t.dtype);
    entry["shape"] = t.shape;
    entry["data_offsets"] = json::array({offset, offset + nbytes});
    header[t.name] = std::move(entry);
    offset += nbytes;
  }
  std::string text = header.dump(-1, ' ', false, json::error_handler_t::replace);
  text.resize((text.size() + 7) / 8 * 8, ' ');

  std::vector<uint8_t> out;
  out.reserve(kLengthBytes + text.size() + offset);
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<uint8_t>(static_cast<uint64_t>(text.size()) >> (8 * i)));
  out.insert(out.end(), text.begin(), text.end());
  for (const TensorToWrite& t : tensors) {
    if (t.fill) {
      uint64_t nbytes = 0;
      TensorBytes(t.dtype, t.shape, &nbytes);
      const size_t at = out.size();
      out.resize(at + nbytes);
      t.fill(out.data() + at);
    } else {
      out.insert(out.end(), t.bytes.begin(), t.bytes.end());
    }
  }
  return out;
}

// ---- Checkpoint ---------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::OpenDir(const std::string& dir) {
  std::error_code ec;
  if (!fs::is_directory(dir, ec)) return absl::NotFoundError(absl::StrCat(dir, ": not a directory"));
  const fs::path index_path = fs::path(dir) / kIndexName;
  FileList files;
  if (fs::exists(index_path, ec)) {
    DSV4_ASSIGN_OR_RETURN(files, OpenIndexedShards(dir, index_path));
  } else {
    DSV4_ASSIGN_OR_RETURN(files, OpenAllFiles(dir));
  }
  DSV4_ASSIGN_OR_RETURN(TensorIndex index, BuildIndex(files));
  auto ckpt = std::make_unique<Checkpoint>();
  ckpt->files_ = std::move(files);
  ckpt->index_ = std::move(index);
  return ckpt;
}

std::unique_ptr<Checkpoint> Checkpoint::FromFiles(std::vector<std::unique_ptr<SafetensorsFile>> files) {
  absl::StatusOr<TensorIndex> index = BuildIndex(files);
  DSV4_CHECK(index.ok(), index.status().ToString());
  auto ckpt = std::make_unique<Checkpoint>();
  ckpt->files_ = std::move(files);
  ckpt->index_ = std::move(index).value();
  return ckpt;
}

std::string Checkpoint::Fingerprint() const {
  std::vector<const SafetensorsFile*> files;
  for (const auto& f : files_) files.push_back(f.get());
  auto base_name = [](const SafetensorsFile* f) { return fs::path(f->path()).filename().string(); };
  std::sort(files.begin(), files.end(), [&](auto* a, auto* b) { return base_name(a) < base_name(b); });
  constexpr uint64_t kSample = 4096;
  Fnv64 h;
  for (const SafetensorsFile* f : files) {
    const std::string name = base_name(f);
    const uint64_t size = f->size();
    h.Add(name);
    h.Add(&size, sizeof(size));
    uint64_t header = 0;
    std::memcpy(&header, f->data(), kLengthBytes);  // Parse checked it against the size
    const uint64_t data_begin = kLengthBytes + header;
    h.Add(f->data(), data_begin);
    const uint64_t data = size - data_begin;
    h.Add(f->data() + data_begin, std::min(data, kSample));
    if (data > kSample) h.Add(f->data() + size - kSample, kSample);
  }
  return h.Hex();
}

const TensorInfo* Checkpoint::Find(const std::string& name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : it->second;
}

}  // namespace dsv4
