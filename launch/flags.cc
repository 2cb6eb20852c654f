#include "launch/flags.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace dsv4 {

Flags& Flags::Add(const std::string& name, const std::string& default_value, const std::string& help) {
  defs_[name] = {default_value, help};
  order_.push_back(name);
  return *this;
}

Flags& Flags::SetDefault(const std::string& name, const std::string& default_value) {
  defs_[name].value = default_value;
  return *this;
}

absl::Status Flags::Parse(int argc, char** argv, int first) {
  for (int i = first; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0) return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "'"));
    std::string name = arg.substr(2), value;
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    if (inline_value) {
      value = name.substr(eq + 1);
      name = name.substr(0, eq);
    }
    auto it = defs_.find(name);
    if (it == defs_.end()) return absl::InvalidArgumentError(absl::StrCat("unknown flag --", name));
    if (!inline_value) {
      if (i + 1 >= argc) return absl::InvalidArgumentError(absl::StrCat("flag --", name, " needs a value"));
      value = argv[++i];
    }
    it->second.value = value;
    given_[name] = true;
  }
  return absl::OkStatus();
}

std::string Flags::Str(const std::string& name) const {
  auto it = defs_.find(name);
  return it == defs_.end() ? "" : it->second.value;
}

absl::StatusOr<int64_t> Flags::Int(const std::string& name) const {
  int64_t v;
  if (!absl::SimpleAtoi(Str(name), &v))
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be an integer, got '", Str(name), "'"));
  return v;
}

absl::StatusOr<double> Flags::Double(const std::string& name) const {
  double v;
  if (!absl::SimpleAtod(Str(name), &v))
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be a number, got '", Str(name), "'"));
  return v;
}

absl::StatusOr<std::vector<int32_t>> Flags::IntList(const std::string& name) const {
  std::vector<int32_t> out;
  const std::string s = Str(name);
  if (s.empty()) return out;
  for (absl::string_view part : absl::StrSplit(s, ',')) {
    int32_t v;
    if (!absl::SimpleAtoi(part, &v))
      return absl::InvalidArgumentError(
          absl::StrCat("--", name, " must be comma-separated integers; '", part, "' is not an integer"));
    out.push_back(v);
  }
  return out;
}

absl::StatusOr<bool> Flags::OnOff(const std::string& name) const {
  const std::string s = Str(name);
  if (s == "on" || s == "true" || s == "1") return true;
  if (s == "off" || s == "false" || s == "0") return false;
  return absl::InvalidArgumentError(absl::StrCat("--", name, " must be on or off, got '", s, "'"));
}

std::string Flags::Help() const {
  std::string out;
  for (const auto& name : order_) {
    const Def& d = defs_.at(name);
    absl::StrAppend(&out, "  --", name, " (default: ", d.value.empty() ? "none" : d.value, ")\n      ", d.help, "\n");
  }
  return out;
}

}  // namespace dsv4
