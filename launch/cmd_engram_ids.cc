// dsv4 engram-ids --model M --layer L --prompt-ids 1,2,3
//
// Prints, per token, the table rows the n-gram hash selects for Engram layer L (a model layer id
// from engram_layer_ids): one JSON array per line, column (n - 2) * engram_n_heads + head, offsets
// added. Reads only config.json and tokenizer.json (a debugging aid and a test hook).
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "launch/commands.h"
#include "runtime/builtin.h"
#include "runtime/config.h"
#include "runtime/engram/hash.h"
#include "runtime/tokenizer/tokenizer.h"

namespace dsv4 {
namespace {

absl::StatusOr<ModelConfig> ConfigOf(const std::string& model) {
  if (model.rfind("builtin:", 0) == 0) {
    DSV4_ASSIGN_OR_RETURN(const std::string json, BuiltinConfigJson(model.substr(8)));
    return ParseModelConfig(json, model);
  }
  if (!std::filesystem::is_directory(model))
    return absl::NotFoundError(absl::StrCat("model directory '", model, "' does not exist"));
  return LoadModelConfig((std::filesystem::path(model) / "config.json").string());
}

}  // namespace

void EngramIdsFlags(Flags& flags) {
  flags
      .String("model", "builtin:v4-tiny-engram", "checkpoint directory (config.json + tokenizer.json) or built-in name")
      .Int("layer", -1, "model layer id of an Engram layer (one of engram_layer_ids; required)")
      .IntList("prompt-ids", "", "comma-separated token ids (required)");
}

absl::Status EngramIds(const Flags& flags) {
  if (!flags.Given("layer")) return absl::InvalidArgumentError("--layer is required");
  const int64_t layer = flags.GetInt("layer");
  const std::vector<int32_t>& ids = flags.GetIntList("prompt-ids");
  if (ids.empty()) return absl::InvalidArgumentError("--prompt-ids is required and must not be empty");

  const std::string& model = flags.GetString("model");
  DSV4_ASSIGN_OR_RETURN(const ModelConfig config, ConfigOf(model));
  if (!config.has_engram())
    return absl::InvalidArgumentError(absl::StrCat(model, " has no Engram layers (engram_layer_ids)"));
  const int64_t index = config.engram_index(layer);
  if (index < 0)
    return absl::InvalidArgumentError(absl::StrCat("--layer ", layer, " is not an Engram layer of ", model,
                                                   " (engram_layer_ids: [",
                                                   absl::StrJoin(config.engram_layer_ids, ", "), "])"));
  DSV4_ASSIGN_OR_RETURN(const std::string tokenizer, FindTokenizerJson(model));
  DSV4_ASSIGN_OR_RETURN(const std::shared_ptr<const EngramHasher> hasher, LoadEngramHasher(config, tokenizer));
  const EngramHasher& h = *hasher;
  if (absl::Status st = h.CheckTokens(ids); !st.ok())
    return absl::InvalidArgumentError(absl::StrCat("--prompt-ids: ", st.message()));

  const int64_t n = static_cast<int64_t>(ids.size()), layers = h.num_layers(), cols = h.num_cols();
  std::vector<int64_t> rows(n * layers * cols);
  EngramHistory history = h.NewHistory();
  h.Hash(ids, /*mask=*/nullptr, history, rows.data());
  for (int64_t t = 0; t < n; ++t) {
    const int64_t* r = &rows[(t * layers + index) * cols];
    std::printf("[%s]\n", absl::StrJoin(r, r + cols, ", ").c_str());
  }
  return absl::OkStatus();
}

}  // namespace dsv4
