// The command-line flag parser (base/flags.h): other spellings of a flag, and the error an
// unknown flag gets.
#include "base/flags.h"

#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace dsv4 {
namespace {

Flags CommLike() {
  Flags f;
  f.Int("experts", 256, "routed experts", 1, 1 << 16)
      .Int("experts-per-token", 6, "routed experts per token", 1, 64)
      .Alias("topk", "experts-per-token")
      .Int("tokens", 256, "tokens per rank", 1, 1 << 20)
      .Bool("json", false, "one JSON object");
  return f;
}

absl::Status Parse(Flags& f, std::vector<std::string> args) {
  args.insert(args.begin(), "dsv4");
  std::vector<char*> argv;
  for (auto& a : args) argv.push_back(a.data());
  return f.Parse(static_cast<int>(argv.size()), argv.data(), 1);
}

TEST(Flags, AnAliasSetsItsFlag) {
  for (const std::vector<std::string>& args :
       {std::vector<std::string>{"--topk", "16"}, {"--topk=16"}, {"--experts-per-token", "16"}}) {
    Flags f = CommLike();
    ASSERT_TRUE(Parse(f, args).ok()) << args[0];
    EXPECT_EQ(f.GetInt("experts-per-token"), 16) << args[0];
    EXPECT_TRUE(f.Given("experts-per-token")) << args[0];
  }
  Flags f = CommLike();
  ASSERT_TRUE(Parse(f, {}).ok());
  EXPECT_EQ(f.GetInt("experts-per-token"), 6);
  EXPECT_FALSE(f.Given("experts-per-token"));
}

TEST(Flags, AnAliasIsCheckedAndNamedAsGiven) {
  Flags f = CommLike();
  const absl::Status st = Parse(f, {"--topk", "99"});
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(st.message(), "--topk must be in [1, 64], got '99'");
  Flags g = CommLike();
  EXPECT_EQ(Parse(g, {"--topk"}).message(), "flag --topk needs a value");
  Flags h = CommLike();
  EXPECT_EQ(Parse(h, {"--experts-per-token", "0"}).message(), "--experts-per-token must be in [1, 64], got '0'");
}

TEST(Flags, HelpListsAliases) {
  const std::string help = CommLike().Help();
  EXPECT_NE(help.find("--experts-per-token (also --topk) (default: 6)"), std::string::npos) << help;
  EXPECT_NE(help.find("--experts (default: 256)"), std::string::npos) << help;
}

TEST(Flags, AnUnknownFlagNamesTheLikelyOnes) {
  auto error = [](std::vector<std::string> args) {
    Flags f = CommLike();
    return std::string(Parse(f, std::move(args)).message());
  };
  // One edit, a transposition, a prefix, an alias's misspelling.
  EXPECT_EQ(error({"--expert", "8"}), "unknown flag --expert (did you mean --experts or --experts-per-token?)");
  EXPECT_EQ(error({"--exeprts", "8"}), "unknown flag --exeprts (did you mean --experts?)");
  EXPECT_EQ(error({"--experts-per", "8"}), "unknown flag --experts-per (did you mean --experts-per-token?)");
  EXPECT_EQ(error({"--tpok", "8"}), "unknown flag --tpok (did you mean --topk?)");
  EXPECT_EQ(error({"--token", "8"}), "unknown flag --token (did you mean --tokens?)");
  // Nothing close: the plain error.
  EXPECT_EQ(error({"--hidden", "8"}), "unknown flag --hidden");
  EXPECT_EQ(error({"--x", "8"}), "unknown flag --x");
}

TEST(Flags, SeveralNearNamesClosestFirst) {
  Flags f;
  f.Int("prefill-chunk", 0, "").Int("prefill-chunks", 1, "").Int("prefix", 0, "");
  EXPECT_EQ(std::string(Parse(f, {"--prefil-chunks", "1"}).message()),
            "unknown flag --prefil-chunks (did you mean --prefill-chunks or --prefill-chunk?)");
  Flags g;
  g.Int("rank", 0, "").Int("ranks", 1, "").Int("bank", 0, "");
  EXPECT_EQ(std::string(Parse(g, {"--ran", "1"}).message()), "unknown flag --ran (did you mean --rank or --ranks?)");
}

}  // namespace
}  // namespace dsv4
