#include "tests/testutil.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <sstream>

#include "base/env.h"
#include "base/file.h"
#include "base/status.h"
#include "kernels/cpu/isa.h"
#include "runtime/builtin.h"

namespace dsv4::testing {

::testing::AssertionResult AllClose(const std::string& what, const float* got, const float* ref, int64_t n, Tol tol) {
  int64_t worst = -1, bad = 0;
  double worst_excess = 0, dot = 0, ng = 0, nr = 0;
  for (int64_t i = 0; i < n; ++i) {
    const double g = got[i], r = ref[i];
    if (std::isnan(r) || std::isinf(r) || std::isnan(g) || std::isinf(g)) {
      const bool same = (std::isnan(r) && std::isnan(g)) || (std::isinf(r) && g == r);
      if (!same) {
        ++bad;
        if (worst < 0) worst = i, worst_excess = INFINITY;
      }
      continue;
    }
    dot += g * r, ng += g * g, nr += r * r;
    const double err = std::fabs(g - r);
    if (err <= tol.abs || err <= tol.rel * std::fabs(r)) continue;
    ++bad;
    const double excess = err - std::max(tol.abs, tol.rel * std::fabs(r));
    if (excess > worst_excess || worst < 0) worst_excess = excess, worst = i;
  }
  const double cos = (ng > 0 && nr > 0) ? dot / std::sqrt(ng * nr) : (ng == nr ? 1.0 : 0.0);
  if (bad == 0 && cos >= tol.min_cos) return ::testing::AssertionSuccess();
  std::ostringstream os;
  os << what << ": " << bad << " of " << n << " elements outside abs " << tol.abs << " / rel " << tol.rel;
  if (worst >= 0) os << "; worst at " << worst << ": got " << got[worst] << ", want " << ref[worst];
  os << "; cosine " << cos << " (min " << tol.min_cos << ")";
  return ::testing::AssertionFailure() << os.str();
}

double RelRms(const float* got, const float* ref, int64_t n) {
  double mean = 0;
  for (int64_t i = 0; i < n; ++i) mean += ref[i];
  mean /= n;
  double var = 0, err = 0;
  for (int64_t i = 0; i < n; ++i) {
    var += (ref[i] - mean) * (ref[i] - mean);
    err += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]);
  }
  return std::sqrt(err / n) / std::sqrt(var / n);
}

std::string SharedDir() {
  if (env::IsSet(env::Knob::kSharedDir)) return env::Str(env::Knob::kSharedDir);
  return DSV4_SHARED_DIR;
}

bool SharedAvailable() { return std::filesystem::exists(SharedDir() + "/golden/v4-tiny/model.safetensors"); }

template <typename T>
static std::vector<T> ReadTyped(const SafetensorsFile& f, const std::string& name, DType want) {
  auto it = f.tensors().find(name);
  if (it == f.tensors().end()) {
    ADD_FAILURE() << "missing tensor " << name << " in " << f.path();
    return {};
  }
  if (it->second.dtype != want) {
    ADD_FAILURE() << name << " has dtype " << DTypeName(it->second.dtype);
    return {};
  }
  std::vector<T> out(it->second.numel());
  std::memcpy(out.data(), it->second.data, out.size() * sizeof(T));
  return out;
}

std::vector<float> ReadF32(const SafetensorsFile& f, const std::string& name) {
  return ReadTyped<float>(f, name, DType::kF32);
}
std::vector<int64_t> ReadI64(const SafetensorsFile& f, const std::string& name) {
  return ReadTyped<int64_t>(f, name, DType::kI64);
}

static std::vector<std::string>& TempDirs() {
  static auto* dirs = new std::vector<std::string>();
  return *dirs;
}

int ConnectLoopback(int port) {
  const int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(static_cast<uint16_t>(port));
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

std::string TempDir() {
  static const bool registered = [] {
    std::atexit([] {
      std::error_code ec;
      for (const auto& d : TempDirs()) std::filesystem::remove_all(d, ec);
    });
    return true;
  }();
  (void)registered;
  std::string tmpl = (std::filesystem::temp_directory_path() / "dsv4_test_XXXXXX").string();
  if (mkdtemp(tmpl.data()) == nullptr) return "";
  TempDirs().push_back(tmpl);
  return tmpl;
}

nlohmann::json TinyConfig() {
  auto j = nlohmann::json::parse(BuiltinConfigJson("v4-tiny").value());
  j["vocab_size"] = 512;
  return j;
}

nlohmann::json SmallConfig() {
  auto j = TinyConfig();
  j["sliding_window"] = 8;
  j["compress_ratios"] = {0, 4, 128, 4, 0};
  j["index_topk"] = 3;
  return j;
}

std::unique_ptr<Model> MakeTestModel(const nlohmann::json& config, bool qdq, uint64_t seed) {
  auto b = MakeRandomModel(config.dump(), seed, "test-model");
  EXPECT_TRUE(b.ok()) << b.status();
  if (!b.ok()) return nullptr;
  auto w = LoadWeights(b->checkpoint, b->config);
  EXPECT_TRUE(w.ok()) << w.status();
  if (!w.ok()) return nullptr;
  ForwardOptions opt;
  opt.qdq = qdq;
  return std::make_unique<Model>(std::shared_ptr<const ModelWeights>(std::move(*w)), opt);
}

absl::Status WriteRandomModelDir(const std::string& dir, const nlohmann::json& config, uint64_t seed,
                                 const TensorPatch& patch) {
  DSV4_ASSIGN_OR_RETURN(BuiltinModel b, MakeRandomModel(config.dump(), seed, dir));
  std::vector<TensorToWrite> tensors;
  for (const auto& [name, info] : b.checkpoint->all()) {
    TensorToWrite t{name, info->dtype, info->shape, std::vector<uint8_t>(info->data, info->data + info->nbytes), {}};
    if (patch) patch(t);
    tensors.push_back(std::move(t));
  }
  const std::vector<uint8_t> image = WriteSafetensors(tensors, {{"format", "pt"}});
  std::filesystem::create_directories(dir);
  DSV4_RETURN_IF_ERROR(WriteFileAtomic(
      dir + "/model.safetensors", absl::string_view(reinterpret_cast<const char*>(image.data()), image.size())));
  return WriteFileAtomic(dir + "/config.json", config.dump(2));
}

std::string WriteModelDir(const nlohmann::json& config, uint64_t seed, const TensorPatch& edit) {
  const std::string dir = TempDir();
  const absl::Status st = WriteRandomModelDir(dir, config, seed, edit);
  EXPECT_TRUE(st.ok()) << st;
  return st.ok() ? dir : "";
}

std::string IsaSkipReason() {
  const std::string want = env::Str(env::Knob::kCpuIsa);
  const kernels::Isa active = kernels::ActiveIsa();
  if (want == "auto" || want == kernels::IsaName(active)) return "";
  std::string why = "DSV4_CPU_ISA=" + want + " asks for a level this CPU lacks (the best it has: " +
                    kernels::IsaName(kernels::BestIsa()) + ")";
  if (want == "amx" && *kernels::AmxUnavailableReason()) why += ": " + std::string(kernels::AmxUnavailableReason());
  return why;
}

}  // namespace dsv4::testing
