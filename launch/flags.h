// Command-line flags of the `dsv4` subcommands: --name value or --name=value, every flag declared
// up front so an unknown or malformed one is an error that names it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv4 {

class Flags {
 public:
  // Declares a flag with its default and help text.
  Flags& Add(const std::string& name, const std::string& default_value, const std::string& help);
  // Changes the default of a declared flag.
  Flags& SetDefault(const std::string& name, const std::string& default_value);
  // Parses argv[first..argc).
  absl::Status Parse(int argc, char** argv, int first);

  std::string Str(const std::string& name) const;
  bool Given(const std::string& name) const { return given_.count(name) > 0; }
  absl::StatusOr<int64_t> Int(const std::string& name) const;
  absl::StatusOr<double> Double(const std::string& name) const;
  // Comma-separated integers, e.g. "1,2,3"; empty string -> empty list.
  absl::StatusOr<std::vector<int32_t>> IntList(const std::string& name) const;
  absl::StatusOr<bool> OnOff(const std::string& name) const;
  std::string Help() const;

 private:
  struct Def {
    std::string value, help;
  };
  std::map<std::string, Def> defs_;
  std::vector<std::string> order_;
  std::map<std::string, bool> given_;
};

}  // namespace dsv4
