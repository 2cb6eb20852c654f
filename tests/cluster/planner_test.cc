// The capacity planner: presets against published sizes, the catalog's sources, scenario validation
// (PL-01), determinism (PL-02), monotonicity (PL-03), units and sums (PL-05), calibration profiles,
// software maturity and engine profiles, the mechanisms against hand-computed values, validation
// files, fitting and cross-validation (a synthetic set with a known held-out error), and the error
// held out by source on cluster/validation/points.json.
#include "cluster/planner.h"

#include <gtest/gtest.h>

#include "absl/strings/str_cat.h"

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "base/file.h"
#include "cluster/hardware.h"
#include "cluster/model_cost.h"
#include "cluster/profile.h"
#include "cluster/report.h"
#include "cluster/scenario.h"
#include "cluster/simulator.h"
#include "cluster/software.h"
#include "cluster/validate.h"

namespace dsv4::cluster {
namespace {

using nlohmann::json;

std::string SharedPath(const std::string& rel) { return std::string(DSV4_SHARED_DIR) + "/" + rel; }

bool ReadText(const std::string& path, std::string* out) {
  auto text = ReadFile(path);
  if (text.ok()) *out = std::move(*text);
  return text.ok();
}

json BaseScenario() {
  return json::parse(R"({
    "name": "test", "model": "deepseek-v4-flash",
    "weights": {"dense_bits": 8, "expert_bits": 4, "kv_bits": 8},
    "hardware": {"device": "h800", "devices_per_node": 8, "nodes": 1},
    "parallel": {"tp": 1, "ep": 8, "dp_attention": 8, "experts_on": "device", "redundant_experts": 0},
    "workload": {"input_tokens": 2048, "output_tokens": 256, "batch_per_device": 32, "requests": 120},
    "question": "decode_throughput"})");
}

json CapacityScenario() {
  json j = BaseScenario();
  j["question"] = "capacity";
  j["qps"] = 6;
  j["slo"] = {{"ttft_ms", 3000}, {"tpot_ms", 60}};
  j["workload"].erase("batch_per_device");
  j["workload"]["length_distribution"] = "exponential";
  return j;
}

absl::StatusOr<json> PlanJson(const json& j, const PlanOptions& o = {}) {
  auto s = ParseScenario(j.dump(), "test.json");
  if (!s.ok()) return s.status();
  return Plan(*s, BuiltinCatalog(), o);
}

// Expects the scenario to be rejected with a message naming `field`.
void ExpectFieldError(const json& j, const std::string& field) {
  auto a = PlanJson(j);
  ASSERT_FALSE(a.ok()) << "accepted a scenario that should fail on " << field;
  EXPECT_EQ(a.status().code(), absl::StatusCode::kInvalidArgument) << a.status();
  EXPECT_NE(a.status().message().find(field), std::string::npos) << a.status();
}

// Milliseconds of one operator of a step in an answer (0 when the step has no such operator).
double OpMs(const json& step, const std::string& name) {
  for (const json& op : step["ops"])
    if (op["op"] == name) return op["ms"].get<double>();
  return 0;
}

// ---- presets ---------------------------------------------------------------------------------------

double MainParams(const ModelPreset& m) {
  const ParamCounts c = CountParams(m);
  return c.Total() - c.mtp - c.mtp_routed - c.engram_tables;
}

TEST(Presets, MatchPublishedSizes) {
  struct Case {
    const char* name;
    double total_b, active_b;
  };
  // Published "total / active" figures (MODEL.md 1.1; Kimi-K2 model card; the pre-release description).
  const Case cases[] = {{"deepseek-v3", 671, 37},
                        {"deepseek-v4-flash", 284, 13},
                        {"deepseek-v4-pro", 1600, 49},
                        {"kimi-k2", 1040, 32.5},
                        {"seed-v4-1t", 1000, 32}};
  for (const Case& c : cases) {
    auto m = FindPreset(c.name);
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_NEAR(MainParams(*m) / 1e9, c.total_b, c.total_b * 0.05) << c.name;
    EXPECT_NEAR(CountParams(*m).active / 1e9, c.active_b, c.active_b * 0.08) << c.name;
  }
  auto seed = FindPreset("seed-v4-1t");
  EXPECT_EQ(seed->experts_per_token, 16);
  EXPECT_EQ(seed->max_context, 1048576);
}

TEST(Presets, V41HasEngramAndSharedCaches) {
  auto m = FindPreset("deepseek-v4.1-flash");
  ASSERT_TRUE(m.ok());
  const ParamCounts c = CountParams(*m);
  EXPECT_NEAR(c.engram_tables / 1e9, 196.6, 1.0);  // "196B Engram"
  int owners = 0;
  for (const V4Layer& l : m->v4_layers) owners += l.owns_cache;
  EXPECT_EQ(owners, 4);  // kv_source_layers [2, 8, 14, 20]
}

// The V4.1-Flash config.json in the released layout (MODEL.md 1.4's values, text_config nesting).
json V41FlashConfigJson() {
  json ratios = json::array();
  for (int l = 0; l < 43; ++l) ratios.push_back(l < 2 || l >= 40 ? 0 : (l < 20 ? 2 : 1));
  json text = {{"model_type", "deepseek_v41_text"},
               {"vocab_size", 129280},
               {"hidden_size", 5120},
               {"num_hidden_layers", 40},
               {"num_attention_heads", 64},
               {"head_dim", 512},
               {"qk_rope_head_dim", 64},
               {"q_lora_rank", 1280},
               {"o_groups", 8},
               {"o_lora_rank", 1024},
               {"n_routed_experts", 384},
               {"num_experts_per_tok", 6},
               {"moe_intermediate_size", 2304},
               {"sliding_window", 128},
               {"index_n_heads", 32},
               {"index_head_dim", 128},
               {"index_topk", 512},
               {"rms_norm_eps", 1e-20},
               {"max_position_embeddings", 1048576},
               {"num_nextn_predict_layers", 3},
               {"compress_ratios", ratios},
               {"kv_source_layer_ids", {2, 8, 14, 20}},
               {"index_source_layer_ids", {2, 8, 14, 20, 24, 28, 32, 36}},
               {"candidate_source_layer_id", 20},
               {"candidate_topk_blocks", 2048},
               {"candidate_block_size", 8},
               {"engram_layer_ids", {1, 14}},
               {"engram_num_embeddings", {384006168, 384016682}},
               {"engram_max_ngram_size", 4},
               {"engram_vocab_size", 16000000},
               {"engram_n_heads", 8},
               {"engram_head_dim", 256},
               {"engram_pad_token_id", 2},
               {"engram_compressed_vocab_size", 99092}};
  return {{"model_type", "deepseek_v41"},
          {"quantization_config", {{"quant_method", "fp8"}, {"weight_block_size", {32, 32}}, {"expert_dtype", "fp4"}}},
          {"text_config", text}};
}

// The cache bytes `dsv4 plan` reports for V4.1-Flash count the rows the runtime's cache accounting
// counts for the same config.json: one compressed cache per KV source (layers 2, 8, 14 at ratio 2
// and 20 at ratio 1: 2.5 rows per token) and index keys where an indexer is also a KV source (the
// same 2.5), none on the level-2 indexers 24..36 nor on the readers.
TEST(Presets, V41FlashCacheBytesFollowTheRuntimeAccounting) {
  auto runtime = ParseModelConfig(V41FlashConfigJson().dump(), "v4.1-flash/config.json");
  ASSERT_TRUE(runtime.ok()) << runtime.status();
  const CacheRowsPerToken rows = runtime->cache_rows_per_token();
  EXPECT_DOUBLE_EQ(rows.kv, 2.5);
  EXPECT_DOUBLE_EQ(rows.index_keys, 2.5);
  // One row at kv_bits 8 in the planner: 448 FP8 values, 448 / 64 UE8M0 scales and 64 BF16 rope
  // values = 583 B; an index key: 128 FP4 values and 128 / 32 scales = 68 B.
  const Precision p{8, 4, 8};
  const double want = (rows.kv * 583 + rows.index_keys * 68) / 40;
  auto preset = FindPreset("deepseek-v4.1-flash");
  auto parsed = ParsePresetConfig(V41FlashConfigJson().dump(), "v4.1-flash/config.json");
  ASSERT_TRUE(preset.ok() && parsed.ok()) << parsed.status();
  for (const ModelPreset* m : {&*preset, &*parsed}) {
    EXPECT_DOUBLE_EQ(MeanCacheBytesPerTokenPerLayer(*m, p), want) << m->name;
    EXPECT_EQ(m->engram_layers, (std::vector<int64_t>{1, 14}));
    EXPECT_EQ(m->engram_lookups, 24);
  }
  // What `dsv4 plan` prints for a V4.1 scenario.
  json j = BaseScenario();
  j["model"] = "deepseek-v4.1-flash";
  auto a = PlanJson(j);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_NEAR((*a)["model"]["cache_bytes_per_token_per_layer"].get<double>(), want, 0.05) << a->dump();
}

TEST(Presets, UnknownNameListsKnownOnes) {
  auto m = FindPreset("deepseek-v9");
  ASSERT_FALSE(m.ok());
  EXPECT_NE(m.status().message().find("deepseek-v4-pro"), std::string::npos);
}

TEST(Presets, ConfigJsonV4GoesThroughModelConfig) {
  json c = {{"model_type", "deepseek_v4"},
            {"vocab_size", 129280},
            {"hidden_size", 4096},
            {"num_hidden_layers", 4},
            {"num_attention_heads", 64},
            {"head_dim", 512},
            {"qk_rope_head_dim", 64},
            {"q_lora_rank", 1024},
            {"o_groups", 8},
            {"o_lora_rank", 1024},
            {"n_routed_experts", 256},
            {"num_experts_per_tok", 16},
            {"moe_intermediate_size", 2048},
            {"sliding_window", 128},
            {"index_n_heads", 64},
            {"index_head_dim", 128},
            {"index_topk", 512},
            {"max_position_embeddings", 1048576},
            {"compress_ratios", {0, 4, 128, 4}}};
  auto p = ParsePresetConfig(c.dump(), "config.json");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_EQ(p->experts_per_token, 16);
  EXPECT_TRUE(p->v4_layers[1].runs_indexer);
  EXPECT_FALSE(p->v4_layers[2].runs_indexer);
  c.erase("hidden_size");
  auto bad = ParsePresetConfig(c.dump(), "config.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("hidden_size"), std::string::npos) << bad.status();
}

TEST(Presets, ConfigJsonV3Style) {
  json c = {{"model_type", "deepseek_v3"},
            {"hidden_size", 7168},
            {"num_hidden_layers", 61},
            {"num_attention_heads", 128},
            {"q_lora_rank", 1536},
            {"kv_lora_rank", 512},
            {"qk_nope_head_dim", 128},
            {"qk_rope_head_dim", 64},
            {"v_head_dim", 128},
            {"n_routed_experts", 256},
            {"n_shared_experts", 1},
            {"num_experts_per_tok", 8},
            {"moe_intermediate_size", 2048},
            {"first_k_dense_replace", 3},
            {"intermediate_size", 18432},
            {"vocab_size", 129280},
            {"max_position_embeddings", 163840}};
  auto p = ParsePresetConfig(c.dump(), "v3.json");
  ASSERT_TRUE(p.ok()) << p.status();
  auto ref = FindPreset("deepseek-v3");
  EXPECT_NEAR(MainParams(*p), MainParams(*ref), 1e6);
  c["num_experts_per_tok"] = "eight";
  auto bad = ParsePresetConfig(c.dump(), "v3.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("num_experts_per_tok"), std::string::npos);
}

TEST(ModelCost, CacheBytesPerToken) {
  // V3 MLA: 512 latent + 64 rope; BF16 = 1152 B, FlashMLA's FP8 layout = 656 B (MODEL.md 2.3).
  auto v3 = FindPreset("deepseek-v3");
  EXPECT_DOUBLE_EQ(LayerCacheBytes(*v3, 0, {8, 8, 16}).per_token, 1152);
  EXPECT_NEAR(LayerCacheBytes(*v3, 0, {8, 8, 8}).per_token, 656, 1);
  // V4: the compressed cache grows by 1/ratio of an entry per token; the window ring is fixed.
  auto flash = FindPreset("deepseek-v4-flash");
  const CacheBytes hca = LayerCacheBytes(*flash, 3, {8, 4, 16});
  EXPECT_DOUBLE_EQ(hca.per_token, 1024.0 / 128);
  EXPECT_DOUBLE_EQ(hca.fixed, 128 * 1024.0);
  EXPECT_DOUBLE_EQ(LayerCacheBytes(*flash, 0, {8, 4, 16}).per_token, 0);
}

TEST(ModelCost, PerTokenCostsCoverTheActiveParameters) {
  // Every active weight is used once per token (2 FLOPs) in the GEMM rows of the per-token table.
  for (const char* name : {"deepseek-v3", "deepseek-v4-pro", "deepseek-v4.1-flash", "seed-v4-1t"}) {
    auto m = FindPreset(name);
    double gemm_flops = 0, attention_flops = 0;
    for (const TokenCostRow& r : PerTokenCosts(*m, {8, 4, 8}, 8192)) {
      if (r.component.rfind("attention:", 0) == 0)
        attention_flops += r.flops;
      else if (r.component != "indexer" && r.component != "mHC" && r.component != "residual + norms")
        gemm_flops += r.flops;
    }
    const ParamCounts c = CountParams(*m);
    EXPECT_NEAR(gemm_flops, 2 * (c.active - c.mhc), 2 * c.active * 1e-3) << name;
    EXPECT_GT(attention_flops, 0) << name;
  }
}

// ---- catalog ---------------------------------------------------------------------------------------

TEST(Catalog, EveryListedDeviceHasSourcedFigures) {
  const char* names[] = {"rtx-3090",
                         "rtx-4090",
                         "rtx-4090d",
                         "rtx-5070ti",
                         "rtx-5090",
                         "rtx-6000-ada",
                         "rtx-pro-6000",
                         "rtx-pro-6000-maxq",
                         "l20",
                         "l40s",
                         "a100-80g",
                         "h20",
                         "h100",
                         "h800",
                         "h200",
                         "b200",
                         "gb200",
                         "gb300",
                         "dgx-spark",
                         "apple-m5-max",
                         "apple-m3-ultra",
                         "cpu"};
  const Catalog& c = BuiltinCatalog();
  for (const char* n : names) {
    auto d = c.FindDevice(n, "device");
    ASSERT_TRUE(d.ok()) << d.status();
    for (const char* fig : {"bf16_tflops", "fp8_tflops", "memory_gb", "memory_gbps", "price_per_hour",
                            "host_memory_gbps", "host_cores"}) {
      ASSERT_TRUE(d->sources.count(fig)) << n << " " << fig;
      EXPECT_FALSE(d->sources.at(fig).empty()) << n << " " << fig;
    }
  }
}

TEST(Catalog, UserFileOverridesAndAdds) {
  Catalog c = BuiltinCatalog();
  const std::string user = R"({"devices": {
      "h800": {"price_per_hour": 1.5},
      "my-gpu": {"class": "workstation", "bf16_tflops": 100, "memory_gb": 64, "memory_gbps": 1000,
                 "scale_up": "pcie5", "scale_out": "eth-100g"}}})";
  ASSERT_TRUE(MergeCatalogJson(user, "mine.json", &c).ok());
  EXPECT_DOUBLE_EQ(c.devices.at("h800").price_per_hour, 1.5);
  EXPECT_DOUBLE_EQ(c.devices.at("h800").memory_gb, 80);      // untouched fields stay
  EXPECT_DOUBLE_EQ(c.devices.at("my-gpu").fp8_tflops, 100);  // no FP8 figure: the BF16 rate
  const absl::Status bad = MergeCatalogJson(R"({"devices": {"x": {"class": "gpu"}}})", "mine.json", &c);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("devices.x.class"), std::string::npos) << bad;
}

