#include "cluster/hardware.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "base/status.h"

namespace dsv4::cluster {
namespace {

using nlohmann::json;

// Reads catalog figures: either {"value": x, "source": "..."} or a plain number (user files).
class FigureReader {
 public:
  FigureReader(const json& j, std::string where, std::map<std::string, std::string>* sources)
      : j_(j), where_(std::move(where)), sources_(sources) {}

  void Number(const char* key, double* out) {
    auto it = j_.find(key);
    if (it == j_.end() || !status_.ok()) return;
    const json* v = &*it;
    std::string source = "user catalog file";
    if (v->is_object()) {
      auto s = v->find("source");
      if (s != v->end() && s->is_string()) source = s->get<std::string>();
      auto val = v->find("value");
      if (val == v->end()) return Fail(key, "has no 'value'");
      v = &*val;
    }
    if (!v->is_number() || v->get<double>() < 0) return Fail(key, "must be a non-negative number");
    *out = v->get<double>();
    if (sources_ != nullptr) (*sources_)[key] = source;
  }
  void Int(const char* key, int* out) {
    double v = *out;
    Number(key, &v);
    *out = static_cast<int>(v);
  }
  void String(const char* key, std::string* out) {
    auto it = j_.find(key);
    if (it == j_.end() || !status_.ok()) return;
    if (!it->is_string()) return Fail(key, "must be a string");
    *out = it->get<std::string>();
  }
  void Bool(const char* key, bool* out) {
    auto it = j_.find(key);
    if (it == j_.end() || !status_.ok()) return;
    if (!it->is_boolean()) return Fail(key, "must be true or false");
    *out = it->get<bool>();
  }
  void Fail(const std::string& key, const std::string& what) {
    if (status_.ok()) status_ = absl::InvalidArgumentError(absl::StrCat(where_, ".", key, " ", what));
  }
  const absl::Status& status() const { return status_; }

 private:
  const json& j_;
  std::string where_;
  std::map<std::string, std::string>* sources_;
  absl::Status status_;
};

absl::Status ReadDevice(const json& j, const std::string& where, Device* d) {
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " must be an object"));
  FigureReader r(j, where, &d->sources);
  r.String("class", &d->device_class);
  r.String("scale_up", &d->scale_up);
  r.Int("scale_up_domain", &d->scale_up_domain);
  r.String("scale_out", &d->scale_out);
  r.Bool("unified_memory", &d->unified_memory);
  r.Number("bf16_tflops", &d->bf16_tflops);
  r.Number("fp8_tflops", &d->fp8_tflops);
  r.Number("fp4_tflops", &d->fp4_tflops);
  r.Number("memory_gb", &d->memory_gb);
  r.Number("memory_gbps", &d->memory_gbps);
  r.Number("price_per_hour", &d->price_per_hour);
  r.Number("host_memory_gbps", &d->host_memory_gbps);
  r.Number("host_memory_gb", &d->host_memory_gb);
  r.Int("host_cores", &d->host_cores);
  r.Number("host_core_gflops", &d->host_core_gflops);
  r.Int("devices_per_host", &d->devices_per_host);
  if (!r.status().ok()) return r.status();
  static const char* kClasses[] = {"datacenter", "workstation", "consumer", "apple", "cpu"};
  bool known = false;
  for (const char* c : kClasses) known |= d->device_class == c;
  if (!known)
    return absl::InvalidArgumentError(absl::StrCat(where, ".class = \"", d->device_class,
                                                   "\" (known: datacenter, workstation, consumer, apple, cpu)"));
  if (d->devices_per_host < 1) return absl::InvalidArgumentError(absl::StrCat(where, ".devices_per_host must be >= 1"));
  if (d->scale_up_domain < 1) return absl::InvalidArgumentError(absl::StrCat(where, ".scale_up_domain must be >= 1"));
  if (!d->IsHostOnly() && (d->memory_gb <= 0 || d->memory_gbps <= 0 || d->bf16_tflops <= 0))
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": memory_gb, memory_gbps and bf16_tflops must be positive for an accelerator"));
  if (d->fp8_tflops <= 0) d->fp8_tflops = d->bf16_tflops;
  if (d->fp4_tflops <= 0) d->fp4_tflops = d->fp8_tflops;
  return absl::OkStatus();
}

absl::Status ReadLinks(const json& j, const std::string& where, std::map<std::string, Link>* out) {
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " must be an object"));
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key().rfind('_', 0) == 0) continue;  // "_doc"
    Link& l = (*out)[it.key()];
    l.name = it.key();
    FigureReader r(it.value(), absl::StrCat(where, ".", it.key()), nullptr);
    r.Number("gbps", &l.gbps);
    r.Number("latency_us", &l.latency_us);
    if (!r.status().ok()) return r.status();
  }
  return absl::OkStatus();
}

