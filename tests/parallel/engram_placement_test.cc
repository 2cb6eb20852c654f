// The same logits whether the Engram tables are whole on every rank or sharded over 2 or 4 ranks
// and read with one-sided gets (builtin:v4-tiny-engram). Rows are bytes copied, not recomputed,
// so the logits must be bit-identical; which rank served which row is checked by row_store_test.
#include <gtest/gtest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "runtime/npy.h"
#include "tests/testutil.h"

namespace dsv4 {
namespace {

std::vector<float> LogitsOf(const std::string& launch, const std::string& placement) {
  const std::string out = testing::TempDir() + "/logits.npy";
  const std::string cmd = absl::StrCat(
      "OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout 300 ", launch, " ", DSV4_BINARY,
      " logits --model builtin:v4-tiny-engram --prompt-ids 0,100,19923,5,6,7,8 --decode-ids 9,10,11 --threads 1"
      " --engram-placement ", placement, " --out ", out);
  EXPECT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto npy = ReadNpyF32(out);
  EXPECT_TRUE(npy.ok()) << npy.status();
  return npy.ok() ? npy->data : std::vector<float>{};
}

TEST(EngramPlacement, ShardedTablesGiveIdenticalLogits) {
  const std::vector<float> local = LogitsOf("", "local");
  ASSERT_FALSE(local.empty());
  for (const char* np : {"2", "4"})
    for (const char* placement : {"world", "node"}) {
      const std::vector<float> sharded = LogitsOf(absl::StrCat(DSV4_MPIEXEC, " --oversubscribe -np ", np), placement);
      ASSERT_EQ(sharded.size(), local.size()) << np << " " << placement;
      for (size_t i = 0; i < local.size(); ++i)
        ASSERT_EQ(sharded[i], local[i]) << "-np " << np << " --engram-placement " << placement << " element " << i;
    }
}

TEST(EngramPlacement, UnknownPlacementIsAnError) {
  const std::string cmd = absl::StrCat(DSV4_BINARY, " logits --model builtin:v4-tiny --prompt-ids 1 --out ",
                                       testing::TempDir(), "/x.npy --engram-placement rack 2>/dev/null");
  EXPECT_EQ(WEXITSTATUS(std::system(cmd.c_str())), 2);
}

}  // namespace
}  // namespace dsv4