// ---- PL-01: invalid scenarios are errors naming the field ------------------------------------------

TEST(Validation, InvalidScenariosNameTheField) {
  json j = BaseScenario();
  j["hardware"]["device"] = "h900";
  ExpectFieldError(j, "scenario.hardware.device");
  j = BaseScenario();
  j["parallel"]["tp"] = 3;
  j["parallel"].erase("dp_attention");
  ExpectFieldError(j, "scenario.parallel.tp");
  j = BaseScenario();
  j["parallel"]["ep"] = 3;
  ExpectFieldError(j, "scenario.parallel.ep");
  j = BaseScenario();
  j["parallel"]["dp_attention"] = 16;
  ExpectFieldError(j, "scenario.parallel.dp_attention");
  j = CapacityScenario();
  j["qps"] = -1;
  ExpectFieldError(j, "scenario.qps");
  j = CapacityScenario();
  j["qps"] = 0;
  ExpectFieldError(j, "scenario.qps");
  j = CapacityScenario();
  j["slo"]["tpot_ms"] = 0;
  ExpectFieldError(j, "scenario.slo.tpot_ms");
  j = CapacityScenario();
  j.erase("qps");
  ExpectFieldError(j, "scenario.qps");
  j = BaseScenario();
  j["model"] = "deepseek-v3";
  j["workload"]["input_tokens"] = 200000;  // V3 serves 128K
  ExpectFieldError(j, "scenario.workload.input_tokens");
  j = BaseScenario();
  j["model"] = "no-such-model";
  ExpectFieldError(j, "scenario.model");
  j = BaseScenario();
  j["question"] = "how_fast";
  ExpectFieldError(j, "scenario.question");
  j = BaseScenario();
  j["workload"]["input_tokenz"] = 10;
  ExpectFieldError(j, "scenario.workload.input_tokenz");
  j = BaseScenario();
  j["weights"]["expert_bits"] = "four";
  ExpectFieldError(j, "scenario.weights.expert_bits");
  j = BaseScenario();
  j["hardware"]["scale_out"] = "carrier-pigeon";
  ExpectFieldError(j, "scenario.hardware.scale_out");
  j = BaseScenario();
  j["parallel"]["tp"] = 8;
  j["parallel"]["dp_attention"] = 1;
  j["model"] = "kimi-k2";  // 64 heads: TP8 divides; TP 128 would not
  EXPECT_TRUE(PlanJson(j).ok());
}

// ---- the answer keys of the contract (shared/planner/README.md) ------------------------------------

TEST(Contract, EveryQuestionCarriesItsKeys) {
  const std::map<std::string, std::vector<std::string>> keys = {
      {"prefill_throughput", {"prefill_tokens_per_s_per_node", "prefill_tokens_per_s_per_device"}},
      {"decode_throughput", {"decode_tokens_per_s_per_node", "decode_tokens_per_s_per_device"}},
      {"single_stream", {"single_stream_decode_tokens_per_s", "single_stream_prefill_tokens_per_s"}},
      {"capacity", {"devices_needed", "ttft_ms_p50", "ttft_ms_p99", "tpot_ms_p50", "tpot_ms_p99"}},
  };
  for (const auto& [question, expected] : keys) {
    json j = question == "capacity" ? CapacityScenario() : BaseScenario();
    j["question"] = question;
    auto a = PlanJson(j);
    ASSERT_TRUE(a.ok()) << a.status();
    for (const std::string& k : expected) EXPECT_TRUE((*a)[k].is_number()) << question << ": " << k;
    for (const char* k :
         {"memory_per_device_gb", "feasible", "reasons", "bottleneck", "cost_per_million_output_tokens"})
      EXPECT_TRUE(a->contains(k)) << question << ": " << k;
    EXPECT_TRUE((*a)["cost_per_million_output_tokens"].is_number()) << question;
    EXPECT_FALSE((*a)["bottleneck"].empty()) << question;
  }
}

// ---- PL-05: units and sums -------------------------------------------------------------------------

