// Communicators: one interface, three backends (local world of one, MPI over host memory, NCCL
// over device memory). Callers never #ifdef: a single process uses the local backend.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"

namespace dsv4 {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  virtual std::string backend() const = 0;

  // In-place sum of n floats across ranks.
  virtual absl::Status AllReduceSum(float* data, int64_t n) = 0;
  // Each rank contributes n floats; out holds size() * n floats in rank order.
  virtual absl::Status AllGather(const float* in, int64_t n, float* out) = 0;
  // Bytes from `root` to every rank.
  virtual absl::Status Broadcast(void* data, int64_t bytes, int root) = 0;
  // All-to-all with per-peer byte counts and displacements.
  virtual absl::Status AllToAllV(const void* send, const int64_t* send_bytes, const int64_t* send_displs, void* recv,
                                 const int64_t* recv_bytes, const int64_t* recv_displs) = 0;
  virtual absl::Status Barrier() = 0;
  // Makes every pending and later call fail promptly.
  virtual void Abort(const std::string& reason) = 0;
};

// The world of one: collectives are copies.
std::unique_ptr<Communicator> MakeLocalCommunicator();

}  // namespace dsv4
