#include "tests/rpc/prometheus_text.h"

#include <cctype>
#include <cmath>
#include <cstdlib>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace dsv4::testing {
namespace {

bool IsNameStart(char c, bool colon) { return std::isalpha(static_cast<unsigned char>(c)) || c == '_' || (colon && c == ':'); }
bool IsNameChar(char c, bool colon) { return IsNameStart(c, colon) || std::isdigit(static_cast<unsigned char>(c)); }

// A name at text[at...]: metric names may hold ':', label names may not.
bool ReadName(const std::string& text, size_t& at, bool colon, std::string* out) {
  if (at >= text.size() || !IsNameStart(text[at], colon)) return false;
  const size_t begin = at;
  while (at < text.size() && IsNameChar(text[at], colon)) ++at;
  *out = text.substr(begin, at - begin);
  return true;
}

// Go's ParseFloat forms that Prometheus writes: decimal or exponent notation, +Inf, -Inf, NaN.
bool ParseValue(const std::string& s, double* v) {
  if (s == "+Inf" || s == "Inf") return *v = INFINITY, true;
  if (s == "-Inf") return *v = -INFINITY, true;
  if (s == "NaN") return *v = NAN, true;
  if (s.empty()) return false;
  for (char c : s)
    if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == 'e' || c == 'E' || c == '+' || c == '-'))
      return false;
  char* end = nullptr;
  *v = std::strtod(s.c_str(), &end);
  return end == s.c_str() + s.size();
}

std::string Key(const PromSample& s) {
  std::vector<std::string> parts;
  for (const auto& [k, v] : s.labels) parts.push_back(absl::StrCat(k, "=", v));
  std::sort(parts.begin(), parts.end());
  return absl::StrCat(s.name, "{", absl::StrJoin(parts, ","), "}");
}

