// The one registry of environment knobs. Every knob the project reads is declared here with its
// default, so `grep DSV4_PARAM` lists them all and `LogParams` can print them at start-up.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace dsv4 {

struct ParamInfo {
  const char* env;
  const char* default_value;
  const char* help;
};

// All registered knobs (for logging and `dsv4 --help`).
const std::vector<ParamInfo>& RegisteredParams();

// Reads an integer / string knob: the environment value if set and valid, else the default.
int64_t ParamInt(const char* env, int64_t default_value);
std::string ParamString(const char* env, const char* default_value);

// The knobs themselves.
// DSV4_CPU_ISA: force the CPU kernel path: "auto", "avx512", "avx2" or "scalar".
inline std::string CpuIsaParam() { return ParamString("DSV4_CPU_ISA", "auto"); }
// DSV4_NUM_THREADS: CPU worker threads (0 = one per available core).
inline int64_t NumThreadsParam() { return ParamInt("DSV4_NUM_THREADS", 0); }
// DSV4_PIN_THREADS: pin the CPU pool's workers one per core (1) or let them float (0).
inline int64_t PinThreadsParam() { return ParamInt("DSV4_PIN_THREADS", 1); }

// DSV4_FAULT_INJECT: testing only. "RANK:STEP:KILL" or "RANK:STEP:STOP": that world rank sends
// itself SIGKILL / SIGSTOP when it reaches STEP, to test that its peers fail loudly, not hang.
inline std::string FaultInjectParam() { return ParamString("DSV4_FAULT_INJECT", ""); }

}  // namespace dsv4
