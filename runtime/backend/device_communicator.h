// Communicators over a backend's memory: the model's collectives take the activations where the
// backend keeps them (runtime/backend/backend.h), which on a GPU is device memory.
//
// Where host memory is the device's (the CPU backend), the group's own communicator is used as it
// is. Otherwise the group gets one of two wrappers, each a Communicator over the same ranks:
//
//  - Device: a communicator that takes device memory itself (NCCL: parallel/nccl_communicator.h,
//    made by MakeDeviceCommunicator). The backend's queued work is waited for first, so a
//    collective reads what the operations before it wrote; the collective returns once its
//    results are in place, so the operations after it read them.
//  - Staged: a host-memory communicator (MPI) reached through host copies: the buffers go to the
//    host, the collective runs there, the results come back. Correct wherever the backend runs,
//    without NCCL; it is what the CPU tests run with a device stand-in (tests/runtime/
//    test_backends.h), and the fallback on GPUs of a build without NCCL.
//
// Results are those of the wrapped communicator (bit-identical across ranks for AllReduceSum, as
// it promises). The copies of the staged form are the communicator's cost, not the model's: on a
// GPU the device form is the one to run. Point-to-point exchanges and peer memory are host-memory
// features, absent here (the default Communicator's). One thread at a time, like the backend.
#pragma once

#include <memory>
#include <string>

#include "parallel/communicator.h"
#include "runtime/backend/backend.h"

namespace dsv4 {

// `inner` takes host memory; `backend` and `inner` must outlive the result.
std::unique_ptr<Communicator> MakeStagedCommunicator(Backend& backend, Communicator& inner);

// `inner` takes the backend's device memory; the result owns it. `backend` must outlive it.
std::unique_ptr<Communicator> MakeBackendOrderedCommunicator(Backend& backend, std::unique_ptr<Communicator> inner);

}  // namespace dsv4
