// `dsv4 logits` in the expert-parallel layouts real clusters use, against the same model on one
// rank (quantization simulation off). The golden model (v4-tiny: 8 heads, 2 output groups, 16
// experts) cannot run --tp 3, so this model is v4-tiny's architecture with 6 heads, 3 output
// groups and 32 routed experts, seeded random weights in the released formats:
//   -np 3 --tp 3           EP 3 over 32 experts (11, 11, 10) with tensor-parallel attention
//   -np 6 --tp 3           EP 6 over 32 experts (6, 6, 5, 5, 5, 5), two TP groups
//   -np 4 --redundant-experts 4     36 slots, the 4 extra holding copies
//   -np 3 --tp 3 --placement FILE   a placement per layer with replicas, from a file
// Every logits row within 1e-3 of one rank's and the same argmax: the runs differ only in the
// order float sums are taken (golden README: 3e-5 between float32 programs); a misrouted token
// or a wrong expert view moves logits by more than 1e-2.
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "parallel/placement.h"
#include "runtime/npy.h"
#include "tests/testutil.h"

namespace dsv4 {
namespace {

class EpLayout : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    nlohmann::json config = testing::TinyConfig();
    config["num_attention_heads"] = 6;
    config["o_groups"] = 3;
    config["n_routed_experts"] = 32;
    dir_ = new std::string(testing::TempDir());
    const absl::Status st = testing::WriteRandomModelDir(*dir_ + "/model", config, 3);
    ASSERT_TRUE(st.ok()) << st;
  }
  static void TearDownTestSuite() {
    delete dir_;
    dir_ = nullptr;
  }

  // Logits [rows, vocab] of `dsv4 logits` under `np` ranks (1: no mpirun) with `args`.
  static std::vector<float> Run(int np, const std::string& args) {
    const std::string out = absl::StrCat(*dir_, "/logits_", np, "_", std::hash<std::string>()(args), ".npy");
    std::vector<int> prompt, decode = {17, 400, 3, 99, 250, 7};
    for (int i = 0; i < 45; ++i) prompt.push_back(1 + (i * 37) % 500);
    const std::string launch =
        np > 1 ? absl::StrCat("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout -s KILL 300 ",
                              DSV4_MPIEXEC, " --oversubscribe -np ", np, " ")
               : std::string("timeout -s KILL 300 ");
    const std::string cmd = absl::StrCat(launch, DSV4_BINARY, " logits --model ", *dir_, "/model --threads 1",
                                         " --qdq off --comm-timeout-s 120 --prompt-ids ", absl::StrJoin(prompt, ","),
                                         " --decode-ids ", absl::StrJoin(decode, ","), " --out ", out, " ", args,
                                         " 2>&1");
    FILE* p = popen(cmd.c_str(), "r");
    std::string output;
    std::array<char, 4096> buf;
    while (p != nullptr && fgets(buf.data(), buf.size(), p)) output += buf.data();
    const int status = p != nullptr ? pclose(p) : -1;
    EXPECT_EQ(status, 0) << cmd << "\n" << output;
    auto npy = ReadNpyF32(out);
    EXPECT_TRUE(npy.ok()) << npy.status() << "\n" << output;
    if (!npy.ok()) return {};
    EXPECT_EQ(npy->shape, (std::vector<int64_t>{7, 512}));
    return npy->data;
  }

  static const std::vector<float>& Reference() {
    static const std::vector<float> ref = Run(1, "");
    return ref;
  }

  static void ExpectSameAsOneRank(int np, const std::string& args) {
    const std::vector<float>& ref = Reference();
    const std::vector<float> got = Run(np, args);
    ASSERT_EQ(got.size(), ref.size());
    const int64_t V = 512;
    for (int64_t row = 0; row < 7; ++row) {
      EXPECT_TRUE(testing::AllClose(absl::StrCat("np ", np, " ", args, " row ", row), &got[row * V], &ref[row * V], V,
                                    {.abs = 1e-3}));
      EXPECT_EQ(std::max_element(&got[row * V], &got[(row + 1) * V]) - &got[row * V],
                std::max_element(&ref[row * V], &ref[(row + 1) * V]) - &ref[row * V])
          << "np " << np << " " << args << " row " << row;
    }
  }

  static inline std::string* dir_ = nullptr;
};

TEST_F(EpLayout, Tp3Ep3) { ExpectSameAsOneRank(3, "--tp 3"); }