void ExpectMemorySums(const json& a) {
  const json& m = a["memory_per_device_gb"];
  double sum = 0;
  for (auto it = m.begin(); it != m.end(); ++it)
    if (it.key() != "total" && it.key() != "host") sum += it.value().get<double>();
  EXPECT_NEAR(sum, m["total"].get<double>(), 0.05) << a["scenario"];
}

TEST(Units, MemoryBreakdownSumsToTotal) {
  for (const char* q : {"decode_throughput", "prefill_throughput", "single_stream"}) {
    json j = BaseScenario();
    j["question"] = q;
    auto a = PlanJson(j);
    ASSERT_TRUE(a.ok()) << a.status();
    ExpectMemorySums(*a);
  }
  if (std::string text; ReadText(SharedPath("planner/published_points.json"), &text)) {
    for (const json& pt : json::parse(text)) {
      auto a = PlanJson(pt["scenario"]);
      ASSERT_TRUE(a.ok()) << a.status();
      ExpectMemorySums(*a);
    }
  }
}

TEST(Units, PerNodeAndCostFollowFromPerDevice) {
  auto a = PlanJson(BaseScenario());
  ASSERT_TRUE(a.ok()) << a.status();
  const double dev = (*a)["decode_tokens_per_s_per_device"].get<double>();
  EXPECT_NEAR((*a)["decode_tokens_per_s_per_node"].get<double>(), dev * 8, dev * 8 * 1e-3);
  const double price = BuiltinCatalog().devices.at("h800").price_per_hour;
  EXPECT_NEAR((*a)["cost_per_million_output_tokens"].get<double>(), price / (dev * 3600) * 1e6, 1e-3);
  // Per-step arithmetic: batch x tokens per step / step time.
  const double step_ms = (*a)["decode"]["step_ms"].get<double>();
  EXPECT_NEAR(dev, 32 / (step_ms / 1e3), dev * 1e-3);
}

TEST(Units, WeightsTableSumsToModelBytes) {
  auto m = FindPreset("deepseek-v4-pro");
  const Precision p{8, 4, 8};
  double bytes = 0, params = 0;
  for (const ComponentRow& r : ComponentTable(*m, p)) bytes += r.bytes, params += r.params;
  EXPECT_NEAR(bytes, CountWeightBytes(*m, p).Total(), 1);
  EXPECT_NEAR(params, CountParams(*m).Total(), 1);
}

// ---- PL-02: determinism ----------------------------------------------------------------------------

TEST(Simulation, SameSeedSameReport) {
  json j = CapacityScenario();
  j["seed"] = 7;
  auto a = PlanJson(j), b = PlanJson(j);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->dump(), b->dump());
  j["seed"] = 8;
  auto c = PlanJson(j);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(a->dump(), c->dump()) << "the seed does not reach the simulation";
}

// ---- PL-03: monotonicity ---------------------------------------------------------------------------

TEST(Simulation, MoreDevicesNeverLowerCapacity) {
  auto s = ParseScenario(CapacityScenario().dump(), "t");
  auto r = Resolve(*s, BuiltinCatalog());
  ASSERT_TRUE(r.ok());
  StepModel model(*r, nullptr, false);
  const CapacityResult cap = Capacity(*r, model);
  ASSERT_GT(cap.max_qps_per_unit, 0);
  double last = 0;
  for (int devices = 0; devices <= 64; ++devices) {
    const double q = CapacityForDevices(cap, r->world, devices);
    EXPECT_GE(q, last) << devices;
    last = q;
  }
  // The devices the planner asks for sustain the target.
  EXPECT_GE(CapacityForDevices(cap, r->world, cap.devices_needed), s->qps);
}

TEST(Simulation, TighterSloNeverRaisesCapacity) {
  double last = 1e300;
  for (double tpot : {200.0, 60.0, 40.0, 30.0, 20.0}) {
    json j = CapacityScenario();
    j["slo"]["tpot_ms"] = tpot;
    auto s = ParseScenario(j.dump(), "t");
    auto r = Resolve(*s, BuiltinCatalog());
    StepModel model(*r, nullptr, false);
    const double q = Capacity(*r, model).max_qps_per_unit;
    EXPECT_LE(q, last) << tpot;
    last = q;
  }
}

TEST(Simulation, DisaggregatedPoolsAreSizedSeparately) {
  json j = CapacityScenario();
  j["parallel"]["disaggregated"] = "prefill";
  auto a = PlanJson(j);
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE((*a)["feasible"].get<bool>()) << a->dump(1);
  EXPECT_GE((*a)["prefill_units"].get<int>(), 1);
  EXPECT_GE((*a)["decode_units"].get<int>(), 1);
  EXPECT_EQ((*a)["devices_needed"].get<int>(),
            ((*a)["prefill_units"].get<int>() + (*a)["decode_units"].get<int>()) * 8);
  EXPECT_LE((*a)["tpot_ms_p99"].get<double>(), 60);
}

TEST(Simulation, LightLoadLatencyIsTheStepTime) {
  auto s = ParseScenario(CapacityScenario().dump(), "t");
  auto r = Resolve(*s, BuiltinCatalog());
  StepModel model(*r, nullptr, false);
  SimConfig c;
  c.qps = 0.01;  // requests never overlap
  c.requests = 20;
  c.input_tokens = 1000;
  c.output_tokens = 50;
  c.kv_capacity_bytes = 1e12;
  const SimResult res = Simulate(model, c);
  // Alone, a request's step lies between "the other 7 DP groups idle" and "all groups as busy".
  const double dp = r->dp;
  const double prefill_busy = model.Step({{1, 1000, 0, true}}).seconds * 1e3;
  const double prefill_idle = model.Step({{1, 1000, 0, true}}, 1000 / dp).seconds * 1e3;
  EXPECT_LT(prefill_idle, prefill_busy);
  EXPECT_GE(res.ttft_ms.p50, prefill_idle * 0.99);
  EXPECT_LE(res.ttft_ms.p50, prefill_busy * 1.01);
  const double decode_busy = model.Step({{1, 1, 1025, false}}).seconds * 1e3;
  const double decode_idle = model.Step({{1, 1, 1025, false}}, 1 / dp).seconds * 1e3;
  EXPECT_GE(res.tpot_ms.p50, decode_idle * 0.95);
  EXPECT_LE(res.tpot_ms.p50, decode_busy * 1.05);
}

// ---- the step model ---------------------------------------------------------------------------------

TEST(StepModel, RedundantExpertsBuyBackImbalance) {
  // Prefill is compute-bound in the routed experts, so the busiest device's load sets the step.
  json j = BaseScenario();
  j["question"] = "prefill_throughput";
  j["workload"]["batch_per_device"] = 4;
  auto plain = PlanJson(j);
  j["parallel"]["redundant_experts"] = 8;
  auto eplb = PlanJson(j);
  ASSERT_TRUE(plain.ok() && eplb.ok());
  EXPECT_LT((*eplb)["prefill"]["expert_imbalance"].get<double>(),
            (*plain)["prefill"]["expert_imbalance"].get<double>());
  EXPECT_GT((*eplb)["prefill_tokens_per_s_per_device"].get<double>(),
            (*plain)["prefill_tokens_per_s_per_device"].get<double>());
}

TEST(StepModel, OverlapHidesCommunication) {
  json j = BaseScenario();
  j["parallel"]["micro_batches"] = 1;
  j["software"] = {{"fused_moe", false}};  // a fused MoE kernel overlaps one batch already
  auto one = PlanJson(j);
  j["parallel"]["micro_batches"] = 2;
  auto two = PlanJson(j);
  ASSERT_TRUE(one.ok() && two.ok());
  EXPECT_LT((*two)["decode"]["exposed_comm_ms"].get<double>(), (*one)["decode"]["exposed_comm_ms"].get<double>());
}

TEST(StepModel, HostExpertsAreBoundByHostMemory) {
  json j = BaseScenario();
  j["model"] = "deepseek-v4-pro";
  j["hardware"] = {{"device", "rtx-pro-6000"},
                   {"devices_per_node", 1},
                   {"nodes", 1},
                   {"host_memory_bandwidth_gbps", 460},
                   {"host_cores", 64}};
  j["parallel"] = {{"tp", 1}, {"ep", 1}, {"experts_on", "host"}};
  j["question"] = "single_stream";
  auto a = PlanJson(j);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ((*a)["bottleneck"]["decode"], "host memory");
  EXPECT_GT((*a)["memory_per_device_gb"]["host"]["routed_experts"].get<double>(), 700);
  j["hardware"]["host_memory_bandwidth_gbps"] = 920;
  auto faster = PlanJson(j);
  ASSERT_TRUE(faster.ok()) << faster.status();
  // The host experts stream from host memory: twice the bandwidth, half their time (the host's GEMM
  // rate is far from binding in decode). 1e-3: the report rounds operator times to 0.1 us.
  EXPECT_NEAR(OpMs((*a)["decode"], "moe.routed (host)") / OpMs((*faster)["decode"], "moe.routed (host)"), 2.0, 1e-3);
}

TEST(StepModel, SpeculationAcceptance) {
  json j = BaseScenario();
  j["workload"]["speculative_tokens"] = 2;
  j["workload"]["speculative_accept"] = 0.5;
  auto a = PlanJson(j);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_NEAR((*a)["speculative"]["tokens_per_step"].get<double>(), 1 + 0.5 + 0.25, 1e-3);
}

TEST(StepModel, WeightsThatDoNotFitAreInfeasible) {
  json j = BaseScenario();
  j["model"] = "deepseek-v4-pro";
  j["hardware"] = {{"device", "rtx-4090"}, {"devices_per_node", 4}, {"nodes", 1}};
  j["parallel"] = {{"tp", 1}, {"ep", 4}, {"dp_attention", 4}};
  auto a = PlanJson(j);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_FALSE((*a)["feasible"].get<bool>());
  EXPECT_NE((*a)["reasons"][0].get<std::string>().find("do not fit"), std::string::npos);
}

