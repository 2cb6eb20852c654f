#include "cluster/hardware.h"

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/ascii.h"
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
    const json* v = &*it;
    std::string source = "user catalog file";
    if (v->is_object()) {
      if (auto s = v->find("source"); s != v->end() && s->is_string()) source = s->get<std::string>();
      auto val = v->find("value");
      if (val == v->end()) return Fail(key, "has no 'value'");
      v = &*val;
    }
    if (!v->is_string()) return Fail(key, "must be a string");
    *out = v->get<std::string>();
    if (sources_ != nullptr && it->is_object()) (*sources_)[key] = source;
  }
  void Bool(const char* key, bool* out) {
    auto it = j_.find(key);
    if (it == j_.end() || !status_.ok()) return;
    const json* v = &*it;
    if (v->is_object()) {
      if (auto s = v->find("source"); s != v->end() && s->is_string() && sources_ != nullptr)
        (*sources_)[key] = s->get<std::string>();
      auto val = v->find("value");
      if (val == v->end()) return Fail(key, "has no 'value'");
      v = &*val;
    }
    if (!v->is_boolean()) return Fail(key, "must be true or false");
    *out = v->get<bool>();
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
  r.Number("fp32_tflops", &d->fp32_tflops);
  r.Number("fp8_tflops", &d->fp8_tflops);
  r.Number("fp4_tflops", &d->fp4_tflops);
  r.Number("memory_gb", &d->memory_gb);
  r.Number("memory_gbps", &d->memory_gbps);
  r.Number("price_per_hour", &d->price_per_hour);
  r.String("memory_type", &d->memory_type);
  r.Number("host_link_gbps", &d->host_link_gbps);
  r.String("released", &d->released);
  r.Bool("fp4_moe_kernels", &d->fp4_moe_kernels);
  r.Number("host_memory_gbps", &d->host_memory_gbps);
  r.Number("host_memory_gb", &d->host_memory_gb);
  r.Int("host_cores", &d->host_cores);
  r.Int("host_sockets", &d->host_sockets);
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
  if (d->memory_type.empty())
    d->memory_type = d->device_class == "datacenter" ? "hbm"
                     : d->device_class == "apple"    ? "lpddr"
                     : d->IsHostOnly()               ? "ddr"
                                                     : "gddr";
  static const char* kMemory[] = {"hbm", "gddr", "lpddr", "ddr"};
  bool known_memory = false;
  for (const char* m : kMemory) known_memory |= d->memory_type == m;
  if (!known_memory)
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".memory_type = \"", d->memory_type, "\" (known: hbm, gddr, lpddr, ddr)"));
  if (!d->released.empty())
    if (auto day = ParseDate(d->released, where + ".released"); !day.ok()) return day.status();
  return absl::OkStatus();
}

absl::Status ReadHost(const json& j, const std::string& where, HostCpu* h) {
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " must be an object"));
  FigureReader r(j, where, &h->sources);
  r.Int("cores", &h->cores);
  r.Number("ghz", &h->ghz);
  r.Number("boost_ghz", &h->boost_ghz);
  r.Number("simd_flops_per_cycle", &h->simd_flops_per_cycle);
  r.Number("amx_flops_per_cycle", &h->amx_flops_per_cycle);
  r.Int("memory_channels", &h->memory_channels);
  r.Number("memory_mts", &h->memory_mts);
  r.Number("stream_fraction", &h->stream_fraction);
  if (!r.status().ok()) return r.status();
  if (h->cores < 1 || h->ghz <= 0 || h->simd_flops_per_cycle <= 0 || h->memory_channels < 1 || h->memory_mts <= 0)
    return absl::InvalidArgumentError(absl::StrCat(
        where, ": cores, ghz, simd_flops_per_cycle, memory_channels and memory_mts must be positive"));
  if (h->stream_fraction <= 0 || h->stream_fraction > 1)
    return absl::InvalidArgumentError(absl::StrCat(where, ".stream_fraction must be in (0, 1]"));
  if (h->boost_ghz != 0 && h->boost_ghz < h->ghz)
    return absl::InvalidArgumentError(
        absl::StrCat(where, ".boost_ghz = ", h->boost_ghz, " is below ghz = ", h->ghz, " (0: no boost figure)"));
  return absl::OkStatus();
}