absl::Status ReadEfficiency(const json& j, const std::string& where, std::map<std::string, Efficiency>* out) {
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " must be an object"));
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key().rfind('_', 0) == 0) continue;
    Efficiency& e = (*out)[it.key()];
    FigureReader r(it.value(), absl::StrCat(where, ".", it.key()), nullptr);
    r.Number("gemm", &e.gemm);
    r.Number("attention", &e.attention);
    r.Number("memory", &e.memory);
    r.Number("kv_memory", &e.kv_memory);
    r.Number("kernel_floor_us", &e.kernel_floor_us);
    r.Number("host_memory", &e.host_memory);
    r.Number("host_compute", &e.host_compute);
    if (!r.status().ok()) return r.status();
    for (double f : {e.gemm, e.attention, e.memory, e.kv_memory, e.host_memory, e.host_compute})
      if (f <= 0 || f > 1)
        return absl::InvalidArgumentError(absl::StrCat(where, ".", it.key(), ": efficiencies must be in (0, 1]"));
  }
  return absl::OkStatus();
}

}  // namespace

double Device::PeakTflops(double bits) const {
  if (bits <= 4) return fp4_tflops;
  if (bits <= 8) return fp8_tflops;
  return bf16_tflops;
}

absl::StatusOr<Device> Catalog::FindDevice(const std::string& name, const std::string& field) const {
  auto it = devices.find(name);
  if (it != devices.end()) return it->second;
  std::vector<std::string> names;
  for (const auto& [n, d] : devices) names.push_back(n);
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": unknown device '", name, "' (known: ", absl::StrJoin(names, ", "), ")"));
}

absl::StatusOr<Link> Catalog::FindNic(const std::string& name, const std::string& field) const {
  auto it = nics.find(name);
  if (it != nics.end()) return it->second;
  std::vector<std::string> names;
  for (const auto& [n, l] : nics) names.push_back(n);
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": unknown network '", name, "' (known: ", absl::StrJoin(names, ", "), ")"));
}

Link Catalog::ScaleUpLink(const Device& d) const {
  auto it = links.find(d.scale_up);
  if (it != links.end()) return it->second;
  return Link{d.scale_up, 0, 0};
}

Efficiency Catalog::EfficiencyFor(const Device& d) const {
  auto it = efficiency.find(d.device_class);
  return it != efficiency.end() ? it->second : Efficiency{};
}

absl::Status MergeCatalogJson(const std::string& json_text, const std::string& source, Catalog* catalog) {
  const json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  if (auto it = j.find("efficiency"); it != j.end())
    DSV4_RETURN_IF_ERROR(ReadEfficiency(*it, source + ": efficiency", &catalog->efficiency));
  if (auto it = j.find("links"); it != j.end())
    DSV4_RETURN_IF_ERROR(ReadLinks(*it, source + ": links", &catalog->links));
  if (auto it = j.find("nics"); it != j.end()) DSV4_RETURN_IF_ERROR(ReadLinks(*it, source + ": nics", &catalog->nics));
  if (auto it = j.find("devices"); it != j.end()) {
    if (!it->is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": devices must be an object"));
    for (auto d = it->begin(); d != it->end(); ++d) {
      Device dev;
      if (auto old = catalog->devices.find(d.key()); old != catalog->devices.end()) dev = old->second;
      dev.name = d.key();
      DSV4_RETURN_IF_ERROR(ReadDevice(d.value(), absl::StrCat(source, ": devices.", d.key()), &dev));
      if (!dev.scale_up.empty() && !catalog->links.count(dev.scale_up))
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": devices.", d.key(), ".scale_up names unknown link '", dev.scale_up, "'"));
      if (!dev.scale_out.empty() && !catalog->nics.count(dev.scale_out))
        return absl::InvalidArgumentError(
            absl::StrCat(source, ": devices.", d.key(), ".scale_out names unknown NIC '", dev.scale_out, "'"));
      catalog->devices[d.key()] = dev;
    }
  }
  return absl::OkStatus();
}

absl::Status MergeCatalogFile(const std::string& path, Catalog* catalog) {
  DSV4_ASSIGN_OR_RETURN(const std::string text, ReadFile(path), "--catalog");
  return MergeCatalogJson(text, path, catalog);
}

const Catalog& BuiltinCatalog() {
  static const Catalog* catalog = [] {
    auto* c = new Catalog;
    const absl::Status st = MergeCatalogJson(BuiltinCatalogJson(), "cluster/catalog/devices.json", c);
    if (!st.ok()) {
      std::fprintf(stderr, "built-in catalog is invalid: %s\n", std::string(st.message()).c_str());
      std::abort();
    }
    return c;
  }();
  return *catalog;
}

}  // namespace dsv4::cluster
