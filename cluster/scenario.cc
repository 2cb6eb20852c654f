#include "cluster/scenario.h"

#include <algorithm>
#include <cmath>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/file.h"
#include "base/status.h"

namespace dsv4::cluster {
namespace {

using nlohmann::json;

// Reads the fields of one JSON object; the first error wins and names "<prefix>.<key>".
class Section {
 public:
  Section(const json* j, std::string prefix, absl::Status* status) : j_(j), prefix_(std::move(prefix)), st_(status) {}

  // Rejects keys this section does not know (typos would otherwise be silently ignored).
  void Known(std::initializer_list<const char*> keys) {
    if (j_ == nullptr || !st_->ok()) return;
    std::set<std::string> known(keys.begin(), keys.end());
    for (auto it = j_->begin(); it != j_->end(); ++it)
      if (!known.count(it.key()) && it.key().rfind('_', 0) != 0)
        return Fail(it.key(), absl::StrCat("is not a known field (known: ", absl::StrJoin(known, ", "), ")"));
  }
  void Number(const char* key, double* out, double lo, double hi) {
    const json* v = Get(key);
    if (v == nullptr) return;
    if (!v->is_number()) return Fail(key, "must be a number");
    const double x = v->get<double>();
    if (!(x >= lo && x <= hi)) return Fail(key, absl::StrCat("= ", x, " is outside [", lo, ", ", hi, "]"));
    *out = x;
  }
  // Strictly positive numbers (QPS, SLOs): zero and negatives are errors.
  void Positive(const char* key, double* out) {
    const json* v = Get(key);
    if (v == nullptr) return;
    if (!v->is_number()) return Fail(key, "must be a number");
    const double x = v->get<double>();
    if (!(x > 0) || x > 1e12) return Fail(key, absl::StrCat("= ", x, " must be > 0"));
    *out = x;
  }
  template <typename T>
  void Int(const char* key, T* out, int64_t lo, int64_t hi) {
    const json* v = Get(key);
    if (v == nullptr) return;
    if (!v->is_number_integer()) return Fail(key, "must be an integer");
    const int64_t x = v->get<int64_t>();
    if (x < lo || x > hi) return Fail(key, absl::StrCat("= ", x, " is outside [", lo, ", ", hi, "]"));
    *out = static_cast<T>(x);
  }
  void String(const char* key, std::string* out) {
    const json* v = Get(key);
    if (v == nullptr) return;
    if (!v->is_string()) return Fail(key, "must be a string");
    *out = v->get<std::string>();
  }
  // Booleans into -1 (absent) / 0 / 1.
  void Bool(const char* key, int* out) {
    const json* v = Get(key);
    if (v == nullptr) return;
    if (!v->is_boolean()) return Fail(key, "must be true or false");
    *out = v->get<bool>() ? 1 : 0;
  }
  bool Has(const char* key) { return Get(key) != nullptr; }
  const json* Object(const char* key) {
    const json* v = Get(key);
    if (v == nullptr) return nullptr;
    if (!v->is_object()) {
      Fail(key, "must be an object");
      return nullptr;
    }
    return v;
  }
  void Fail(const std::string& key, const std::string& what) {
    if (st_->ok()) *st_ = absl::InvalidArgumentError(absl::StrCat(prefix_, ".", key, ": ", what));
  }
  std::string Path(const char* key) const { return absl::StrCat(prefix_, ".", key); }

