// The NCCL backend of Communicator (parallel/communicator.h): every buffer is device memory of the
// communicator's device. Built when CUDA and nccl.h are found (DSV4_NCCL=1).
//
// The unique id is drawn on rank 0 and broadcast over a bootstrap communicator (the MPI world, or
// any communicator over the same ranks). The NCCL communicator is non-blocking (config.blocking =
// 0), so initialization, every group and every wait polls ncclCommGetAsyncError against the
// timeout: a peer that never arrives turns into DEADLINE_EXCEEDED and an ncclCommAbort, not a hang.
// All-to-all-v and all-gather-v are grouped ncclSend / ncclRecv (parallel/nccl_plan.h), the self
// part a device copy. The *Async forms only enqueue on a caller's stream (for overlapping the MoE
// exchange with expert computation and for CUDA graphs); their failures surface at the next
// blocking call or Synchronize.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace dsv4 {

class NcclCommunicator : public Communicator {
 public:
  // Enqueue-only exchanges on `stream` (pointers are device memory).
  virtual absl::Status AllToAllVAsync(const void* send, const int64_t* send_bytes, const int64_t* send_displs,
                                      void* recv, const int64_t* recv_bytes, const int64_t* recv_displs,
                                      cudaStream_t stream) = 0;
  virtual absl::Status AllReduceSumAsync(float* data, int64_t n, cudaStream_t stream) = 0;
  // Waits for everything enqueued on `stream`, bounded by the timeout, watching for NCCL errors.
  virtual absl::Status Synchronize(cudaStream_t stream) = 0;
  // The stream the blocking collectives run on.
  virtual cudaStream_t stream() const = 0;
  virtual int device() const = 0;
};

// Joins rank bootstrap.rank() of bootstrap.size() on CUDA device `device`. Collective over
// `bootstrap`.
absl::StatusOr<std::unique_ptr<NcclCommunicator>> MakeNcclCommunicator(Communicator& bootstrap, int device,
                                                                        const std::string& name = "nccl");

}  // namespace dsv4
