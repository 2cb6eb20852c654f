#include "cluster/software.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/str_cat.h"

namespace dsv4::cluster {
namespace {

// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's days_from_civil).
int64_t DaysFromCivil(int64_t y, int64_t m, int64_t d) {
  y -= m <= 2;
  const int64_t era = (y >= 0 ? y : y - 399) / 400;
  const int64_t yoe = y - era * 400;
  const int64_t doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
  const int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
  return era * 146097 + doe - 719468;
}

// Software within this many days of the later of the model's and the device's release is "day0",
// within the second bound "early". Fixed a priori (three weeks: the launch recipes; a quarter: the
// first tuned kernels land), not fitted.
constexpr int64_t kDay0Days = 21;
constexpr int64_t kEarlyDays = 90;

}  // namespace

absl::StatusOr<int64_t> ParseDate(const std::string& text, const std::string& field) {
  int y = 0, m = 0, d = 15;
  char tail = 0;
  const int n = std::sscanf(text.c_str(), "%4d-%2d-%2d%c", &y, &m, &d, &tail);
  const bool ok = (n == 3 && text.size() == 10) || (n == 2 && text.size() == 7);
  if (!ok || y < 2000 || y > 2100 || m < 1 || m > 12 || d < 1 || d > 31)
    return absl::InvalidArgumentError(absl::StrCat(field, ": \"", text, "\" is not a date (YYYY-MM-DD or YYYY-MM)"));
  return DaysFromCivil(y, m, d);
}

const char* MaturityName(Maturity m) {
  switch (m) {
    case Maturity::kDay0:
      return "day0";
    case Maturity::kEarly:
      return "early";
    case Maturity::kMature:
      return "mature";
  }
  return "?";
}

const std::vector<TuningParameter>& TuningParameters() {
  static const std::vector<TuningParameter> params = {
      {"gpu.memory.hbm", &Tuning::gpu_memory_hbm, 0.2, 1.0,
       "weight streaming of small-M GEMMs on HBM parts, of peak bandwidth"},
      {"gpu.memory.gddr", &Tuning::gpu_memory_gddr, 0.2, 1.0, "the same on GDDR workstation and GeForce cards"},
      {"gpu.memory.lpddr", &Tuning::gpu_memory_lpddr, 0.2, 1.0, "the same on LPDDR unified memory (Apple, GB10)"},
      {"gpu.gemm.datacenter", &Tuning::gpu_gemm_datacenter, 0.1, 1.0,
       "large GEMMs on datacenter parts, of the tensor-core peak"},
      {"gpu.gemm.desk", &Tuning::gpu_gemm_desk, 0.05, 1.0, "large GEMMs on workstation, GeForce and GB10 parts"},
      {"gpu.gemm.apple", &Tuning::gpu_gemm_apple, 0.05, 1.0, "large GEMMs of Metal kernels, of the FP16 peak"},
      {"host.memory.tuned", &Tuning::host_memory_tuned, 0.1, 1.0,
       "host expert matvec of KTransformers, ik_llama.cpp and SGLang's CPU backend, of STREAM bandwidth"},
      {"host.memory.llamacpp", &Tuning::host_memory_llamacpp, 0.1, 1.0,
       "host expert matvec of llama.cpp's CPU backend, of STREAM bandwidth"},
      {"host.numa_gain", &Tuning::host_numa_gain, 0.0, 1.0,
       "bandwidth a second socket adds for NUMA-aware engines, as a share of one socket"},
      {"host.compute.amx", &Tuning::host_compute_amx, 0.005, 1.0, "host expert GEMMs on AMX tiles, of the AMX peak"},
      {"host.compute.simd", &Tuning::host_compute_simd, 0.01, 4.0,
       "host expert GEMMs on AVX-512/AVX2/NEON of tuned kernels (ik_llama.cpp, llamafile, KTransformers), of the "
       "FP32 FMA peak"},
      {"host.compute.llamacpp", &Tuning::host_compute_llamacpp, 0.005, 4.0,
       "the same for llama.cpp's CPU backend"},
      {"pcie.stream", &Tuning::pcie_stream, 0.1, 1.0,
       "expert weights streamed host-to-device for GPU prefill, of the PCIe peak"},
      {"maturity.day0", &Tuning::maturity_day0, 0.05, 1.0,
       "device efficiencies of software in the first three weeks after a model or device release"},
      {"maturity.early", &Tuning::maturity_early, 0.1, 1.0, "the same in the first quarter"},
      {"attention.select_sort_ns", &Tuning::select_sort_ns, 0.5, 200,
       "decode top-k of engines that sort every compressed row's indexer score in one thread group: ns per row "
       "per indexed layer"},
      {"overlap.loss", &Tuning::overlap_loss, 0.0, 1.0,
       "share of the shorter of computation and expert-parallel communication that two-micro-batch overlap fails "
       "to hide"},
  };
  return params;
}

const TuningParameter* FindTuningParameter(const std::string& name) {
  for (const TuningParameter& p : TuningParameters())
    if (name == p.name) return &p;
  return nullptr;
}

Maturity MaturityFromDates(int64_t date_days, int64_t model_days, int64_t device_days, std::string* reason) {
  const int64_t release = std::max(model_days, device_days);
  if (date_days < 0 || release < 0) {
    *reason = date_days < 0 ? "software date not given" : "release dates unknown";
    return Maturity::kMature;
  }
  const int64_t age = date_days - release;
  const char* what = model_days >= device_days ? "the model's" : "the device's";
  *reason = absl::StrCat(age, " days after ", what, " release");
  if (age < kDay0Days) return Maturity::kDay0;
  if (age < kEarlyDays) return Maturity::kEarly;
  return Maturity::kMature;
}

double MaturityFactor(Maturity m, const Tuning& t) {
  switch (m) {
    case Maturity::kDay0:
      return t.maturity_day0;
    case Maturity::kEarly:
      return t.maturity_early;
    case Maturity::kMature:
      return 1;
  }
  return 1;
}

}  // namespace dsv4::cluster