absl::Status ReadEngine(const json& j, const std::string& where, EngineProfile* e) {
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " must be an object"));
  FigureReader r(j, where, &e->sources);
  r.String("kind", &e->kind);
  r.String("ep_all_to_all", &e->ep_all_to_all);
  r.String("fused_moe_since", &e->fused_moe_since);
  r.String("gpu_prefill_since", &e->gpu_prefill_since);
  r.String("host_experts", &e->host_experts);
  r.String("host_kernels", &e->host_kernels);
  r.String("host_compute_kernels", &e->host_compute_kernels);
  r.Bool("numa_aware", &e->numa_aware);
  r.Number("gpu_prefill_tokens", &e->gpu_prefill_tokens);
  r.String("multi_gpu", &e->multi_gpu);
  r.String("fp4_without_fp4", &e->fp4_without_fp4);
  r.String("indexer_topk", &e->indexer_topk);
  r.Bool("launch_partner", &e->launch_partner);
  r.Bool("dedicated", &e->dedicated);
  if (!r.status().ok()) return r.status();
  for (const char* table : {"versions", "eras"}) {
    auto it = j.find(table);
    if (it == j.end()) continue;
    if (!it->is_object()) return absl::InvalidArgumentError(absl::StrCat(where, ".", table, " must be an object"));
    for (auto v = it->begin(); v != it->end(); ++v) {
      if (v.key().rfind('_', 0) == 0) continue;
      const std::string vw = absl::StrCat(where, ".", table, ".", v.key());
      if (!v->is_object()) return absl::InvalidArgumentError(absl::StrCat(vw, " must be an object"));
      if (std::string(table) == "eras")
        if (auto d = ParseDate(v.key(), vw); !d.ok()) return d.status();
      auto& fields = (std::string(table) == "eras" ? e->eras : e->versions)[v.key()];
      for (auto f = v->begin(); f != v->end(); ++f) {
        if (f.key().rfind('_', 0) == 0) continue;
        static const char* kFields[] = {"host_experts", "host_kernels", "host_compute_kernels", "fused_moe_since",
                                        "gpu_prefill_since", "multi_gpu", "fp4_without_fp4", "ep_all_to_all"};
        bool known = false;
        for (const char* k : kFields) known |= f.key() == k;
        if (!known || !f->is_string())
          return absl::InvalidArgumentError(absl::StrCat(vw, ".", f.key(), " must be one of the string fields ",
                                                         absl::StrJoin(kFields, ", ")));
        fields[f.key()] = f->get<std::string>();
      }
    }
  }
  for (const std::string* d : {&e->fused_moe_since, &e->gpu_prefill_since})
    if (!d->empty())
      if (auto day = ParseDate(*d, where + (d == &e->fused_moe_since ? ".fused_moe_since" : ".gpu_prefill_since"));
          !day.ok())
        return day.status();
  if (auto it = j.find("tuned_for"); it != j.end()) {
    const json* v = &*it;
    if (v->is_object() && v->contains("value")) {
      if (auto src = v->find("source"); src != v->end() && src->is_string()) e->sources["tuned_for"] = src->get<std::string>();
      v = &(*v)["value"];
    }
    if (!v->is_array()) return absl::InvalidArgumentError(absl::StrCat(where, ".tuned_for must be an array of device names or classes"));
    e->tuned_for.clear();
    for (const json& a : *v) {
      if (!a.is_string()) return absl::InvalidArgumentError(absl::StrCat(where, ".tuned_for must be an array of device names or classes"));
      e->tuned_for.push_back(a.get<std::string>());
    }
  }
  if (auto it = j.find("aliases"); it != j.end()) {
    if (!it->is_array()) return absl::InvalidArgumentError(absl::StrCat(where, ".aliases must be an array of names"));
    e->aliases.clear();
    for (const json& a : *it) {
      if (!a.is_string()) return absl::InvalidArgumentError(absl::StrCat(where, ".aliases must be an array of names"));
      e->aliases.push_back(absl::AsciiStrToLower(a.get<std::string>()));
    }
  }
  struct Choice {
    const char* key;
    const std::string* value;
    std::vector<const char*> allowed;
  };
  const Choice choices[] = {{"kind", &e->kind, {"server", "local"}},
                            {"ep_all_to_all", &e->ep_all_to_all, {"deepep", "nccl"}},
                            {"host_experts", &e->host_experts, {"amx", "simd"}},
                            {"host_kernels", &e->host_kernels, {"tuned", "llamacpp"}},
                            {"host_compute_kernels", &e->host_compute_kernels, {"", "tuned", "llamacpp"}},
                            {"multi_gpu", &e->multi_gpu, {"tensor", "layer"}},
                            {"fp4_without_fp4", &e->fp4_without_fp4, {"fp8", "bf16"}},
                            {"indexer_topk", &e->indexer_topk, {"parallel", "sort"}}};
  for (const Choice& c : choices) {
    bool ok = false;
    for (const char* a : c.allowed) ok |= *c.value == a;
    if (!ok)
      return absl::InvalidArgumentError(absl::StrCat(where, ".", c.key, " = \"", *c.value, "\" (known: ",
                                                     absl::StrJoin(c.allowed, ", "), ")"));
  }
  return absl::OkStatus();
}

