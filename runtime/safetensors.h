// Safetensors checkpoints, read through mmap without copying.
//
// SafetensorsFile validates everything the format promises before any tensor is handed out
// (header bounds, JSON shape, dtypes, shapes with overflow checks, contiguous offsets covering the
// whole data buffer exactly); a malformed file yields one error naming the file, the tensor and
// the field. Checkpoint joins the files of a model directory (one file, or an index with shards).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv4 {

enum class DType : uint8_t { kBOOL, kU8, kI8, kI16, kU16, kF16, kBF16, kI32, kU32, kF32, kF64, kI64, kU64,
                             kF8_E4M3, kF8_E5M2, kF8_E8M0, kF4 };

const char* DTypeName(DType t);
// Bits per element (4 for F4).
int DTypeBits(DType t);

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;  // into the mapping
  uint64_t nbytes = 0;
  std::string file;  // file name (for error messages)

  int64_t numel() const;
  std::string ShapeString() const;
};

// One mmapped .safetensors file. Movable, not copyable; tensors point into the mapping, which
// lives as long as the object.
class SafetensorsFile {
 public:
  // Maximum JSON header size accepted (the format's own limit).
  static constexpr uint64_t kMaxHeaderBytes = 100'000'000;

  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  // Parses a file image already in memory (the built-in models); `bytes` must outlive the object.
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> FromMemory(std::shared_ptr<const std::vector<uint8_t>> bytes,
                                                                     const std::string& name);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::map<std::string, TensorInfo>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }
  // The whole file image (header and data).
  const uint8_t* data() const { return base_; }
  uint64_t size() const { return size_; }

 private:
  SafetensorsFile() = default;
  absl::Status Parse();

  std::string path_;
  const uint8_t* base_ = nullptr;
  uint64_t size_ = 0;
  void* mapping_ = nullptr;  // munmap on destruction when set
  std::shared_ptr<const std::vector<uint8_t>> memory_;
  std::map<std::string, TensorInfo> tensors_;
  std::map<std::string, std::string> metadata_;
};

// Writes tensors into a safetensors image (used by the built-in models and by tests).
struct TensorToWrite {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
  // When set, writes the tensor's bytes straight into the image instead of `bytes` (large built-in
  // models: no second copy of the weights).
  std::function<void(uint8_t* dst)> fill = {};
};
std::vector<uint8_t> WriteSafetensors(const std::vector<TensorToWrite>& tensors,
                                      const std::map<std::string, std::string>& metadata = {});

// All tensors of a checkpoint directory: `model.safetensors.index.json` with its shards when
// present, else every `*.safetensors` file in the directory. A name found twice is an error. Index
// entries must name files of the directory (no absolute paths, '..' or symlinked folders); a file
// that is itself a symlink is followed, as in a Hugging Face hub snapshot.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> OpenDir(const std::string& dir);
  static std::unique_ptr<Checkpoint> FromFiles(std::vector<std::unique_ptr<SafetensorsFile>> files);

  // nullptr when absent.
  const TensorInfo* Find(const std::string& name) const;
  // 16 hex digits that differ, in practice, between two checkpoints that are not the same files:
  // a hash of every file's base name, size and header, and of the first and last 4 KiB of its
  // data (a few pages per file, whatever the model's size). Equal for copies at different paths.
  std::string Fingerprint() const;
  const std::map<std::string, const TensorInfo*>& all() const { return index_; }

 private:
  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorInfo*> index_;
};

}  // namespace dsv4
