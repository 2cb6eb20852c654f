// The one gtest main of the tests that run as every rank of an mpirun job (tests/mpi_main.cc):
// MPI is initialized before the tests and finalized after them; rank 0 prints the full report and
// the other ranks only their failures; the exit code is the worst of all ranks, so a failure on
// any rank fails the test.
#pragma once

#include <memory>

#include "parallel/communicator.h"

namespace dsv4::testing {

// A fresh communicator over the job's world (a world of one without mpirun), with a 30 s timeout
// so a missing peer fails the test instead of hanging it.
std::unique_ptr<Communicator> World();

}  // namespace dsv4::testing
