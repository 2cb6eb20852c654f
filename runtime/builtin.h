// Built-in models: the V4 and V4.1 architectures at small sizes with seeded random weights in the
// released checkpoint formats (FP8 E4M3 with 128 x 128 (V4) or 32 x 32 (V4.1) E8M0 scales, packed
// FP4 experts with per-32 scales, BF16, F32). They go through the same safetensors parser and
// weight checks as a real checkpoint.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/config.h"
#include "runtime/safetensors.h"

namespace dsv4 {

struct BuiltinModel {
  ModelConfig config;
  std::string config_json;
  std::shared_ptr<const Checkpoint> checkpoint;
};

// Names: "v4-tiny" (vocab 129280, 5 layers with ratios [0, 4, 128, 4, 0]); "v4-tiny-engram" (the
// same plus V4.1 Engram modules before layers 1 and 3; needs the npm DeepSeek tokenizer.json);
// "v41-tiny" (the V4.1 architecture in the layout of golden/v41-tiny: shared compressed KV, the
// two-level indexer, lagged mHC, 32 x 32 FP8 tiles, Engram before layers 1 and 4; npm tokenizer);
// "v4-bench" (the V4-Flash architecture at about 4.7 GB for `dsv4 bench`: hidden 2048, 12 layers with
// ratios [0, 0, 4, 128, ...], 64 heads x 512, 64 experts of 1024 top-6; built in a few seconds).
std::vector<std::string> BuiltinModelNames();
absl::StatusOr<BuiltinModel> MakeBuiltinModel(const std::string& name);

// A model of any valid config with seeded random weights in the released formats (tests use it
// for configurations no checkpoint covers: other ratio schedules, top-k 16, ...).
// `fast_sampling` draws the large tensors from a cheap approximate normal, in parallel.
absl::StatusOr<BuiltinModel> MakeRandomModel(const std::string& config_json, uint64_t seed, const std::string& name,
                                             bool fast_sampling = false);

// The config.json text of a built-in model (for writing a model directory).
absl::StatusOr<std::string> BuiltinConfigJson(const std::string& name);

}  // namespace dsv4
