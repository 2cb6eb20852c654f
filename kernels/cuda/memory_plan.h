// Host-side bookkeeping of device memory, separate from the CUDA calls so it is tested on CPU:
//
//  - Arena: bump allocation inside one preallocated region (weights, caches, per-step activations).
//    Nothing is freed piecemeal; Reset() returns to a mark. The decode path allocates only from
//    arenas, never from the driver.
//  - WeightUploadPlan: which bytes of a checkpoint tensor a rank copies to its device for its view
//    (tensor-parallel row or column shard), as two pitched 2-D copies (elements, scales), and the
//    view to use on the device afterwards.
#pragma once

#include <cstdint>

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

}  // namespace dsv4::kernels::cuda
