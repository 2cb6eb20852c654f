// Expert-parallel MoE on GPUs over NCCL. The routing of a micro-batch (n x K expert ids and
// weights, a few KB) comes to the host, where the plans of parallel/nccl_plan.h are built; token
// rows stay on the devices:
//
//   Dispatch: counts, then (expert, weight) records, then hidden rows packed peer by peer with
//             GatherRows, each a grouped ncclSend/ncclRecv; received rows regrouped by local expert
//             (grouped_hidden) for the grouped expert GEMM.
//   Combine:  per received token, the sum over its experts' rows (CombineRows); the sums go back
//             the reverse way and are added into the senders' outputs in EP-rank order.
//
// Two micro-batches overlap by using two exchanges on two streams: while one micro-batch's rows
// are in flight the other's experts run (MicroBatches decides when a step is large enough).
// Buffers come from a caller's DevicePool, reset at each Dispatch: no allocation per step.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "kernels/cuda/memory.h"
#include "parallel/nccl_communicator.h"
#include "parallel/nccl_plan.h"
#include "parallel/placement.h"

namespace dsv4 {

class NcclMoeExchange {
 public:
  // `ep` and `workspace` must outlive the exchange; the workspace holds this micro-batch's buffers
  // (about (sent + 2 * received + grouped rows) * D floats).
  NcclMoeExchange(NcclCommunicator* ep, kernels::cuda::DevicePool* workspace) : comm_(ep), pool_(workspace) {}
  ~NcclMoeExchange();
  NcclMoeExchange(const NcclMoeExchange&) = delete;
  NcclMoeExchange& operator=(const NcclMoeExchange&) = delete;

  // x [n, D] device; experts / weights [n, K] host; `placement` (the layer's, the same on every rank;
  // it must outlive Combine) decides the routes, as on the MPI path (PlanMoeSend). Blocks the host
  // (bounded by the communicator's timeout) for the small count and record exchanges; the hidden
  // rows are left in flight on `stream`. One stream per exchange: the next Dispatch reuses the
  // workspace in stream order.
  absl::Status Dispatch(const ExpertPlacement& placement, const float* x, int64_t n, int64_t D, const int32_t* experts,
                        const float* weights, int K, cudaStream_t stream);

  // After Dispatch: the received tokens grouped by local expert.
  const ExpertGroups& groups() const { return groups_; }
  const float* grouped_hidden() const { return grouped_; }        // [groups().rows(), D] device
  const int32_t* group_offsets() const { return dev_offsets_; }   // [local experts + 1] device
  const float* row_weights() const { return dev_row_weight_; }    // [groups().rows()] device

  // y_rows [groups().rows(), D] device: each grouped row's expert output with its routing weight
  // applied. Adds every token's returned rows into out [n, D] (device) in EP-rank order.
  absl::Status Combine(const float* y_rows, float* out, cudaStream_t stream);

 private:
  template <typename T>
  T* Take(int64_t count);
  template <typename T>
  absl::Status Upload(const std::vector<T>& host, T** dev, cudaStream_t stream);
  // Pinned host staging for device-to-host copies, so waiting on them honours the timeout (a copy to
  // pageable memory would block the host until it completes). Grows, never shrinks.
  absl::Status EnsurePinned(int64_t bytes);

  NcclCommunicator* comm_;
  kernels::cuda::DevicePool* pool_;
  int64_t n_ = 0, D_ = 0;
  MoeSendPlan send_;
  ExpertGroups groups_;
  std::vector<int64_t> recv_count_;
  // Device buffers of the current micro-batch.
  float* received_ = nullptr;  // [received, D]
  float* grouped_ = nullptr;   // [rows, D]
  float* summed_ = nullptr;    // [received, D]
  float* returned_ = nullptr;  // [sent, D]
  int32_t* dev_offsets_ = nullptr;
  int32_t *sum_offset_ = nullptr, *sum_rows_ = nullptr, *combine_offset_ = nullptr, *combine_rows_ = nullptr;
  void* pinned_ = nullptr;
  int64_t pinned_bytes_ = 0;
  float* dev_row_weight_ = nullptr;
};

}  // namespace dsv4
