// model.safetensors.index.json as Checkpoint::OpenDir reads it: the JSON, the weight map, and the
// shard names (paths that must stay files of the model directory). The directory holds one real
// shard, so inputs that name it reach the cross-checks between the index and the shard.
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>

#include "runtime/safetensors.h"

namespace {

std::string g_dir;  // removed at exit

std::string MakeDir() {
  std::string dir = (std::filesystem::temp_directory_path() / "dsv4_fuzz_index_XXXXXX").string();
  if (mkdtemp(dir.data()) == nullptr) std::abort();
  g_dir = dir;
  std::atexit([] {
    std::error_code ec;
    std::filesystem::remove_all(g_dir, ec);
  });
  const std::vector<uint8_t> shard =
      dsv4::WriteSafetensors({{"a", dsv4::DType::kU8, {2}, {1, 2}, {}}, {"b.weight", dsv4::DType::kF32, {1}, {0, 0, 0, 0}, {}}});
  std::ofstream(dir + "/model-00001-of-00001.safetensors", std::ios::binary)
      .write(reinterpret_cast<const char*>(shard.data()), static_cast<std::streamsize>(shard.size()));
  std::filesystem::create_directory(dir + "/sub");
  std::ofstream(dir + "/sub/x.safetensors", std::ios::binary)
      .write(reinterpret_cast<const char*>(shard.data()), static_cast<std::streamsize>(shard.size()));
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = MakeDir();
  std::ofstream(dir + "/model.safetensors.index.json", std::ios::binary | std::ios::trunc)
      .write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  auto ckpt = dsv4::Checkpoint::OpenDir(dir);
  if (ckpt.ok() && (*ckpt)->all().empty()) std::abort();  // an index that loads lists something
  return 0;
}