// An engine that is not NUMA-aware gets one socket's cores and bandwidth on a two-socket host (LMSYS
// 2025-07-14: llama.cpp is slower on two sockets than on one); a NUMA-aware one gets more from the
// second socket's cores.
TEST(Host, SecondSocketHelpsOnlyNumaAwareEngines) {
  auto prefill = [](const std::string& engine, int sockets) {
    json j = BaseScenario();
    j["hardware"] = {{"device", "cpu"},         {"devices_per_node", 1}, {"nodes", 1}, {"host_cpu", "xeon-gold-6454s"},
                     {"host_sockets", sockets}, {"host_memory_gb", 1000}};
    j["parallel"] = {{"tp", 1}, {"ep", 1}, {"experts_on", "host"}};
    j["workload"] = {{"input_tokens", 512}, {"output_tokens", 16}, {"concurrency", 1}};
    j["software"] = {{"engine", engine}};
    j["question"] = "single_stream";
    auto a = PlanJson(j);
    EXPECT_TRUE(a.ok()) << a.status();
    return a.ok() ? (*a)["single_stream_prefill_tokens_per_s"].get<double>() : 0.0;
  };
  EXPECT_DOUBLE_EQ(prefill("llama.cpp", 2), prefill("llama.cpp", 1));
  EXPECT_GT(prefill("sglang", 2), prefill("sglang", 1) * 1.1);
}

// ---- calibration profiles ---------------------------------------------------------------------------

TEST(Profile, MeasuredRatesReplaceCatalogEfficiencies) {
  auto slow = ParseProfile(R"({"format": "dsv4-profile/1", "device": "h800",
      "gemm_fp8": [{"tokens": 64, "tflops": 50}, {"tokens": 8192, "tflops": 400}],
      "grouped_gemm": [{"tokens_per_expert": 16, "tflops": 40}, {"tokens_per_expert": 4096, "tflops": 300}],
      "memory_gbps": 1500, "kernel_floor_us": 5,
      "all_to_all": {"intra_node_gbps": 60, "inter_node_gbps": 20, "latency_us": 30}})",
                           "slow.json");
  ASSERT_TRUE(slow.ok()) << slow.status();
  EXPECT_NEAR(slow->gemm_fp8.At(724), 225, 1);  // halfway in log(tokens)
  json j = BaseScenario();
  j["question"] = "prefill_throughput";
  auto catalog = PlanJson(j);
  PlanOptions o;
  o.profile = &*slow;
  auto measured = PlanJson(j, o);
  ASSERT_TRUE(catalog.ok() && measured.ok()) << measured.status();
  EXPECT_LT((*measured)["prefill_tokens_per_s_per_device"].get<double>(),
            (*catalog)["prefill_tokens_per_s_per_device"].get<double>() / 2);
  EXPECT_EQ((*measured)["calibration"], "slow.json");
}

// TPOT of V4-Flash decoding on device "cpu" (BaseScenario's load) with the profile `body` (the
// fields after "device").
double CpuTpotMs(const std::string& body) {
  json j = BaseScenario();
  j["hardware"] = {{"device", "cpu"}, {"devices_per_node", 1}, {"nodes", 1}};
  j["parallel"] = {{"tp", 1}, {"ep", 1}};
  auto p = ParseProfile(absl::StrCat(R"({"format": "dsv4-profile/1", "device": "cpu", )", body, "}"), "cpu.json");
  EXPECT_TRUE(p.ok()) << p.status();
  if (!p.ok()) return 0;
  PlanOptions o;
  o.profile = &*p;
  auto a = PlanJson(j, o);
  EXPECT_TRUE(a.ok()) << a.status();
  return a.ok() ? (*a)["tpot_ms"].get<double>() : 0.0;
}

// Points measured at several reduction sizes are a surface: by tokens at each K, then in log(K)
// between the two K around the asked one, the nearest K outside; without K, the widest.
TEST(Profile, RatesByReductionSize) {
  auto p = ParseProfile(R"({"format": "dsv4-profile/1", "device": "cpu",
      "gemm_bf16": [{"tokens": 1, "k": 2048, "tflops": 0.04}, {"tokens": 16, "k": 2048, "tflops": 0.16},
                    {"tokens": 16, "k": 256, "tflops": 0.08}, {"tokens": 1, "k": 256, "tflops": 0.02}],
      "product_floor_us": [{"tokens": 1, "us": 2}, {"tokens": 16, "us": 10}]})",
                        "k.json");
  ASSERT_TRUE(p.ok()) << p.status();
  EXPECT_NEAR(p->gemm_bf16.At(16, 256), 0.08, 1e-12);
  EXPECT_NEAR(p->gemm_bf16.At(16, 2048), 0.16, 1e-12);
  EXPECT_NEAR(p->gemm_bf16.At(4, 256), 0.05, 1e-12);     // halfway in log(tokens) at K = 256
  EXPECT_NEAR(p->gemm_bf16.At(16, 724.08), 0.12, 1e-4);  // halfway in log(K)
  EXPECT_NEAR(p->gemm_bf16.At(16, 64), 0.08, 1e-12);     // below the narrowest K
  EXPECT_NEAR(p->gemm_bf16.At(16, 7168), 0.16, 1e-12);   // above the widest
  EXPECT_NEAR(p->gemm_bf16.At(16), 0.16, 1e-12);         // K not asked: the widest
  EXPECT_NEAR(p->product_floor_us.At(4), 6, 1e-12);
  // The planner asks for the model's hidden size (4096 for V4-Flash): a surface whose widest K is
  // 4096 plans as that K's curve alone; one measured up to K = 16384 interpolates, a slower step.
  auto tpot = [](const std::string& curves) {
    return CpuTpotMs(absl::StrCat(curves, R"(, "grouped_gemm": [{"tokens_per_expert": 1, "tflops": 0.02}])"));
  };
  const std::string narrow = R"({"tokens": 1, "k": 256, "tflops": 0.01}, {"tokens": 64, "k": 256, "tflops": 0.01})";
  auto at = [](int k) {
    return absl::StrCat(R"({"tokens": 1, "k": )", k, R"(, "tflops": 0.1}, {"tokens": 64, "k": )", k,
                        R"(, "tflops": 0.1})");
  };
  const double one_k = tpot(absl::StrCat(R"("gemm_fp8": [)", at(4096), R"(], "gemm_bf16": [)", at(4096), "]"));
  const double surface = tpot(
      absl::StrCat(R"("gemm_fp8": [)", narrow, ", ", at(4096), R"(], "gemm_bf16": [)", narrow, ", ", at(4096), "]"));
  const double wider = tpot(
      absl::StrCat(R"("gemm_fp8": [)", narrow, ", ", at(16384), R"(], "gemm_bf16": [)", narrow, ", ", at(16384), "]"));
  EXPECT_DOUBLE_EQ(surface, one_k);
  EXPECT_GT(wider, one_k * 1.05);  // the dense products at 0.7 of the rate; the experts unchanged
  // Mixing points with and without K, and two points at one (tokens, K), are errors.
  auto mixed = ParseProfile(R"({"format": "dsv4-profile/1",
      "gemm_fp8": [{"tokens": 1, "tflops": 1}, {"tokens": 2, "k": 256, "tflops": 1}]})",
                            "m.json");
  ASSERT_FALSE(mixed.ok());
  EXPECT_NE(mixed.status().message().find("give k on every point or on none"), std::string::npos) << mixed.status();
  auto twice = ParseProfile(R"({"format": "dsv4-profile/1",
      "gemm_fp8": [{"tokens": 2, "k": 256, "tflops": 1}, {"tokens": 2, "k": 256, "tflops": 2}]})",
                            "t.json");
  ASSERT_FALSE(twice.ok());
  EXPECT_NE(twice.status().message().find("profile.gemm_fp8: two points"), std::string::npos) << twice.status();
  auto bad_k =
      ParseProfile(R"({"format": "dsv4-profile/1", "gemm_fp8": [{"tokens": 2, "k": -1, "tflops": 1}]})", "b.json");
  ASSERT_FALSE(bad_k.ok());
  EXPECT_NE(bad_k.status().message().find("gemm_fp8[0]: k"), std::string::npos) << bad_k.status();
}

// Device "cpu": a measured product floor adds to every operator of the step (a CPU operator's fork,
// packing and join do not overlap its work), so a larger floor gives a slower step, by the floor
// times the kernels.
TEST(Profile, ProductFloorAddsOnTheHost) {
  auto rates = [](double floor_us) {
    return CpuTpotMs(
        absl::StrCat(R"("gemm_fp8": [{"tokens": 1, "tflops": 0.05}], "gemm_bf16": [{"tokens": 1, "tflops": 0.05}],
        "grouped_gemm": [{"tokens_per_expert": 1, "tflops": 0.02}], "host": {"memory_gbps": 20, "gflops": 20},
        "product_floor_us": [{"tokens": 1, "us": )",
                     floor_us, "}]"));
  };
  const double none = rates(1e-3), small = rates(100), large = rates(1000);
  EXPECT_GT(small, none);
  // Linear in the floor: the step grows by the same amount per microsecond (tpot_ms is rounded to
  // 1 us, a part in 10^4 of the growth).
  EXPECT_NEAR((large - none) / (small - none), 1000 / (100 - 1e-3), 0.01);
}

TEST(Profile, BadProfilesNameTheField) {
  auto a = ParseProfile(R"({"format": "dsv4-profile/2"})", "p.json");
  ASSERT_FALSE(a.ok());
  EXPECT_NE(a.status().message().find("profile.format"), std::string::npos);
  auto b = ParseProfile(R"({"format": "dsv4-profile/1", "gemm_fp8": [{"tokens": 1}]})", "p.json");
  ASSERT_FALSE(b.ok());
  EXPECT_NE(b.status().message().find("profile.gemm_fp8[0]"), std::string::npos) << b.status();
  auto c = ParseProfile(R"({"format": "dsv4-profile/1", "device": "b200"})", "p.json");
  ASSERT_TRUE(c.ok());
  PlanOptions o;
  o.profile = &*c;
  auto plan = PlanJson(BaseScenario(), o);
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.status().message().find("--profile"), std::string::npos);
}