absl::Status ReadParameters(const json& j, const std::string& where, Catalog* catalog) {
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " must be an object"));
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key().rfind('_', 0) == 0) continue;
    const TuningParameter* p = FindTuningParameter(it.key());
    if (p == nullptr) {
      std::vector<std::string> names;
      for (const TuningParameter& q : TuningParameters()) names.push_back(q.name);
      return absl::InvalidArgumentError(absl::StrCat(where, ".", it.key(), " is not a fitted parameter (known: ",
                                                     absl::StrJoin(names, ", "), ")"));
    }
    const json* v = &it.value();
    std::string source = "user catalog file";
    if (v->is_object()) {
      if (auto s = v->find("fitted_on"); s != v->end() && s->is_string()) source = s->get<std::string>();
      if (auto s = v->find("source"); s != v->end() && s->is_string()) source = s->get<std::string>();
      auto val = v->find("value");
      if (val == v->end()) return absl::InvalidArgumentError(absl::StrCat(where, ".", it.key(), " has no 'value'"));
      v = &*val;
    }
    if (!v->is_number() || v->get<double>() < p->lo || v->get<double>() > p->hi)
      return absl::InvalidArgumentError(
          absl::StrCat(where, ".", it.key(), " must be a number in [", p->lo, ", ", p->hi, "]"));
    catalog->tuning.*(p->field) = v->get<double>();
    catalog->tuning_sources[it.key()] = source;
  }
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
    r.Number("host_staged_latency_us", &l.host_staged_latency_us);
    if (!r.status().ok()) return r.status();
  }
  return absl::OkStatus();
}

