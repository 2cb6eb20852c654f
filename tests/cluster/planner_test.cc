// The capacity planner: presets against published sizes, the catalog's sources, scenario validation
// (PL-01), determinism (PL-02), monotonicity (PL-03), units and sums (PL-05), calibration profiles, and
// the error against shared/planner/published_points.json.
#include "cluster/planner.h"

#include <gtest/gtest.h>

#include <cmath>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <sstream>

#include "base/file.h"
#include "cluster/hardware.h"
#include "cluster/model_cost.h"
#include "cluster/profile.h"
#include "cluster/report.h"
#include "cluster/scenario.h"
#include "cluster/simulator.h"

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
  EXPECT_EQ(seed->top_k, 16);
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
  EXPECT_EQ(p->top_k, 16);
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
  EXPECT_GT((*faster)["single_stream_decode_tokens_per_s"].get<double>(),
            (*a)["single_stream_decode_tokens_per_s"].get<double>() * 1.5);
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

// ---- accuracy against published measurements --------------------------------------------------------

TEST(Accuracy, PublishedPoints) {
  std::string text;
  if (!ReadText(SharedPath("planner/published_points.json"), &text)) GTEST_SKIP() << "shared/ not found";
  auto v = Validate(text, "published_points.json", BuiltinCatalog(), {});
  ASSERT_TRUE(v.ok()) << v.status();
  std::printf("%s", ValidationText(*v).c_str());
  EXPECT_GE(v->rows.size(), 12u);
  EXPECT_LE(v->median_abs_error, 0.20);
  EXPECT_LE(v->worst_ratio, 2.0) << v->worst;
}

}  // namespace
}  // namespace dsv4::cluster