bool Matches(const PromSample& s, const std::vector<std::pair<std::string, std::string>>& match) {
  for (const auto& m : match) {
    bool found = false;
    for (const auto& l : s.labels) found = found || l == m;
    if (!found) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<double> PromExposition::Value(const std::string& name,
                                             const std::vector<std::pair<std::string, std::string>>& match) const {
  const PromSample* found = nullptr;
  for (const PromSample& s : samples) {
    if (s.name != name || !Matches(s, match)) continue;
    if (found != nullptr) return absl::FailedPreconditionError(absl::StrCat("several series ", name, " match"));
    found = &s;
  }
  if (found == nullptr) return absl::NotFoundError(absl::StrCat("no series ", name));
  return found->value;
}

double PromExposition::Sum(const std::string& name,
                           const std::vector<std::pair<std::string, std::string>>& match) const {
  double sum = 0;
  for (const PromSample& s : samples)
    if (s.name == name && Matches(s, match)) sum += s.value;
  return sum;
}

absl::StatusOr<PromExposition> ParsePrometheusText(const std::string& text) {
  if (text.empty()) return absl::InvalidArgumentError("empty exposition");
  if (text.back() != '\n') return absl::InvalidArgumentError("the exposition does not end with a newline");
  PromExposition out;
  std::set<std::string> seen_series, helped;
  std::string family;  // the family of the last TYPE line
  std::vector<std::string> lines = absl::StrSplit(text, '\n');
  lines.pop_back();  // after the final '\n'
  for (size_t n = 0; n < lines.size(); ++n) {
    const std::string& line = lines[n];
    auto bad = [&](const std::string& why) {
      return absl::InvalidArgumentError(absl::StrCat("line ", n + 1, " (", line, "): ", why));
    };
    if (line.find('\r') != std::string::npos) return bad("carriage return");
    if (line.empty()) continue;
    if (line[0] == '#') {
      std::vector<std::string> parts = absl::StrSplit(line, absl::MaxSplits(' ', 3));
      if (parts.size() >= 3 && (parts[1] == "HELP" || parts[1] == "TYPE")) {
        size_t at = 0;
        std::string name;
        if (!ReadName(parts[2], at, true, &name) || at != parts[2].size()) return bad("bad metric name");
        if (parts[1] == "HELP") {
          if (!helped.insert(name).second) return bad("a second HELP line");
          continue;
        }
        static const std::set<std::string> kTypes = {"counter", "gauge", "histogram", "summary", "untyped"};
        if (parts.size() != 4 || !kTypes.contains(parts[3])) return bad("unknown type");
        if (out.types.contains(name)) return bad("a second TYPE line");
        out.types[name] = parts[3];
        family = name;
      }
      continue;  // other comments are allowed
    }
    PromSample s;
    size_t at = 0;
    if (!ReadName(line, at, true, &s.name)) return bad("bad metric name");
    if (at < line.size() && line[at] == '{') {
      ++at;
      while (at < line.size() && line[at] != '}') {
        std::string key, value;
        if (!ReadName(line, at, false, &key)) return bad("bad label name");
        if (at + 1 >= line.size() || line[at] != '=' || line[at + 1] != '"') return bad("label without =\"");
        at += 2;
        for (;; ++at) {
          if (at >= line.size()) return bad("unterminated label value");
          if (line[at] == '"') break;
          if (line[at] == '\\') {
            if (++at >= line.size()) return bad("dangling escape");
            if (line[at] == 'n') {
              value += '\n';
            } else if (line[at] == '\\' || line[at] == '"') {
              value += line[at];
            } else {
              return bad("unknown escape");
            }
          } else {
            value += line[at];
          }
        }
        ++at;  // the closing quote
        for (const auto& l : s.labels)
          if (l.first == key) return bad("a label twice");
        s.labels.emplace_back(key, value);
        if (at < line.size() && line[at] == ',') ++at;
      }
      if (at >= line.size()) return bad("unterminated label set");
      ++at;  // '}'
    }
    if (at >= line.size() || line[at] != ' ') return bad("no space before the value");
    std::vector<std::string> rest = absl::StrSplit(line.substr(at + 1), ' ');
    if (rest.empty() || rest.size() > 2 || !ParseValue(rest[0], &s.value)) return bad("bad value");
    // The sample must belong to the family of the last TYPE line.
    if (family.empty()) return bad("a sample before any TYPE line");
    const std::string& type = out.types[family];
    bool ok = s.name == family;
    if (type == "histogram") {
      ok = s.name == family + "_bucket" || s.name == family + "_sum" || s.name == family + "_count";
      bool has_le = false;
      for (const auto& l : s.labels) has_le = has_le || l.first == "le";
      if (ok && (s.name == family + "_bucket") != has_le) return bad("le belongs on _bucket samples only");
    } else if (type == "summary") {
      ok = ok || s.name == family + "_sum" || s.name == family + "_count";
    }
    if (!ok) return bad(absl::StrCat("not a sample of family ", family, " (", type, ")"));
    if (!seen_series.insert(Key(s)).second) return bad("a series twice");
    out.samples.push_back(std::move(s));
  }
  // Histograms: per label set (le aside), cumulative buckets ending at +Inf equal to _count.
  for (const auto& [name, type] : out.types) {
    if (type != "histogram") continue;
    std::map<std::string, std::vector<std::pair<double, double>>> buckets;  // labels -> (le, count)
    std::map<std::string, double> counts;
    auto labels_without_le = [](const PromSample& s) {
      PromSample t = s;
      std::erase_if(t.labels, [](const auto& l) { return l.first == "le"; });
      t.name.clear();
      return Key(t);
    };
    for (const PromSample& s : out.samples) {
      if (s.name == name + "_bucket") {
        double le = 0;
        for (const auto& l : s.labels)
          if (l.first == "le" && !ParseValue(l.second, &le))
            return absl::InvalidArgumentError(absl::StrCat(name, ": bad le '", l.second, "'"));
        buckets[labels_without_le(s)].emplace_back(le, s.value);
      } else if (s.name == name + "_count") {
        counts[labels_without_le(s)] = s.value;
      }
    }
    for (const auto& [labels, b] : buckets) {
      for (size_t i = 1; i < b.size(); ++i)
        if (!(b[i].first > b[i - 1].first) || b[i].second < b[i - 1].second)
          return absl::InvalidArgumentError(absl::StrCat(name, labels, ": buckets not increasing or not cumulative"));
      if (b.empty() || !std::isinf(b.back().first))
        return absl::InvalidArgumentError(absl::StrCat(name, labels, ": no le=\"+Inf\" bucket"));
      if (!counts.contains(labels) || counts[labels] != b.back().second)
        return absl::InvalidArgumentError(absl::StrCat(name, labels, ": _count differs from the +Inf bucket"));
    }
  }
  return out;
}

}  // namespace dsv4::testing