absl::Status ReadEfficiency(const json& j, const std::string& where, std::map<std::string, Efficiency>* out) {
  if (!j.is_object()) return absl::InvalidArgumentError(absl::StrCat(where, " must be an object"));
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (it.key().rfind('_', 0) == 0) continue;
    Efficiency& e = (*out)[it.key()];
    const std::string cls = absl::StrCat(where, ".", it.key());
    if (!it.value().is_object()) return absl::InvalidArgumentError(absl::StrCat(cls, " must be an object"));
    for (auto k = it.value().begin(); k != it.value().end(); ++k) {
      if (k.key() == "gemm" || k.key() == "memory" || k.key().rfind("host_", 0) == 0)
        return absl::InvalidArgumentError(absl::StrCat(cls, ".", k.key(),
                                                       " is a fitted parameter now: set it under \"parameters\" "
                                                       "(cluster/README.md lists them)"));
    }
    FigureReader r(it.value(), cls, nullptr);
    r.Number("attention", &e.attention);
    r.Number("kv_memory", &e.kv_memory);
    r.Number("kernel_floor_us", &e.kernel_floor_us);
    if (!r.status().ok()) return r.status();
    for (double f : {e.attention, e.kv_memory})
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

absl::StatusOr<HostCpu> Catalog::FindHost(const std::string& name, const std::string& field) const {
  auto it = hosts.find(name);
  if (it != hosts.end()) return it->second;
  std::vector<std::string> names;
  for (const auto& [n, h] : hosts) names.push_back(n);
  return absl::InvalidArgumentError(
      absl::StrCat(field, ": unknown host CPU '", name, "' (known: ", absl::StrJoin(names, ", "), ")"));
}

const EngineProfile* Catalog::FindEngine(const std::string& name) const {
  const std::string lower = absl::AsciiStrToLower(name);
  for (const auto& [n, e] : engines) {
    if (n == lower) return &e;
    for (const std::string& a : e.aliases)
      if (a == lower) return &e;
  }
  return nullptr;
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

Efficiency Catalog::EfficiencyFor(const Device& d, const Tuning& tuning) const {
  auto it = efficiency.find(d.device_class);
  Efficiency e = it != efficiency.end() ? it->second : Efficiency{};
  if (d.device_class == "datacenter") {
    e.gemm = tuning.gpu_gemm_datacenter;
  } else if (d.device_class == "apple") {
    e.gemm = tuning.gpu_gemm_apple;
  } else {
    e.gemm = tuning.gpu_gemm_desk;
  }
  e.memory = d.memory_type == "hbm"     ? tuning.gpu_memory_hbm
             : d.memory_type == "lpddr" ? tuning.gpu_memory_lpddr
                                        : tuning.gpu_memory_gddr;
  return e;
}

absl::Status MergeCatalogJson(const std::string& json_text, const std::string& source, Catalog* catalog) {
  const json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  for (auto it = j.begin(); it != j.end(); ++it) {
    static const char* kSections[] = {"efficiency", "links", "nics", "devices", "hosts", "engines", "parameters"};
    bool known = it.key().rfind('_', 0) == 0;
    for (const char* k : kSections) known |= it.key() == k;
    if (!known)
      return absl::InvalidArgumentError(absl::StrCat(source, ": ", it.key(), " is not a catalog section (known: ",
                                                     absl::StrJoin(kSections, ", "), ")"));
  }
  if (auto it = j.find("efficiency"); it != j.end())
    if (auto st = ReadEfficiency(*it, source + ": efficiency", &catalog->efficiency); !st.ok()) return st;
  if (auto it = j.find("parameters"); it != j.end())
    if (auto st = ReadParameters(*it, source + ": parameters", catalog); !st.ok()) return st;
  if (auto it = j.find("hosts"); it != j.end()) {
    if (!it->is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": hosts must be an object"));
    for (auto h = it->begin(); h != it->end(); ++h) {
      if (h.key().rfind('_', 0) == 0) continue;
      HostCpu host;
      if (auto old = catalog->hosts.find(h.key()); old != catalog->hosts.end()) host = old->second;
      host.name = h.key();
      if (auto st = ReadHost(h.value(), absl::StrCat(source, ": hosts.", h.key()), &host); !st.ok()) return st;
      catalog->hosts[h.key()] = host;
    }
  }
  if (auto it = j.find("engines"); it != j.end()) {
    if (!it->is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": engines must be an object"));
    for (auto e = it->begin(); e != it->end(); ++e) {
      if (e.key().rfind('_', 0) == 0) continue;
      const std::string name = absl::AsciiStrToLower(e.key());
      EngineProfile engine;
      if (auto old = catalog->engines.find(name); old != catalog->engines.end()) engine = old->second;
      engine.name = name;
      if (auto st = ReadEngine(e.value(), absl::StrCat(source, ": engines.", e.key()), &engine); !st.ok()) return st;
      catalog->engines[name] = engine;
    }
  }
  if (auto it = j.find("links"); it != j.end())
    DSV4_RETURN_IF_ERROR(ReadLinks(*it, source + ": links", &catalog->links));
  if (auto it = j.find("nics"); it != j.end()) DSV4_RETURN_IF_ERROR(ReadLinks(*it, source + ": nics", &catalog->nics));
  if (auto it = j.find("devices"); it != j.end()) {
    if (!it->is_object()) return absl::InvalidArgumentError(absl::StrCat(source, ": devices must be an object"));
    for (auto d = it->begin(); d != it->end(); ++d) {
      if (d.key().rfind('_', 0) == 0) continue;
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
    absl::Status st = MergeCatalogJson(BuiltinCatalogJson(), "cluster/catalog/devices.json", c);
    if (st.ok()) st = MergeCatalogJson(BuiltinSoftwareJson(), "cluster/catalog/software.json", c);
    if (!st.ok()) {
      std::fprintf(stderr, "built-in catalog is invalid: %s\n", std::string(st.message()).c_str());
      std::abort();
    }
    return c;
  }();
  return *catalog;
}

}  // namespace dsv4::cluster