 private:
  const json* Get(const char* key) {
    if (j_ == nullptr || !st_->ok()) return nullptr;
    auto it = j_->find(key);
    if (it == j_->end() || it->is_null()) return nullptr;
    return &*it;
  }
  const json* j_;
  std::string prefix_;
  absl::Status* st_;
};

void ReadWeights(const json* j, Scenario* s, absl::Status* st) {
  Section w(j, "scenario.weights", st);
  w.Known({"dense_bits", "expert_bits", "kv_bits", "pruned_experts_per_layer"});
  w.Number("dense_bits", &s->precision.dense_bits, 1, 32);
  w.Number("expert_bits", &s->precision.expert_bits, 1, 32);
  w.Number("kv_bits", &s->precision.kv_bits, 1, 32);
  w.Int("pruned_experts_per_layer", &s->pruned_experts_per_layer, 1, 1 << 20);
}

void ReadHardware(const json* j, Scenario* s, absl::Status* st) {
  Section h(j, "scenario.hardware", st);
  h.Known({"device", "devices_per_node", "nodes", "host_memory_bandwidth_gbps", "host_memory_gb", "host_cores",
           "scale_out", "price_per_hour", "host_cpu", "host_sockets", "host_stream_gbps", "host_isa", "p2p"});
  h.String("device", &s->device);
  h.Int("devices_per_node", &s->devices_per_node, 1, 1 << 16);
  h.Int("nodes", &s->nodes, 1, 1 << 20);
  if (h.Has("host_memory_bandwidth_gbps")) h.Positive("host_memory_bandwidth_gbps", &s->host_memory_bandwidth_gbps);
  h.Int("host_cores", &s->host_cores, 1, 1 << 16);
  if (h.Has("host_memory_gb")) h.Positive("host_memory_gb", &s->host_memory_gb);
  h.String("scale_out", &s->scale_out);
  h.Number("price_per_hour", &s->price_per_hour, 0, 1e6);
  h.String("host_cpu", &s->host_cpu);
  h.Int("host_sockets", &s->host_sockets, 1, 16);
  if (h.Has("host_stream_gbps")) h.Positive("host_stream_gbps", &s->host_stream_gbps);
  h.String("host_isa", &s->host_isa);
  if (!s->host_isa.empty() && s->host_isa != "amx" && s->host_isa != "avx512" && s->host_isa != "avx2" &&
      s->host_isa != "neon")
    h.Fail("host_isa", absl::StrCat("= \"", s->host_isa, "\" must be \"amx\", \"avx512\", \"avx2\" or \"neon\""));
  h.Bool("p2p", &s->p2p);
}

void ReadParallel(const json* j, Scenario* s, absl::Status* st) {
  Section p(j, "scenario.parallel", st);
  p.Known({"tp", "ep", "dp_attention", "experts_on", "redundant_experts", "disaggregated", "micro_batches", "pp",
           "eplb"});
  p.Bool("eplb", &s->eplb);
  s->layout_given = p.Has("tp") || p.Has("ep") || p.Has("dp_attention") || p.Has("pp");
  p.Int("tp", &s->tp, 1, 1 << 16);
  p.Int("pp", &s->pp, 1, 1 << 10);
  p.Int("ep", &s->ep, 1, 1 << 20);
  p.Int("dp_attention", &s->dp_attention, 1, 1 << 20);
  p.Int("redundant_experts", &s->redundant_experts, 0, 1 << 20);
  p.Int("micro_batches", &s->micro_batches, 1, 2);
  std::string on = "device", dis;
  p.String("experts_on", &on);
  if (on != "device" && on != "host")
    p.Fail("experts_on", absl::StrCat("= \"", on, "\" must be \"device\" or \"host\""));
  s->experts_on_host = on == "host";
  p.String("disaggregated", &dis);
  if (dis == "prefill") {
    s->disaggregated = Disaggregation::kPrefill;
  } else if (dis == "decode") {
    s->disaggregated = Disaggregation::kDecode;
  } else if (!dis.empty() && dis != "none") {
    p.Fail("disaggregated", absl::StrCat("= \"", dis, "\" must be \"prefill\", \"decode\" or null"));
  }
}

void ReadWorkload(const json* j, Scenario* s, absl::Status* st) {
  Section w(j, "scenario.workload", st);
  w.Known({"input_tokens", "output_tokens", "batch_per_device", "concurrency", "prefix_cache_hit", "speculative_accept",
           "speculative_tokens", "length_distribution", "requests", "token_budget"});
  w.Number("input_tokens", &s->input_tokens, 1, 1e9);
  w.Number("output_tokens", &s->output_tokens, 1, 1e9);
  if (w.Has("batch_per_device")) w.Positive("batch_per_device", &s->batch_per_device);
  if (w.Has("concurrency")) w.Positive("concurrency", &s->concurrency);
  w.Number("prefix_cache_hit", &s->prefix_cache_hit, 0, 1);
  w.Number("speculative_accept", &s->speculative_accept, 0, 1);
  w.Int("speculative_tokens", &s->speculative_tokens, 0, 16);
  w.Int("requests", &s->requests, 10, 1000000);
  if (w.Has("token_budget")) w.Positive("token_budget", &s->token_budget);
  std::string dist = "fixed";
  w.String("length_distribution", &dist);
  if (dist == "fixed") {
    s->lengths = LengthDistribution::kFixed;
  } else if (dist == "exponential") {
    s->lengths = LengthDistribution::kExponential;
  } else if (dist == "uniform") {
    s->lengths = LengthDistribution::kUniform;
  } else {
    w.Fail("length_distribution", absl::StrCat("= \"", dist, "\" must be fixed, exponential or uniform"));
  }
}

// The "software" section, or its top-level shorthands "engine", "engine_version" and "date".
void ReadSoftware(const json* j, Section& top, Scenario* s, absl::Status* st) {
  Section w(j, "scenario.software", st);
  w.Known({"engine", "engine_version", "date", "maturity", "fused_moe"});
  w.String("engine", &s->engine);
  w.String("engine_version", &s->engine_version);
  w.String("date", &s->software_date);
  w.String("maturity", &s->maturity);
  w.Bool("fused_moe", &s->fused_moe);
  struct Shorthand {
    const char* key;
    std::string* out;
  };
  for (const Shorthand& h : {Shorthand{"engine", &s->engine}, Shorthand{"engine_version", &s->engine_version},
                             Shorthand{"date", &s->software_date}}) {
    std::string v;
    top.String(h.key, &v);
    if (v.empty()) continue;
    if (!h.out->empty() && *h.out != v)
      return top.Fail(h.key, absl::StrCat("= \"", v, "\" contradicts scenario.software.", h.key, " = \"", *h.out, "\""));
    *h.out = v;
  }
  if (!s->maturity.empty() && s->maturity != "day0" && s->maturity != "early" && s->maturity != "mature")
    w.Fail("maturity", absl::StrCat("= \"", s->maturity, "\" must be \"day0\", \"early\" or \"mature\""));
  if (!s->software_date.empty() && st->ok()) {
    auto d = ParseDate(s->software_date, j != nullptr && j->contains("date") ? "scenario.software.date" : "scenario.date");
    if (!d.ok()) *st = d.status();
  }
}

absl::StatusOr<Question> ParseQuestion(const std::string& q) {
  if (q == "prefill_throughput") return Question::kPrefillThroughput;
  if (q == "decode_throughput") return Question::kDecodeThroughput;
  if (q == "single_stream") return Question::kSingleStream;
  if (q == "capacity") return Question::kCapacity;
  return absl::InvalidArgumentError(absl::StrCat("scenario.question: unknown question \"", q,
                                                 "\" (known: prefill_throughput, decode_throughput, single_stream, "
                                                 "capacity)"));
}

}  // namespace

const char* QuestionName(Question q) {
  switch (q) {
    case Question::kPrefillThroughput:
      return "prefill_throughput";
    case Question::kDecodeThroughput:
      return "decode_throughput";
    case Question::kSingleStream:
      return "single_stream";
    case Question::kCapacity:
      return "capacity";
  }
  return "?";
}

absl::StatusOr<Scenario> ParseScenario(const std::string& json_text, const std::string& source) {
  const json j = json::parse(json_text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object())
    return absl::InvalidArgumentError(absl::StrCat(source, ": not a JSON object"));
  Scenario s;
  absl::Status st;
  Section top(&j, "scenario", &st);
  top.Known({"name", "model", "weights", "hardware", "parallel", "workload", "question", "slo", "qps", "seed",
             "measured", "source", "software", "engine", "engine_version", "date"});
  top.String("name", &s.name);
  top.String("model", &s.model);
  ReadWeights(top.Object("weights"), &s, &st);
  const json* hw = top.Object("hardware");
  if (hw == nullptr && st.ok()) top.Fail("hardware", "is missing");
  ReadHardware(hw, &s, &st);
  ReadParallel(top.Object("parallel"), &s, &st);
  ReadWorkload(top.Object("workload"), &s, &st);
  ReadSoftware(top.Object("software"), top, &s, &st);
  std::string question = "decode_throughput";
  top.String("question", &question);
  if (top.Has("qps")) top.Positive("qps", &s.qps);
  if (const json* slo = top.Object("slo")) {
    Section o(slo, "scenario.slo", &st);
    o.Known({"ttft_ms", "tpot_ms", "percentile"});
    if (o.Has("ttft_ms")) o.Positive("ttft_ms", &s.slo_ttft_ms);
    if (o.Has("tpot_ms")) o.Positive("tpot_ms", &s.slo_tpot_ms);
    o.Number("percentile", &s.slo_percentile, 50, 100);
  }
  top.Int("seed", &s.seed, 0, INT64_MAX);
  if (!st.ok()) return absl::Status(st.code(), absl::StrCat(source, ": ", st.message()));
  auto q = ParseQuestion(question);
  if (!q.ok()) return absl::Status(q.status().code(), absl::StrCat(source, ": ", q.status().message()));
  s.question = *q;
  if (s.device.empty())
    return absl::InvalidArgumentError(absl::StrCat(source, ": scenario.hardware.device is missing"));
  if (s.question == Question::kCapacity) {
    if (s.qps <= 0) return absl::InvalidArgumentError(absl::StrCat(source, ": scenario.qps: capacity needs qps > 0"));
    if (s.slo_ttft_ms <= 0 && s.slo_tpot_ms <= 0)
      return absl::InvalidArgumentError(
          absl::StrCat(source, ": scenario.slo: capacity needs slo.ttft_ms and/or slo.tpot_ms > 0"));
  }
  return s;
}

absl::StatusOr<Scenario> LoadScenario(const std::string& path) {
  DSV4_ASSIGN_OR_RETURN(const std::string text, ReadFile(path), "--scenario");
  return ParseScenario(text, path);
}

namespace {

// The engine a scenario that names none most likely runs: llama.cpp on a host-only device and on
// single desk-side devices, KTransformers with host experts, SGLang on datacenter parts, vLLM on
// several desk-side devices.
std::string UsualEngine(const Scenario& s, const Device& d) {
  if (d.IsHostOnly()) return "llama.cpp";
  if (s.experts_on_host) return "ktransformers";
  if (d.device_class == "datacenter") return "sglang";
  if (d.device_class == "apple" || s.World() == 1) return "llama.cpp";
  return "vllm";
}

int64_t DayOrUnknown(const std::string& date) {
  if (date.empty()) return -1;
  auto d = ParseDate(date, "date");
  return d.ok() ? *d : -1;
}

// Software: engine profile, maturity, features that depend on the date.
absl::Status ResolveSoftware(const Scenario& s, const Catalog& catalog, Resolved* r) {
  const std::string name = s.engine.empty() ? UsualEngine(s, r->device) : s.engine;
  const EngineProfile* e = catalog.FindEngine(name);
  if (e == nullptr) {
    // An engine the catalog does not profile still runs: take the usual engine of the device class
    // and say so, rather than refusing the scenario.
    e = catalog.FindEngine(UsualEngine(s, r->device));
    r->notes.push_back(absl::StrCat("engine '", name, "' is not in the catalog: planned with the profile of ",
                                    e != nullptr ? e->name : "the device class"));
  }
  if (e != nullptr) r->engine = *e;
  r->engine_assumed = s.engine.empty();
  // Era profiles up to the software's date, then the version with its own profile (the longest
  // prefix of engine_version that the catalog lists).
  auto apply = [&](const std::map<std::string, std::string>& fields) {
    for (const auto& [key, value] : fields) {
      if (key == "host_experts") r->engine.host_experts = value;
      if (key == "host_kernels") r->engine.host_kernels = value;
      if (key == "host_compute_kernels") r->engine.host_compute_kernels = value;
      if (key == "fused_moe_since") r->engine.fused_moe_since = value;
      if (key == "gpu_prefill_since") r->engine.gpu_prefill_since = value;
      if (key == "multi_gpu") r->engine.multi_gpu = value;
      if (key == "fp4_without_fp4") r->engine.fp4_without_fp4 = value;
      if (key == "ep_all_to_all") r->engine.ep_all_to_all = value;
    }
  };
  const int64_t sw_day = DayOrUnknown(s.software_date);
  for (const auto& [from, fields] : r->engine.eras)  // in date order (ISO dates sort as text)
    if (sw_day >= 0 && sw_day >= DayOrUnknown(from)) apply(fields);
  std::string best;
  for (const auto& [prefix, fields] : r->engine.versions)
    if (s.engine_version.rfind(prefix, 0) == 0 && prefix.size() > best.size()) best = prefix;
  if (!best.empty()) apply(r->engine.versions.at(best));
  if (r->engine.host_compute_kernels.empty()) r->engine.host_compute_kernels = r->engine.host_kernels;
  const int64_t date = DayOrUnknown(s.software_date);
  if (date >= 0 && !r->model.release_date.empty() && date < DayOrUnknown(r->model.release_date) - 30)
    return absl::InvalidArgumentError(absl::StrCat("scenario.software.date: ", s.software_date,
                                                   " is before the model's release (", r->model.release_date, ")"));
  if (!s.maturity.empty()) {
    r->maturity = s.maturity == "day0" ? Maturity::kDay0 : s.maturity == "early" ? Maturity::kEarly : Maturity::kMature;
    r->maturity_reason = "stated";
  } else {
    const int64_t model_day = r->engine.dedicated ? -1 : DayOrUnknown(r->model.architecture_date);
    const int64_t device_day = DayOrUnknown(r->device.released);
    r->maturity = MaturityFromDates(date, model_day, device_day, &r->maturity_reason);
    const auto& tuned = r->engine.tuned_for;
    if (!tuned.empty() && r->maturity == Maturity::kMature &&
        std::find(tuned.begin(), tuned.end(), r->device.name) == tuned.end() &&
        std::find(tuned.begin(), tuned.end(), r->device.device_class) == tuned.end()) {
      r->maturity = Maturity::kEarly;
      r->untuned_device = true;
      r->maturity_reason = absl::StrCat(r->engine.name, "'s kernels are not tuned for ", r->device.name);
    }
    const bool one_node = s.nodes == 1 && s.devices_per_node <= 8;
    if (r->maturity != Maturity::kMature && r->engine.launch_partner && r->device.device_class == "datacenter" &&
        one_node && s.disaggregated == Disaggregation::kNone && model_day >= device_day) {
      r->maturity = Maturity::kMature;
      r->maturity_reason += "; single-node path of a launch-partner engine";
    }
  }
  r->maturity_factor = MaturityFactor(r->maturity, r->tuning);
  auto since = [&](const std::string& from) { return from.empty() || date < 0 || date >= DayOrUnknown(from); };
  r->fused_moe = s.fused_moe >= 0 ? s.fused_moe == 1
                                  : !r->engine.fused_moe_since.empty() && since(r->engine.fused_moe_since) &&
                                        r->model.attention == AttentionKind::kV4;
  r->gpu_prefill_streaming = r->engine.gpu_prefill_tokens > 0 && since(r->engine.gpu_prefill_since);
  return absl::OkStatus();
}

// A socket's clock with `busy` of its cores under vector load. The socket's power budget is shared:
// with every core busy a part runs at its base clock, with fewer each may run faster, up to its boost
// clock (a 32-core slice of a 96-core EPYC 9V45 in a cloud VM, or 64 threads on a 128-core Xeon
// 6980P). Dynamic power goes as the clock cubed (voltage rises with it), so at equal power the clock
// goes as (cores / busy)^(1/3); the socket's throughput still grows with every core added.
double HostClock(const HostCpu& cpu, double busy) {
  if (cpu.boost_ghz <= cpu.ghz || busy <= 0) return cpu.ghz;
  return std::min(cpu.boost_ghz, cpu.ghz * std::cbrt(std::max(1.0, cpu.cores / busy)));
}

// The host: catalog CPU and sockets, or the scenario's and the device's figures; then what the
// engine's expert kernels reach of it, per device.
absl::Status ResolveHost(const Scenario& s, const Catalog& catalog, Resolved* r) {
  Resolved::Host& h = r->host;
  const Device& d = r->device;
  // Sockets: stated, one for a named CPU, else those of the device's typical host (a two-socket
  // server for the host-only device "cpu").
  h.sockets = s.host_sockets > 0 ? s.host_sockets : (s.host_cpu.empty() ? std::max(1, d.host_sockets) : 1);
  double stream_fraction = 0.8;  // [estimate] STREAM triad of the DRAM peak on servers and desktops
  if (!s.host_cpu.empty()) {
    auto cpu = catalog.FindHost(s.host_cpu, "scenario.hardware.host_cpu");
    if (!cpu.ok()) return cpu.status();
    h.cpu = cpu->name;
    h.cores = s.host_cores > 0 ? s.host_cores : h.sockets * cpu->cores;
    h.peak_gbps = h.sockets * cpu->memory_channels * cpu->memory_mts * 8 / 1000.0;
    h.ghz = HostClock(*cpu, static_cast<double>(h.cores) / h.sockets);
    h.simd_gflops_per_core = h.ghz * cpu->simd_flops_per_cycle;
    h.amx_gflops_per_core = h.ghz * cpu->amx_flops_per_cycle;
    stream_fraction = cpu->stream_fraction;
  } else {
    h.cores = s.host_cores > 0 ? s.host_cores : d.host_cores;
    h.peak_gbps = d.host_memory_gbps;
    h.simd_gflops_per_core = d.host_core_gflops;
    if (s.host_isa == "amx") h.amx_gflops_per_core = h.simd_gflops_per_core * 1024 / 64;  // AMX BF16 vs two FMA units
  }
  if (s.host_memory_bandwidth_gbps > 0) h.peak_gbps = s.host_memory_bandwidth_gbps;
  if (d.unified_memory && !d.IsHostOnly()) stream_fraction = 1;  // the device's own memory: its efficiency applies
  h.stream_gbps = s.host_stream_gbps > 0 ? s.host_stream_gbps : h.peak_gbps * stream_fraction;
  const Tuning& t = r->tuning;
  const EngineProfile& e = r->engine;
  // A NUMA-aware engine places experts per socket: the second socket adds a fitted share of its
  // bandwidth. Others stream from one socket's memory controllers at a time (LMSYS 2025-07-14:
  // llama.cpp runs slower on two sockets than on one).
  const double per_socket = h.stream_gbps / h.sockets;
  const double sockets = 1 + (h.sockets - 1) * (e.numa_aware ? t.host_numa_gain : 0.0);
  const double kernels = e.host_kernels == "llamacpp" ? t.host_memory_llamacpp : t.host_memory_tuned;
  const int sharing = std::max(1, std::min(s.devices_per_node, d.devices_per_host));
  // Software maturity scales the host kernels too: a new model brings new weight formats and layers
  // to the CPU kernels as well (MXFP4 experts for V4).
  const double maturity = r->maturity_factor;
  r->host_gbps = per_socket * sockets * kernels * maturity / sharing;
  // The same for compute: threads of an engine that is not NUMA-aware spread over every socket but
  // the work waits on the slowest socket's reads across the link (LMSYS 2025-07-14: llama.cpp is
  // slower on two sockets than on one); one socket's cores is what such an engine gets.
  const int cores = e.numa_aware ? h.cores : std::max(1, h.cores / h.sockets);
  r->host_cores = std::max(1, cores / sharing);
  const bool amx = e.host_experts == "amx" && h.amx_gflops_per_core > 0;
  const double simd_eff = e.host_compute_kernels == "llamacpp" ? t.host_compute_llamacpp : t.host_compute_simd;
  const double per_core = amx ? h.amx_gflops_per_core * t.host_compute_amx : h.simd_gflops_per_core * simd_eff;
  r->host_gflops = r->host_cores * per_core * maturity;
  r->host_link_gbps = d.host_link_gbps;
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<Resolved> Resolve(const Scenario& s, const Catalog& catalog, const Tuning* tuning) {
  Resolved r;
  r.s = s;
  auto model = LoadPreset(s.model);
  if (!model.ok()) return absl::InvalidArgumentError(absl::StrCat("scenario.model: ", model.status().message()));
  r.model = *model;
  auto device = catalog.FindDevice(s.device, "scenario.hardware.device");
  if (!device.ok()) return device.status();
  r.device = *device;
  r.tuning = tuning != nullptr ? *tuning : catalog.tuning;
  if (auto st = ResolveSoftware(s, catalog, &r); !st.ok()) return st;
  r.eff = catalog.EfficiencyFor(r.device, r.tuning);
  for (double* f : {&r.eff.gemm, &r.eff.attention, &r.eff.memory, &r.eff.kv_memory}) *f *= r.maturity_factor;
  r.eff.kernel_floor_us /= r.maturity_factor;  // early software: fewer fused kernels, less graph capture
  r.scale_up = catalog.ScaleUpLink(r.device);
  const std::string nic = s.scale_out.empty() ? r.device.scale_out : s.scale_out;
  if (!nic.empty()) {
    DSV4_ASSIGN_OR_RETURN(r.scale_out, catalog.FindNic(nic, "scenario.hardware.scale_out"));
  }
  // GeForce cards do not reach each other's memory over PCIe (no peer-to-peer): collectives stage
  // through host memory. Workstation and datacenter parts do.
  r.p2p = s.p2p >= 0 ? s.p2p == 1 : r.device.device_class != "consumer";
  r.world = s.World();
  auto bad = [](const std::string& field, const std::string& what) {
    return absl::InvalidArgumentError(absl::StrCat(field, ": ", what));
  };
  if (r.device.IsHostOnly() && r.world != 1)
    return bad("scenario.hardware.devices_per_node", "device \"cpu\" plans one host (devices_per_node = nodes = 1)");
  if (s.nodes > 1 && r.scale_out.gbps <= 0)
    return bad("scenario.hardware.scale_out", "several nodes need a scale-out network (not \"none\")");
  if (s.devices_per_node > r.device.scale_up_domain && r.device.scale_up != "pcie4" && r.device.scale_up != "pcie5")
    return bad("scenario.hardware.devices_per_node",
               absl::StrCat("= ", s.devices_per_node, " exceeds the ", r.device.scale_up_domain,
                            "-device scale-up domain of ", r.device.name));
  // Pipeline stages: stated, or every device a stage for engines that split layers (llama.cpp) when
  // the scenario states no layout.
  r.pp = s.pp > 0 ? s.pp : (r.engine.multi_gpu == "layer" && !s.layout_given && r.world > s.tp ? r.world / s.tp : 1);
  if (s.pp <= 0 && r.pp > 1)
    r.notes.push_back(absl::StrCat(r.engine.name, " splits layers across devices: ", r.pp, " pipeline stages"));
  if (r.pp > r.model.layers)
    return bad("scenario.parallel.pp", absl::StrCat("= ", r.pp, " exceeds the model's ", r.model.layers, " layers"));
  const int64_t stage = static_cast<int64_t>(s.tp) * r.pp;
  if (s.dp_attention > 0) {
    // An explicit layout may use fewer devices than the hardware has (the rest serve elsewhere).
    r.dp = s.dp_attention;
    if (static_cast<int64_t>(r.dp) * stage > r.world)
      return bad("scenario.parallel.dp_attention", absl::StrCat("dp_attention x tp x pp = ", r.dp, " x ", s.tp, " x ",
                                                                r.pp, " exceeds the ", r.world, " devices"));
    r.unused_devices = r.world - r.dp * static_cast<int>(stage);
    r.world = r.dp * static_cast<int>(stage);
  } else {
    if (r.world % stage != 0)
      return bad(r.pp > 1 ? "scenario.parallel.pp" : "scenario.parallel.tp",
                 absl::StrCat("tp x pp = ", stage, " does not divide the ", r.world, " devices"));
    r.dp = r.world / static_cast<int>(stage);
  }
  const int stage_world = r.world / r.pp;  // devices that hold the same layers
  r.ep = s.ep > 0 ? s.ep : stage_world;
  if (r.ep > stage_world || stage_world % r.ep != 0)
    return bad("scenario.parallel.ep", absl::StrCat("= ", r.ep, " does not divide the ", stage_world, " devices",
                                                    r.pp > 1 ? " of a pipeline stage" : ""));
  r.routed_experts = static_cast<int>(r.model.routed_experts);
  if (s.pruned_experts_per_layer > 0) {
    if (s.pruned_experts_per_layer > r.model.routed_experts || s.pruned_experts_per_layer < r.model.experts_per_token)
      return bad("scenario.weights.pruned_experts_per_layer",
                 absl::StrCat("= ", s.pruned_experts_per_layer, " must be in [experts per token = ", r.model.experts_per_token, ", ",
                              r.model.routed_experts, "]"));
    r.routed_experts = static_cast<int>(s.pruned_experts_per_layer);
  }
  if ((r.routed_experts + s.redundant_experts) < r.ep)
    return bad("scenario.parallel.ep", absl::StrCat("= ", r.ep, " exceeds the ", r.routed_experts + s.redundant_experts,
                                                    " expert slots (routed + redundant)"));
  if (r.model.heads % s.tp != 0)
    return bad("scenario.parallel.tp",
               absl::StrCat("= ", s.tp, " does not divide the model's ", r.model.heads, " attention heads"));
  const double context = s.input_tokens + s.output_tokens;
  if (context > static_cast<double>(r.model.max_context))
    return bad("scenario.workload.input_tokens",
               absl::StrCat("input_tokens + output_tokens = ", context, " exceeds the model's context of ",
                            r.model.max_context, " tokens"));
  if (s.speculative_tokens > 0 && s.speculative_accept < 0)
    return bad("scenario.workload.speculative_accept", "is needed when speculative_tokens is set");
  // Host figures (catalog or scenario) are per host; each device gets its share.
  const int sharing = std::max(1, std::min(s.devices_per_node, r.device.devices_per_host));
  if (auto st = ResolveHost(s, catalog, &r); !st.ok()) return st;
  r.host_gb = s.host_memory_gb > 0 ? s.host_memory_gb : r.device.host_memory_gb;
  r.host_gb_given = s.host_memory_gb > 0;
  if (r.host_gb <= 0) {
    if (r.device.device_class == "datacenter")
      r.host_gb = 2048;  // a 2 TB server
    else if (r.device.unified_memory)
      r.host_gb = 0;
    else
      r.host_gb = 192;  // a workstation or desktop host
  }
  if (!r.device.IsHostOnly()) r.host_gb /= sharing;
  if ((s.experts_on_host || r.device.IsHostOnly()) && r.host_gbps <= 0)
    return bad("scenario.hardware.host_memory_bandwidth_gbps", "is needed when experts live in host memory");
  r.price_per_hour = s.price_per_hour > 0 ? s.price_per_hour : r.device.price_per_hour;
  return r;
}

}  // namespace dsv4::cluster
