#include "kernels/cuda/memory.h"

#include <cuda_runtime.h>

#include <utility>

#include "kernels/cuda/dispatch.h"

namespace dsv4::kernels::cuda {

DevicePool::~DevicePool() {
  if (base_ != nullptr) cudaFree(base_);
}

DevicePool::DevicePool(DevicePool&& o) noexcept : base_(std::exchange(o.base_, nullptr)), arena_(o.arena_) {
  o.arena_ = Arena();
}

DevicePool& DevicePool::operator=(DevicePool&& o) noexcept {
  if (this != &o) {
    if (base_ != nullptr) cudaFree(base_);
    base_ = std::exchange(o.base_, nullptr);
    arena_ = o.arena_;
    o.arena_ = Arena();
  }
  return *this;
}

cudaError_t DevicePool::Create(int64_t bytes, DevicePool* pool) {
  if (bytes < 0) return cudaErrorInvalidValue;
  void* p = nullptr;
  if (bytes > 0) {
    const cudaError_t err = cudaMalloc(&p, static_cast<size_t>(bytes));
    if (err != cudaSuccess) return err;
  }
  *pool = DevicePool();
  pool->base_ = p;
  pool->arena_ = Arena(bytes);
  return cudaSuccess;
}

void* DevicePool::Allocate(int64_t bytes, int64_t align) {
  const int64_t off = arena_.Allocate(bytes, align);
  return off < 0 ? nullptr : static_cast<char*>(base_) + off;
}

namespace {

cudaError_t CopyPitched(const PitchedCopy& c, const void* src_base, void* dst, cudaStream_t stream) {
  if (c.bytes() == 0) return cudaSuccess;
  return cudaMemcpy2DAsync(dst, static_cast<size_t>(c.row_bytes), static_cast<const char*>(src_base) + c.src_offset,
                           static_cast<size_t>(c.src_pitch), static_cast<size_t>(c.row_bytes),
                           static_cast<size_t>(c.rows), cudaMemcpyHostToDevice, stream);
}

}  // namespace

cudaError_t UploadWeight(const WeightMatrix& host, DevicePool& pool, cudaStream_t stream, WeightMatrix* device) {
  if (CheckWeight(host) != nullptr) return cudaErrorInvalidValue;
  const WeightUploadPlan plan = PlanWeightUpload(host);
  void* data = pool.Allocate(plan.data.bytes());
  void* scales = plan.scales.bytes() > 0 ? pool.Allocate(plan.scales.bytes()) : nullptr;
  if (data == nullptr || (plan.scales.bytes() > 0 && scales == nullptr)) return cudaErrorMemoryAllocation;
  if (cudaError_t e = CopyPitched(plan.data, host.data, data, stream); e != cudaSuccess) return e;
  if (cudaError_t e = CopyPitched(plan.scales, host.scales, scales, stream); e != cudaSuccess) return e;
  *device = plan.view;
  device->data = data;
  device->scales = static_cast<const uint8_t*>(scales);
  return cudaSuccess;
}

StepGraph::~StepGraph() {
  if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  if (graph_ != nullptr) cudaGraphDestroy(graph_);
}

cudaError_t StepGraph::Capture(cudaStream_t stream, cudaError_t (*enqueue)(cudaStream_t, void*), void* ctx) {
  if (cudaError_t e = cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal); e != cudaSuccess) return e;
  const cudaError_t body = enqueue(stream, ctx);
  cudaGraph_t graph = nullptr;
  const cudaError_t end = cudaStreamEndCapture(stream, &graph);  // always end, even after a failure
  if (body != cudaSuccess || end != cudaSuccess) {
    if (graph != nullptr) cudaGraphDestroy(graph);
    return body != cudaSuccess ? body : end;
  }
  cudaGraphExec_t exec = nullptr;
  if (cudaError_t e = cudaGraphInstantiate(&exec, graph, 0); e != cudaSuccess) {
    cudaGraphDestroy(graph);
    return e;
  }
  if (exec_ != nullptr) cudaGraphExecDestroy(exec_);
  if (graph_ != nullptr) cudaGraphDestroy(graph_);
  graph_ = graph;
  exec_ = exec;
  return cudaSuccess;
}

cudaError_t StepGraph::Launch(cudaStream_t stream) const {
  if (exec_ == nullptr) return cudaErrorInvalidValue;
  return cudaGraphLaunch(exec_, stream);
}

}  // namespace dsv4::kernels::cuda
