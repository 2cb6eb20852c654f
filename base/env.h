// The one registry of environment knobs. Every DSV4_* variable the project reads is declared once,
// in env.cc's table (name, default, what it does, which values are valid), and read through these
// functions; `dsv4 --help` lists them and `dsv4` refuses to start with an invalid value.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace dsv4::env {

enum class Knob : int {
  kCpuIsa,         // DSV4_CPU_ISA: force a CPU kernel path
  kNumThreads,     // DSV4_NUM_THREADS: CPU worker threads
  kPinThreads,     // DSV4_PIN_THREADS: pin the pool's workers
  kFaultInject,    // DSV4_FAULT_INJECT: testing only, a rank kills or stops itself
  kTokenizer,      // DSV4_TOKENIZER: tokenizer.json for builtin:* models
  kLogLevel,       // DSV4_LOG_LEVEL: log verbosity
  kSharedDir,      // DSV4_SHARED_DIR_OVERRIDE: tests only, the shared/ folder with golden data
  kGoldenLaunch,   // DSV4_GOLDEN_LAUNCH: tests only, launcher for the golden cases
  kGoldenArgs,     // DSV4_GOLDEN_ARGS: tests only, extra flags for the golden cases
  kGoldenBinary,   // DSV4_GOLDEN_BINARY: tests only, the dsv4 binary the golden cases run
  kServeNp,        // DSV4_SERVE_NP: tests only, ranks of the served job
  kServeArgs,      // DSV4_SERVE_ARGS: tests only, extra flags of the served job
  kEpSingleCopy,   // DSV4_EP_SINGLE_COPY: MoE exchanges read same-node peers' memory directly
  kSoakRequests,   // DSV4_SOAK_REQUESTS: tests only, requests of the soak test's load
  kFuzzSeconds,    // DSV4_FUZZ_SECONDS: tests only, time each fuzzer runs (launch/fuzz.sh)
  kDeviceComm,     // DSV4_DEVICE_COMM: GPU ranks exchange over NCCL or through host memory
  kCpuStoreLimit,  // DSV4_CPU_STORE_LIMIT_MB: host memory the weights stored for the tiles may take
};

struct KnobInfo {
  Knob knob;
  const char* name;           // the environment variable
  const char* default_value;  // used when the variable is unset or empty
  const char* help;
  // Valid values: "int:LO:HI", "one-of:a|b|c", "fault" (RANK:STEP:KILL|STOP) or "" (any string).
  const char* values;
};

// Every knob, in declaration order.
std::span<const KnobInfo> Knobs();
const KnobInfo& Info(Knob knob);

// The variable's value, or the knob's default when unset or empty.
std::string Str(Knob knob);
// The same as an integer; an unparsable value reads as the default (CheckAll reports it).
int64_t Int(Knob knob);
bool IsSet(Knob knob);

// OK when every knob that is set holds a valid value; else an INVALID_ARGUMENT naming the
// variable, its value and what it accepts.
absl::Status CheckAll();
// DSV4_* variables in the environment that no knob declares (misspellings), sorted.
std::vector<std::string> UnknownVariables();
// "  DSV4_NAME (default: X)\n      help\n" for every knob, for --help.
std::string Help();

}  // namespace dsv4::env
