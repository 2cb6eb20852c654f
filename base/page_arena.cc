#include "base/page_arena.h"

#include <sys/mman.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace dsv4 {
namespace {

constexpr int64_t kPage = 4096;
constexpr int64_t kMaxBytes = int64_t{1} << 47;  // x86-64's user address space with 4-level paging

int64_t RoundUp(int64_t n, int64_t to) { return (n + to - 1) / to * to; }

}  // namespace

PageArena::~PageArena() { UnmapAll(); }

PageArena::PageArena(PageArena&& other) noexcept
    : mappings_(std::exchange(other.mappings_, {})),
      next_(std::exchange(other.next_, nullptr)),
      left_(std::exchange(other.left_, 0)),
      mapped_(std::exchange(other.mapped_, 0)) {}

PageArena& PageArena::operator=(PageArena&& other) noexcept {
  if (this != &other) {
    UnmapAll();
    mappings_ = std::exchange(other.mappings_, {});
    next_ = std::exchange(other.next_, nullptr);
    left_ = std::exchange(other.left_, 0);
    mapped_ = std::exchange(other.mapped_, 0);
  }
  return *this;
}

void PageArena::UnmapAll() {
  for (const Mapping& m : mappings_) ::munmap(m.base, static_cast<size_t>(m.size));
  mappings_.clear();
  next_ = nullptr, left_ = 0, mapped_ = 0;
}

absl::StatusOr<uint8_t*> PageArena::Map(int64_t bytes) {
  const int64_t size = RoundUp(std::max<int64_t>(bytes, 1), kPage);
  // Not MAP_NORESERVE: a mapping larger than the system could back is refused here, with an error
  // (how much the copies take together is the caller's limit to keep).
  void* base = ::mmap(nullptr, static_cast<size_t>(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (base == MAP_FAILED)
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot map ", size >> 20, " MiB of host memory: ", std::strerror(errno)));
  mappings_.push_back({base, size});
  mapped_ += size;
  return static_cast<uint8_t*>(base);
}

absl::StatusOr<uint8_t*> PageArena::Allocate(int64_t bytes) {
  if (bytes < 0) return absl::InvalidArgumentError(absl::StrCat("negative allocation of ", bytes, " bytes"));
  if (bytes > kMaxBytes)
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot map ", bytes, " bytes of host memory: more than the address space takes"));
  const int64_t need = RoundUp(std::max<int64_t>(bytes, 1), kAlign);
  if (need >= kChunkBytes / 2) return Map(need);
  if (need > left_) {
    auto chunk = Map(kChunkBytes);
    if (!chunk.ok()) return chunk.status();
    next_ = *chunk, left_ = kChunkBytes;
  }
  uint8_t* p = next_;
  next_ += need, left_ -= need;
  return p;
}

int64_t AvailableHostMemoryBytes() {
  std::FILE* f = std::fopen("/proc/meminfo", "r");
  if (f == nullptr) return -1;
  char line[256];
  int64_t kb = -1;
  while (std::fgets(line, sizeof(line), f) != nullptr) {
    long long v = 0;
    if (std::sscanf(line, "MemAvailable: %lld kB", &v) == 1) {
      kb = v;
      break;
    }
  }
  std::fclose(f);
  return kb < 0 ? -1 : kb * 1024;
}

}  // namespace dsv4
