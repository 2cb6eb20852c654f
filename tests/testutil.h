// The one comparison helper and shared test utilities.
#pragma once

#include <gtest/gtest.h>

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "runtime/model/model.h"
#include "runtime/safetensors.h"

namespace dsv4::testing {

// Tolerance policy: an element passes when |got - ref| <= abs OR |got - ref| <= rel * |ref|;
// the whole tensor must also have cosine similarity >= min_cos. NaN/inf positions must match.
struct Tol {
  double abs = 0;
  double rel = 0;
  double min_cos = -1;
};

// Compares n floats; on failure reports the worst element with both values.
::testing::AssertionResult AllClose(const std::string& what, const float* got, const float* ref, int64_t n, Tol tol);

// rms(got - ref) / std(ref) over n elements: the golden README's relative error measure.
double RelRms(const float* got, const float* ref, int64_t n);

// Path of the shared/ folder with golden data (configured at build time).
std::string SharedDir();
bool SharedAvailable();

// Reads an F32 / I64 tensor from a safetensors file into a vector (fails the test if absent).
std::vector<float> ReadF32(const SafetensorsFile& f, const std::string& name);
std::vector<int64_t> ReadI64(const SafetensorsFile& f, const std::string& name);

// A fresh temporary directory, removed at process exit.
std::string TempDir();

// A TCP connection to 127.0.0.1:port (the caller owns the descriptor), or -1.
int ConnectLoopback(int port);

// builtin:v4-tiny's config with a 512-token vocabulary (every kind of layer, small and fast).
nlohmann::json TinyConfig();
// The same with a window of 8 and top-3 indexer blocks over layers [0, 4, 128, 4, 0], so short
// sequences cross the window and every kind of compressed block.
nlohmann::json SmallConfig();
// A model of `config` with seeded random weights in the released formats, built in memory.
std::unique_ptr<Model> MakeTestModel(const nlohmann::json& config, bool qdq = true, uint64_t seed = 1);

// Writes a checkpoint directory (config.json, model.safetensors) of `config` with seeded random
// weights in the released formats, for tests that run the dsv4 binary on a model no built-in name
// covers. `patch`, when given, may change each tensor before it is written.
using TensorPatch = std::function<void(TensorToWrite&)>;
absl::Status WriteRandomModelDir(const std::string& dir, const nlohmann::json& config, uint64_t seed = 1,
                                 const TensorPatch& patch = {});
// The same into a fresh temporary directory, whose path it returns ("" after a test failure).
std::string WriteModelDir(const nlohmann::json& config, uint64_t seed = 1, const TensorPatch& edit = {});
// "" when the CPU kernels run the instruction-set level DSV4_CPU_ISA asks for (or it asks for
// none); otherwise why not (this CPU lacks it). Test binaries that ctest runs once per level
// register IsaEnvironment, which skips all their tests then, saying why.
std::string IsaSkipReason();
class IsaEnvironment : public ::testing::Environment {
 public:
  void SetUp() override {
    if (const std::string why = IsaSkipReason(); !why.empty()) GTEST_SKIP() << why;
  }
};

}  // namespace dsv4::testing
