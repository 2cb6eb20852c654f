#include "base/env.h"

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

extern char** environ;

namespace dsv4::env {
namespace {

constexpr KnobInfo kKnobs[] = {
    {Knob::kCpuIsa, "DSV4_CPU_ISA", "auto",
     "CPU kernel path: auto (the best the CPU has), amx, avx512_bf16 (AVX-512 with VBMI and BF16), avx512, avx2 or "
     "scalar; never above what the CPU supports",
     "one-of:auto|amx|avx512_bf16|avx512|avx2|scalar"},
    {Knob::kNumThreads, "DSV4_NUM_THREADS", "0", "CPU worker threads per rank (0 = one per available core)",
     "int:0:1024"},
    {Knob::kPinThreads, "DSV4_PIN_THREADS", "1", "pin the CPU pool's worker threads one per core (0: let them float)",
     "int:0:1"},
    {Knob::kFaultInject, "DSV4_FAULT_INJECT", "",
     "testing only: RANK:STEP:KILL|STOP makes that world rank kill or stop itself when it reaches STEP", "fault"},
    {Knob::kTokenizer, "DSV4_TOKENIZER", "",
     "tokenizer.json (or its directory) for builtin:* models; default: the copy launch/setup.sh installs", ""},
    {Knob::kLogLevel, "DSV4_LOG_LEVEL", "info", "log verbosity: trace, debug, info, warn, error or off",
     "one-of:trace|debug|info|warn|error|off"},
    {Knob::kSharedDir, "DSV4_SHARED_DIR_OVERRIDE", "", "tests only: the shared/ folder with the golden data", ""},
    {Knob::kGoldenLaunch, "DSV4_GOLDEN_LAUNCH", "", "tests only: command the golden cases run dsv4 under (mpirun ...)",
     ""},
    {Knob::kGoldenArgs, "DSV4_GOLDEN_ARGS", "", "tests only: extra dsv4 flags for the golden cases (--tp 2 ...)", ""},
    {Knob::kGoldenBinary, "DSV4_GOLDEN_BINARY", "",
     "tests only: the dsv4 binary the golden cases run (default: the one built beside the test)", ""},
    {Knob::kServeNp, "DSV4_SERVE_NP", "1", "tests only: ranks of the job the serving tests start", "int:1:64"},
    {Knob::kServeArgs, "DSV4_SERVE_ARGS", "",
     "tests only: extra flags of the job the serving tests start (e.g. --tp 2)", ""},
    {Knob::kEpSingleCopy, "DSV4_EP_SINGLE_COPY", "1",
     "MoE dispatch/combine between ranks of one node read each other's memory directly (Linux cross-memory attach, "
     "one copy, no packing); 0: messages only",
     "int:0:1"},
    {Knob::kSoakRequests, "DSV4_SOAK_REQUESTS", "120",
     "tests only: requests of mixed load in serve_soak_test after its warm-up (a stop, a storm and a kill come on top)",
     "int:30:10000000"},
    {Knob::kFuzzSeconds, "DSV4_FUZZ_SECONDS", "30", "tests only: seconds each libFuzzer target runs in launch/fuzz.sh",
     "int:1:604800"},
    {Knob::kDeviceComm, "DSV4_DEVICE_COMM", "nccl",
     "how GPU ranks (--device cuda under mpirun) exchange activations: nccl (device memory; a build without NCCL "
     "falls back to host), or host (copied to host memory and sent over MPI)",
     "one-of:nccl|host"},
    {Knob::kCpuStoreLimit, "DSV4_CPU_STORE_LIMIT_MB", "-1",
     "amx level: MiB of host memory the copies of the FP8/FP4 weights stored for the AMX tiles may take; past it the "
     "other weights run as they are, on the avx512_bf16 paths (-1: three quarters of the memory available when the "
     "backend starts, shared by the node's ranks; 0: store none)",
     "int:-1:1099511627776"},
};

absl::Status CheckValue(const KnobInfo& k, const std::string& v) {
  const absl::string_view spec = k.values;
  auto bad = [&](absl::string_view accepts) {
    return absl::InvalidArgumentError(absl::StrCat(k.name, "='", v, "' is not valid: it takes ", accepts));
  };
  if (absl::StartsWith(spec, "int:")) {
    std::vector<absl::string_view> parts = absl::StrSplit(spec.substr(4), ':');
    int64_t lo = 0, hi = 0, x = 0;
    if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &lo) || !absl::SimpleAtoi(parts[1], &hi))
      return absl::OkStatus();
    if (!absl::SimpleAtoi(v, &x) || x < lo || x > hi) return bad(absl::StrCat("an integer in [", lo, ", ", hi, "]"));
  } else if (absl::StartsWith(spec, "one-of:")) {
    std::vector<absl::string_view> options = absl::StrSplit(spec.substr(7), '|');
    if (std::find(options.begin(), options.end(), v) == options.end())
      return bad(absl::StrCat("one of ", absl::StrJoin(options, ", ")));
  } else if (spec == "fault") {
    std::vector<absl::string_view> parts = absl::StrSplit(v, ':');
    int64_t rank = 0, step = 0;
    if (parts.size() != 3 || !absl::SimpleAtoi(parts[0], &rank) || !absl::SimpleAtoi(parts[1], &step) || rank < 0 ||
        step < 0 || (parts[2] != "KILL" && parts[2] != "STOP"))
      return bad("RANK:STEP:KILL or RANK:STEP:STOP");
  }
  return absl::OkStatus();
}

}  // namespace

