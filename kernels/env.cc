#include "kernels/env.h"

#include <cerrno>
#include <cstdlib>

namespace dsv4 {

const std::vector<ParamInfo>& RegisteredParams() {
  static const std::vector<ParamInfo> kParams = {
      {"DSV4_CPU_ISA", "auto", "CPU kernel path: auto, avx512, avx2 or scalar"},
      {"DSV4_NUM_THREADS", "0", "CPU worker threads (0 = one per available core)"},
      {"DSV4_PIN_THREADS", "1", "pin the CPU pool's worker threads one per core (0: let them float)"},
      {"DSV4_FAULT_INJECT", "", "testing only: RANK:STEP:KILL|STOP makes that world rank kill or stop itself at STEP"},
      {"DSV4_TOKENIZER", "", "tokenizer.json (or its directory) for builtin:* models; default: the npm copy"},
  };
  return kParams;
}

int64_t ParamInt(const char* env, int64_t default_value) {
  const char* v = std::getenv(env);
  if (v == nullptr || *v == '\0') return default_value;
  char* end = nullptr;
  errno = 0;
  const long long parsed = std::strtoll(v, &end, 10);
  if (errno != 0 || end == v || *end != '\0') return default_value;
  return parsed;
}

std::string ParamString(const char* env, const char* default_value) {
  const char* v = std::getenv(env);
  return (v == nullptr || *v == '\0') ? std::string(default_value) : std::string(v);
}

}  // namespace dsv4
