#include "tests/mpi_main.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>
#include <memory>

namespace dsv4::testing {

std::unique_ptr<Communicator> World() {
  if (!LaunchedByMpirun()) return MakeLocalCommunicator();
  auto w = MakeMpiWorldCommunicator();
  EXPECT_TRUE(w.ok()) << w.status();
  if (!w.ok()) return MakeLocalCommunicator();
  (*w)->set_timeout(std::chrono::seconds(30));
  return std::move(*w);
}

}  // namespace dsv4::testing

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  // MPI only under mpirun (as the dsv4 binary): alone, the tests run on a world of one and need no
  // MPI runtime (a GPU machine without one runs them so).
  std::unique_ptr<dsv4::MpiSession> mpi;
  if (dsv4::LaunchedByMpirun()) mpi = std::make_unique<dsv4::MpiSession>(&argc, &argv);
  int rank = 0;
  if (dsv4::LaunchedByMpirun()) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) GTEST_FLAG_SET(brief, true);
  const int rc = RUN_ALL_TESTS();
  int worst = rc;
  if (dsv4::LaunchedByMpirun()) MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}