// The table is indexed by Knob: each entry sits at its enumerator's position.
constexpr bool TableInEnumOrder() {
  for (size_t i = 0; i < std::size(kKnobs); ++i)
    if (static_cast<size_t>(kKnobs[i].knob) != i) return false;
  return true;
}
static_assert(TableInEnumOrder(), "env.cc's knob table must list the knobs in the order of enum Knob");

std::span<const KnobInfo> Knobs() { return kKnobs; }

const KnobInfo& Info(Knob knob) { return kKnobs[static_cast<int>(knob)]; }

bool IsSet(Knob knob) {
  const char* v = std::getenv(Info(knob).name);
  return v != nullptr && *v != '\0';
}

std::string Str(Knob knob) {
  const KnobInfo& k = Info(knob);
  const char* v = std::getenv(k.name);
  return (v == nullptr || *v == '\0') ? std::string(k.default_value) : std::string(v);
}

int64_t Int(Knob knob) {
  int64_t x = 0;
  if (absl::SimpleAtoi(Str(knob), &x) && CheckValue(Info(knob), Str(knob)).ok()) return x;
  int64_t fallback = 0;
  (void)absl::SimpleAtoi(Info(knob).default_value, &fallback);
  return fallback;
}

absl::Status CheckAll() {
  for (const KnobInfo& k : kKnobs)
    if (IsSet(k.knob))
      if (absl::Status st = CheckValue(k, Str(k.knob)); !st.ok()) return st;
  return absl::OkStatus();
}

std::vector<std::string> UnknownVariables() {
  std::vector<std::string> unknown;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    const absl::string_view entry = *e;
    if (!absl::StartsWith(entry, "DSV4_")) continue;
    const absl::string_view name = entry.substr(0, entry.find('='));
    const bool known =
        std::any_of(std::begin(kKnobs), std::end(kKnobs), [&](const KnobInfo& k) { return name == k.name; });
    if (!known) unknown.emplace_back(name);
  }
  std::sort(unknown.begin(), unknown.end());
  return unknown;
}

std::string Help() {
  std::string out;
  for (const KnobInfo& k : kKnobs)
    absl::StrAppend(&out, "  ", k.name, " (default: ", *k.default_value ? k.default_value : "none", ")\n      ", k.help,
                    "\n");
  return out;
}

}  // namespace dsv4::env
