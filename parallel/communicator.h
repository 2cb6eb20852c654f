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
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace dsv4 {

// A batch of point-to-point messages with the peers of one communicator, for exchanges whose later
// messages depend on earlier ones (a size sent ahead of its payload, a payload received into room
// allocated once that size is known). Messages between two ranks match in the order each side
// posts them. Every wait is bounded by the communicator's timeout (DEADLINE_EXCEEDED naming the
// world ranks whose messages are missing) and fails promptly after Abort. A posting error (a
// message over 2^31-1 bytes, a peer outside the group) is returned by the next wait. Buffers must
// stay valid until their message completes; destroying the exchange cancels what is pending.
// One thread at a time, like the communicator.
class PeerExchange {
 public:
  using Handle = int;
  virtual ~PeerExchange() = default;
  virtual Handle Send(int peer, const void* data, int64_t bytes) = 0;
  // `count` rows of `row_bytes` bytes each, row i at `base + offsets[i]` (bytes), arriving as one
  // contiguous message. The transport gathers them itself where it can (MPI: an indexed datatype),
  // so no packing copy is made.
  virtual Handle SendRows(int peer, const void* base, int64_t row_bytes, const int64_t* offsets, int64_t count) = 0;
  virtual Handle Recv(int peer, void* data, int64_t bytes) = 0;
  // Waits for one message.
  virtual absl::Status Wait(Handle h) = 0;
  // Waits until one of `handles` is complete and returns its index in `handles` (each completes
  // once: a handle already returned is not returned again). OutOfRange when all were returned.
  virtual absl::StatusOr<size_t> WaitAny(const std::vector<Handle>& handles) = 0;
  // Waits for every message posted so far.
  virtual absl::Status WaitAll() = 0;
};

// Single-copy reads of the memory of peers on the same node (Linux cross-memory attach: the kernel
// copies straight from one address space into the other, as MPI's shared-memory transport does
// for large messages), for exchanges whose payload is scattered: a receiver gathers rows where the
// sender keeps them, so nobody packs. Whether rank a may read rank b is probed once, when the
// object is made (collectively), and every rank knows it for every pair. Reads are synchronous;
// the owner must keep the memory unchanged until the reader says it is done (the caller's
// protocol). One thread at a time.
class PeerMemory {
 public:
  virtual ~PeerMemory() = default;
  // True when rank `reader` can read rank `owner`'s memory (same node, allowed by the OS).
  virtual bool CanRead(int reader, int owner) const = 0;
  // Copies `count` pieces of `bytes` each from `owner`'s address space, piece i at address
  // remote[i], into dst (contiguous). INTERNAL naming the peer when the kernel refuses.
  virtual absl::Status Gather(int owner, const uint64_t* remote, int64_t bytes, int64_t count, void* dst) = 0;
};

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
  // A new batch of point-to-point messages (`what` names it in errors). Host-memory backends only:
  // the default's waits fail with UNIMPLEMENTED.
  virtual std::unique_ptr<PeerExchange> NewExchange(const char* what);
  // Direct reads of same-node peers' memory (collective). The default (and the MPI backend when
  // DSV4_EP_SINGLE_COPY=0 or the OS refuses) reaches nobody: callers fall back to messages.
  virtual absl::StatusOr<std::unique_ptr<PeerMemory>> NewPeerMemory();

  // The backend's own handle (MPI_Comm* for MPI, null for local): for benchmarks that compare
  // against the raw transport.
  virtual const void* NativeHandle() const { return nullptr; }

  void set_timeout(std::chrono::milliseconds t) { timeout_ = t; }
  std::chrono::milliseconds timeout() const { return timeout_; }

 protected:
  std::chrono::milliseconds timeout_{std::chrono::seconds(60)};
};

// Every rank's `bytes` bytes at `in`, in rank order at `out` (size() * bytes bytes), over AllToAllV.
absl::Status AllGatherBytes(Communicator& comm, const void* in, int64_t bytes, void* out);

// The world of one: collectives are copies.
std::unique_ptr<Communicator> MakeLocalCommunicator();

// The MPI world (MPI must be initialized; see MpiSession). Unavailable when built without MPI.
absl::StatusOr<std::unique_ptr<Communicator>> MakeMpiWorldCommunicator();

// `bootstrap`'s ranks again, over device memory (NCCL), each rank on the CUDA device current on
// the calling thread. Collective over `bootstrap`. UNIMPLEMENTED in a build without NCCL.
absl::StatusOr<std::unique_ptr<Communicator>> MakeDeviceCommunicator(Communicator& bootstrap, const std::string& name);

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
// _SIZE and _LOCAL_RANK / _LOCAL_SIZE, or PMI_RANK / PMI_SIZE and MPI_LOCALRANKID /
// MPI_LOCALNRANKS), before MPI is initialized: rank 0 of 1 when not launched by one. The local
// rank and size are this node's (each rank takes the GPU of its local rank).
struct LauncherPlace {
  int rank = 0, size = 1;
  int local_rank = 0, local_size = 1;
};
LauncherPlace LauncherWorld();
// True when this process was started by mpirun with more than one rank.
bool LaunchedByMpirun();

}  // namespace dsv4
