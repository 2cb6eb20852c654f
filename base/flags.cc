#include "base/flags.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "base/status.h"

namespace dsv4 {
namespace {

bool ParseBool(const std::string& s, bool* out) {
  if (s == "on" || s == "true" || s == "1") return *out = true, true;
  if (s == "off" || s == "false" || s == "0") return *out = false, true;
  return false;
}

// Edit distance with adjacent transpositions (optimal string alignment): `--ecperts` and
// `--exeprts` are both one edit from `--experts`.
size_t EditDistance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i)
    for (size_t j = 1; j <= b.size(); ++j) {
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1])});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1])
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
    }
  return d[a.size()][b.size()];
}

}  // namespace

Flags& Flags::Declare(const std::string& name, Kind kind, const std::string& default_value, const std::string& help) {
  DSV4_CHECK(!aliases_.count(name), "flag --", name, " is already an alias");
  if (!defs_.count(name)) order_.push_back(name);
  Def& d = defs_[name];
  d = Def{};
  d.kind = kind, d.text = default_value, d.help = help;
  return *this;
}

Flags& Flags::String(const std::string& name, const std::string& default_value, const std::string& help) {
  return Declare(name, Kind::kString, default_value, help);
}

Flags& Flags::Int(const std::string& name, int64_t default_value, const std::string& help, int64_t min, int64_t max) {
  Declare(name, Kind::kInt, absl::StrCat(default_value), help);
  defs_[name].min_i = min, defs_[name].max_i = max;
  return *this;
}

Flags& Flags::Double(const std::string& name, double default_value, const std::string& help, double min, double max) {
  Declare(name, Kind::kDouble, absl::StrCat(default_value), help);
  defs_[name].min_d = min, defs_[name].max_d = max;
  return *this;
}

Flags& Flags::Bool(const std::string& name, bool default_value, const std::string& help) {
  return Declare(name, Kind::kBool, default_value ? "on" : "off", help);
}

Flags& Flags::IntList(const std::string& name, const std::string& default_value, const std::string& help) {
  return Declare(name, Kind::kIntList, default_value, help);
}

Flags& Flags::SetDefault(const std::string& name, const std::string& default_value) {
  auto it = defs_.find(name);
  DSV4_CHECK(it != defs_.end(), "SetDefault of undeclared flag --", name);
  it->second.text = default_value;
  return *this;
}

Flags& Flags::Alias(const std::string& alias, const std::string& name) {
  DSV4_CHECK(defs_.count(name), "alias --", alias, " of undeclared flag --", name);
  DSV4_CHECK(!defs_.count(alias), "alias --", alias, " is itself a declared flag");
  aliases_[alias] = name;
  return *this;
}

