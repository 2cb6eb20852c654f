// config.json validation and the model loader's checks of tensors against the config
// (rows ST-12, ST-13 and ST-14 of the reliability notes): each bad input is one clear error.
#include <gtest/gtest.h>

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
  EXPECT_EQ(c->fp8_block, 128);
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
  j = TinyConfig(), j["quantization_config"]["weight_block_size"] = {128, 64};
  ExpectConfigError(j, "weight_block_size");
  ExpectConfigError(nlohmann::json::array(), "not a JSON object");
}

// Rewrites a random tiny checkpoint with `edit` applied, then loads it.
// `config` is what config.json says when loading; the checkpoint is always made from TinyConfig().
absl::Status LoadEdited(const std::function<void(std::vector<TensorToWrite>&)>& edit,
                        const nlohmann::json& config = TinyConfig()) {
  auto b = MakeRandomModel(TinyConfig().dump(), 3, "tiny");
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
  return LoadWeights(ckpt, *c).status();
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

}  // namespace
}  // namespace dsv4
