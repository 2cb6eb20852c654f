// The command-line flag parser (base/flags.h) with the runtime's flags and one of every kind
// (and --n, another spelling of --count): the input is argv, NUL-separated. Any argv ends in a
// status; a parse that succeeds returns values within every declared range, and never takes a
// following "--" word as a value.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "base/flags.h"
#include "runtime/runtime.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::vector<std::string> words = {"dsv4"};
  std::string cur;
  for (size_t i = 0; i < size && words.size() < 64; ++i) {
    if (data[i] == 0) {
      words.push_back(cur);
      cur.clear();
    } else {
      cur.push_back(static_cast<char>(data[i]));
    }
  }
  if (!cur.empty()) words.push_back(cur);
  std::vector<char*> argv;
  for (auto& w : words) argv.push_back(w.data());

  dsv4::Flags flags;
  dsv4::AddRuntimeFlags(flags);
  flags.String("out", "", "a file")
      .Int("count", 3, "bounded", -5, 100)
      .Double("ratio", 0.5, "bounded", 0, 1)
      .Bool("json", false, "a boolean")
      .IntList("ids", "", "a list")
      .Alias("n", "count");
  if (!flags.Parse(static_cast<int>(argv.size()), argv.data(), 1).ok()) return 0;
  const int64_t count = flags.GetInt("count");
  const double ratio = flags.GetDouble("ratio");
  if (count < -5 || count > 100 || !(ratio >= 0 && ratio <= 1)) std::abort();
  if (flags.GetInt("threads") < 0 || flags.GetInt("threads") > dsv4::kMaxCpuThreads) std::abort();
  // A value written after the flag never starts with "--" (only --out=--x can give one that does).
  bool inline_out = false;
  for (const std::string& w : words) inline_out |= w.rfind("--out=", 0) == 0;
  if (!inline_out && flags.GetString("out").rfind("--", 0) == 0) std::abort();
  (void)flags.GetIntList("ids");
  (void)flags.GetBool("json");
  (void)flags.Help();
  return 0;
}
