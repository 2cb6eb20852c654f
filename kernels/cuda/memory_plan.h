// Host-side bookkeeping of device memory, separate from the CUDA calls so it is tested on CPU:
//
//  - Arena: bump allocation inside one preallocated region (weights, caches, per-step activations).
//    Nothing is freed piecemeal; Reset() returns to a mark. The decode path allocates only from
//    arenas, never from the driver.
//  - WeightUploadPlan: which bytes of a checkpoint tensor a rank copies to its device for its view
//    (tensor-parallel row or column shard), as two pitched 2-D copies (elements, scales), and the
//    view to use on the device afterwards.
//  - BlockCache: freed allocations kept for reuse by size, so that memory a server takes and gives
//    back per request (a sequence's compressor state, a private cache) does not go through
//    cudaMalloc and cudaFree, which wait for the device, each time.
//  - StagingRing: where in a pinned host buffer the next upload is staged, and which earlier
//    uploads must have left it first (a copy from pageable memory may wait for the whole stream).
#pragma once

#include <cstdint>
#include <deque>
#include <map>
#include <vector>

#include "kernels/cpu/kernels.h"

namespace dsv4::kernels::cuda {

inline constexpr int64_t kDeviceAlignment = 256;  // cudaMalloc's alignment; enough for every vector load

// Not thread-safe; one owner (a model's weight store, a step's workspace).
class Arena {
 public:
  explicit Arena(int64_t capacity = 0) : capacity_(capacity) {}

  // Offset of a new block of `bytes` aligned to `align` (a power of two), or -1 when it does not fit.
  int64_t Allocate(int64_t bytes, int64_t align = kDeviceAlignment);
  int64_t used() const { return used_; }
  int64_t capacity() const { return capacity_; }
  int64_t high_water() const { return high_water_; }
  // Frees everything allocated after `mark` (an earlier used()).
  void Reset(int64_t mark = 0) { used_ = mark < used_ ? mark : used_; }

 private:
  int64_t capacity_;
  int64_t used_ = 0;
  int64_t high_water_ = 0;
};

// One pitched copy: `rows` rows of `row_bytes`, from src + src_offset (pitch src_pitch) to a dense
// destination (pitch = row_bytes).
struct PitchedCopy {
  int64_t rows = 0;
  int64_t row_bytes = 0;
  int64_t src_offset = 0;
  int64_t src_pitch = 0;
  int64_t bytes() const { return rows * row_bytes; }
};

struct WeightUploadPlan {
  PitchedCopy data;
  PitchedCopy scales;  // rows == 0 for F32 / BF16
  // The device view: pointers unset (the uploader sets data / scales to the copies' destinations);
  // row/col ranges and strides rebased onto the copied rectangle.
  WeightMatrix view;
};

// The smallest rectangle of the stored tensor that covers `w`'s view with whole scale blocks
// (FP8: block-aligned rows and columns; FP4: whole 32-column groups, so whole bytes).
// Precondition: CheckWeight(w) is null.
WeightUploadPlan PlanWeightUpload(const WeightMatrix& w);

// Uploads staged in a ring of `capacity` bytes of pinned host memory: each is copied there, then to
// the device asynchronously, and its region is reused once its copy has completed (a fence: a CUDA
// event in the backend, anything in tests). Regions are handed out in ring order, 256-byte aligned;
// an upload that does not fit before the end starts again at 0. Not thread-safe.
class StagingRing {
 public:
  explicit StagingRing(int64_t capacity) : capacity_(capacity) {}

  struct Region {
    int64_t offset = -1;         // -1: larger than half the ring (copy it directly)
    std::vector<int64_t> waits;  // fences to wait for before writing it, oldest first
  };
  // Where an upload of `bytes` goes. The caller waits for `waits`, writes the region, starts the
  // copy and then calls Issued with the copy's fence.
  Region Reserve(int64_t bytes);
  void Issued(int64_t fence);
  // Fences of every upload still in flight, oldest first (all must be waited for before the buffer
  // is freed).
  std::vector<int64_t> InFlight() const;

 private:
  struct Entry {
    int64_t begin, end, fence;
  };
  // Moves the in-flight entries that overlap [begin, end) (the oldest first: ring order) to `waits`.
  void Claim(int64_t begin, int64_t end, std::vector<int64_t>& waits);

  int64_t capacity_, head_ = 0;
  int64_t pending_begin_ = -1, pending_end_ = -1;  // the region reserved and not yet issued
  std::deque<Entry> in_flight_;                    // oldest first
};

// Freed device blocks by size class, up to `capacity` bytes; the oldest go first when it is full.
// Reusing a block is safe without waiting when every use of the memory is ordered on one stream (a
// backend's): the work of the block's next owner runs after that of its last. Not thread-safe.
class BlockCache {
 public:
  explicit BlockCache(int64_t capacity) : capacity_(capacity) {}

  // The size class of a request: bytes rounded up to kDeviceAlignment below 1 MiB, to 1/8 of the
  // power of two at or below it above (so a reused block wastes at most an eighth).
  static int64_t SizeClass(int64_t bytes);

  // A cached block of `size_class` bytes (which it leaves the cache), or null.
  void* Take(int64_t size_class);
  // Keeps `p` (of `size_class` bytes); returns the blocks to give back to the driver now: `p` itself
  // when it is larger than the whole capacity, else the oldest cached blocks until the rest fits.
  std::vector<void*> Give(void* p, int64_t size_class);
  // Empties the cache: every block, to give back (when the driver is out of memory).
  std::vector<void*> Drain();

  int64_t cached_bytes() const { return cached_; }
  int64_t blocks() const { return static_cast<int64_t>(order_.size()); }

 private:
  struct Entry {
    void* p;
    int64_t size_class;
  };
  // Removes the entry of `p` from by_size_ (it is in order_'s front).
  void Forget(const Entry& e);

  int64_t capacity_, cached_ = 0;
  std::deque<Entry> order_;                        // oldest first
  std::map<int64_t, std::vector<void*>> by_size_;  // size class -> blocks, most recent last
};

}  // namespace dsv4::kernels::cuda