TEST_F(EpLayout, Tp3Ep6) { ExpectSameAsOneRank(6, "--tp 3"); }

TEST_F(EpLayout, RedundantExperts) { ExpectSameAsOneRank(4, "--redundant-experts 4"); }

TEST_F(EpLayout, PlacementFile) {
  // EPLB per layer for made-up skewed loads: replicas of different experts in every layer.
  std::vector<std::vector<double>> load(5, std::vector<double>(32, 1.0));
  for (int l = 0; l < 5; ++l) load[l][(7 * l) % 32] = 40, load[l][(7 * l + 3) % 32] = 12;
  auto p = PlanEplb(load, 3, {32 + 4, 0, 1});
  ASSERT_TRUE(p.ok()) << p.status();
  const std::string file = *dir_ + "/placement.json";
  ASSERT_TRUE(WriteFileAtomic(file, p->ToJson("ep_layout_test")).ok());
  ExpectSameAsOneRank(3, "--tp 3 --placement " + file);
}

// `dsv4 plan` writes the placement of the layout it plans, and the runtime runs it: a scenario on
// this very model (3 devices, EP 3, 4 redundant experts), --placement-out, then --placement.
TEST_F(EpLayout, PlannedPlacementRuns) {
  const std::string scenario = *dir_ + "/scenario.json", placement = *dir_ + "/planned.json";
  nlohmann::json s = {
      {"name", "ep_layout_test"},
      {"model", *dir_ + "/model/config.json"},
      {"weights", {{"dense_bits", 8}, {"expert_bits", 4}, {"kv_bits", 8}}},
      {"hardware", {{"device", "h100"}, {"devices_per_node", 3}, {"nodes", 1}}},
      {"parallel", {{"tp", 3}, {"ep", 3}, {"dp_attention", 1}, {"redundant_experts", 4}}},
      {"workload", {{"input_tokens", 64}, {"output_tokens", 8}}},
      {"question", "single_stream"}};
  ASSERT_TRUE(WriteFileAtomic(scenario, s.dump(2)).ok());
  const std::string cmd =
      absl::StrCat(DSV4_BINARY, " plan --scenario ", scenario, " --placement-out ", placement, " > /dev/null 2>&1");
  ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
  auto text = ReadFile(placement);
  ASSERT_TRUE(text.ok()) << text.status();
  auto p = ModelPlacement::FromJson(*text, placement);
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->ep(), 3);
  EXPECT_EQ(p->num_experts(), 32);
  EXPECT_EQ(p->redundant(), 4);
  ExpectSameAsOneRank(3, "--tp 3 --placement " + placement);
}

// The errors a user meets first.
TEST_F(EpLayout, BadPlacementsAreNamed) {
  auto run = [&](int np, const std::string& args) {
    const std::string cmd = absl::StrCat(
        np > 1 ? absl::StrCat("OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 timeout -s KILL 120 ",
                              DSV4_MPIEXEC, " --oversubscribe -np ", np, " ")
               : "",
        DSV4_BINARY, " logits --model ", *dir_, "/model --threads 1 --prompt-ids 1,2,3 --out ", *dir_, "/x.npy ",
        args, " 2>&1");
    FILE* p = popen(cmd.c_str(), "r");
    std::string output;
    std::array<char, 4096> buf;
    while (p != nullptr && fgets(buf.data(), buf.size(), p)) output += buf.data();
    const int status = p != nullptr ? pclose(p) : -1;
    return std::pair{WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
  };
  // A placement for 2 EP ranks given to a job of 3.
  auto two = ModelPlacement::Default(5, 32, 2);
  ASSERT_TRUE(two.ok());
  const std::string file = *dir_ + "/two.json";
  ASSERT_TRUE(WriteFileAtomic(file, two->ToJson()).ok());
  auto [code, out] = run(3, "--placement " + file);
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("the placement is for 2 EP ranks but the layout has --ep 3"), std::string::npos) << out;
  std::tie(code, out) = run(1, "--placement " + *dir_ + "/missing.json");
  EXPECT_NE(code, 0);
  EXPECT_NE(out.find("missing.json"), std::string::npos) << out;
  std::tie(code, out) = run(1, "--redundant-experts 40");
  EXPECT_EQ(code, 2) << out;
  EXPECT_NE(out.find("more than one copy"), std::string::npos) << out;
}

}  // namespace
}  // namespace dsv4
