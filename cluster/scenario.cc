#include "cluster/scenario.h"

#include <algorithm>
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
           "scale_out", "price_per_hour"});
  h.String("device", &s->device);
  h.Int("devices_per_node", &s->devices_per_node, 1, 1 << 16);
  h.Int("nodes", &s->nodes, 1, 1 << 20);
  if (h.Has("host_memory_bandwidth_gbps")) h.Positive("host_memory_bandwidth_gbps", &s->host_memory_bandwidth_gbps);
  h.Int("host_cores", &s->host_cores, 1, 1 << 16);
  if (h.Has("host_memory_gb")) h.Positive("host_memory_gb", &s->host_memory_gb);
  h.String("scale_out", &s->scale_out);
  h.Number("price_per_hour", &s->price_per_hour, 0, 1e6);
}

void ReadParallel(const json* j, Scenario* s, absl::Status* st) {
  Section p(j, "scenario.parallel", st);
  p.Known({"tp", "ep", "dp_attention", "experts_on", "redundant_experts", "disaggregated", "micro_batches"});
  p.Int("tp", &s->tp, 1, 1 << 16);
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
             "measured", "source"});
  top.String("name", &s.name);
  top.String("model", &s.model);
  ReadWeights(top.Object("weights"), &s, &st);
  const json* hw = top.Object("hardware");
  if (hw == nullptr && st.ok()) top.Fail("hardware", "is missing");
  ReadHardware(hw, &s, &st);
  ReadParallel(top.Object("parallel"), &s, &st);
  ReadWorkload(top.Object("workload"), &s, &st);
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

absl::StatusOr<Resolved> Resolve(const Scenario& s, const Catalog& catalog) {
  Resolved r;
  r.s = s;
  auto model = LoadPreset(s.model);
  if (!model.ok()) return absl::InvalidArgumentError(absl::StrCat("scenario.model: ", model.status().message()));
  r.model = *model;
  DSV4_ASSIGN_OR_RETURN(auto device, catalog.FindDevice(s.device, "scenario.hardware.device"));
  r.device = device;
  r.eff = catalog.EfficiencyFor(r.device);
  r.scale_up = catalog.ScaleUpLink(r.device);
  const std::string nic = s.scale_out.empty() ? r.device.scale_out : s.scale_out;
  if (!nic.empty()) {
    DSV4_ASSIGN_OR_RETURN(r.scale_out, catalog.FindNic(nic, "scenario.hardware.scale_out"));
  }
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
  if (s.dp_attention > 0) {
    // An explicit layout may use fewer devices than the hardware has (the rest serve elsewhere).
    r.dp = s.dp_attention;
    if (static_cast<int64_t>(r.dp) * s.tp > r.world)
      return bad("scenario.parallel.dp_attention",
                 absl::StrCat("dp_attention x tp = ", r.dp, " x ", s.tp, " exceeds the ", r.world, " devices"));
    r.unused_devices = r.world - r.dp * s.tp;
    r.world = r.dp * s.tp;
  } else {
    if (r.world % s.tp != 0)
      return bad("scenario.parallel.tp", absl::StrCat("= ", s.tp, " does not divide the ", r.world, " devices"));
    r.dp = r.world / s.tp;
  }
  r.ep = s.ep > 0 ? s.ep : r.world;
  if (r.ep > r.world || r.world % r.ep != 0)
    return bad("scenario.parallel.ep", absl::StrCat("= ", r.ep, " does not divide the ", r.world, " devices"));
  r.routed_experts = static_cast<int>(r.model.routed_experts);
  if (s.pruned_experts_per_layer > 0) {
    if (s.pruned_experts_per_layer > r.model.routed_experts || s.pruned_experts_per_layer < r.model.top_k)
      return bad("scenario.weights.pruned_experts_per_layer",
                 absl::StrCat("= ", s.pruned_experts_per_layer, " must be in [top_k = ", r.model.top_k, ", ",
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
  r.host_gbps = (s.host_memory_bandwidth_gbps > 0 ? s.host_memory_bandwidth_gbps : r.device.host_memory_gbps) / sharing;
  r.host_cores = std::max(1, (s.host_cores > 0 ? s.host_cores : r.device.host_cores) / sharing);
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
