// Device memory: one allocation per pool, carved by an Arena (memory_plan.h), so nothing on the
// decode path talks to the allocator; weights copied from the (mmapped) checkpoint view straight
// into a pool, each rank only its shard.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "kernels/cpu/kernels.h"
#include "kernels/cuda/memory_plan.h"

namespace dsv4::kernels::cuda {

// Owns one cudaMalloc'd region. Move-only; not thread-safe (one owner).
class DevicePool {
 public:
  DevicePool() = default;
  ~DevicePool();
  DevicePool(DevicePool&& o) noexcept;
  DevicePool& operator=(DevicePool&& o) noexcept;
  DevicePool(const DevicePool&) = delete;
  DevicePool& operator=(const DevicePool&) = delete;

  // Allocates `bytes` on the current device (the only driver allocation of the pool).
  static cudaError_t Create(int64_t bytes, DevicePool* pool);

  // A block of `bytes` aligned to `align`, or null when the pool is full. Never calls the driver.
  void* Allocate(int64_t bytes, int64_t align = kDeviceAlignment);
  template <typename T>
  T* AllocateArray(int64_t count) {
    return static_cast<T*>(Allocate(count * static_cast<int64_t>(sizeof(T)), alignof(T) > 16 ? alignof(T) : 16));
  }
  int64_t used() const { return arena_.used(); }
  int64_t capacity() const { return arena_.capacity(); }
  // Frees everything allocated after `mark` (an earlier used()): per-step workspaces.
  void Reset(int64_t mark = 0) { arena_.Reset(mark); }
  void* base() const { return base_; }

 private:
  void* base_ = nullptr;
  Arena arena_;
};

// Copies the rectangle of the host tensor that covers `host`'s view (PlanWeightUpload) into `pool`
// and fills `device` with the rebased view over the copy. `host` may point into an mmapped
// checkpoint; the copy is enqueued on `stream` (pageable source: the driver stages it).
cudaError_t UploadWeight(const WeightMatrix& host, DevicePool& pool, cudaStream_t stream, WeightMatrix* device);

// A captured sequence of launches on one stream, replayed with one call: decode steps run as CUDA
// graphs per batch bucket (launch.h GraphBuckets). Every buffer the capture touches must keep its
// address (pools, not fresh allocations), and per-step inputs are copied into those buffers.
class StepGraph {
 public:
  StepGraph() = default;
  ~StepGraph();
  StepGraph(const StepGraph&) = delete;
  StepGraph& operator=(const StepGraph&) = delete;

  // Runs `enqueue(stream, ctx)` under stream capture and instantiates the result. The stream must
  // not be the legacy default stream.
  cudaError_t Capture(cudaStream_t stream, cudaError_t (*enqueue)(cudaStream_t, void*), void* ctx);
  cudaError_t Launch(cudaStream_t stream) const;
  bool captured() const { return exec_ != nullptr; }

 private:
  cudaGraph_t graph_ = nullptr;
  cudaGraphExec_t exec_ = nullptr;
};

}  // namespace dsv4::kernels::cuda