// ---- reports ----------------------------------------------------------------------------------------

TEST(Report, TextAndCharts) {
  json j = BaseScenario();
  PlanOptions o;
  o.sweeps = true;
  auto a = PlanJson(j, o);
  ASSERT_TRUE(a.ok());
  const std::string text = TextReport(*a);
  EXPECT_NE(text.find("decode_tokens_per_s_per_device"), std::string::npos);
  EXPECT_NE(text.find("memory per device"), std::string::npos);
  for (const std::string& svg : {ThroughputLatencySvg(*a), LayoutCostSvg(*a), MemorySvg(*a)}) {
    EXPECT_EQ(svg.rfind("<svg", 0), 0u);
    EXPECT_NE(svg.find("</svg>"), std::string::npos);
  }
  EXPECT_GE((*a)["sweeps"]["decode_batch"].size(), 3u);
}

// ---- software maturity and engine profiles ----------------------------------------------------------

int64_t Day(const std::string& date) {
  auto d = ParseDate(date, "test");
  EXPECT_TRUE(d.ok()) << d.status();
  return *d;
}

TEST(Software, MaturityFromDates) {
  const int64_t v4 = Day("2026-04-24"), h100 = Day("2022-09-20");
  std::string why;
  EXPECT_EQ(MaturityFromDates(v4 + 20, v4, h100, &why), Maturity::kDay0) << why;
  EXPECT_EQ(MaturityFromDates(v4 + 21, v4, h100, &why), Maturity::kEarly) << why;
  EXPECT_EQ(MaturityFromDates(v4 + 89, v4, h100, &why), Maturity::kEarly) << why;
  EXPECT_EQ(MaturityFromDates(v4 + 90, v4, h100, &why), Maturity::kMature) << why;
  // The later release counts: a new device makes an old model's software young again.
  EXPECT_EQ(MaturityFromDates(Day("2025-03-10"), Day("2024-12-26"), Day("2025-03-01"), &why), Maturity::kDay0) << why;
  // Unknown dates: mature, the default.
  EXPECT_EQ(MaturityFromDates(-1, v4, h100, &why), Maturity::kMature);
  EXPECT_EQ(MaturityFromDates(v4, -1, -1, &why), Maturity::kMature);
  EXPECT_FALSE(ParseDate("2026-13-01", "x").ok());
  EXPECT_EQ(Day("2026-04"), Day("2026-04-15"));
}

json DeskScenario() {
  return json::parse(R"({
    "model": "deepseek-v4-flash", "weights": {"dense_bits": 8, "expert_bits": 4, "kv_bits": 8},
    "hardware": {"device": "rtx-pro-6000", "devices_per_node": 2, "nodes": 1},
    "parallel": {"tp": 2, "ep": 2, "dp_attention": 1},
    "workload": {"input_tokens": 1024, "output_tokens": 256, "concurrency": 1, "speculative_tokens": 0},
    "software": {"engine": "vllm"},
    "question": "single_stream"})");
}

// Every device efficiency is multiplied by the maturity factor and every kernel floor divided by it,
// so a step that runs on the devices alone (one node, no host work) takes exactly 1/factor as long;
// the collectives between the two cards are the only part the factor leaves alone.
TEST(Software, DayZeroScalesTheDeviceWork) {
  const Tuning& t = BuiltinCatalog().tuning;
  json j = DeskScenario();
  auto mature = PlanJson(j);
  j["software"]["date"] = "2026-04-27";  // three days after V4's release
  auto day0 = PlanJson(j);
  j["software"]["date"] = "2026-06-01";
  auto early = PlanJson(j);
  ASSERT_TRUE(mature.ok() && day0.ok() && early.ok()) << day0.status();
  EXPECT_EQ((*mature)["software"]["maturity"], "mature");
  EXPECT_EQ((*day0)["software"]["maturity"], "day0");
  EXPECT_EQ((*early)["software"]["maturity"], "early");
  auto device_ms = [](const json& a) {
    return a["decode"]["compute_ms"].get<double>();
  };
  // 1e-3: operator times are rounded to 0.1 us in the answer.
  EXPECT_NEAR(device_ms(*day0) / device_ms(*mature), 1 / t.maturity_day0, 1e-3);
  EXPECT_NEAR(device_ms(*early) / device_ms(*mature), 1 / t.maturity_early, 1e-3);
  // Stated maturity wins over the dates.
  j["software"]["maturity"] = "mature";
  auto stated = PlanJson(j);
  ASSERT_TRUE(stated.ok());
  EXPECT_EQ((*stated)["software"]["maturity_reason"], "stated");
  EXPECT_DOUBLE_EQ(device_ms(*stated), device_ms(*mature));
}

TEST(Software, LaunchPartnersDedicatedEnginesAndArchitectures) {
  // SGLang's single-node path for V4 was ready on release day; its disaggregated path was not.
  json j = BaseScenario();
  j["software"] = {{"engine", "sglang"}, {"date", "2026-04-26"}};
  auto node = PlanJson(j);
  j["parallel"]["disaggregated"] = "decode";
  auto disagg = PlanJson(j);
  ASSERT_TRUE(node.ok() && disagg.ok());
  EXPECT_EQ((*node)["software"]["maturity"], "mature");
  EXPECT_EQ((*disagg)["software"]["maturity"], "day0");
  // ds4 was written for V4: not immature at V4's release on the devices it is tuned for; its generic
  // CUDA build on other GPUs counts as early.
  json d = DeskScenario();
  d["hardware"] = {{"device", "dgx-spark"}, {"devices_per_node", 1}, {"nodes", 1}};
  d["parallel"] = {{"tp", 1}, {"ep", 1}};
  d["software"] = {{"engine", "ds4"}, {"date", "2026-05-01"}};
  d["weights"]["expert_bits"] = 2.25;
  auto spark = PlanJson(d);
  d["hardware"]["device"] = "rtx-pro-6000-maxq";
  auto maxq = PlanJson(d);
  ASSERT_TRUE(spark.ok() && maxq.ok()) << maxq.status();
  EXPECT_EQ((*spark)["software"]["maturity"], "mature");
  EXPECT_EQ((*maxq)["software"]["maturity"], "early");
  // Kimi-K2 runs on DeepSeek-V3's kernels: mature on its own release day.
  json k = BaseScenario();
  k["model"] = "kimi-k2";
  k["software"] = {{"engine", "vllm"}, {"date", "2025-07-12"}};
  k["parallel"]["disaggregated"] = "decode";
  auto kimi = PlanJson(k);
  ASSERT_TRUE(kimi.ok()) << kimi.status();
  EXPECT_EQ((*kimi)["software"]["maturity"], "mature");
}

TEST(Software, UnknownEnginesAndBadFields) {
  json j = BaseScenario();
  j["software"] = {{"engine", "my-engine"}};
  auto a = PlanJson(j);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_EQ((*a)["software"]["engine"], "sglang");  // the usual engine of the device class
  bool warned = false;
  for (const json& w : (*a)["warnings"]) warned |= w.get<std::string>().find("my-engine") != std::string::npos;
  EXPECT_TRUE(warned) << (*a)["warnings"].dump();
  // Aliases, any case; the top-level shorthands.
  j = BaseScenario();
  j["engine"] = "TensorRT-LLM";
  j["date"] = "2026-05-01";
  auto trt = PlanJson(j);
  ASSERT_TRUE(trt.ok()) << trt.status();
  EXPECT_EQ((*trt)["software"]["engine"], "trtllm");
  EXPECT_EQ((*trt)["software"]["date"], "2026-05-01");
  j = BaseScenario();
  j["software"] = {{"maturity", "beta"}};
  ExpectFieldError(j, "scenario.software.maturity");
  j = BaseScenario();
  j["software"] = {{"date", "2026-13-01"}};
  ExpectFieldError(j, "scenario.software.date");
  j = BaseScenario();
  j["software"] = {{"date", "2025-01-01"}};  // V4 came out in 2026
  ExpectFieldError(j, "scenario.software.date");
  j = BaseScenario();
  j["software"] = {{"engine", "sglang"}};
  j["engine"] = "vllm";
  ExpectFieldError(j, "scenario.engine");
  j = BaseScenario();
  j["software"] = {{"compiler", "gcc"}};
  ExpectFieldError(j, "scenario.software.compiler");
}

// KTransformers 0.2 ran host experts on SIMD kernels, 0.3 on AMX tiles: the version selects the
// host's GEMM rate, AMX peak x host.compute.amx against FMA peak x host.compute.simd.
TEST(Software, VersionsSelectHostKernels) {
  const Tuning& t = BuiltinCatalog().tuning;
  json j = json::parse(R"({
    "model": "deepseek-v3", "weights": {"dense_bits": 4, "expert_bits": 8, "kv_bits": 16},
    "hardware": {"device": "rtx-4090d", "devices_per_node": 1, "nodes": 1, "host_cpu": "xeon-gold-6454s", "host_sockets": 2},
    "parallel": {"tp": 1, "ep": 1, "experts_on": "host"},
    "workload": {"input_tokens": 4096, "output_tokens": 16, "concurrency": 1},
    "software": {"engine": "ktransformers", "engine_version": "0.3"},
    "question": "single_stream"})");
  auto amx = PlanJson(j);
  j["software"]["engine_version"] = "0.2.1";
  auto simd = PlanJson(j);
  ASSERT_TRUE(amx.ok() && simd.ok()) << amx.status();
  const double cores = 64, ghz = 2.2;  // 2x Xeon Gold 6454S (catalog)
  EXPECT_NEAR((*amx)["host"]["expert_gflops_per_device"].get<double>(), cores * ghz * 1024 * t.host_compute_amx, 0.1);
  EXPECT_NEAR((*simd)["host"]["expert_gflops_per_device"].get<double>(), cores * ghz * 64 * t.host_compute_simd, 0.1);
}

// ---- mechanisms -----------------------------------------------------------------------------------

