#include "bench/profile.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <ctime>
#include <fstream>
#include <memory>
#include <random>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "base/page_arena.h"
#include "base/status.h"
#include "bench/limits.h"
#include "kernels/cpu/formats.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/thread_pool.h"

namespace dsv4::bench {
namespace {

using Clock = std::chrono::steady_clock;
using kernels::WeightMatrix;
using kernels::WeightType;

double Median(std::vector<double> v);

double CpuSeconds() {
  timespec t;
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// Timed passes of one size: the median pass's rate, and the rate per CPU-second of the process
// over all passes times the threads (what the rate would be with every thread on a core of its own).
class Passes {
 public:
  void Add(double flops, double wall, double cpu) {
    rates_.push_back(flops / wall / 1e12);
    flops_ += flops, cpu_ += cpu, wall_ += wall;
  }
  RatePoint Point(double size) const {
    const double full = cpu_ > 0 ? flops_ / cpu_ * kernels::NumThreads() / 1e12 : 0;
    return {size, Median(rates_), full, wall_, cpu_};
  }

 private:
  std::vector<double> rates_;
  double flops_ = 0, cpu_ = 0, wall_ = 0;
};

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0 : v.size() % 2 ? v[v.size() / 2] : 0.5 * (v[v.size() / 2 - 1] + v[v.size() / 2]);
}

// Stored weights of one matrix [rows, cols] in a checkpoint format, with the value distribution of
// the built-in checkpoints (runtime/builtin.cc): N(0, 1/cols) quantized with their power-of-two
// scale rules. The distribution matters, not only the format: codes that decode to subnormal floats
// in the kernels' pre-scaled form (FP4 0.5, FP8 subnormals) run far slower on x86, so random bytes
// would measure a different speed from a model's weights.
struct StoredMatrix {
  std::vector<uint8_t> data, scales;
  WeightMatrix view;  // as the CPU backend places it (stored for the tiles at the amx level, from an arena)
};

// The E8M0 code of a power of two.
uint8_t E8m0Code(float pow2) {
  int e;
  std::frexp(pow2, &e);
  return static_cast<uint8_t>(e - 1 + 127);
}

// Indices into a table of 4096 samples: five 12-bit draws from each 64-bit word of a xorshift64*
// stream seeded from `rng`. A gigabyte of weights is a billion draws; one Mersenne Twister call
// each took longer than the measurements they feed.
class TableIndex {
 public:
  explicit TableIndex(std::mt19937_64& rng) : state_(rng() | 1) {}
  uint32_t Next() {
    if (left_ == 0) {
      state_ ^= state_ >> 12, state_ ^= state_ << 25, state_ ^= state_ >> 27;
      word_ = state_ * 0x2545F4914F6CDD1DULL;
      left_ = 5;
    }
    const uint32_t i = static_cast<uint32_t>(word_ & 4095);
    word_ >>= 12, --left_;
    return i;
  }

 private:
  uint64_t state_, word_ = 0;
  int left_ = 0;
};

// Codes of `n` values N(0, sd^2) / scale on a grid: a table of 4096 samples, encoded once by
// searching the format's decode table, then drawn from at random.
class CodeSampler {
 public:
  CodeSampler(WeightType type, float sd, float scale, std::mt19937_64& rng) : index_(rng) {
    std::normal_distribution<float> normal;
    for (uint8_t& code : table_) {
      const float v = sd * normal(rng) / scale;
      if (type == WeightType::kFP8) {
        const float q = kernels::RoundToFp8E4m3(v);
        for (int b = 0; b < 256; ++b)
          if ((b & 0x7F) != 0x7F && kernels::Fp8E4m3ToFloat(static_cast<uint8_t>(b)) == q &&
              std::signbit(kernels::Fp8E4m3ToFloat(static_cast<uint8_t>(b))) == std::signbit(q)) {
            code = static_cast<uint8_t>(b);
            break;
          }
      } else {
        const float q = kernels::RoundToFp4E2m1(v);
        for (int b = 0; b < 16; ++b)
          if (kernels::kFp4E2m1[b] == q && std::signbit(kernels::kFp4E2m1[b]) == std::signbit(q)) {
            code = static_cast<uint8_t>(b);
            break;
          }
      }
    }
  }
  uint8_t Next() { return table_[index_.Next()]; }