std::string Flags::Unknown(const std::string& name) const {
  // The spellings (names and aliases) within a third of the name's length in edits, closest
  // first, and any the name begins (`--experts-per` for `--experts-per-token`). No flag is 64
  // characters long, so a longer word is compared with none.
  std::string out = absl::StrCat("unknown flag --", name);
  if (name.size() > 64) return out;
  std::vector<std::pair<size_t, std::string>> near;
  auto consider = [&](const std::string& known) {
    const size_t d = EditDistance(name, known);
    if (d <= std::max<size_t>(1, name.size() / 3) || (name.size() >= 3 && known.rfind(name, 0) == 0))
      near.emplace_back(d, known);
  };
  for (const auto& n : order_) consider(n);
  for (const auto& [alias, n] : aliases_) consider(alias);
  std::stable_sort(near.begin(), near.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  for (size_t i = 0; i < std::min<size_t>(near.size(), 3); ++i)
    absl::StrAppend(&out, i == 0 ? " (did you mean --" : " or --", near[i].second);
  if (!near.empty()) absl::StrAppend(&out, "?)");
  return out;
}

absl::Status Flags::Convert(const std::string& name, Def& d) const {
  auto bad = [&](absl::string_view what) {
    return absl::InvalidArgumentError(absl::StrCat("--", name, " must be ", what, ", got '", d.text, "'"));
  };
  switch (d.kind) {
    case Kind::kString:
      return absl::OkStatus();
    case Kind::kInt:
      if (!absl::SimpleAtoi(d.text, &d.i)) return bad("an integer");
      if (d.i < d.min_i || d.i > d.max_i) {
        if (d.max_i == kNoMax) return bad(absl::StrCat("at least ", d.min_i));
        if (d.min_i == kNoMin) return bad(absl::StrCat("at most ", d.max_i));
        return bad(absl::StrCat("in [", d.min_i, ", ", d.max_i, "]"));
      }
      return absl::OkStatus();
    case Kind::kDouble:
      if (!absl::SimpleAtod(d.text, &d.d) || !std::isfinite(d.d)) return bad("a number");
      if (d.d < d.min_d || d.d > d.max_d) {
        if (std::isinf(d.max_d)) return bad(absl::StrCat("at least ", d.min_d));
        if (std::isinf(d.min_d)) return bad(absl::StrCat("at most ", d.max_d));
        return bad(absl::StrCat("in [", d.min_d, ", ", d.max_d, "]"));
      }
      return absl::OkStatus();
    case Kind::kBool:
      return ParseBool(d.text, &d.b) ? absl::OkStatus() : bad("on or off");
    case Kind::kIntList:
      d.list.clear();
      if (d.text.empty()) return absl::OkStatus();
      for (absl::string_view part : absl::StrSplit(d.text, ',')) {
        int32_t v;
        if (!absl::SimpleAtoi(part, &v))
          return absl::InvalidArgumentError(
              absl::StrCat("--", name, " must be comma-separated integers; '", part, "' is not an integer"));
        d.list.push_back(v);
      }
      return absl::OkStatus();
  }
  return absl::OkStatus();
}

absl::Status Flags::Parse(int argc, char** argv, int first) {
  for (int i = first; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--", 0) != 0 || arg.size() == 2)
      return absl::InvalidArgumentError(absl::StrCat("unexpected argument '", arg, "' (flags are --name value)"));
    std::string name = arg.substr(2);
    const size_t eq = name.find('=');
    const bool inline_value = eq != std::string::npos;
    std::string value;
    if (inline_value) value = name.substr(eq + 1), name = name.substr(0, eq);
    const std::string spelled = name;
    if (auto a = aliases_.find(name); a != aliases_.end()) name = a->second;
    auto it = defs_.find(name);
    if (it == defs_.end()) return absl::InvalidArgumentError(Unknown(name));
    Def& d = it->second;
    if (!inline_value) {
      const bool next_is_value = i + 1 < argc && std::string(argv[i + 1]).rfind("--", 0) != 0;
      bool ignored;
      if (d.kind == Kind::kBool) {
        // A bare boolean is on; it takes the next argument only when that is a boolean word.
        value = next_is_value && ParseBool(argv[i + 1], &ignored) ? argv[++i] : "on";
      } else if (next_is_value) {
        value = argv[++i];
      } else {
        return absl::InvalidArgumentError(absl::StrCat("flag --", spelled, " needs a value"));
      }
    }
    d.text = value;
    d.given = true;
    d.spelled = spelled;
  }
  for (auto& [name, d] : defs_) DSV4_RETURN_IF_ERROR(Convert(d.given ? d.spelled : name, d));
  return absl::OkStatus();
}

const Flags::Def& Flags::Get(const std::string& name, Kind kind) const {
  auto it = defs_.find(name);
  DSV4_CHECK(it != defs_.end(), "undeclared flag --", name);
  DSV4_CHECK(it->second.kind == kind, "flag --", name, " read as the wrong type");
  return it->second;
}

const std::string& Flags::GetString(const std::string& name) const { return Get(name, Kind::kString).text; }
int64_t Flags::GetInt(const std::string& name) const { return Get(name, Kind::kInt).i; }
double Flags::GetDouble(const std::string& name) const { return Get(name, Kind::kDouble).d; }
bool Flags::GetBool(const std::string& name) const { return Get(name, Kind::kBool).b; }
const std::vector<int32_t>& Flags::GetIntList(const std::string& name) const { return Get(name, Kind::kIntList).list; }

bool Flags::Given(const std::string& name) const {
  auto it = defs_.find(name);
  return it != defs_.end() && it->second.given;
}

std::string Flags::Help() const {
  std::string out;
  for (const auto& name : order_) {
    const Def& d = defs_.at(name);
    std::string also;
    for (const auto& [alias, n] : aliases_)
      if (n == name) absl::StrAppend(&also, also.empty() ? " (also --" : ", --", alias);
    if (!also.empty()) also += ")";
    absl::StrAppend(&out, "  --", name, d.kind == Kind::kBool ? " [on|off]" : "", also,
                    " (default: ", d.text.empty() ? "none" : d.text, ")\n      ", d.help, "\n");
  }
  return out;
}

}  // namespace dsv4
