// Communicators: one interface, three backends — local (a world of one), MPI (host memory; what
// runs on CPU machines) and NCCL (device memory). Callers never #ifdef: one process uses local.
//
// Every collective is blocking for the caller, bounded by the communicator's timeout: a peer that
// does not arrive turns into DEADLINE_EXCEEDED naming the collective and the ranks that are
// missing, never a hang. After Abort() every call fails promptly with ABORTED.
// Results of AllReduceSum are bit-identical on every rank (the MPI backend sums in rank order).
// A communicator is used by one thread at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dsv4 {

class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // "local", "mpi" or "nccl", plus the group's name (e.g. "mpi:tp").
  virtual std::string name() const = 0;

  // In-place sum of n floats across ranks.
  virtual absl::Status AllReduceSum(float* data, int64_t n) = 0;
  // Each rank contributes counts[rank] floats; out receives every rank's in rank order.
  virtual absl::Status AllGatherV(const float* in, const int64_t* counts, float* out) = 0;
  // `bytes` bytes from `root` to every rank.
  virtual absl::Status Broadcast(void* data, int64_t bytes, int root) = 0;
  // All-to-all with per-peer byte counts and byte displacements (zero-size messages allowed).
  virtual absl::Status AllToAllV(const void* send, const int64_t* send_bytes, const int64_t* send_displs, void* recv,
                                 const int64_t* recv_bytes, const int64_t* recv_displs) = 0;
  virtual absl::Status Barrier() = 0;
  // Sub-communicator of the ranks passing the same color, ordered by key (MPI_Comm_split).
  virtual absl::StatusOr<std::unique_ptr<Communicator>> Split(int color, int key, const std::string& name) = 0;
  // Sub-communicator of the ranks that share this rank's node (shared memory).
  virtual absl::StatusOr<std::unique_ptr<Communicator>> SplitNode(const std::string& name) { return Split(0, rank(), name); }
  // Makes every pending and later call fail promptly.
  virtual void Abort(const std::string& reason) = 0;

  // The backend's own handle (MPI_Comm* for MPI, null for local): for benchmarks that compare
  // against the raw transport.
  virtual const void* NativeHandle() const { return nullptr; }

  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }
  std::chrono::milliseconds timeout() const { return timeout_; }

 protected:
  std::chrono::milliseconds timeout_{std::chrono::seconds(60)};
};

// The world of one: collectives are copies.
std::unique_ptr<Communicator> MakeLocalCommunicator();

// The MPI world (MPI must be initialized; see MpiSession). Unavailable when built without MPI.
absl::StatusOr<std::unique_ptr<Communicator>> MakeMpiWorldCommunicator();

// RAII MPI_Init / MPI_Finalize. Initialized() is false in a build without MPI.
class MpiSession {
 public:
  MpiSession(int* argc, char*** argv);
  ~MpiSession();
  bool initialized() const { return initialized_; }
  // Ends every rank of the job with `code` (after printing the error): for failures that would
  // otherwise leave peers waiting.
  [[noreturn]] static void AbortJob(int code);

 private:
  bool initialized_ = false;
};

// Where the launcher put this process, from its environment (OpenMPI's OMPI_COMM_WORLD_RANK /
// _SIZE, or PMI_RANK / PMI_SIZE), before MPI is initialized: {0, 1} when not launched by one.
struct LauncherPlace {
  int rank = 0, size = 1;
};
LauncherPlace LauncherWorld();
// True when this process was started by mpirun with more than one rank.
bool LaunchedByMpirun();

}  // namespace dsv4