// A socket's clock follows the cores at work: at equal power the clock goes as
// (cores / busy)^(1/3), from the base clock with every core busy up to the boost clock. Xeon 6980P
// (catalog: 128 cores, 2.0 GHz base, 3.9 GHz boost), one socket, ik_llama.cpp: 64 threads run at
// 2.0 x 2^(1/3) = 2.52 GHz, 128 at 2.0, 16 at the 3.9 GHz cap; the socket's rate still grows with
// every core. The EPYC 9V45 slice of issue 1752 (32 of 96 cores): 2.6 x 3^(1/3) = 3.75 GHz.
TEST(Mechanisms, HostClockFollowsTheCoresAtWork) {
  const Tuning& t = BuiltinCatalog().tuning;
  json j = json::parse(R"({
    "model": "deepseek-r1", "weights": {"dense_bits": 4.8, "expert_bits": 4.8, "kv_bits": 16},
    "hardware": {"device": "cpu", "devices_per_node": 1, "nodes": 1, "host_cpu": "xeon-6980p", "host_sockets": 1},
    "parallel": {"tp": 1, "ep": 1, "experts_on": "host"},
    "workload": {"input_tokens": 512, "output_tokens": 128, "concurrency": 1},
    "software": {"engine": "ik_llama.cpp"}, "question": "single_stream"})");
  auto at = [&](int cores) {
    j["hardware"]["host_cores"] = cores;
    auto out = PlanJson(j);
    EXPECT_TRUE(out.ok()) << out.status();
    return out.ok() ? (*out)["host"] : json();
  };
  const json all = at(128), half = at(64), few = at(16);
  EXPECT_NEAR(all["ghz"].get<double>(), 2.0, 0.005);
  EXPECT_NEAR(half["ghz"].get<double>(), 2.0 * std::cbrt(2.0), 0.005);
  EXPECT_NEAR(few["ghz"].get<double>(), 3.9, 0.005);
  EXPECT_NEAR(half["expert_gflops_per_device"].get<double>(), 64 * 2.0 * std::cbrt(2.0) * 64 * t.host_compute_simd,
              0.5);
  double last = 0;
  for (int cores : {8, 16, 32, 64, 96, 128}) {
    const double rate = at(cores)["expert_gflops_per_device"].get<double>();
    EXPECT_GT(rate, last) << cores << " cores";
    last = rate;
  }
  j["hardware"]["host_cpu"] = "epyc-9v45";
  EXPECT_NEAR(at(32)["ghz"].get<double>(), 2.6 * std::cbrt(3.0), 0.005);
  // The text report says where the experts' work runs and at what clock.
  auto report = PlanJson(j);
  ASSERT_TRUE(report.ok()) << report.status();
  const std::string text = TextReport(*report);
  EXPECT_NE(text.find("host:     epyc-9v45, 1 socket(s), 32 cores at 3.75 GHz"), std::string::npos) << text;
  // A host without a boost figure keeps its base clock at any load.
  Catalog c = BuiltinCatalog();
  ASSERT_TRUE(MergeCatalogJson(R"({"hosts": {"flat": {"cores": 64, "ghz": 2.5, "simd_flops_per_cycle": 64,
      "memory_channels": 8, "memory_mts": 4800}}})",
                               "mine.json", &c)
                  .ok());
  j["hardware"]["host_cpu"] = "flat";
  j["hardware"]["host_cores"] = 16;
  auto flat = ParseScenario(j.dump(), "test.json");
  ASSERT_TRUE(flat.ok()) << flat.status();
  auto resolved = Resolve(*flat, c);
  ASSERT_TRUE(resolved.ok()) << resolved.status();
  EXPECT_DOUBLE_EQ(resolved->host.ghz, 2.5);
  const absl::Status bad = MergeCatalogJson(R"({"hosts": {"slow": {"cores": 64, "ghz": 2.5, "boost_ghz": 2.0,
      "simd_flops_per_cycle": 64, "memory_channels": 8, "memory_mts": 4800}}})",
                                            "mine.json", &c);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("hosts.slow.boost_ghz"), std::string::npos) << bad;
}

// Host bandwidth the experts see: channels x MT/s x 8 B x the STREAM fraction, per socket; a
// NUMA-aware engine adds host.numa_gain of the second socket, llama.cpp none; then the engine's
// kernel family.
TEST(Mechanisms, HostMemoryFromTheCatalogCpu) {
  const Tuning& t = BuiltinCatalog().tuning;
  json j = json::parse(R"({
    "model": "deepseek-r1", "weights": {"dense_bits": 4.5, "expert_bits": 4.5, "kv_bits": 16},
    "hardware": {"device": "rtx-4090", "devices_per_node": 1, "nodes": 1, "host_cpu": "epyc-9654"},
    "parallel": {"tp": 1, "ep": 1, "experts_on": "host"},
    "workload": {"input_tokens": 1000, "output_tokens": 100, "concurrency": 1},
    "software": {"engine": "ktransformers"}, "question": "single_stream"})");
  auto one = PlanJson(j);
  ASSERT_TRUE(one.ok()) << one.status();
  const double socket = 12 * 4800 * 8 / 1000.0 * 0.8;  // EPYC 9654: 12 channels DDR5-4800, STREAM 0.8
  EXPECT_NEAR((*one)["host"]["expert_gbps_per_device"].get<double>(), socket * t.host_memory_tuned, 0.01);
  j["hardware"]["host_sockets"] = 2;
  auto two = PlanJson(j);
  j["software"]["engine"] = "llama.cpp";
  j["hardware"]["device"] = "cpu";
  auto unaware = PlanJson(j);
  ASSERT_TRUE(two.ok() && unaware.ok()) << unaware.status();
  EXPECT_NEAR((*two)["host"]["expert_gbps_per_device"].get<double>(),
              socket * (1 + t.host_numa_gain) * t.host_memory_tuned, 0.01);
  EXPECT_NEAR((*unaware)["host"]["expert_gbps_per_device"].get<double>(), socket * t.host_memory_llamacpp, 0.01);
  // A measured STREAM figure replaces the peak's estimate.
  j["hardware"]["host_stream_gbps"] = 186;
  j["hardware"]["host_sockets"] = 1;
  auto measured = PlanJson(j);
  ASSERT_TRUE(measured.ok());
  EXPECT_NEAR((*measured)["host"]["expert_gbps_per_device"].get<double>(), 186 * t.host_memory_llamacpp, 0.01);
}

// GeForce cards reach each other only through host memory: a collective step costs the host-staged
// latency and half the link. TP2 decode of one token on two RTX 4090s, by hand: per layer a one-shot
// all-reduce (two steps) and an all-gather (one step) of a 4096-wide BF16 row.
TEST(Mechanisms, PcieWithoutPeerToPeer) {
  json j = DeskScenario();
  j["hardware"] = {{"device", "rtx-4090"}, {"devices_per_node", 2}, {"nodes", 1}};
  j["weights"]["pruned_experts_per_layer"] = 96;  // fits 2 x 24 GB only when pruned
  j["weights"]["expert_bits"] = 2;
  auto a = PlanJson(j);
  ASSERT_TRUE(a.ok()) << a.status();
  const Link pcie = BuiltinCatalog().links.at("pcie4");
  auto expected_ms = [&](double latency_us, double gbps) {
    const double bytes = 4096 * 2, bw = gbps * 0.77 * 1e9;
    return 43 * (3 * latency_us * 1e-6 + 1.5 * bytes / bw) * 1e3;
  };
  EXPECT_NEAR(OpMs((*a)["decode"], "tp all-reduce/gather"), expected_ms(pcie.host_staged_latency_us, pcie.gbps / 2),
              1e-3);
  j["hardware"]["p2p"] = true;
  auto p2p = PlanJson(j);
  ASSERT_TRUE(p2p.ok());
  EXPECT_NEAR(OpMs((*p2p)["decode"], "tp all-reduce/gather"), expected_ms(pcie.latency_us, pcie.gbps), 1e-3);
  // Pruning keeps 96 of 256 experts: the routed weights shrink in proportion.
  json full = j;
  full["weights"].erase("pruned_experts_per_layer");
  full["hardware"]["device"] = "h100";  // room for all of them
  json pruned = full;
  pruned["weights"]["pruned_experts_per_layer"] = 96;
  auto f = PlanJson(full), p = PlanJson(pruned);
  ASSERT_TRUE(f.ok() && p.ok());
  EXPECT_NEAR(p->at("memory_per_device_gb")["weights_routed_experts"].get<double>() /
                  f->at("memory_per_device_gb")["weights_routed_experts"].get<double>(),
              96.0 / 256, 1e-3);
}

// 4-bit weights on a part without FP4 tensor cores: SGLang converts them to FP8, vLLM (Marlin) and
// llama.cpp dequantize to BF16 at 0.6 of the usual efficiency. Prefill is compute-bound, so the
// routed experts' time differs by FP8 peak / (BF16 peak x 0.6) = 330 / (165 x 0.6).
TEST(Mechanisms, Fp4WithoutFp4TensorCores) {
  json j = DeskScenario();
  j["hardware"] = {{"device", "rtx-4090"}, {"devices_per_node", 8}, {"nodes", 1}};
  j["parallel"] = {{"tp", 1}, {"ep", 8}, {"dp_attention", 8}};
  j["question"] = "prefill_throughput";
  j["workload"] = {{"input_tokens", 4096}, {"output_tokens", 1}, {"batch_per_device", 2}};
  j["software"] = {{"engine", "sglang"}, {"fused_moe", false}};
  auto fp8 = PlanJson(j);
  j["software"]["engine"] = "vllm";
  auto bf16 = PlanJson(j);
  ASSERT_TRUE(fp8.ok() && bf16.ok()) << bf16.status();
  EXPECT_NEAR(OpMs((*bf16)["prefill"], "moe.routed") / OpMs((*fp8)["prefill"], "moe.routed"), 330.3 / (165 * 0.6), 0.02);
}

