// Finding 6 of issue 18: `mpirun ... dsv4 logits` whose ranks loaded different models exited 0
// with wrong logits (off by up to 4.06). Every command that opens the model now checks that all
// ranks opened the same one (the config digest before loading, the checkpoint's fingerprint after)
// and fails on every rank with one error naming both. Runs two ranks as one MPMD job.
#include <gtest/gtest.h>

#include <filesystem>

#include "runtime/npy.h"
#include "tests/launch/run_dsv4.h"
#include "tests/testutil.h"

namespace dsv4::testing {
namespace {

RunOptions Mpi() {
  RunOptions o;
  o.env = {{"OMPI_ALLOW_RUN_AS_ROOT", "1"},
           {"OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1"},
           {"OMPI_MCA_rmaps_base_oversubscribe", "1"}};
  return o;
}

// `mpirun -np 1 dsv4 <command> --model A ... : -np 1 dsv4 <command> --model B ...`
RunResult TwoModels(const std::string& a, const std::string& b, const std::vector<std::string>& command) {
  std::vector<std::string> argv = {DSV4_MPIEXEC, "--oversubscribe"};
  for (int rank = 0; rank < 2; ++rank) {
    const std::string& model = rank == 0 ? a : b;
    if (rank == 1) argv.push_back(":");
    argv.insert(argv.end(), {"-np", "1", Dsv4Binary()});
    argv.insert(argv.end(), command.begin(), command.end());
    argv.insert(argv.end(), {"--model", model, "--threads", "1"});
  }
  return RunCommand(argv, Mpi());
}

TEST(CliFinding6, RanksWithDifferentConfigsFail) {
  nlohmann::json other = TinyConfig();
  other["num_hidden_layers"] = 4;
  other["compress_ratios"] = {0, 4, 128, 0};
  const std::string a = WriteModelDir(TinyConfig()), b = WriteModelDir(other);
  const std::string out = TempDir() + "/x.npy";
  const RunResult r = TwoModels(a, b, {"logits", "--prompt-ids", "1,2,3", "--out", out});
  EXPECT_NE(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("rank 1 and rank 0 opened different config"), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(a), std::string::npos) << r.err;
  EXPECT_NE(r.err.find(b), std::string::npos) << r.err;
  EXPECT_FALSE(std::filesystem::exists(out));
}

// The same config with other weights (a fine-tune, another seed): caught by the fingerprint.
TEST(CliFinding6, RanksWithDifferentWeightsFail) {
  const std::string a = WriteModelDir(TinyConfig(), 1), b = WriteModelDir(TinyConfig(), 2);
  const RunResult r = TwoModels(a, b, {"complete", "--prompt-ids", "1,2,3", "--max-tokens", "2"});
  EXPECT_NE(r.exit_code, 0) << r.err;
  EXPECT_NE(r.err.find("opened different weights"), std::string::npos) << r.err;
}

// Copies of one checkpoint at different paths are the same model: the job runs, and its logits
// equal a single rank's.
TEST(CliFinding6, CopiesAtDifferentPathsAgree) {
  const std::string a = WriteModelDir(TinyConfig(), 3), b = WriteModelDir(TinyConfig(), 3);
  const std::string out = TempDir() + "/two.npy", ref = TempDir() + "/one.npy";
  const RunResult r = TwoModels(a, b, {"logits", "--prompt-ids", "1,2,3", "--decode-ids", "4", "--out", out});
  ASSERT_EQ(r.exit_code, 0) << r.err;
  ASSERT_EQ(RunDsv4({"logits", "--model", a, "--prompt-ids", "1,2,3", "--decode-ids", "4", "--out", ref}).exit_code, 0);
  auto x = ReadNpyF32(out), y = ReadNpyF32(ref);
  ASSERT_TRUE(x.ok() && y.ok());
  ASSERT_EQ(x->data.size(), y->data.size());
  // Two ranks split the experts (EP over the world) and sum their outputs in rank order: the same
  // products, added in another order, so float32 rounding may differ in the last bits.
  EXPECT_TRUE(AllClose("logits", x->data.data(), y->data.data(), x->data.size(), Tol{1e-4, 1e-4, 0.99999}));
}

}  // namespace
}  // namespace dsv4::testing
