// A .safetensors file image: the header (length, JSON, dtypes, shapes, offsets) and the data.
// Whatever the bytes, parsing ends with a status; a file that parses hands out only tensors that
// lie inside the image with the byte count their dtype and shape promise.
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <vector>

#include "runtime/safetensors.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto bytes = std::make_shared<const std::vector<uint8_t>>(data, data + size);
  auto file = dsv4::SafetensorsFile::FromMemory(bytes, "fuzz.safetensors");
  if (!file.ok()) return 0;
  const uint8_t* begin = bytes->data();
  const uint8_t* end = begin + bytes->size();
  for (const auto& [name, t] : (*file)->tensors()) {
    const uint64_t bits = static_cast<uint64_t>(t.numel()) * dsv4::DTypeBits(t.dtype);
    if (t.nbytes != bits / 8 || t.data < begin || t.data > end || t.nbytes > static_cast<uint64_t>(end - t.data))
      std::abort();
    volatile uint8_t sink = 0;
    if (t.nbytes > 0) sink = t.data[0] ^ t.data[t.nbytes - 1];  // in bounds (ASan checks)
    (void)sink;
  }
  return 0;
}