// KTransformers from February 2026 streams a long chunk's host experts to the GPU layer by layer
// when that beats the CPU: the operator then takes expert bytes / (PCIe peak x pcie.stream). Software
// from before that date runs the chunk's experts on the host's cores.
TEST(Mechanisms, LayerwisePrefillStreamsExperts) {
  const Tuning& t = BuiltinCatalog().tuning;
  json j = json::parse(R"({
    "model": "deepseek-v3", "weights": {"dense_bits": 4, "expert_bits": 4, "kv_bits": 16},
    "hardware": {"device": "rtx-5090", "devices_per_node": 1, "nodes": 1, "host_cores": 8, "host_memory_bandwidth_gbps": 90},
    "parallel": {"tp": 1, "ep": 1, "experts_on": "host"},
    "workload": {"input_tokens": 8192, "output_tokens": 16, "concurrency": 1, "token_budget": 8192},
    "software": {"engine": "ktransformers", "date": "2026-03-01"}, "question": "single_stream"})");
  auto streamed = PlanJson(j);
  j["software"]["date"] = "2026-01-15";
  auto cpu = PlanJson(j);
  ASSERT_TRUE(streamed.ok() && cpu.ok()) << streamed.status();
  double ms = 0, gb = 0;
  for (const json& op : (*streamed)["prefill"]["ops"])
    if (op["op"] == "moe.routed (streamed to device)") ms = op["ms"].get<double>(), gb = op["gb"].get<double>();
  ASSERT_GT(ms, 0) << (*streamed)["prefill"].dump(1);
  const double link = BuiltinCatalog().devices.at("rtx-5090").host_link_gbps;
  // 1e-3 relative: gb is rounded to 0.1 MB in the answer.
  EXPECT_NEAR(ms, gb / (link * t.pcie_stream) * 1e3, ms * 1e-3);
  EXPECT_EQ(OpMs((*cpu)["prefill"], "moe.routed (streamed to device)"), 0);
  EXPECT_GT(OpMs((*cpu)["prefill"], "moe.routed (host)"), ms);
}

// An engine that picks the indexer's top-k by sorting every compressed row's score in one thread
// group (ds4) pays attention.select_sort_ns per row per indexed layer in each decode step, the same on
// any device; an engine with parallel top-k kernels does not, and prefill is never charged.
TEST(Mechanisms, SortedTopKGrowsWithTheContext) {
  const Tuning& t = BuiltinCatalog().tuning;
  json j = json::parse(R"({
    "model": "deepseek-v4-flash", "weights": {"dense_bits": 8, "expert_bits": 2.25, "kv_bits": 16},
    "hardware": {"device": "rtx-pro-6000", "devices_per_node": 1, "nodes": 1},
    "parallel": {"tp": 1, "ep": 1, "experts_on": "device"},
    "workload": {"input_tokens": 50000, "output_tokens": 256, "concurrency": 1},
    "software": {"engine": "ds4"}, "question": "single_stream"})");
  auto sorted = PlanJson(j);
  j["software"]["engine"] = "vllm";
  auto parallel = PlanJson(j);
  ASSERT_TRUE(sorted.ok() && parallel.ok()) << sorted.status() << parallel.status();
  // The rows the indexer scores at the decode's mean context (the prompt and half the answer),
  // summed over the indexed layers.
  const ModelPreset m = *LoadPreset("deepseek-v4-flash");
  const double context = 50000 + 256 / 2;
  double rows = 0;
  for (int64_t l = 0; l < m.layers; ++l) rows += LayerAttentionWork(m, l, context, false, {}).indexed_rows;
  ASSERT_GT(rows, 1000);
  // 1e-3 relative: the answer rounds milliseconds to 0.1 us.
  const double ms = OpMs((*sorted)["decode"], "attention.select (sort)");
  EXPECT_NEAR(ms, rows * t.select_sort_ns * 1e-6, ms * 1e-3);
  EXPECT_EQ(OpMs((*parallel)["decode"], "attention.select (sort)"), 0);
  EXPECT_EQ(OpMs((*sorted)["prefill"], "attention.select (sort)"), 0);
  // A catalog engine may say "sort" or "parallel", nothing else.
  Catalog c = BuiltinCatalog();
  const absl::Status bad = MergeCatalogJson(R"({"engines": {"ds4": {"indexer_topk": "heap"}}})", "mine.json", &c);
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.message().find("indexer_topk"), std::string::npos) << bad;
}

// llama.cpp splits a model's layers over the GPUs and runs them in turn: each device holds half the
// layers, one token's step is the whole model at one device's rates plus one hand-off.
TEST(Mechanisms, LayerSplitPipeline) {
  json j = DeskScenario();
  j["hardware"] = {{"device", "rtx-pro-6000"}, {"devices_per_node", 2}, {"nodes", 1}};
  j.erase("parallel");
  j["software"] = {{"engine", "llama.cpp"}};
  auto two = PlanJson(j);
  ASSERT_TRUE(two.ok()) << two.status();
  EXPECT_EQ((*two)["layout"]["pp"], 2);
  json one = j;
  one["hardware"]["devices_per_node"] = 1;
  one["hardware"]["device"] = "h200";  // one device with room for all of it, for the memory split
  auto single = PlanJson(one);
  ASSERT_TRUE(single.ok());
  // The single device may spill experts to the host: compare with all of its routed experts.
  const json& m1 = (*single)["memory_per_device_gb"];
  const double w1 = m1["weights_routed_experts"].get<double>() + m1["host"]["routed_experts"].get<double>();
  const double w2 = (*two)["memory_per_device_gb"]["weights_routed_experts"].get<double>();
  EXPECT_NEAR(w2 / w1, 22.0 / 43, 1e-3);
  EXPECT_GT(OpMs((*two)["decode"], "pipeline hand-off"), 0);
}

// The end-to-end serving rate follows from the decode and prefill rates of the same answer, and the
// batch chosen for a TPOT SLO meets it while the next one would not.
TEST(Mechanisms, ServingRateAndTpotSlo) {
  json j = BaseScenario();
  j["workload"].erase("batch_per_device");
  j["slo"] = {{"tpot_ms", 30}};
  auto a = PlanJson(j);
  ASSERT_TRUE(a.ok()) << a.status();
  const double batch = (*a)["decode_batch_per_device"].get<double>();
  EXPECT_LE((*a)["tpot_ms"].get<double>(), 30);
  json next = j;
  next["workload"]["batch_per_device"] = batch + 1;
  auto b = PlanJson(next);
  ASSERT_TRUE(b.ok());
  EXPECT_GT((*b)["tpot_ms"].get<double>(), 30);
  const double out = (*a)["serving_output_tokens_per_s_per_device"].get<double>();
  const double all = (*a)["serving_tokens_per_s_per_device"].get<double>();
  EXPECT_NEAR(all / out, (2048.0 + 256) / 256, 1e-3);
  EXPECT_LT(out, (*a)["decode_tokens_per_s_per_device"].get<double>());
}

// ---- validation files, fitting and cross-validation ---------------------------------------------------

// A point of a synthetic set: one B200 decoding V4-Flash (no collectives: only the weight-streaming
// efficiency moves it), from `source`.
json SyntheticPoint(const std::string& id, const std::string& source, double batch, double context) {
  json s = BaseScenario();
  s["hardware"] = {{"device", "b200"}, {"devices_per_node", 1}, {"nodes", 1}};
  s["parallel"] = {{"tp", 1}, {"ep", 1}};
  s["workload"]["batch_per_device"] = batch;
  s["workload"]["input_tokens"] = context;
  return {{"id", id},
          {"source", source},
          {"category", "synthetic"},
          {"scenario", s},
          {"measured", {{"decode_tokens_per_s_per_device", 1}}}};
}

// Points whose "measured" values are the planner's own predictions with the priors and
// gpu.memory.hbm = 0.5, times `factor` for the points of source "c".
absl::StatusOr<ValidationSet> SyntheticSet(double factor) {
  json points = json::array();
  int n = 0;
  for (const char* src : {"a", "b", "c", "d"})
    for (double batch : {1.0, 4.0}) {
      ++n;
      points.push_back(SyntheticPoint(absl::StrCat("p", n), src, batch, 1024 * n));
    }
  json sources = json::object();
  for (const char* src : {"a", "b", "c", "d"}) sources[src] = {{"url", "https://example.org/"}, {"title", src}};
  json file = {{"format", "dsv4-validation/1"}, {"sources", sources}, {"points", points}};
  auto set = ParseValidationSet(file.dump(), "synthetic.json");
  if (!set.ok()) return set.status();
  Tuning truth;
  truth.gpu_memory_hbm = 0.5;
  PlanOptions o;
  o.tuning = &truth;
  for (ValidationPoint& p : set->points) {
    auto a = Plan(p.scenario, BuiltinCatalog(), o);
    if (!a.ok()) return a.status();
    p.measured = {{"decode_tokens_per_s_per_device",
                   (*a)["decode_tokens_per_s_per_device"].get<double>() * (p.source == "c" ? factor : 1.0)}};
  }
  return set;
}

// Held out, each source is predicted with the parameter recovered from the other three: the error
// is the one built into its points. Source "c" measured 1.3x what the truth predicts: its held-out
// rows are 1/1.3 - 1 = -23% off, and the other sources, fitted with c among them (the fit's median-
// like loss lets one source of four not move it), stay exact.
TEST(CrossValidation, SyntheticHeldOutErrorIsKnown) {
  auto exact = SyntheticSet(1.0);
  ASSERT_TRUE(exact.ok()) << exact.status();
  auto v = CrossValidate(*exact, "source", BuiltinCatalog(), {});
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_EQ(v->rows.size(), 8u);
  // 1e-3: the search stops at a bracket of 1e-3 in log(parameter), and rounding in the answers.
  for (const ValidationRow& r : v->rows) EXPECT_NEAR(r.error, 0, 2e-3) << r.point;
  auto skewed = SyntheticSet(1.3);
  ASSERT_TRUE(skewed.ok());
  auto w = CrossValidate(*skewed, "source", BuiltinCatalog(), {});
  ASSERT_TRUE(w.ok()) << w.status();
  for (const ValidationRow& r : w->rows) EXPECT_NEAR(r.error, r.source == "c" ? 1 / 1.3 - 1 : 0, 3e-3) << r.point;
  for (const ErrorSummary& g : w->by_source)
    EXPECT_NEAR(g.median_abs_error, g.group == "c" ? 1 - 1 / 1.3 : 0, 3e-3) << g.group;
  // In-sample, the fit on every point recovers the truth as well.
  auto fit = Fit(*exact, std::vector<bool>(exact->points.size(), true), BuiltinCatalog(), {}, Tuning{});
  ASSERT_TRUE(fit.ok()) << fit.status();
  EXPECT_NEAR(fit->tuning.gpu_memory_hbm, 0.5, 0.5 * 2e-3);
}

