// The dsv4 command under careless and hostile use (issue 18's findings 3, 4, 7 to 11): each case
// runs the binary as a user would and checks the exit code, the one-line error and what was (not)
// written. Every case failed before its fix (an abort, a wrong or empty message, a silent success).
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>

#include "base/file.h"
#include "nlohmann/json.hpp"
#include "runtime/npy.h"
#include "tests/launch/run_dsv4.h"
#include "tests/testutil.h"

namespace dsv4::testing {
namespace {

// Run options with one field set (designated initializers would leave the others to a warning).
RunOptions WithEnv(std::map<std::string, std::string> env) {
  RunOptions o;
  o.env = std::move(env);
  return o;
}
RunOptions InDir(std::string cwd) {
  RunOptions o;
  o.cwd = std::move(cwd);
  return o;
}

namespace fs = std::filesystem;

// The one error line of a failed command.
::testing::AssertionResult FailsWith(const RunResult& r, int code, std::initializer_list<std::string> parts) {
  if (r.exit_code != code)
    return ::testing::AssertionFailure() << "exit " << r.exit_code << " (want " << code << "); stderr:\n" << r.err;
  for (const std::string& p : parts)
    if (r.err.find(p) == std::string::npos)
      return ::testing::AssertionFailure() << "stderr lacks '" << p << "':\n" << r.err;
  if (r.err.find("dsv4") == std::string::npos) return ::testing::AssertionFailure() << "no dsv4 error line:\n" << r.err;
  return ::testing::AssertionSuccess();
}

// A small checkpoint directory (vocabulary 512) with one tensor edited.
std::string ModelDir(const std::function<void(TensorToWrite&)>& edit = nullptr) {
  return WriteModelDir(TinyConfig(), 1, edit);
}

// Puts a NaN into element `index` of the BF16 tensor `name`.
std::function<void(TensorToWrite&)> PoisonBf16(const std::string& name, int64_t index) {
  return [=](TensorToWrite& t) {
    if (t.name != name) return;
    ASSERT_EQ(t.dtype, DType::kBF16);
    t.bytes[2 * index] = 0xc0, t.bytes[2 * index + 1] = 0x7f;  // 0x7fc0: a quiet NaN
  };
}

// ---- finding 3: invalid UTF-8 in chat text aborted the process (uncaught nlohmann type_error) ---

TEST(CliFinding3, InvalidUtf8InChatTextIsAnError) {
  for (const char* flag : {"--prompt", "--system", "--stop", "--request-id"}) {
    const RunResult r = RunDsv4({"generate", "--server", "127.0.0.1:1", flag, "ok \xff\xfe", "--timeout-s", "1"});
    EXPECT_TRUE(FailsWith(r, 2, {flag, "not valid UTF-8", "at byte 3"})) << flag;
  }
}

// ---- finding 4: --threads 100000 / DSV4_NUM_THREADS=99999 ended in std::system_error ---------------

TEST(CliFinding4, ThreadCountsOutOfRangeAreRefusedBeforeAnythingStarts) {
  EXPECT_TRUE(FailsWith(RunDsv4({"logits", "--prompt-ids", "1", "--out", TempDir() + "/x.npy", "--threads", "100000"}),
                        2, {"--threads", "[0, 1024]"}));
  EXPECT_TRUE(FailsWith(
      RunDsv4({"logits", "--prompt-ids", "1", "--out", TempDir() + "/x.npy"}, WithEnv({{"DSV4_NUM_THREADS", "99999"}})),
      2, {"DSV4_NUM_THREADS", "99999", "[0, 1024]"}));
  // serve used to write its info file first and then die.
  const std::string info = TempDir() + "/info.json";
  EXPECT_TRUE(FailsWith(RunDsv4({"serve", "--port", "0", "--info-file", info, "--threads", "100000"}), 2,
                        {"--threads"}));
  EXPECT_TRUE(
      FailsWith(RunDsv4({"serve", "--port", "0", "--info-file", info}, WithEnv({{"DSV4_NUM_THREADS", "99999"}})), 2,
                {"DSV4_NUM_THREADS"}));
  EXPECT_FALSE(fs::exists(info));
}

// The system refusing a thread (a process limit) is an error naming the cause, not an abort.
// RLIMIT_NPROC binds unprivileged users only: the child runs as nobody.
TEST(CliFinding4, RefusedThreadIsAnError) {
  if (geteuid() != 0) GTEST_SKIP() << "needs root, to run the child as an unprivileged user under RLIMIT_NPROC";
  const std::string dir = TempDir();
  chmod(dir.c_str(), 0777);
  RunOptions opt;
  opt.uid = 65534;  // nobody
  opt.limits = {{RLIMIT_NPROC, 3}};
  const RunResult r = RunDsv4({"logits", "--prompt-ids", "1,2", "--out", dir + "/x.npy", "--threads", "8"}, opt);
  if (r.exit_code == 202) GTEST_SKIP() << "cannot switch to user nobody here";
  EXPECT_TRUE(FailsWith(r, 1, {"cannot start 8 CPU threads", "--threads"}));
  EXPECT_FALSE(fs::exists(dir + "/x.npy"));
}

// ---- finding 7: a failed write truncated the .npy and had already destroyed the old file --------

TEST(CliFinding7, FailedWriteKeepsTheOldFile) {
  const std::string dir = TempDir(), out = dir + "/logits.npy";
  ASSERT_TRUE(WriteFileAtomic(out, "the previous result").ok());
  RunOptions opt;
  opt.limits = {{RLIMIT_FSIZE, 4096}};  // the array is 512 floats + header > 2 KiB... and more with decode steps
  opt.ignore_signals = {SIGXFSZ};       // so the write fails with EFBIG instead of killing the process
  const RunResult r =
      RunDsv4({"logits", "--model", ModelDir(), "--prompt-ids", "1,2,3", "--decode-ids", "4,5,6", "--out", out}, opt);
  EXPECT_TRUE(FailsWith(r, 1, {out, "File too large"}));
  EXPECT_EQ(ReadFile(out).value_or(""), "the previous result");
  for (const auto& e : fs::directory_iterator(dir)) EXPECT_EQ(e.path().string(), out) << "left behind";
  // Without the limit the same command replaces the file with the whole array.
  ASSERT_EQ(RunDsv4({"logits", "--model", ModelDir(), "--prompt-ids", "1,2,3", "--decode-ids", "4,5,6", "--out", out})
                .exit_code,
            0);
  auto npy = ReadNpyF32(out);
  ASSERT_TRUE(npy.ok()) << npy.status();
  EXPECT_EQ(npy->shape, (std::vector<int64_t>{4, 512}));
}

// ---- finding 8: NaN weights gave all-NaN logits with exit 0 -------------------------------------

TEST(CliFinding8, NonFiniteHiddenStateNamesTheLayer) {
  const std::string model = ModelDir(PoisonBf16("layers.2.ffn_norm.weight", 5));
  const std::string out = TempDir() + "/x.npy";
  EXPECT_TRUE(FailsWith(RunDsv4({"logits", "--model", model, "--prompt-ids", "1,2,3", "--out", out}), 1,
                        {"non-finite", "after layer 2", "--check-weights"}));
  EXPECT_FALSE(fs::exists(out));
  EXPECT_TRUE(FailsWith(RunDsv4({"complete", "--model", model, "--prompt-ids", "1,2,3", "--max-tokens", "2"}), 1,
                        {"after layer 2"}));
}

TEST(CliFinding8, CheckWeightsNamesTheTensor) {
  const std::string model = ModelDir(PoisonBf16("layers.3.attn_norm.weight", 17));
  EXPECT_TRUE(FailsWith(RunDsv4({"logits", "--model", model, "--prompt-ids", "1", "--out", TempDir() + "/x.npy",
                                 "--check-weights"}),
                        2, {"--check-weights", "layers.3.attn_norm.weight", "BF16", "1 NaN/Inf", "element 17"}));
  // A clean checkpoint passes the scan and computes.
  EXPECT_EQ(RunDsv4({"logits", "--model", ModelDir(), "--prompt-ids", "1", "--out", TempDir() + "/x.npy",
                     "--check-weights"})
                .exit_code,
            0);
}

// ---- finding 9: a flag took the next --flag as its value; bare booleans failed in some commands --

TEST(CliFinding9, AFlagNeverTakesAFlagAsItsValue) {
  const std::string cwd = TempDir();
  const RunResult r = RunDsv4({"logits", "--prompt-ids", "1", "--out", "--qdq"}, InDir(cwd));
  EXPECT_TRUE(FailsWith(r, 2, {"--out needs a value"}));
  EXPECT_TRUE(fs::is_empty(cwd)) << "a file named --qdq was written";
}

TEST(CliFinding9, BareBooleansWorkInEveryCommand) {
  // Parsed (the failure is the connection, exit 1), not "unexpected argument" (exit 2).
  const RunResult r = RunDsv4({"generate", "--server", "127.0.0.1:1", "--json", "--raw", "--ignore-eos", "--thinking",
                               "--timeout-s", "1"});
  EXPECT_EQ(r.exit_code, 1) << r.err;
  EXPECT_EQ(r.err.find("unexpected argument"), std::string::npos) << r.err;
  const std::string text = TempDir() + "/text";
  ASSERT_TRUE(WriteFileAtomic(text, "hello\n").ok());
  const RunResult t = RunDsv4({"tokenize", "--model", "builtin:v4-tiny", "--text-file", text, "--special"});
  EXPECT_EQ(t.exit_code, 0) << t.err;
}

TEST(CliFlags, AMisspelledFlagNamesTheLikelyOne) {
  // `bench comm` takes DeepEP's `--topk` for `--experts-per-token`; its checks name the spelling
  // given, and a misspelled flag is answered with the likely spelling.
  EXPECT_TRUE(FailsWith(RunDsv4({"bench", "comm", "--topk", "99"}), 2, {"--topk must be in [1, 64]"}));
  EXPECT_TRUE(FailsWith(RunDsv4({"bench", "comm", "--tpok", "6"}), 2, {"unknown flag --tpok (did you mean --topk?)"}));
  EXPECT_TRUE(
      FailsWith(RunDsv4({"logits", "--promt-ids", "1"}), 2, {"unknown flag --promt-ids (did you mean --prompt-ids?)"}));
  const RunResult help = RunDsv4({"bench", "comm", "--help"});
  EXPECT_NE(help.out.find("--experts-per-token (also --topk)"), std::string::npos) << help.out << help.err;
}

// ---- finding 10: errors that said nothing or the wrong thing ------------------------------------

TEST(CliFinding10, ARegularFileAsModelSaysSo) {
  const std::string file = TempDir() + "/model.bin";
  ASSERT_TRUE(WriteFileAtomic(file, "x").ok());
  EXPECT_TRUE(FailsWith(RunDsv4({"logits", "--model", file, "--prompt-ids", "1", "--out", TempDir() + "/x.npy"}), 2,
                        {file, "is a file, not a checkpoint directory"}));
}

TEST(CliFinding10, AConfigSyntaxErrorIsReportedAsOne) {
  const std::string model = ModelDir();
  ASSERT_TRUE(WriteFileAtomic(model + "/config.json", "{\"vocab_size\": 512,\n \"hidden_size\": }").ok());
  EXPECT_TRUE(FailsWith(RunDsv4({"logits", "--model", model, "--prompt-ids", "1", "--out", TempDir() + "/x.npy"}), 2,
                        {"config.json", "invalid JSON", "line 2"}));
  ASSERT_TRUE(WriteFileAtomic(model + "/config.json", "[1, 2]").ok());
  EXPECT_TRUE(FailsWith(RunDsv4({"logits", "--model", model, "--prompt-ids", "1", "--out", TempDir() + "/x.npy"}), 2,
                        {"config.json", "must be a JSON object, not array"}));
}

TEST(CliFinding10, BadTlsFilesAreNamed) {
  const std::string dir = TempDir();
  ASSERT_TRUE(WriteFileAtomic(dir + "/bad.pem", "-----BEGIN CERTIFICATE-----\nnot base64\n").ok());
  const std::string info = dir + "/info.json";
  EXPECT_TRUE(FailsWith(RunDsv4({"serve", "--port", "0", "--info-file", info, "--tls-cert", dir + "/bad.pem",
                                 "--tls-key", dir + "/bad.pem"}),
                        2, {"--tls-cert", dir + "/bad.pem", "not a PEM certificate"}));
  EXPECT_FALSE(fs::exists(info));
  EXPECT_TRUE(FailsWith(
      RunDsv4({"generate", "--server", "127.0.0.1:1", "--tls-ca", dir + "/bad.pem", "--timeout-s", "1"}), 2,
      {"--tls-ca", "no PEM certificate"}));
}

// ---- finding 11 ----------------------------------------------------------------------------------

// --device is checked before anything loads: a bad name, and a GPU this build or machine does not
// have (or, on a GPU machine, one this version does not run the model on), are one-line errors
// naming the flag; cpu gives the default's logits.
TEST(CliDevice, DeviceIsCheckedBeforeAnythingLoads) {
  const std::string out = TempDir() + "/device.npy";
  EXPECT_TRUE(FailsWith(RunDsv4({"logits", "--device", "gpu", "--prompt-ids", "1,2", "--out", out}), 2,
                        {"--device must be cpu, cuda or auto", "'gpu'"}));
  EXPECT_TRUE(FailsWith(RunDsv4({"logits", "--device", "cuda", "--prompt-ids", "1,2", "--out", out}), 1,
                        {"--device cuda: "}));
  EXPECT_FALSE(fs::exists(out));
  const std::string cpu = TempDir() + "/cpu.npy", dflt = TempDir() + "/default.npy";
  ASSERT_EQ(RunDsv4({"logits", "--device", "cpu", "--prompt-ids", "1,2,3", "--out", cpu}).exit_code, 0);
  ASSERT_EQ(RunDsv4({"logits", "--prompt-ids", "1,2,3", "--out", dflt}).exit_code, 0);
  EXPECT_EQ(ReadFile(cpu).value_or("cpu"), ReadFile(dflt).value_or("default"));
}

TEST(CliFinding11, EmptyPromptIdsIsAnError) {
  EXPECT_TRUE(FailsWith(RunDsv4({"generate", "--server", "127.0.0.1:1", "--prompt-ids", ""}), 2,
                        {"--prompt-ids is empty"}));
  EXPECT_TRUE(FailsWith(RunDsv4({"logits", "--prompt-ids", "", "--out", TempDir() + "/x.npy"}), 2, {"--prompt-ids"}));
}

TEST(CliFinding11, ServerPortOutOfRangeIsAnError) {
  EXPECT_TRUE(FailsWith(RunDsv4({"generate", "--server", "127.0.0.1:99999", "--timeout-s", "1"}), 2,
                        {"127.0.0.1:99999", "99999", "[1, 65535]"}));
  EXPECT_TRUE(FailsWith(RunDsv4({"ctl", "status", "--server", "localhost:http"}), 2, {"not a number"}));
  EXPECT_TRUE(FailsWith(RunDsv4({"generate", "--server", "127.0.0.1", "--timeout-s", "1"}), 2, {"host:port"}));
}

TEST(CliFinding11, TokenizeADirectoryIsAnError) {
  const RunResult r = RunDsv4({"tokenize", "--model", "builtin:v4-tiny", "--text-file", TempDir()});
  EXPECT_TRUE(FailsWith(r, 2, {"is a directory"}));
  EXPECT_TRUE(r.out.empty());
}

TEST(CliFinding11, ConfigFieldsTheRuntimeRelyOnAreChecked) {
  const std::string model = ModelDir();
  nlohmann::json c = TinyConfig();
  c["eos_token_id"] = 512;  // the vocabulary is [0, 512)
  ASSERT_TRUE(WriteFileAtomic(model + "/config.json", c.dump()).ok());
  EXPECT_TRUE(FailsWith(RunDsv4({"logits", "--model", model, "--prompt-ids", "1", "--out", TempDir() + "/x.npy"}), 2,
                        {"eos_token_id", "512", "outside the vocabulary"}));
  c = TinyConfig();
  c["model_type"] = "llama";
  ASSERT_TRUE(WriteFileAtomic(model + "/config.json", c.dump()).ok());
  EXPECT_TRUE(FailsWith(RunDsv4({"logits", "--model", model, "--prompt-ids", "1", "--out", TempDir() + "/x.npy"}), 2,
                        {"model_type", "llama", "deepseek_v4"}));
}

// `plan --list` names the host CPUs a scenario can give as hardware.host_cpu, with their clocks; an
// unknown one is an error that lists them.
TEST(CliPlan, ListNamesTheHostCpus) {
  const RunResult list = RunDsv4({"plan", "--list"});
  ASSERT_EQ(list.exit_code, 0) << list.err;
  for (const char* name : {"host cpu (hardware.host_cpu)", "xeon-6980p", "epyc-9v45", "epyc-9965"})
    EXPECT_NE(list.out.find(name), std::string::npos) << name << "\n" << list.out;
  nlohmann::json s = {
      {"model", "deepseek-r1"},
      {"hardware", {{"device", "cpu"}, {"devices_per_node", 1}, {"nodes", 1}, {"host_cpu", "epyc-9999"}}},
      {"parallel", {{"tp", 1}, {"ep", 1}, {"experts_on", "host"}}},
      {"workload", {{"input_tokens", 512}, {"output_tokens", 128}, {"concurrency", 1}}},
      {"question", "single_stream"}};
  const std::string file = TempDir() + "/s.json";
  ASSERT_TRUE(WriteFileAtomic(file, s.dump()).ok());
  EXPECT_TRUE(FailsWith(RunDsv4({"plan", "--scenario", file}), 2,
                        {"scenario.hardware.host_cpu", "unknown host CPU 'epyc-9999'", "epyc-9v45"}));
}

// `bench prefill` names the level that ran and, where it is not amx, why the tiles were not used;
// on the amx level the GEMMs take the tiles (a prefill of 40 tokens runs the GEMM path), on a lower
// one none of them. Whatever the machine: DSV4_CPU_ISA=amx asks for the best level, avx512_bf16 and
// scalar lower it.
TEST(CliBench, PrefillReportsTheLevelThatRanAndWhyNotAmx) {
  for (const char* want : {"amx", "avx512_bf16", "scalar"}) {
    const RunResult r = RunDsv4({"bench", "prefill", "--model", "builtin:v4-tiny", "--context", "40", "--steps", "1",
                                 "--threads", "2", "--json", "true"},
                                WithEnv({{"DSV4_CPU_ISA", want}}));
    ASSERT_EQ(r.exit_code, 0) << want << ": " << r.err;
    const nlohmann::json j = nlohmann::json::parse(r.out);
    const std::string isa = j["isa"].get<std::string>();
    SCOPED_TRACE(std::string("DSV4_CPU_ISA=") + want + ", ran " + isa + "\n" + r.out);
    EXPECT_GT(j["tokens_per_s"].get<double>(), 0.0);
    if (isa == "amx") {
      EXPECT_STREQ(want, "amx");
      EXPECT_GT(j["amx_flops_share"].get<double>(), 0.0);
      EXPECT_GT(j["peak_gflops_amx"].get<double>(), 0.0);
      EXPECT_FALSE(j.contains("amx_unavailable"));
    } else {
      EXPECT_EQ(j["amx_flops_share"].get<double>(), 0.0);
      // Asked for amx and did not get it: the report says why.
      if (std::string(want) == "amx") {
        EXPECT_FALSE(j.value("amx_unavailable", std::string()).empty());
      }
    }
    if (std::string(want) == "scalar") {
      EXPECT_EQ(isa, "scalar");
    }
  }
}

// The copies stored for the AMX tiles stay within DSV4_CPU_STORE_LIMIT_MB: with a small limit some
// products take the tiles and the log says a copy was not made; with 0 none do, and the logits
// are the avx512_bf16 level's bit for bit (every weight not stored runs as at that level). A limit
// outside its range is refused before anything runs. Skips where the amx level is not this
// machine's.
TEST(CliBench, StoredWeightsStayWithinTheirLimit) {
  auto prefill = [](const std::string& limit) {
    std::map<std::string, std::string> env;
    if (!limit.empty()) env["DSV4_CPU_STORE_LIMIT_MB"] = limit;
    return RunDsv4({"bench", "prefill", "--model", "builtin:v4-tiny", "--context", "40", "--steps", "1", "--threads",
                    "2", "--json", "true"},
                   WithEnv(env));
  };
  EXPECT_TRUE(FailsWith(prefill("-2"), 2, {"DSV4_CPU_STORE_LIMIT_MB='-2' is not valid"}));
  const RunResult all = prefill("");
  ASSERT_EQ(all.exit_code, 0) << all.err;
  const nlohmann::json j = nlohmann::json::parse(all.out);
  if (j["isa"] != "amx") GTEST_SKIP() << "the amx level is not this machine's (" << j["isa"] << "): nothing is stored";
  const double share = j["amx_flops_share"].get<double>();
  EXPECT_GT(share, 0.0);
  EXPECT_EQ(all.err.find("of their limit"), std::string::npos) << all.err;
  const RunResult some = prefill("1");
  ASSERT_EQ(some.exit_code, 0) << some.err;
  const double some_share = nlohmann::json::parse(some.out)["amx_flops_share"].get<double>();
  EXPECT_GT(some_share, 0.0);
  EXPECT_LT(some_share, share);
  EXPECT_NE(some.err.find("of their limit of 1.0 MiB"), std::string::npos) << some.err;
  EXPECT_NE(some.err.find("DSV4_CPU_STORE_LIMIT_MB"), std::string::npos) << some.err;
  const RunResult none = prefill("0");
  ASSERT_EQ(none.exit_code, 0) << none.err;
  EXPECT_EQ(nlohmann::json::parse(none.out)["amx_flops_share"].get<double>(), 0.0);

  const std::string dir = TempDir();
  auto logits = [&](const std::string& name, std::map<std::string, std::string> env) {
    const std::string out = dir + "/" + name + ".npy";
    const RunResult r = RunDsv4({"logits", "--model", "builtin:v4-tiny", "--prompt-ids",
                                 "3,1,4,1,5,9,2,6,5,3,5,8,9,7,9,3,2,3,8,4,6,2,6,4,3,3,8,3,2,7,9,5,0,2,8,8,4,1,9,7",
                                 "--decode-ids", "1,6,9", "--out", out},
                                WithEnv(std::move(env)));
    EXPECT_EQ(r.exit_code, 0) << r.err;
    auto bytes = ReadFile(out);
    EXPECT_TRUE(bytes.ok()) << bytes.status();
    return bytes.ok() ? *bytes : std::string();
  };
  const std::string unstored = logits("unstored", {{"DSV4_CPU_STORE_LIMIT_MB", "0"}});
  const std::string lower = logits("avx512_bf16", {{"DSV4_CPU_ISA", "avx512_bf16"}});
  ASSERT_FALSE(unstored.empty());
  EXPECT_TRUE(unstored == lower) << "with nothing stored, the amx level's logits differ from avx512_bf16's";
}

}  // namespace
}  // namespace dsv4::testing
