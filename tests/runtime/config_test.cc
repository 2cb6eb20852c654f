// config.json validation and the model loader's checks of tensors against the config
// (rows ST-12, ST-13 and ST-14 of the reliability notes): each bad input is one clear error.
#include <gtest/gtest.h>

#include <cstring>
#include <functional>
#include <nlohmann/json.hpp>

#include "runtime/builtin.h"
#include "runtime/config.h"
#include "runtime/weights.h"
#include "tests/testutil.h"

namespace dsv4 {
namespace {

nlohmann::json TinyConfig() {
  auto j = nlohmann::json::parse(*BuiltinConfigJson("v4-tiny"));
  j["vocab_size"] = 256;
  return j;
}

void ExpectConfigError(const nlohmann::json& j, const std::string& needle) {
  auto c = ParseModelConfig(j.dump(), "config.json");
  ASSERT_FALSE(c.ok()) << "accepted a config that should fail with: " << needle;
  EXPECT_NE(c.status().message().find(needle), std::string::npos) << c.status();
  EXPECT_NE(c.status().message().find("config.json"), std::string::npos) << c.status();
}

TEST(Config, ParsesPublishedKeys) {
  auto c = ParseModelConfig(TinyConfig().dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->hidden_size, 256);
  EXPECT_EQ(c->compress_ratios, (std::vector<int64_t>{0, 4, 128, 4, 0}));
  EXPECT_EQ(c->original_max_position_embeddings, 65536);
  EXPECT_EQ(c->fp8_block_rows, 128);
  EXPECT_EQ(c->fp8_block_cols, 128);
  EXPECT_TRUE(c->expert_fp4);
}

TEST(Config, GoldenConfigParses) {
  if (!testing::SharedAvailable()) GTEST_SKIP() << "shared/ not found";
  auto c = LoadModelConfig(testing::SharedDir() + "/golden/v4-tiny/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->num_experts_per_tok, 4);
  EXPECT_EQ(c->sliding_window, 32);
}

TEST(Config, Errors) {
  auto j = TinyConfig();
  j.erase("hidden_size");
  ExpectConfigError(j, "'hidden_size' is missing");
  j = TinyConfig(), j["hidden_size"] = "256";
  ExpectConfigError(j, "'hidden_size' must be an integer");
  j = TinyConfig(), j["num_experts_per_tok"] = 17;
  ExpectConfigError(j, "exceeds n_routed_experts");
  j = TinyConfig(), j["num_hidden_layers"] = 1000000;
  ExpectConfigError(j, "'num_hidden_layers'");
  j = TinyConfig(), j["compress_ratios"] = {0, 4};
  ExpectConfigError(j, "'compress_ratios' has 2 entries for 5 layers");
  j = TinyConfig(), j["compress_ratios"] = {0, 4, 64, 4, 0};
  ExpectConfigError(j, "compress_ratios' [2] = 64");
  j = TinyConfig(), j["o_groups"] = 3;
  ExpectConfigError(j, "'o_groups'");
  j = TinyConfig(), j["scoring_func"] = "relu";
  ExpectConfigError(j, "'scoring_func'");
  j = TinyConfig(), j["index_head_dim"] = 48;
  ExpectConfigError(j, "power of two");
  j = TinyConfig(), j["quantization_config"]["weight_block_size"] = {128};
  ExpectConfigError(j, "weight_block_size");
  j = TinyConfig(), j["quantization_config"]["weight_block_size"] = {0, 128};
  ExpectConfigError(j, "weight_block_size");
  j = TinyConfig(), j["model_type"] = "deepseek_v3";
  ExpectConfigError(j, "'model_type' = \"deepseek_v3\"");
  j = TinyConfig(), j["kv_source_layer_ids"] = {1, 3};
  ExpectConfigError(j, "'kv_source_layer_ids' is a V4.1 key");
  ExpectConfigError(nlohmann::json::array(), "must be a JSON object, not array");
  // Ids the runtime feeds or stops on must be in the vocabulary; only V4-family model types run.
  j = TinyConfig(), j["eos_token_id"] = 512;
  ExpectConfigError(j, "'eos_token_id' = 512 is outside the vocabulary [0, ");
  j = TinyConfig(), j["bos_token_id"] = -1;
  ExpectConfigError(j, "'bos_token_id'");
  j = TinyConfig(), j["model_type"] = "llama";
  ExpectConfigError(j, "'model_type' = \"llama\" is not a model this runtime executes");
  // A syntax error says so, with where it is (not "not a JSON object").
  auto bad = ParseModelConfig("{\"vocab_size\": 512,\n \"hidden_size\": }", "config.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("config.json: invalid JSON"), std::string::npos) << bad.status();
  EXPECT_NE(bad.status().message().find("line 2"), std::string::npos) << bad.status();
  // A number beyond double's range is an error too, not an uncaught exception (found by fuzz_config;
  // the input is tests/fuzz/corpus/config/crash_number_overflow.json).
  bad = ParseModelConfig("{\"vocab_size\": 512, \"rope_theta\": 1e6666666666666666666666666}", "config.json");
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("config.json: invalid JSON"), std::string::npos) << bad.status();
  EXPECT_NE(bad.status().message().find("number overflow"), std::string::npos) << bad.status();
}

// A weight block that is not square is a config like any other; the checkpoint's scales decide
// whether it fits (Weights.TilesThatDoNotMatchTheScales).
TEST(Config, AnyWeightBlockShape) {
  auto j = TinyConfig();
  j["quantization_config"]["weight_block_size"] = {128, 64};
  auto c = ParseModelConfig(j.dump(), "config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->fp8_block_rows, 128);
  EXPECT_EQ(c->fp8_block_cols, 64);
  EXPECT_EQ(c->act_quant_group(), 64);
}

// ---- V4.1 ------------------------------------------------------------------------------------

// The released V4.1 layout: the model's keys nested in text_config.
nlohmann::json V41Config() { return nlohmann::json::parse(*BuiltinConfigJson("v41-tiny")); }

void ExpectV41Error(const std::function<void(nlohmann::json&)>& edit, const std::string& needle) {
  auto j = V41Config();
  edit(j["text_config"]);
  ExpectConfigError(j, needle);
}

TEST(ConfigV41, GoldenConfigParsesWithItsRoles) {
  if (!testing::SharedAvailable()) GTEST_SKIP() << "shared/ not found";
  auto c = LoadModelConfig(testing::SharedDir() + "/golden/v41-tiny/config.json");
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ(c->family, ModelFamily::kV41);
  EXPECT_EQ(c->fp8_block_rows, 32);
  EXPECT_EQ(c->fp8_block_cols, 32);
  EXPECT_TRUE(c->expert_fp4);
  EXPECT_EQ(c->rms_norm_eps, 1e-20);
  EXPECT_EQ(c->engram_pad_id, 2);  // engram_pad_token_id
  EXPECT_EQ(c->kv_source_layer_ids, (std::vector<int64_t>{2, 4, 5}));
  EXPECT_EQ(c->index_source_layer_ids, (std::vector<int64_t>{2, 4, 5, 7}));
  EXPECT_EQ(c->candidate_source_layer_id, 5);
  // Layer roles (the README's table).
  const int64_t kv[] = {-1, -1, 2, 2, 4, 5, 5, 5}, idx[] = {-1, -1, 2, 2, 4, 5, 5, 7};
  for (int64_t l = 0; l < 8; ++l) {
    EXPECT_EQ(c->kv_source(l), kv[l]) << l;
    EXPECT_EQ(c->index_source(l), idx[l]) << l;
  }
  EXPECT_TRUE(c->compresses(2) && c->compresses(4) && c->compresses(5));
  EXPECT_FALSE(c->compresses(3) || c->compresses(6) || c->compresses(7));
  EXPECT_TRUE(c->runs_indexer(7) && !c->runs_indexer(6));
  EXPECT_EQ(c->index_key_source(7), 5);
  EXPECT_TRUE(c->owns_index_keys(2) && c->owns_index_keys(5) && !c->owns_index_keys(7));
  EXPECT_TRUE(c->is_candidate_source(5));
  EXPECT_TRUE(c->uses_candidates(7));
  EXPECT_FALSE(c->uses_candidates(5) || c->uses_candidates(6) || c->uses_candidates(4));
  // V4.1's variant facts.
  EXPECT_FALSE(c->q_head_norm());
  EXPECT_TRUE(c->hc_lagged());
  EXPECT_FALSE(c->compressor_overlap(2));
  EXPECT_EQ(c->window_kv_qdq_len(), 96);
  EXPECT_EQ(c->window_kv_qdq_group(), 32);
  // One cache per source: layers 2 and 4 (ratio 2) and 5 (ratio 1) store KV and index keys.
  const CacheRowsPerToken rows = c->cache_rows_per_token();
  EXPECT_DOUBLE_EQ(rows.kv, 0.5 + 0.5 + 1.0);
  EXPECT_DOUBLE_EQ(rows.index_keys, 0.5 + 0.5 + 1.0);
}

// The reference's inference/config.json spells the keys as its ModelArgs fields, flat.
TEST(ConfigV41, InferenceConfigSpellings) {
  auto hf = V41Config();
  auto j = hf["text_config"];
  j.erase("model_type");
  const std::pair<const char*, const char*> renames[] = {
      {"hidden_size", "dim"},           {"num_hidden_layers", "n_layers"},
      {"num_attention_heads", "n_heads"}, {"moe_intermediate_size", "moe_inter_dim"},
      {"num_experts_per_tok", "n_activated_experts"}, {"scoring_func", "score_func"},
      {"routed_scaling_factor", "route_scale"}, {"qk_rope_head_dim", "rope_head_dim"},
      {"rms_norm_eps", "norm_eps"},     {"sliding_window", "window_size"},
      {"kv_source_layer_ids", "kv_source_layers"}, {"index_source_layer_ids", "index_source_layers"},
      {"candidate_source_layer_id", "candidate_source_layer"}, {"engram_pad_id", "engram_pad_token_id"},
      {"num_nextn_predict_layers", "n_mtp_layers"}};
  for (const auto& [from, to] : renames) {
    ASSERT_TRUE(j.contains(from)) << from;
    j[to] = j[from];
    j.erase(from);
  }
  j["rope_factor"] = j["rope_scaling"]["factor"];
  j["original_seq_len"] = j["rope_scaling"]["original_max_position_embeddings"];
  j.erase("rope_scaling");
  j["dtype"] = "fp8";
  j["expert_dtype"] = "fp4";
  j["quantization_config"] = hf["quantization_config"];
  auto inference = ParseModelConfig(j.dump(), "inference/config.json");
  ASSERT_TRUE(inference.ok()) << inference.status();
  auto published = ParseModelConfig(hf.dump(), "config.json");
  ASSERT_TRUE(published.ok()) << published.status();
  EXPECT_EQ(inference->family, ModelFamily::kV41);  // no model_type: told by kv_source_layers
  EXPECT_EQ(inference->hidden_size, published->hidden_size);
  EXPECT_EQ(inference->kv_source_layer_ids, published->kv_source_layer_ids);
  EXPECT_EQ(inference->index_source_layer_ids, published->index_source_layer_ids);
  EXPECT_EQ(inference->candidate_source_layer_id, published->candidate_source_layer_id);
  EXPECT_EQ(inference->rms_norm_eps, published->rms_norm_eps);
  EXPECT_EQ(inference->rope_factor, published->rope_factor);
  EXPECT_EQ(inference->original_max_position_embeddings, published->original_max_position_embeddings);
  EXPECT_EQ(inference->engram_pad_id, published->engram_pad_id);
  // Both spellings with different values: which one is meant is unknowable.
  j["hidden_size"] = 128;
  auto both = ParseModelConfig(j.dump(), "inference/config.json");
  ASSERT_FALSE(both.ok());
  EXPECT_NE(both.status().message().find("'hidden_size' and its alias 'dim' disagree"), std::string::npos)
      << both.status();
}

// Each bad V4.1 config is one error naming the field.
TEST(ConfigV41, BadSharingFieldsNameTheField) {
  ExpectV41Error([](auto& t) { t["kv_source_layer_ids"] = {2, 4, 9}; },
                 "'kv_source_layer_ids' [2] = 9 is outside [0, 8)");
  ExpectV41Error([](auto& t) { t["kv_source_layer_ids"] = {2, 5, 4}; },
                 "'kv_source_layer_ids' must be strictly ascending ([2] = 4 follows 5)");
  ExpectV41Error([](auto& t) { t["kv_source_layer_ids"] = {1, 2, 4, 5}; },
                 "'kv_source_layer_ids' lists layer 1, whose compress_ratios entry is 0");
  ExpectV41Error([](auto& t) { t["kv_source_layer_ids"] = {4, 5}; },
                 "'kv_source_layer_ids' has no layer at or before compressed layer 2");
  ExpectV41Error([](auto& t) { t["kv_source_layer_ids"] = {2, 4}; },
                 "'kv_source_layer_ids' gives layer 5 (ratio 1) the cache of layer 4 (ratio 2)");
  ExpectV41Error([](auto& t) { t["index_source_layer_ids"] = {2, 4, 7}; },
                 "'index_source_layer_ids' gives layer 5 (ratio 1) the top-k of layer 4 (ratio 2)");
  ExpectV41Error([](auto& t) { t["index_source_layer_ids"] = {2, 2, 5}; },
                 "'index_source_layer_ids' must be strictly ascending");
  ExpectV41Error([](auto& t) { t["index_source_layer_ids"] = {-1, 2, 4, 5}; },
                 "'index_source_layer_ids' [0] = -1 is outside [0, 8)");
  // A KV source that runs no indexer reuses the earlier source's top-k on its own cache (positions
  // mean the same tokens at one ratio): valid.
  auto j = V41Config();
  j["text_config"]["kv_source_layer_ids"] = {2, 3, 4, 5};
  auto shared_topk = ParseModelConfig(j.dump(), "config.json");
  ASSERT_TRUE(shared_topk.ok()) << shared_topk.status();
  EXPECT_TRUE(shared_topk->compresses(3));
  EXPECT_EQ(shared_topk->index_source(3), 2);
  EXPECT_FALSE(shared_topk->owns_index_keys(3));
  ExpectV41Error([](auto& t) { t["candidate_source_layer_id"] = 6; },
                 "'candidate_source_layer_id' = 6 is not an index source (index_source_layer_ids: [2, 4, 5, 7])");
  ExpectV41Error([](auto& t) { t["candidate_source_layer_id"] = 8; }, "'candidate_source_layer_id' = 8 is outside");
  ExpectV41Error([](auto& t) { t["candidate_source_layer_id"] = 2; },
                 "'candidate_source_layer_id' = 2 (ratio 2) gives its candidate blocks to index source 5");
  ExpectV41Error([](auto& t) { t["candidate_topk_blocks"] = 0; }, "'candidate_topk_blocks' = 0");
  ExpectV41Error([](auto& t) { t["candidate_block_size"] = -4; }, "'candidate_block_size' = -4");
  ExpectV41Error([](auto& t) { t["candidate_topk_blocks"] = 2; },
                 "'candidate_topk_blocks' x candidate_block_size can leave 5 candidate positions, fewer than "
                 "index_topk = 8");
  ExpectV41Error([](auto& t) { t["compress_ratios"] = {0, 0, 2, 2, 2, 1, 1, -1}; }, "'compress_ratios' [7] = -1");
  ExpectV41Error([](auto& t) { t["num_hash_layers"] = 1; }, "'num_hash_layers' = 1: V4.1 routes every layer by score");
  ExpectV41Error([](auto& t) { t["gate_temp"] = 0.0; }, "'gate_temp' = 0 must be positive");
  ExpectV41Error([](auto& t) { t["kv_source_layer_ids"] = "2,4,5"; }, "'kv_source_layer_ids' must be an array");
  ExpectV41Error([](auto& t) { t["index_head_dim"] = 16; }, "'index_head_dim' = 16 is smaller than qk_rope_head_dim");
  j = V41Config();
  j["text_config"] = 5;
  ExpectConfigError(j, "'text_config' must be an object");
}

// Rewrites a random tiny checkpoint with `edit` applied, then loads it.
// `config` is what config.json says when loading; the checkpoint is always made from TinyConfig().
absl::StatusOr<std::unique_ptr<ModelWeights>> LoadEditedWeights(
    const std::function<void(std::vector<TensorToWrite>&)>& edit, const nlohmann::json& config,
    const nlohmann::json& checkpoint_config) {
  auto b = MakeRandomModel(checkpoint_config.dump(), 3, "tiny");
  if (!b.ok()) return b.status();
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, t] : b->checkpoint->all())
    tensors.push_back({name, t->dtype, t->shape, std::vector<uint8_t>(t->data, t->data + t->nbytes)});
  edit(tensors);
  auto image = std::make_shared<const std::vector<uint8_t>>(WriteSafetensors(tensors));
  auto file = SafetensorsFile::FromMemory(image, "edited.safetensors");
  if (!file.ok()) return file.status();
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  files.push_back(std::move(*file));
  std::shared_ptr<const Checkpoint> ckpt = Checkpoint::FromFiles(std::move(files));
  auto c = ParseModelConfig(config.dump(), "config.json");
  if (!c.ok()) return c.status();
  return LoadWeights(ckpt, *c);
}

absl::Status LoadEdited(const std::function<void(std::vector<TensorToWrite>&)>& edit,
                        const nlohmann::json& config = TinyConfig()) {
  return LoadEditedWeights(edit, config, TinyConfig()).status();
}

TensorToWrite& Find(std::vector<TensorToWrite>& ts, const std::string& name) {
  for (auto& t : ts)
    if (t.name == name) return t;
  ADD_FAILURE() << "no tensor " << name;
  return ts.front();
}

void ExpectLoadError(const std::function<void(std::vector<TensorToWrite>&)>& edit, const std::string& needle,
                     const nlohmann::json& config = TinyConfig()) {
  const absl::Status st = LoadEdited(edit, config);
  ASSERT_FALSE(st.ok()) << "loaded a checkpoint that should fail with: " << needle;
  EXPECT_NE(st.message().find(needle), std::string::npos) << st;
}

TEST(Weights, UneditedLoads) { EXPECT_TRUE(LoadEdited([](auto&) {}).ok()); }

TEST(Weights, MissingTensor) {
  ExpectLoadError([](auto& ts) { std::erase_if(ts, [](auto& t) { return t.name == "layers.1.attn.wq_b.weight"; }); },
                  "'layers.1.attn.wq_b.weight' is missing");
}

TEST(Weights, MissingScale) {
  ExpectLoadError([](auto& ts) { std::erase_if(ts, [](auto& t) { return t.name == "layers.0.attn.wkv.scale"; }); },
                  "'layers.0.attn.wkv.scale' (the block scales");
}

TEST(Weights, ScaleWrongShape) {
  ExpectLoadError([](auto& ts) { Find(ts, "layers.0.attn.wq_a.scale").shape = {2, 1}; },
                  "'layers.0.attn.wq_a.scale'");
}

TEST(Weights, NanScale) {
  ExpectLoadError([](auto& ts) { Find(ts, "layers.2.attn.wo_b.scale").bytes[0] = 0xff; }, "0xFF (E8M0 NaN)");
}

TEST(Weights, HiddenSizeDisagreesWithShapes) {
  ExpectLoadError(
      [](auto& ts) {
        auto& t = Find(ts, "norm.weight");
        t.shape = {128};
        t.bytes.resize(256);
      },
      "'norm.weight' (edited.safetensors): shape [128], expected [256]");
}

TEST(Weights, ExtraLayerBeyondConfig) {
  ExpectLoadError([](auto& ts) { ts.push_back({"layers.7.attn_norm.weight", DType::kBF16, {256}, std::vector<uint8_t>(512)}); },
                  "belongs to layer 7 but config.json has num_hidden_layers = 5");
}

TEST(Weights, WrongDtypeIsNeverReinterpreted) {
  // An I16 tensor where a weight is expected: no policy converts it.
  ExpectLoadError(
      [](auto& ts) {
        auto& t = Find(ts, "layers.0.attn.wq_a.weight");
        t.dtype = DType::kI16;
        t.shape[1] /= 2;  // same bytes, other element type
      },
      "dtype I16");
  // An I64 table where a float vector is expected.
  ExpectLoadError(
      [](auto& ts) {
        auto& t = Find(ts, "layers.0.attn.attn_sink");
        t.dtype = DType::kI32;
      },
      "expected F32 or BF16");
}

TEST(Weights, PackedFp4WrongByteCount) {
  ExpectLoadError(
      [](auto& ts) {
        auto& t = Find(ts, "layers.3.ffn.experts.5.w2.weight");
        t.shape[1] += 1;
        t.bytes.resize(t.shape[0] * t.shape[1]);
      },
      "'layers.3.ffn.experts.5.w2.weight'");
}

TEST(Weights, HashTableOutOfRange) {
  ExpectLoadError(
      [](auto& ts) {
        auto& t = Find(ts, "layers.0.ffn.gate.tid2eid");
        const int64_t bad = 16;
        std::memcpy(t.bytes.data() + 8 * 5, &bad, 8);
      },
      "entry 5 = 16 is outside [0, 16)");
}

TEST(Weights, ExpertCountDisagrees) {
  auto j = TinyConfig();
  j["n_routed_experts"] = 15;  // the checkpoint has 16: router shapes disagree
  ExpectLoadError([](auto&) {}, "layers.0.ffn.gate", j);
}

// ---- V4.1 checkpoints -------------------------------------------------------------------------

// builtin:v41-tiny's layout at vocab 256 without Engram (no tokenizer needed).
nlohmann::json V41WeightsConfig() {
  auto j = V41Config();
  auto& t = j["text_config"];
  t["vocab_size"] = 256;
  for (auto it = t.begin(); it != t.end();) it = it.key().rfind("engram_", 0) == 0 ? t.erase(it) : std::next(it);
  return j;
}

absl::StatusOr<std::unique_ptr<ModelWeights>> LoadV41(const std::function<void(std::vector<TensorToWrite>&)>& edit,
                                                      const nlohmann::json& config = V41WeightsConfig()) {
  return LoadEditedWeights(edit, config, V41WeightsConfig());
}

void ExpectV41LoadError(const std::function<void(std::vector<TensorToWrite>&)>& edit, const std::string& needle,
                        const nlohmann::json& config = V41WeightsConfig()) {
  auto w = LoadV41(edit, config);
  ASSERT_FALSE(w.ok()) << "loaded a checkpoint that should fail with: " << needle;
  EXPECT_NE(w.status().message().find(needle), std::string::npos) << w.status();
}

TEST(WeightsV41, LoadsSharedKvAndKeyOwners) {
  auto w = LoadV41([](auto&) {});
  ASSERT_TRUE(w.ok()) << w.status();
  const ModelWeights& m = **w;
  EXPECT_TRUE(m.hc_head_fn.empty());
  for (int64_t l : {2, 4, 5}) EXPECT_TRUE(m.layers[l].has_compressor) << l;
  for (int64_t l : {0, 1, 3, 6, 7}) EXPECT_FALSE(m.layers[l].has_compressor) << l;
  EXPECT_EQ(m.layers[2].compressor.wgate.rows(), 96);  // ratio 2: gated pooling
  EXPECT_EQ(m.layers[5].compressor.wgate.data, nullptr);  // ratio 1: a projection
  EXPECT_EQ(m.layers[5].index_wk.rows(), 64);
  EXPECT_TRUE(m.layers[7].has_indexer);
  EXPECT_EQ(m.layers[7].index_wk.data, nullptr);  // reads layer 5's keys
  EXPECT_EQ(m.layers[0].wq_a.block_rows, 32);
  EXPECT_EQ(m.layers[0].wq_a.block_cols, 32);
  EXPECT_EQ(m.num_draft_tensors, 0);
}

// Weights in 32 x 32 tiles read with a config that states 128 x 128: the error names the field
// and the tiles the scales fit.
TEST(WeightsV41, TilesThatDoNotMatchTheScales) {
  auto j = V41WeightsConfig();
  j["quantization_config"]["weight_block_size"] = {128, 128};
  ExpectV41LoadError([](auto&) {}, "quantization_config.weight_block_size (they fit 32 x 32 tiles)", j);
  j["quantization_config"]["weight_block_size"] = {32, 64};
  ExpectV41LoadError([](auto&) {}, "in 32 x 64 tiles", j);
}

// The checkpoint has compressors on layers 2, 4 and 5: a config that calls layer 4 a reader of
// layer 2's cache describes another model.
TEST(WeightsV41, TensorsTheConfigDoesNotUseAreAnError) {
  auto j = V41WeightsConfig();
  j["text_config"]["kv_source_layer_ids"] = {2, 5};
  j["text_config"]["index_source_layer_ids"] = {2, 5, 7};
  ExpectV41LoadError([](auto&) {}, "has no use in the model config.json describes (layer 4: compress_ratios 2, "
                                   "reads layer 2's cache)", j);
  // A missing key projection of an index-key owner.
  ExpectV41LoadError(
      [](auto& ts) { std::erase_if(ts, [](auto& t) { return t.name == "layers.4.attn.indexer.wk.weight"; }); },
      "'layers.4.attn.indexer.wk.weight' is missing");
}

// DSpark draft layers (mtp.*) are recognised, counted and not loaded.
TEST(WeightsV41, DraftLayersAreLeftOut) {
  auto w = LoadV41([](auto& ts) {
    ts.push_back({"mtp.0.attn.wq_a.weight", DType::kBF16, {96, 64}, std::vector<uint8_t>(96 * 64 * 2)});
    ts.push_back({"mtp.2.markov_head.embed.weight", DType::kBF16, {256, 8}, std::vector<uint8_t>(256 * 8 * 2)});
  });
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ((*w)->num_draft_tensors, 2);
}

}  // namespace
}  // namespace dsv4