// Grouping by publisher holds out together the sources one team published: with c and d from one
// publisher there are three folds, and d is predicted without c's (skewed) points.
TEST(CrossValidation, PublisherFoldsHoldOutATeamsSourcesTogether) {
  auto set = SyntheticSet(1.3);
  ASSERT_TRUE(set.ok()) << set.status();
  set->sources["c"].publisher = set->sources["d"].publisher = "one team";
  auto v = CrossValidate(*set, "publisher", BuiltinCatalog(), {});
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->folds, 3);
  EXPECT_EQ(v->mode, "held out by publisher");
  ASSERT_EQ(v->rows.size(), 8u);
  // 3e-3 as above: the search's bracket and rounding.
  for (const ValidationRow& r : v->rows) EXPECT_NEAR(r.error, r.source == "c" ? 1 / 1.3 - 1 : 0, 3e-3) << r.point;
  auto by_source = CrossValidate(*set, "source", BuiltinCatalog(), {});
  ASSERT_TRUE(by_source.ok());
  EXPECT_EQ(by_source->folds, 4);
  EXPECT_NE(ValidationText(*v).find("(3 folds)"), std::string::npos);
}

// A parameter that no training point depends on keeps its prior, and the fit says so.
TEST(CrossValidation, UninformedParametersKeepTheirPrior) {
  auto set = SyntheticSet(1.0);
  ASSERT_TRUE(set.ok());
  auto fit = Fit(*set, std::vector<bool>(set->points.size(), true), BuiltinCatalog(), {}, Tuning{});
  ASSERT_TRUE(fit.ok()) << fit.status();
  for (const ParameterFit& p : fit->parameters) {
    if (p.name == std::string("host.memory.llamacpp")) {
      EXPECT_FALSE(p.fitted);
      EXPECT_EQ(p.value, Tuning{}.host_memory_llamacpp);
    }
    if (p.name == std::string("gpu.memory.hbm")) {
      EXPECT_TRUE(p.fitted);
      EXPECT_EQ(p.points.size(), 8u);
    }
  }
  EXPECT_FALSE(CrossValidate(*set, "category", BuiltinCatalog(), {}).ok());
}

// Bad validation files are errors that name the file and the field.
TEST(CrossValidation, BadValidationFilesNameTheField) {
  auto expect = [](const std::string& text, const std::string& field) {
    auto s = ParseValidationSet(text, "v.json");
    ASSERT_FALSE(s.ok()) << "accepted: " << text;
    EXPECT_NE(s.status().message().find(field), std::string::npos) << s.status();
    EXPECT_NE(s.status().message().find("v.json"), std::string::npos) << s.status();
  };
  const std::string point = SyntheticPoint("p", "a", 1, 1024).dump();
  const std::string src = R"("sources": {"a": {"url": "https://example.org/"}})";
  expect("[1, 2", "v.json");
  expect(R"({"format": "dsv4-validation/2", "points": []})", "format");
  expect(absl::StrCat(R"({"format": "dsv4-validation/1", )", src, R"(, "points": {}})"), "points");
  expect(R"({"format": "dsv4-validation/1", "sources": {"a": {"title": "no url"}}, "points": []})", "sources.a.url");
  json p = json::parse(point);
  p["measured"] = {{"decode_tokens_per_s_per_device", -3}};
  expect(absl::StrCat(R"({"format": "dsv4-validation/1", )", src, R"(, "points": [)", p.dump(), "]}"),
         "points[0].measured.decode_tokens_per_s_per_device");
  p = json::parse(point);
  p["source"] = "z";
  p["measured"] = {{"decode_tokens_per_s_per_device", 3}};
  expect(absl::StrCat(R"({"format": "dsv4-validation/1", )", src, R"(, "points": [)", p.dump(), "]}"),
         "points[0].source");
  p["source"] = "a";
  p["setup"] = {{"hardware", json::array()}};
  expect(absl::StrCat(R"({"format": "dsv4-validation/1", )", src, R"(, "points": [)", p.dump(), "]}"),
         "points[0].setup.hardware");
  p.erase("setup");
  p["scenario"]["hardware"]["device"] = "h900";
  {
    // A device the catalog lacks is found when the point is planned; the error names the point.
    auto s = ParseValidationSet(absl::StrCat(R"({"format": "dsv4-validation/1", )", src, R"(, "points": [)",
                                             p.dump(), "]}"),
                                "v.json");
    ASSERT_TRUE(s.ok()) << s.status();
    auto v = Validate(*s, BuiltinCatalog(), {});
    ASSERT_FALSE(v.ok());
    EXPECT_NE(v.status().message().find("v.json: points[0]"), std::string::npos) << v.status();
    EXPECT_NE(v.status().message().find("hardware.device"), std::string::npos) << v.status();
  }
  p = json::parse(point);
  p["measured"] = {{"decode_tokens_per_s_per_device", 3}};
  expect(absl::StrCat(R"({"format": "dsv4-validation/1", )", src, R"(, "points": [)", p.dump(), ",", p.dump(), "]}"),
         "points[1].id");
  p["colour"] = "red";
  expect(absl::StrCat(R"({"format": "dsv4-validation/1", )", src, R"(, "points": [)", p.dump(), "]}"),
         "points[0].colour");
  // A measured key the question does not answer fails at validation, naming the key.
  p.erase("colour");
  p["measured"] = {{"prefill_tokens_per_s_per_node", 3}};
  auto set = ParseValidationSet(absl::StrCat(R"({"format": "dsv4-validation/1", )", src, R"(, "points": [)",
                                             p.dump(), "]}"),
                                "v.json");
  ASSERT_TRUE(set.ok()) << set.status();
  auto v = Validate(*set, BuiltinCatalog(), {});
  ASSERT_FALSE(v.ok());
  EXPECT_NE(v.status().message().find("prefill_tokens_per_s_per_node"), std::string::npos) << v.status();
}

// ---- accuracy against published measurements --------------------------------------------------------

std::string RepoPath(const std::string& rel) { return std::string(DSV4_SOURCE_DIR) + "/" + rel; }

// The validation set as the issue asks for it: at least 40 measurements from at least 8 sources,
// every source cited.
TEST(Accuracy, ValidationSetCitesItsSources) {
  auto set = LoadValidationSet(RepoPath("cluster/validation/points.json"));
  ASSERT_TRUE(set.ok()) << set.status();
  size_t rows = 0;
  std::set<std::string> sources, categories;
  for (const ValidationPoint& p : set->points) {
    rows += p.measured.size();
    sources.insert(p.source);
    categories.insert(p.category);
    EXPECT_FALSE(p.name.empty()) << p.id;
  }
  EXPECT_GE(set->points.size(), 40u);
  EXPECT_GE(sources.size(), 8u);
  EXPECT_GE(categories.size(), 6u);
  for (const auto& [id, s] : set->sources) EXPECT_EQ(s.url.rfind("https://", 0), 0u) << id;
}

// The catalog's fitted parameters are the fit of the shipped set from the priors (regenerate them
// with `dsv4 plan --validate cluster/validation/points.json --fit --json`). 6e-4: the catalog keeps
// four decimals.
TEST(Accuracy, CatalogParametersAreTheFitOfTheSet) {
  auto set = LoadValidationSet(RepoPath("cluster/validation/points.json"));
  ASSERT_TRUE(set.ok()) << set.status();
  auto fit = Fit(*set, std::vector<bool>(set->points.size(), true), BuiltinCatalog(), {}, Tuning{}, 4);
  ASSERT_TRUE(fit.ok()) << fit.status();
  for (const TuningParameter& p : TuningParameters())
    EXPECT_NEAR(BuiltinCatalog().tuning.*(p.field), fit->tuning.*(p.field), 6e-4) << p.name;
}

// The honest figure: every source predicted with parameters fitted without it. The issue's target
// is a held-out median |error| of at most 20% and no value off by more than 2x either way; the
// figures per source and category are printed.
TEST(Accuracy, HeldOutBySource) {
  auto set = LoadValidationSet(RepoPath("cluster/validation/points.json"));
  ASSERT_TRUE(set.ok()) << set.status();
  auto v = CrossValidate(*set, "source", BuiltinCatalog(), {});
  ASSERT_TRUE(v.ok()) << v.status();
  std::printf("%s", ValidationText(*v).c_str());
  EXPECT_LE(v->median_abs_error, 0.20);
  EXPECT_LE(v->worst_ratio, 2.0) << v->worst;
}

// shared/planner/published_points.json (the contract's first file) still parses and every point is
// answered; it carries no software dates, so it is planned as mature software.
TEST(Accuracy, PublishedPointsStillRead) {
  std::string text;
  if (!ReadText(SharedPath("planner/published_points.json"), &text)) GTEST_SKIP() << "shared/ not found";
  auto v = Validate(text, "published_points.json", BuiltinCatalog(), {});
  ASSERT_TRUE(v.ok()) << v.status();
  std::printf("%s", ValidationText(*v).c_str());
  EXPECT_EQ(v->rows.size(), 12u);
  for (const ValidationRow& r : v->rows) EXPECT_GT(r.predicted, 0) << r.point;
}

}  // namespace
}  // namespace dsv4::cluster
