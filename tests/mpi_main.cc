#include "tests/mpi_main.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <chrono>

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
  dsv4::MpiSession mpi(&argc, &argv);
  int rank = 0;
  if (dsv4::LaunchedByMpirun()) MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  if (rank != 0) GTEST_FLAG_SET(brief, true);
  const int rc = RUN_ALL_TESTS();
  int worst = rc;
  if (dsv4::LaunchedByMpirun()) MPI_Allreduce(&rc, &worst, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);
  return worst;
}
