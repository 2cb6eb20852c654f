// Command-line flags of the `dsv4` subcommands. Every flag is declared up front with its type,
// default, range and help; Parse checks every value, so a command reads parsed values and never
// re-validates. Spellings: `--name value`, `--name=value`; a boolean also takes a bare `--name`
// (on), `--name on|off|true|false|1|0`. A value never starts with `--` (`--out --qdq` is an
// error naming --out, not a file called "--qdq"); negative numbers (`--seed -1`) are values.
#pragma once

#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace dsv4 {

class Flags {
 public:
  static constexpr int64_t kNoMin = std::numeric_limits<int64_t>::min();
  static constexpr int64_t kNoMax = std::numeric_limits<int64_t>::max();

  // Declarations (a name declared twice replaces the first declaration).
  Flags& String(const std::string& name, const std::string& default_value, const std::string& help);
  Flags& Int(const std::string& name, int64_t default_value, const std::string& help, int64_t min = kNoMin,
             int64_t max = kNoMax);
  Flags& Double(const std::string& name, double default_value, const std::string& help,
                double min = -std::numeric_limits<double>::infinity(),
                double max = std::numeric_limits<double>::infinity());
  Flags& Bool(const std::string& name, bool default_value, const std::string& help);
  // Comma-separated int32 values ("1,2,3"); "" is the empty list.
  Flags& IntList(const std::string& name, const std::string& default_value, const std::string& help);
  // Changes the default of a declared flag (a subcommand that shares flags with others).
  Flags& SetDefault(const std::string& name, const std::string& default_value);
  // `--alias` is another spelling of the declared flag `--name` (the name peers' tools use for the
  // same setting, such as DeepEP's `--topk` for `--experts-per-token`); values are read by name.
  Flags& Alias(const std::string& alias, const std::string& name);

  // Parses argv[first..argc) and checks every value (defaults included): INVALID_ARGUMENT naming
  // the flag otherwise. An unknown flag's error names the declared flags spelled most like it.
  absl::Status Parse(int argc, char** argv, int first);

  // Values after a successful Parse. Asking for an undeclared flag, or with the wrong type, is a
  // programmer error (aborts).
  const std::string& GetString(const std::string& name) const;
  int64_t GetInt(const std::string& name) const;
  double GetDouble(const std::string& name) const;
  bool GetBool(const std::string& name) const;
  const std::vector<int32_t>& GetIntList(const std::string& name) const;
  bool Given(const std::string& name) const;

  std::string Help() const;

 private:
  enum class Kind { kString, kInt, kDouble, kBool, kIntList };
  struct Def {
    Kind kind = Kind::kString;
    std::string text, help;  // the value as given (or the default)
    int64_t min_i = kNoMin, max_i = kNoMax;
    double min_d = 0, max_d = 0;
    bool given = false;
    std::string spelled;  // the name the command line used (an alias or the name)
    // Parsed values.
    int64_t i = 0;
    double d = 0;
    bool b = false;
    std::vector<int32_t> list;
  };
  Flags& Declare(const std::string& name, Kind kind, const std::string& default_value, const std::string& help);
  absl::Status Convert(const std::string& name, Def& def) const;
  std::string Unknown(const std::string& name) const;  // the error's text, with likely spellings
  const Def& Get(const std::string& name, Kind kind) const;

  std::map<std::string, Def> defs_;
  std::map<std::string, std::string> aliases_;  // alias -> declared name
  std::vector<std::string> order_;
};

}  // namespace dsv4