 private:
  TableIndex index_;
  std::array<uint8_t, 4096> table_{};
};

absl::StatusOr<StoredMatrix> MakeMatrix(WeightType type, int64_t rows, int64_t cols, std::mt19937_64& rng,
                                        PageArena& arena) {
  StoredMatrix m;
  WeightMatrix& w = m.view;
  w.type = type;
  w.row_begin = 0, w.row_end = rows, w.col_begin = 0, w.col_end = cols;
  const float sd = 1.0f / std::sqrt(static_cast<float>(cols));
  switch (type) {
    case WeightType::kFP8: {
      const float scale = kernels::Pow2Ceil(4.0f * sd / 448.0f);  // the built-in checkpoints' rule
      CodeSampler codes(type, sd, scale, rng);
      m.data.resize(rows * cols);
      for (uint8_t& b : m.data) b = codes.Next();
      w.ld = cols;
      w.block_rows = 128, w.block_cols = 128;
      w.scale_ld = (cols + 127) / 128;
      m.scales.assign(((rows + 127) / 128) * w.scale_ld, E8m0Code(scale));
      break;
    }
    case WeightType::kFP4: {
      const float scale = kernels::Pow2Ceil(2.5f * sd / 6.0f);
      CodeSampler codes(type, sd, scale, rng);
      m.data.resize(rows * cols / 2);
      for (uint8_t& b : m.data) b = static_cast<uint8_t>(codes.Next() | (codes.Next() << 4));
      w.ld = cols / 2;
      w.block_rows = 1, w.block_cols = 32;
      w.scale_ld = cols / 32;
      m.scales.assign(rows * w.scale_ld, E8m0Code(scale));
      break;
    }
    case WeightType::kBF16: {
      std::normal_distribution<float> normal;
      std::array<uint16_t, 4096> table;
      for (uint16_t& v : table) v = kernels::FloatToBf16(sd * normal(rng));
      m.data.resize(rows * cols * 2);
      TableIndex index(rng);
      for (size_t i = 0; i < m.data.size(); i += 2) {
        const uint16_t v = table[index.Next()];
        m.data[i] = static_cast<uint8_t>(v & 0xFF);
        m.data[i + 1] = static_cast<uint8_t>(v >> 8);
      }
      w.ld = cols;
      break;
    }
    case WeightType::kF32:
      break;
  }
  w.data = m.data.data();
  w.scales = m.scales.empty() ? nullptr : m.scales.data();
  // The rates are the runtime's: the CPU backend stores FP8/FP4 weights for the tiles where the
  // level is amx (their inputs are rounded; BF16 ones, the head's, stay as they are), so does this.
  if (const int64_t bytes = kernels::StoredBytes(w); bytes > 0) {
    DSV4_ASSIGN_OR_RETURN(uint8_t * out, arena.Allocate(bytes), "profile: a ", rows, " x ", cols, " matrix");
    m.view = kernels::StoreForThisCpu(w, out);
    m.data = {};
  }
  return m;
}

// The activations the products are measured on, as the runtime feeds them. The inputs of FP8 and FP4
// products are FP8-rounded with power-of-two scales (the reference's activation quantization), so
// they are exact in BF16, and the GEMM path (more than 16 tokens) multiplies them in BF16 where that
// pays: 2^-7 is such a value. The head's input (the final norm's output) is not exact in BF16, and
// neither is 0.01: its products stay in FP32, as the head's do.
constexpr float kQuantizedActivation = 0.0078125f;
constexpr float kFloatActivation = 0.01f;

// Achieved TFLOP/s of y = x W^T for `m` token rows of value `x_value`, over a set of matrices that
// together exceed the last-level cache (each call takes the next one, as a model's layers do): the
// median over `reps` passes through the set.
RatePoint DenseRate(std::vector<StoredMatrix>& set, int64_t m, int reps, float x_value) {
  const WeightMatrix& w0 = set[0].view;
  std::vector<float> x(m * w0.cols(), x_value), y(m * w0.rows());
  Passes passes;
  for (int r = 0; r < reps + 1; ++r) {  // the first pass warms up
    const double c0 = CpuSeconds();
    const auto t0 = Clock::now();
    for (StoredMatrix& s : set) kernels::Linear(x.data(), m, w0.cols(), s.view, y.data(), w0.rows());
    const double sec = std::chrono::duration<double>(Clock::now() - t0).count();
    if (r > 0) passes.Add(2.0 * m * w0.rows() * w0.cols() * set.size(), sec, CpuSeconds() - c0);
  }
  RatePoint p = passes.Point(static_cast<double>(m));
  p.k = static_cast<double>(w0.cols());
  return p;
}

// One routed expert's weights: w1 and w3 [inter, hidden], w2 [hidden, inter].
struct ExpertMatrices {
  StoredMatrix w1, w3, w2;
};

// Achieved TFLOP/s of the routed experts' FFN as the runtime runs it (runtime/model/moe.cc): one
// grouped call of every expert's w1 and w3 on its `m` tokens, then one of the w2s, over sets of
// `experts` experts cycled as a model's layers are.
RatePoint GroupedRate(std::vector<std::vector<ExpertMatrices>>& layers, int64_t m, int reps) {
  const int64_t experts = static_cast<int64_t>(layers[0].size());
  const int64_t D = layers[0][0].w1.view.cols(), I = layers[0][0].w1.view.rows();
  std::vector<float> x(experts * m * D, kQuantizedActivation), g(experts * m * I), u(experts * m * I),
      y(experts * m * D);
  std::vector<kernels::LinearJob> up(2 * experts), down(experts);
  Passes passes;
  for (int r = 0; r < reps + 1; ++r) {
    const double c0 = CpuSeconds();
    const auto t0 = Clock::now();
    for (auto& layer : layers) {
      for (int64_t e = 0; e < experts; ++e) {
        up[2 * e] = {x.data() + e * m * D, m, D, &layer[e].w1.view, g.data() + e * m * I, I};
        up[2 * e + 1] = {x.data() + e * m * D, m, D, &layer[e].w3.view, u.data() + e * m * I, I};
        down[e] = {g.data() + e * m * I, m, I, &layer[e].w2.view, y.data() + e * m * D, D};
      }
      kernels::LinearGroup(up.data(), 2 * experts);
      kernels::LinearGroup(down.data(), experts);
    }
    const double sec = std::chrono::duration<double>(Clock::now() - t0).count();
    if (r > 0) passes.Add(6.0 * m * I * D * experts * layers.size(), sec, CpuSeconds() - c0);
  }
  RatePoint p = passes.Point(static_cast<double>(m));
  p.k = static_cast<double>(D);
  return p;
}

// Median time in us of `calls` calls of f, after `warmup` untimed ones.
template <typename F>
double MedianCallUs(int calls, int warmup, F&& f) {
  std::vector<double> us;
  for (int r = 0; r < warmup + calls; ++r) {
    const auto t0 = Clock::now();
    f();
    if (r >= warmup) us.push_back(std::chrono::duration<double>(Clock::now() - t0).count() * 1e6);
  }
  return Median(us);
}

// Median time of an operator that does nothing but dispatch to the pool and join.
double KernelFloorUs() {
  return MedianCallUs(2000, 0, [] { kernels::ParallelFor(kernels::NumThreads(), 1, [](int64_t, int64_t) {}); });
}

// The fixed time of one FP8 product of `m` token rows, in us: the intercept of its time over the
// output width, from products of K = 128 and 128 and 512 outputs whose weights stay in cache (the
// median of many calls each). What is left at width 0 is what every call pays whatever its size:
// the pool's fork and join, the activations' conversion and packing.
absl::StatusOr<CpuProfile::FloorPoint> ProductFloor(int64_t m, std::mt19937_64& rng) {
  constexpr int64_t kK = 128, kNarrow = 128, kWide = 512;
  PageArena arena;
  auto median_us = [&](int64_t n) -> absl::StatusOr<double> {
    DSV4_ASSIGN_OR_RETURN(StoredMatrix w, MakeMatrix(WeightType::kFP8, n, kK, rng, arena));
    std::vector<float> x(m * kK, kQuantizedActivation), y(m * n);
    return MedianCallUs(400, 20, [&] { kernels::Linear(x.data(), m, kK, w.view, y.data(), n); });
  };
  DSV4_ASSIGN_OR_RETURN(const double narrow, median_us(kNarrow));
  DSV4_ASSIGN_OR_RETURN(const double wide, median_us(kWide));
  const double per_output = std::max(0.0, (wide - narrow) / (kWide - kNarrow));
  return CpuProfile::FloorPoint{static_cast<double>(m), std::max(0.0, narrow - per_output * kNarrow)};
}

}  // namespace

absl::StatusOr<CpuProfile> MeasureCpuProfile(const ProfileOptions& o) {
  const bool widths_ok = !o.widths.empty() && std::all_of(o.widths.begin(), o.widths.end(),
                                                          [](int64_t k) { return k >= 128 && k % 128 == 0; });
  if (o.tokens.empty() || o.tokens_per_expert.empty() || !widths_ok || o.hidden < 128 || o.out_features < 128 ||
      o.expert_inter < 128 || o.experts < 1 || o.reps < 1 || o.hidden % 128 != 0 || o.expert_inter % 128 != 0 ||
      o.head_rows < 0)
    return absl::InvalidArgumentError(
        "profile: token lists and widths must be non-empty, sizes >= 128 (widths, hidden and expert_inter "
        "multiples of 128), experts and reps >= 1, head rows >= 0");
  CpuProfile p;
  p.threads = kernels::NumThreads();
  p.isa = kernels::IsaName(kernels::ActiveIsa());
  std::mt19937_64 rng(7);
  // A matrix of half the streamed bytes or more (a large vocabulary head) is cycled through alone.
  struct MatrixSet {
    PageArena arena;  // the copies stored for this CPU, where the matrices take them
    std::vector<StoredMatrix> matrices;
  };
  auto dense_set = [&](WeightType type, double bytes_per_weight, int64_t rows,
                       int64_t k) -> absl::StatusOr<std::unique_ptr<MatrixSet>> {
    const double one = bytes_per_weight * static_cast<double>(rows * k);
    const int64_t n = std::max<int64_t>(one * 2 > o.stream_bytes ? 1 : 2, static_cast<int64_t>(o.stream_bytes / one));
    auto set = std::make_unique<MatrixSet>();
    for (int64_t i = 0; i < n; ++i) {
      DSV4_ASSIGN_OR_RETURN(StoredMatrix w, MakeMatrix(type, rows, k, rng, set->arena));
      set->matrices.push_back(std::move(w));
    }
    return set;
  };
  std::vector<int64_t> widths = o.widths;
  std::sort(widths.begin(), widths.end());
  widths.erase(std::unique(widths.begin(), widths.end()), widths.end());
  for (int64_t k : widths) {
    {
      DSV4_ASSIGN_OR_RETURN(auto set, dense_set(WeightType::kFP8, 1, o.out_features, k));
      for (int64_t m : o.tokens) p.gemm_fp8.push_back(DenseRate(set->matrices, m, o.reps, kQuantizedActivation));
    }
    DSV4_ASSIGN_OR_RETURN(
        auto set, dense_set(WeightType::kBF16, 2, k == o.hidden && o.head_rows > 0 ? o.head_rows : o.out_features, k));
    for (int64_t m : o.tokens) p.gemm_bf16.push_back(DenseRate(set->matrices, m, o.reps, kFloatActivation));
  }
  {
    const double one = 1.5 * o.expert_inter * o.hidden * o.experts;  // bytes of a layer's experts
    const int64_t n = std::max<int64_t>(2, static_cast<int64_t>(o.stream_bytes / one));
    PageArena arena;  // the experts' copies stored for this CPU
    std::vector<std::vector<ExpertMatrices>> layers(n);
    for (auto& layer : layers)
      for (int64_t e = 0; e < o.experts; ++e) {
        DSV4_ASSIGN_OR_RETURN(StoredMatrix w1, MakeMatrix(WeightType::kFP4, o.expert_inter, o.hidden, rng, arena));
        DSV4_ASSIGN_OR_RETURN(StoredMatrix w3, MakeMatrix(WeightType::kFP4, o.expert_inter, o.hidden, rng, arena));
        DSV4_ASSIGN_OR_RETURN(StoredMatrix w2, MakeMatrix(WeightType::kFP4, o.hidden, o.expert_inter, rng, arena));
        layer.push_back({std::move(w1), std::move(w3), std::move(w2)});
      }
    for (int64_t m : o.tokens_per_expert)
      p.grouped_gemm.push_back(GroupedRate(layers, m, o.reps));
  }
  p.stream_gbps = MeasureStreamTriadGBps(o.reps + 2);
  p.kernel_floor_us = KernelFloorUs();
  for (int64_t m : o.tokens) {
    DSV4_ASSIGN_OR_RETURN(CpuProfile::FloorPoint f, ProductFloor(m, rng));
    p.product_floor.push_back(f);
  }
  p.peak_gflops = MeasurePeakRates(o.reps + 2).fp32.gflops;  // the FP32 FMA peak
  for (const RatePoint& r : p.grouped_gemm) p.expert_gflops = std::max(p.expert_gflops, r.tflops * 1e3);
  double cpu = 0, wall = 0;
  for (const auto* curve : {&p.gemm_fp8, &p.gemm_bf16, &p.grouped_gemm})
    for (const RatePoint& r : *curve) {
      if (!(r.tflops > 0) || !(r.full_tflops > 0)) return absl::InternalError("profile: a matrix product measured no time");
      cpu += r.cpu_seconds, wall += r.wall_seconds;
    }
  p.cpu_availability = std::min(1.0, cpu / (wall * p.threads));
  return p;
}

CpuProfile FullMachine(const CpuProfile& p) {
  CpuProfile full = p;
  full.expert_gflops = 0;
  for (auto* curve : {&full.gemm_fp8, &full.gemm_bf16, &full.grouped_gemm})
    for (RatePoint& r : *curve) r.tflops = r.full_tflops;
  for (const RatePoint& r : full.grouped_gemm) full.expert_gflops = std::max(full.expert_gflops, r.tflops * 1e3);
  full.cpu_availability = 1;
  return full;
}

std::string CpuProfileJson(const CpuProfile& p, const std::string& measured_by) {
  auto curve = [](const std::vector<RatePoint>& c, const char* size_key) {
    std::vector<std::string> pts;
    for (const RatePoint& r : c)
      pts.push_back(absl::StrFormat("{\"%s\": %g, \"k\": %g, \"tflops\": %.6g}", size_key, r.size, r.k, r.tflops));
    return absl::StrCat("[", absl::StrJoin(pts, ", "), "]");
  };
  auto floors = [](const std::vector<CpuProfile::FloorPoint>& c) {
    std::vector<std::string> pts;
    for (const CpuProfile::FloorPoint& f : c)  // the format's rates are positive: a floor too small to see is 1 ns
      pts.push_back(absl::StrFormat("{\"tokens\": %g, \"us\": %.4g}", f.tokens, std::max(f.us, 1e-3)));
    return absl::StrCat("[", absl::StrJoin(pts, ", "), "]");
  };
  return absl::StrCat(
      "{\n  \"format\": \"dsv4-profile/1\",\n  \"device\": \"cpu\",\n",
      absl::StrFormat("  \"measured_by\": \"%s\", \"threads\": %d, \"isa\": \"%s\",\n", measured_by, p.threads, p.isa),
      "  \"gemm_fp8\": ", curve(p.gemm_fp8, "tokens"), ",\n", "  \"gemm_bf16\": ", curve(p.gemm_bf16, "tokens"), ",\n",
      "  \"grouped_gemm\": ", curve(p.grouped_gemm, "tokens_per_expert"), ",\n",
      absl::StrFormat("  \"kernel_floor_us\": %.4g,\n", p.kernel_floor_us),
      "  \"product_floor_us\": ", floors(p.product_floor), ",\n",
      p.all_to_all_gbps > 0
          ? absl::StrCat(
                "  \"all_to_all\": {", absl::StrFormat("\"intra_node_gbps\": %.5g", p.all_to_all_gbps),
                p.all_to_all_latency_us > 0 ? absl::StrFormat(", \"latency_us\": %.4g", p.all_to_all_latency_us) : "",
                "},\n")
          : "",
      absl::StrFormat("  \"fma_peak_gflops\": %.5g, \"cpu_availability\": %.3g,\n", p.peak_gflops, p.cpu_availability),
      absl::StrFormat("  \"host\": {\"memory_gbps\": %.5g, \"gflops\": %.5g}\n}\n", p.stream_gbps, p.expert_gflops));
}

absl::Status WriteCpuProfile(const CpuProfile& p, const std::string& measured_by, const std::string& path) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InvalidArgumentError(absl::StrCat("--profile-out: cannot write '", path, "'"));
  out << CpuProfileJson(p, measured_by);
  out.close();
  if (!out) return absl::InternalError(absl::StrCat("--profile-out: writing '", path, "' failed"));
  return absl::OkStatus();
}

ProfileOptions OptionsForModel(int64_t hidden, int64_t expert_inter, int64_t vocab) {
  ProfileOptions o;
  if (hidden >= 128 && hidden % 128 == 0) {
    o.widths.push_back(hidden);
    o.hidden = hidden;
    if (vocab >= 128) o.head_rows = vocab;
    if (expert_inter >= 128 && expert_inter % 128 == 0) o.expert_inter = expert_inter;
  }
  return o;
}

absl::Status MeasureAndWriteCpuProfile(const std::string& path, const std::string& measured_by,
                                       const ProfileOptions& options, double all_to_all_gbps,
                                       double all_to_all_latency_us) {
  auto p = MeasureCpuProfile(options);
  if (!p.ok()) return p.status();
  p->all_to_all_gbps = all_to_all_gbps;
  p->all_to_all_latency_us = all_to_all_latency_us;
  return WriteCpuProfile(*p, measured_by, path);
}

}  // namespace dsv4::bench
