// Long-lived host buffers for large data (weights stored for this CPU): anonymous pages mapped in
// chunks, never zeroed here.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv4 {

// Hands out 64-byte-aligned buffers carved from anonymous mappings of at least kChunkBytes, and
// unmaps them all when it goes. The pages are the kernel's zero pages until first written, so the
// threads that fill a buffer also fault it in, in parallel where they fill it in parallel. (A
// value-initialized std::vector zeroes every page on one thread first: on a 2-core Xeon KVM guest,
// where a fresh page costs about 0.7 s per GB and core, that was 5 s of a 13 s start-up for the 3 GB
// of weights stored for the tiles.) Huge pages are not asked for: with them (MADV_HUGEPAGE) the same
// start-up took 11-19 s against 10-11 s, most of it in the faults' zeroing of 2 MiB pages, and
// decode read weights no faster (0.82-0.85 of STREAM either way). Not thread-safe.
class PageArena {
 public:
  static constexpr int64_t kChunkBytes = int64_t{64} << 20;
  static constexpr int64_t kAlign = 64;

  PageArena() = default;
  ~PageArena();
  PageArena(PageArena&& other) noexcept;
  PageArena& operator=(PageArena&& other) noexcept;
  PageArena(const PageArena&) = delete;
  PageArena& operator=(const PageArena&) = delete;

  // `bytes` (>= 0) of writable memory, 64-byte aligned, valid until the arena goes; its contents
  // are zero until written. A request of half a chunk or more gets a mapping of its own, so the
  // rest of the current chunk stays in use. RESOURCE_EXHAUSTED (naming the size) when the system
  // refuses the mapping; INVALID_ARGUMENT for a negative size.
  absl::StatusOr<uint8_t*> Allocate(int64_t bytes);

  // Bytes mapped so far (whole chunks and mappings).
  int64_t mapped_bytes() const { return mapped_; }

 private:
  struct Mapping {
    void* base;
    int64_t size;
  };
  absl::StatusOr<uint8_t*> Map(int64_t bytes);
  void UnmapAll();

  std::vector<Mapping> mappings_;
  uint8_t* next_ = nullptr;
  int64_t left_ = 0;
  int64_t mapped_ = 0;
};

// The host memory the system could give this process now (MemAvailable of /proc/meminfo: free
// pages plus page cache it can reclaim), in bytes; -1 where it does not say.
int64_t AvailableHostMemoryBytes();

}  // namespace dsv4
