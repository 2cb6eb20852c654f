// `dsv4 bench kernels --device cuda`: every CUDA kernel of the forward pass at the V4-Flash and
// V4-Pro shapes, each figure next to the limit it is held to, measured in the same run on the same
// GPU: the device copy bandwidth (a 16-byte copy kernel over 1 GiB, bytes read + written per
// second: the bandwidth figure of NVIDIA's and the measurements) for everything that
// streams memory, cuBLASLt's FP8 / BF16 GEMM on the same shape for the linears (`vs_cublas`: its
// time over ours), and the targets of issue 13 (attention and top-k times) where the limit is a
// latency. Timing: CUDA events around each run, the L2 flushed before each (a memset of twice its
// size, outside the timed interval), warm-up runs first, the median reported.
//
// Figures are JSON lines (--json) or a table; the last line summarizes the targets.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "base/status.h"
#include "bench/commands.h"

#if DSV4_CUDA
#include <cuda_runtime_api.h>

#include "bench/kernel_bench.h"
#include "kernels/cuda/kernels.h"
#if DSV4_BENCH_CUBLASLT
#include <cublasLt.h>
#include <dlfcn.h>

#include <type_traits>
#endif
#endif

namespace dsv4::bench {

void KernelsFlags(Flags& flags) {
  flags.String("device", "cuda", "whose kernels to measure (cuda: the only one this benchmark knows)")
      .Bool("json", false, "one JSON object per figure, then a summary object")
      .Int("iters", 20, "timed runs per figure (the median is reported)", 1, 100000)
      .Int("warmup", 3, "untimed runs before them", 0, 1000)
      .String("models", "flash,pro", "model shapes to run: flash, pro, or flash,pro")
      .String("filter", "", "only the figures whose kernel name contains this");
}

namespace {

// The flags' values, checked before any device is touched (so on every machine and build): the
// model names of --models in order.
absl::StatusOr<std::vector<std::string>> CheckKernelsFlags(const Flags& flags) {
  if (flags.GetString("device") != "cuda")
    return absl::InvalidArgumentError("bench kernels measures the CUDA kernels: pass --device cuda");
  std::vector<std::string> models;
  for (absl::string_view name : absl::StrSplit(flags.GetString("models"), ',')) {
    if (name != "flash" && name != "pro")
      return absl::InvalidArgumentError(absl::StrCat("--models: unknown model '", name, "' (flash, pro)"));
    models.emplace_back(name);
  }
  return models;
}

}  // namespace

#if !DSV4_CUDA

absl::Status Kernels(const Flags& flags) {
  DSV4_RETURN_IF_ERROR(CheckKernelsFlags(flags).status());
  return absl::FailedPreconditionError("bench kernels: this dsv4 was built without CUDA (DSV4_CUDA=OFF)");
}

#else

namespace {

namespace kc = kernels::cuda;
using kernels::WeightMatrix;
using kernels::WeightType;

absl::Status CudaStatus(cudaError_t e, const std::string& what) {
  if (e == cudaSuccess) return absl::OkStatus();
  return absl::InternalError(absl::StrCat(what, ": ", cudaGetErrorName(e), " (", cudaGetErrorString(e), ")"));
}
#define DSV4_BENCH_CUDA(expr, what) DSV4_RETURN_IF_ERROR(CudaStatus((expr), (what)))

// The shapes of one model (MODEL.md 1.2, 1.3).
struct ModelShape {
  std::string name;
  int64_t hidden, heads, q_lora, o_groups, o_lora, experts, inter, topk_index, vocab = 129280;
  int64_t head_dim = 512, window = 128, index_heads = 64, index_dim = 128;
};
const ModelShape kFlash{"flash", 4096, 64, 1024, 8, 1024, 256, 2048, 512};
const ModelShape kPro{"pro", 7168, 128, 1536, 16, 1024, 384, 3072, 1024};

// The GPU, a stream, events, the L2 flush buffer, and every allocation of the run.
class Harness {
 public:
  ~Harness() {
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);
    for (void* p : allocations_) cudaFree(p);
    if (start_ != nullptr) cudaEventDestroy(start_);
    if (stop_ != nullptr) cudaEventDestroy(stop_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  absl::Status Init(int iters, int warmup) {
    iters_ = iters, warmup_ = warmup;
    int count = 0;
    const cudaError_t e = cudaGetDeviceCount(&count);
    if (e != cudaSuccess || count == 0)
      return absl::FailedPreconditionError(absl::StrCat(
          "bench kernels needs a CUDA GPU and none is visible (cudaGetDeviceCount: ",
          e != cudaSuccess ? absl::StrCat(cudaGetErrorName(e), ", ", cudaGetErrorString(e)) : std::string("0 devices"),
          "; check the driver and CUDA_VISIBLE_DEVICES)"));
    DSV4_BENCH_CUDA(cudaSetDevice(0), "cudaSetDevice(0)");
    DSV4_BENCH_CUDA(cudaGetDeviceProperties(&props_, 0), "cudaGetDeviceProperties");
    DSV4_BENCH_CUDA(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
    DSV4_BENCH_CUDA(cudaEventCreate(&start_), "cudaEventCreate");
    DSV4_BENCH_CUDA(cudaEventCreate(&stop_), "cudaEventCreate");
    flush_bytes_ = std::max<int64_t>(2 * int64_t{props_.l2CacheSize}, 64 << 20);
    DSV4_ASSIGN_OR_RETURN(flush_, Alloc(flush_bytes_));
    return absl::OkStatus();
  }

  absl::StatusOr<void*> Alloc(int64_t bytes) {
    void* p = nullptr;
    DSV4_BENCH_CUDA(cudaMalloc(&p, static_cast<size_t>(std::max<int64_t>(bytes, 16))),
                    absl::StrCat("cudaMalloc of ", bytes, " bytes"));
    allocations_.push_back(p);
    return p;
  }
  void Free(void* p) {
    cudaStreamSynchronize(stream_);
    cudaFree(p);
    allocations_.erase(std::find(allocations_.begin(), allocations_.end(), p));
  }

  // Median seconds of `run` over iters_ runs after warmup_ untimed ones, the L2 flushed before each.
  absl::StatusOr<double> Time(const std::function<cudaError_t(cudaStream_t)>& run) {
    for (int i = 0; i < warmup_; ++i) DSV4_BENCH_CUDA(run(stream_), "warm-up run");
    std::vector<double> t;
    for (int i = 0; i < iters_; ++i) {
      DSV4_BENCH_CUDA(cudaMemsetAsync(flush_, i & 0xff, static_cast<size_t>(flush_bytes_), stream_), "L2 flush");
      DSV4_BENCH_CUDA(cudaEventRecord(start_, stream_), "cudaEventRecord");
      DSV4_BENCH_CUDA(run(stream_), "timed run");
      DSV4_BENCH_CUDA(cudaEventRecord(stop_, stream_), "cudaEventRecord");
      DSV4_BENCH_CUDA(cudaEventSynchronize(stop_), "cudaEventSynchronize");
      float ms = 0;
      DSV4_BENCH_CUDA(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime");
      t.push_back(ms * 1e-3);
    }
    std::nth_element(t.begin(), t.begin() + t.size() / 2, t.end());
    return t[t.size() / 2];
  }

  cudaStream_t stream() const { return stream_; }
  const cudaDeviceProp& props() const { return props_; }
  int sms() const { return props_.multiProcessorCount; }

 private:
  cudaDeviceProp props_{};
  cudaStream_t stream_ = nullptr;
  cudaEvent_t start_ = nullptr, stop_ = nullptr;
  void* flush_ = nullptr;
  int64_t flush_bytes_ = 0;
  int iters_ = 1, warmup_ = 0;
  std::vector<void*> allocations_;
};

// One figure: what ran, its median time, and its rate against its limit.
struct Figure {
  std::string kernel, model, name, format, path;
  int64_t m = 0;
  std::string shape;
  double us = 0;
  double gbps = 0;         // bytes the kernel must move per second (0: not a bandwidth figure)
  double tflops = 0;       // (GEMM) arithmetic per second
  double ratio = -1;       // gbps / copy_gbps (or against the figure's own limit)
  double vs_cublas = -1;   // cuBLASLt's time on the same shape and format over this one (-1: none)
  double target_us = 0;    // issue 13's time target, when it has one
};

class Report {
 public:
  explicit Report(bool json) : json_(json) {}
  void Add(const Figure& f) {
    figures_.push_back(f);
    if (json_) {
      std::printf(
          "{\"bench\": \"kernels\", \"kernel\": \"%s\", \"model\": \"%s\", \"name\": \"%s\", \"format\": \"%s\", "
          "\"path\": \"%s\", \"m\": %lld, \"shape\": \"%s\", \"us\": %.3f, \"gbps\": %.2f, \"tflops\": %.3f, "
          "\"ratio\": %.4f, \"vs_cublas\": %.4f, \"target_us\": %.1f}\n",
          f.kernel.c_str(), f.model.c_str(), f.name.c_str(), f.format.c_str(), f.path.c_str(),
          static_cast<long long>(f.m), f.shape.c_str(), f.us, f.gbps, f.tflops, f.ratio, f.vs_cublas, f.target_us);
    } else {
      std::printf("%-10s %-6s %-14s %-5s %-14s m %-5lld %-20s %10.2f us  %9.1f GB/s  %8.2f TFLOP/s  ratio %.3f%s%s\n",
                  f.kernel.c_str(), f.model.c_str(), f.name.c_str(), f.format.c_str(), f.path.c_str(),
                  static_cast<long long>(f.m), f.shape.c_str(), f.us, f.gbps, f.tflops, f.ratio,
                  f.vs_cublas > 0 ? absl::StrFormat("  vs cuBLASLt %.3f", f.vs_cublas).c_str() : "",
                  f.target_us > 0 ? absl::StrFormat("  (target <= %.0f us)", f.target_us).c_str() : "");
    }
    std::fflush(stdout);
  }
  const std::vector<Figure>& figures() const { return figures_; }
  bool json() const { return json_; }

 private:
  bool json_;
  std::vector<Figure> figures_;
};

const char* FormatName(WeightType t) {
  switch (t) {
    case WeightType::kF32:
      return "f32";
    case WeightType::kBF16:
      return "bf16";
    case WeightType::kFP8:
      return "fp8";
    case WeightType::kFP4:
      return "fp4";
  }
  return "?";
}

const char* PathName(kc::LinearPath p) {
  switch (p) {
    case kc::LinearPath::kLegacyGemv:
      return "gemv";
    case kc::LinearPath::kLegacyTiled:
      return "tiled";
    case kc::LinearPath::kSkinny:
      return "skinny";
    case kc::LinearPath::kFp8Tiled:
      return "fp8tiled";
  }
  return "?";
}

// A device weight [rows, cols] in a checkpoint format, filled with hashed values (FP8 without NaN
// codes, scales 2^-8..2^-1, BF16 of magnitude about 2^-6..2^-3).
absl::StatusOr<WeightMatrix> MakeWeight(Harness& h, WeightType type, int64_t rows, int64_t cols, uint32_t seed) {
  WeightMatrix w;
  w.type = type, w.row_end = rows, w.col_end = cols;
  int64_t bytes = 0;
  switch (type) {
    case WeightType::kBF16:
      w.ld = cols, bytes = rows * cols * 2;
      break;
    case WeightType::kFP8:
      w.ld = cols, bytes = rows * cols, w.block_rows = w.block_cols = 128, w.scale_ld = (cols + 127) / 128;
      break;
    case WeightType::kFP4:
      w.ld = cols / 2, bytes = rows * cols / 2, w.block_cols = 32, w.scale_ld = (cols + 31) / 32;
      break;
    case WeightType::kF32:
      w.ld = cols, bytes = rows * cols * 4;
      break;
  }
  DSV4_ASSIGN_OR_RETURN(void* data, h.Alloc(bytes));
  w.data = data;
  if (type == WeightType::kBF16) {
    // Every odd byte (the high byte of a little-endian BF16) in 0x3c..0x3f: exponents 2^-7..2^-1.
    DSV4_BENCH_CUDA(FillBytes(data, bytes, seed, 0xff, 0, false, h.stream()), "fill");
    DSV4_BENCH_CUDA(cudaMemset2DAsync(static_cast<char*>(data) + 1, 2, 0x3c, 1, bytes / 2, h.stream()), "fill");
  } else {
    DSV4_BENCH_CUDA(FillBytes(data, bytes, seed, 0xff, 0, type == WeightType::kFP8, h.stream()), "fill");
  }
  if (type == WeightType::kFP8 || type == WeightType::kFP4) {
    const int64_t srows = type == WeightType::kFP8 ? (rows + 127) / 128 : rows, sbytes = srows * w.scale_ld;
    DSV4_ASSIGN_OR_RETURN(void* scales, h.Alloc(sbytes));
    DSV4_BENCH_CUDA(FillBytes(scales, sbytes, seed + 1, 0x07, 0x77, false, h.stream()), "fill");  // 119..126
    w.scales = static_cast<const uint8_t*>(scales);
  }
  return w;
}

int64_t WeightBytes(const WeightMatrix& w) {
  const int64_t r = w.rows(), c = w.cols();
  switch (w.type) {
    case WeightType::kBF16:
      return r * c * 2;
    case WeightType::kFP8:
      return r * c + ((r + 127) / 128) * ((c + 127) / 128);
    case WeightType::kFP4:
      return r * c / 2 + r * (c / 32);
    case WeightType::kF32:
      return r * c * 4;
  }
  return 0;
}

class CublasLt;  // below: cuBLASLt's GEMM rates

struct Context {
  Harness* h;
  Report* report;
  double copy_gbps = 0;
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
  float* x = nullptr;  // activations, large enough for every call
  float* y = nullptr;
  CublasLt* cublas = nullptr;
  bool cublas_ok = false;
  void* x_fp8 = nullptr;   // activations for cuBLASLt: E4M3 codes [512, 7168]
  void* x_bf16 = nullptr;  // and BF16 [512, 7168]
  std::string filter;
  bool Wants(const std::string& kernel) const { return filter.empty() || kernel.find(filter) != std::string::npos; }
};

// ---- limits ----------------------------------------------------------------------------------------

// cuBLASLt's GEMM on a linear's shape, the rate the tensor-core kernels are held to: y [m, N] (f32) =
// x [m, K] W^T with W [N, K] row-major, both operands E4M3 (per-tensor scales of 1: the plain FP8
// GEMM, an upper bound for one with block scales) or both BF16, f32 accumulation. In cuBLAS's
// column-major terms: D [N, m] = op(A) B with A = W as a K x N matrix transposed ("TN", which FP8
// requires), B = x as K x m. The library (over 500 MB) is loaded when the bench runs, not linked:
// dsv4 starts on machines without it, and this benchmark then reports why it has no such figures.
class CublasLt {
 public:
  ~CublasLt() {
#if DSV4_BENCH_CUBLASLT
    if (handle_ != nullptr) api_.Destroy(handle_);
    if (lib_ != nullptr) dlclose(lib_);
#endif
  }

  // False (and the reason in why()) when this build or machine cannot time cuBLASLt's GEMMs.
  bool Init(Harness& h) {
#if DSV4_BENCH_CUBLASLT
    for (const char* name : {"libcublasLt.so.13", "libcublasLt.so.12", "libcublasLt.so"})
      if ((lib_ = dlopen(name, RTLD_NOW | RTLD_LOCAL)) != nullptr) break;
    if (lib_ == nullptr) {
      why_ = "libcublasLt.so.13 / .12 not found (add its folder to LD_LIBRARY_PATH)";
      return false;
    }
    bool all = true;
    auto sym = [&](auto& fn, const char* name) {
      fn = reinterpret_cast<std::remove_reference_t<decltype(fn)>>(dlsym(lib_, name));
      if (fn == nullptr && all) all = false, why_ = absl::StrCat("libcublasLt has no ", name);
    };
    sym(api_.Create, "cublasLtCreate");
    sym(api_.Destroy, "cublasLtDestroy");
    sym(api_.DescCreate, "cublasLtMatmulDescCreate");
    sym(api_.DescDestroy, "cublasLtMatmulDescDestroy");
    sym(api_.DescSet, "cublasLtMatmulDescSetAttribute");
    sym(api_.LayoutCreate, "cublasLtMatrixLayoutCreate");
    sym(api_.LayoutDestroy, "cublasLtMatrixLayoutDestroy");
    sym(api_.PrefCreate, "cublasLtMatmulPreferenceCreate");
    sym(api_.PrefDestroy, "cublasLtMatmulPreferenceDestroy");
    sym(api_.PrefSet, "cublasLtMatmulPreferenceSetAttribute");
    sym(api_.Heuristic, "cublasLtMatmulAlgoGetHeuristic");
    sym(api_.Matmul, "cublasLtMatmul");
    if (!all) return false;
    if (api_.Create(&handle_) != CUBLAS_STATUS_SUCCESS) {
      handle_ = nullptr;
      why_ = "cublasLtCreate failed";
      return false;
    }
    auto ws = h.Alloc(kWorkspaceBytes);
    if (!ws.ok()) {
      why_ = std::string(ws.status().message());
      return false;
    }
    workspace_ = *ws;
    return true;
#else
    (void)h;
    why_ = "this dsv4 was built without cublasLt.h";
    return false;
#endif
  }
  const std::string& why() const { return why_; }

  // Median seconds of the GEMM (Harness::Time); NOT_FOUND when cuBLASLt has no algorithm for it.
  absl::StatusOr<double> Time(Harness& h, WeightType type, int64_t m, int64_t N, int64_t K, const void* w,
                              const void* x, float* y) {
#if DSV4_BENCH_CUBLASLT
    if (handle_ == nullptr || workspace_ == nullptr) return absl::FailedPreconditionError(why_);
    const cudaDataType ab = type == WeightType::kFP8 ? CUDA_R_8F_E4M3 : CUDA_R_16BF;
    // f32 output like the kernels; BF16 output when cuBLASLt has no f32-output algorithm for FP8.
    for (const cudaDataType out : {CUDA_R_32F, CUDA_R_16BF}) {
      Plan p(api_);
      if (!p.Build(ab, out, m, N, K)) continue;
      cublasLtMatmulHeuristicResult_t result{};
      int found = 0;
      if (api_.Heuristic(handle_, p.op, p.a, p.b, p.d, p.d, p.pref, 1, &result, &found) != CUBLAS_STATUS_SUCCESS ||
          found == 0)
        continue;
      const float alpha = 1.f, beta = 0.f;
      return h.Time([&](cudaStream_t st) {
        const cublasStatus_t e = api_.Matmul(handle_, p.op, &alpha, w, p.a, x, p.b, &beta, y, p.d, y, p.d,
                                             &result.algo, workspace_, kWorkspaceBytes, st);
        return e == CUBLAS_STATUS_SUCCESS ? cudaGetLastError() : cudaErrorLaunchFailure;
      });
    }
    return absl::NotFoundError(absl::StrCat("cuBLASLt has no algorithm for ", type == WeightType::kFP8 ? "FP8" : "BF16",
                                            " m ", m, " N ", N, " K ", K));
#else
    (void)h, (void)type, (void)m, (void)N, (void)K, (void)w, (void)x, (void)y;
    return absl::FailedPreconditionError(why_);
#endif
  }

 private:
  static constexpr int64_t kWorkspaceBytes = int64_t{32} << 20;
#if DSV4_BENCH_CUBLASLT
  // The entry points this benchmark uses, from the loaded library.
  struct Api {
    decltype(&cublasLtCreate) Create = nullptr;
    decltype(&cublasLtDestroy) Destroy = nullptr;
    decltype(&cublasLtMatmulDescCreate) DescCreate = nullptr;
    decltype(&cublasLtMatmulDescDestroy) DescDestroy = nullptr;
    decltype(&cublasLtMatmulDescSetAttribute) DescSet = nullptr;
    decltype(&cublasLtMatrixLayoutCreate) LayoutCreate = nullptr;
    decltype(&cublasLtMatrixLayoutDestroy) LayoutDestroy = nullptr;
    decltype(&cublasLtMatmulPreferenceCreate) PrefCreate = nullptr;
    decltype(&cublasLtMatmulPreferenceDestroy) PrefDestroy = nullptr;
    decltype(&cublasLtMatmulPreferenceSetAttribute) PrefSet = nullptr;
    decltype(&cublasLtMatmulAlgoGetHeuristic) Heuristic = nullptr;
    decltype(&cublasLtMatmul) Matmul = nullptr;
  };
  // The descriptors of one GEMM, destroyed with it.
  struct Plan {
    explicit Plan(const Api& api) : api(api) {}
    ~Plan() {
      if (pref != nullptr) api.PrefDestroy(pref);
      if (d != nullptr) api.LayoutDestroy(d);
      if (b != nullptr) api.LayoutDestroy(b);
      if (a != nullptr) api.LayoutDestroy(a);
      if (op != nullptr) api.DescDestroy(op);
    }
    bool Build(cudaDataType ab, cudaDataType out, int64_t m, int64_t N, int64_t K) {
      const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
      const uint64_t ws = kWorkspaceBytes;
      const auto ok = [](cublasStatus_t e) { return e == CUBLAS_STATUS_SUCCESS; };
      return ok(api.DescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F)) &&
             ok(api.DescSet(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta))) &&
             ok(api.DescSet(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb))) &&
             ok(api.LayoutCreate(&a, ab, K, N, K)) && ok(api.LayoutCreate(&b, ab, K, m, K)) &&
             ok(api.LayoutCreate(&d, out, N, m, N)) && ok(api.PrefCreate(&pref)) &&
             ok(api.PrefSet(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws, sizeof(ws)));
    }
    const Api& api;
    cublasLtMatmulDesc_t op = nullptr;
    cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
    cublasLtMatmulPreference_t pref = nullptr;
  };
  void* lib_ = nullptr;
  Api api_;
  cublasLtHandle_t handle_ = nullptr;
  void* workspace_ = nullptr;
#endif
  std::string why_;
};

absl::StatusOr<double> MeasureCopy(Context& c) {
  const int64_t bytes = int64_t{1} << 30;
  DSV4_ASSIGN_OR_RETURN(void* a, c.h->Alloc(bytes));
  DSV4_ASSIGN_OR_RETURN(void* b, c.h->Alloc(bytes));
  DSV4_ASSIGN_OR_RETURN(void* sink, c.h->Alloc(16));
  DSV4_BENCH_CUDA(FillBytes(a, bytes, 7, 0xff, 0, false, c.h->stream()), "fill");
  DSV4_ASSIGN_OR_RETURN(const double t, c.h->Time([&](cudaStream_t s) { return DeviceCopy(a, b, bytes, c.h->sms(), s); }));
  DSV4_ASSIGN_OR_RETURN(const double tr, c.h->Time([&](cudaStream_t s) {
                          return DeviceRead(a, bytes, static_cast<uint32_t*>(sink), c.h->sms(), s);
                        }));
  const double copy = 2.0 * bytes / t / 1e9;
  c.report->Add({.kernel = "copy", .model = "-", .name = "copy 1GiB", .format = "-", .path = "limit", .m = 0,
                 .shape = "1073741824", .us = t * 1e6, .gbps = copy, .ratio = 1.0});
  c.report->Add({.kernel = "read", .model = "-", .name = "read 1GiB", .format = "-", .path = "limit", .m = 0,
                 .shape = "1073741824", .us = tr * 1e6, .gbps = bytes / tr / 1e9, .ratio = bytes / tr / 1e9 / copy});
  c.h->Free(a);
  c.h->Free(b);
  return copy;
}

// ---- linear layers ---------------------------------------------------------------------------------

struct LinearShape {
  std::string name;
  WeightType type;
  int64_t rows, cols;
};

std::vector<LinearShape> LinearShapes(const ModelShape& s) {
  const int64_t D = s.hidden, HD = s.heads * s.head_dim;
  return {
      {"wq_a", WeightType::kFP8, s.q_lora, D},
      {"wq_b", WeightType::kFP8, HD, s.q_lora},
      {"wkv", WeightType::kFP8, s.head_dim, D},
      {"wo_a", WeightType::kFP8, s.o_groups * s.o_lora, HD / s.o_groups},
      {"wo_b", WeightType::kFP8, D, s.o_groups * s.o_lora},
      {"shared.w1", WeightType::kFP8, s.inter, D},
      {"shared.w2", WeightType::kFP8, D, s.inter},
      {"idx.wq_b", WeightType::kFP8, s.index_heads * s.index_dim, s.q_lora},
      {"compress.wkv", WeightType::kBF16, 2 * s.head_dim, D},
      {"gate", WeightType::kBF16, s.experts, D},
      {"head", WeightType::kBF16, s.vocab, D},
      {"expert.w1", WeightType::kFP4, s.inter, D},
      {"expert.w2", WeightType::kFP4, D, s.inter},
      // The reference shapes (its baseline was measured on these).
      {"issue.fp8", WeightType::kFP8, 32768, 4096},
      {"issue.fp4", WeightType::kFP4, 65536, 4096},
      {"issue.bf16", WeightType::kBF16, 129280, 4096},
  };
}

absl::Status BenchLinear(Context& c, const ModelShape& s) {
  if (!c.Wants("linear")) return absl::OkStatus();
  uint32_t seed = 100;
  for (const LinearShape& ls : LinearShapes(s)) {
    if (absl::StartsWith(ls.name, "issue.") && s.name != "flash") continue;  // once
    DSV4_ASSIGN_OR_RETURN(const WeightMatrix w, MakeWeight(*c.h, ls.type, ls.rows, ls.cols, seed++));
    const bool quantized = ls.type != WeightType::kBF16;
    for (int64_t m : {1, 2, 4, 8, 16, 32, 64, 512}) {
      // cuBLASLt on the same shape and format first (FP8 and BF16; it has no FP4 x f32 GEMM).
      double t_cublas = -1;
      if (c.cublas_ok && ls.type != WeightType::kFP4) {
        const bool fp8 = ls.type == WeightType::kFP8;
        absl::StatusOr<double> t = c.cublas->Time(*c.h, ls.type, m, ls.rows, ls.cols, w.data,
                                                  fp8 ? c.x_fp8 : c.x_bf16, c.y);
        if (t.ok()) {
          t_cublas = *t;
          Figure f{.kernel = "cublaslt", .model = s.name, .name = ls.name, .format = FormatName(ls.type),
                   .path = "limit", .m = m, .shape = absl::StrCat(ls.rows, "x", ls.cols), .us = *t * 1e6};
          f.gbps = (fp8 ? 1.0 : 2.0) * ls.rows * ls.cols / *t / 1e9;
          f.tflops = 2.0 * m * ls.rows * ls.cols / *t / 1e12;
          f.ratio = f.gbps / c.copy_gbps;
          c.report->Add(f);
        } else {  // that figure has no cuBLASLt ratio, the others still do
          std::fprintf(stderr, "bench kernels: no cuBLASLt figure for %s m %lld: %s\n", ls.name.c_str(),
                       static_cast<long long>(m), std::string(t.status().message()).c_str());
        }
      }
      for (int act : {0, 128}) {
        if (act > 0 && !quantized) continue;
        kc::LinearOptions o;
        o.act_fp8_group = act;
        o.workspace = c.workspace, o.workspace_bytes = c.workspace_bytes;
        const kc::LinearChoice choice =
            kc::ChooseLinear(m, w, act, c.workspace_bytes, kc::CurrentDeviceCaps(), true);
        DSV4_ASSIGN_OR_RETURN(const double t, c.h->Time([&](cudaStream_t st) {
                                return kc::Linear(c.x, m, ls.cols, w, c.y, ls.rows, o, st);
                              }));
        Figure f{.kernel = "linear", .model = s.name, .name = ls.name, .format = FormatName(ls.type),
                 .path = absl::StrCat(PathName(choice.path), act > 0 ? "+fp8act" : ""), .m = m,
                 .shape = absl::StrCat(ls.rows, "x", ls.cols), .us = t * 1e6};
        f.gbps = WeightBytes(w) / t / 1e9;
        f.tflops = 2.0 * m * ls.rows * ls.cols / t / 1e12;
        f.ratio = f.gbps / c.copy_gbps;
        if (t_cublas > 0) f.vs_cublas = t_cublas / t;
        c.report->Add(f);
      }
    }
    c.h->Free(const_cast<void*>(w.data));
    if (w.scales != nullptr) c.h->Free(const_cast<uint8_t*>(w.scales));
  }
  return absl::OkStatus();
}

// MoE experts of one decode step: `tokens` tokens x 6 routed experts spread over the experts,
// each active expert a group of the grouped launch (w1 of every expert: [inter, hidden] FP4).
absl::Status BenchExperts(Context& c, const ModelShape& s) {
  if (!c.Wants("experts")) return absl::OkStatus();
  const int64_t E = s.experts, rows = s.inter, cols = s.hidden;
  std::vector<WeightMatrix> ws;
  for (int64_t e = 0; e < E; ++e) {
    DSV4_ASSIGN_OR_RETURN(const WeightMatrix w, MakeWeight(*c.h, WeightType::kFP4, rows, cols, 1000 + e));
    ws.push_back(w);
  }
  DSV4_ASSIGN_OR_RETURN(void* dws, c.h->Alloc(E * static_cast<int64_t>(sizeof(WeightMatrix))));
  DSV4_BENCH_CUDA(cudaMemcpyAsync(dws, ws.data(), E * sizeof(WeightMatrix), cudaMemcpyHostToDevice, c.h->stream()),
                  "copy");
  DSV4_ASSIGN_OR_RETURN(void* doff, c.h->Alloc((E + 1) * 4));
  for (int64_t tokens : {1, 8, 64, 512}) {
    // Pairs t*6 + j -> expert (t * 37 + j * 53) % E: distinct per token, spread over the experts.
    std::vector<int32_t> count(E, 0), offsets(E + 1, 0);
    for (int64_t t = 0; t < tokens; ++t)
      for (int j = 0; j < 6; ++j) ++count[(t * 37 + j * 53) % E];
    int64_t active = 0, max_rows = 0;
    for (int64_t e = 0; e < E; ++e) {
      offsets[e + 1] = offsets[e] + count[e];
      active += count[e] > 0;
      max_rows = std::max<int64_t>(max_rows, count[e]);
    }
    DSV4_BENCH_CUDA(cudaMemcpyAsync(doff, offsets.data(), (E + 1) * 4, cudaMemcpyHostToDevice, c.h->stream()), "copy");
    for (int act : {0, 128}) {
      kc::LinearOptions o;
      o.act_fp8_group = act;
      DSV4_ASSIGN_OR_RETURN(const double t, c.h->Time([&](cudaStream_t st) {
                              return kc::GroupedLinear(c.x, cols, static_cast<const WeightMatrix*>(dws), ws[0],
                                                       static_cast<const int32_t*>(doff), E, max_rows, c.y, rows, o, st);
                            }));
      Figure f{.kernel = "experts", .model = s.name, .name = absl::StrCat("w1 x", active, " experts"),
               .format = "fp4", .path = act > 0 ? "skinny+fp8act" : "skinny", .m = tokens,
               .shape = absl::StrCat(rows, "x", cols), .us = t * 1e6};
      f.gbps = active * WeightBytes(ws[0]) / t / 1e9;
      f.tflops = 2.0 * tokens * 6 * rows * cols / t / 1e12;
      f.ratio = f.gbps / c.copy_gbps;
      c.report->Add(f);
    }
  }
  for (const WeightMatrix& w : ws) {
    c.h->Free(const_cast<void*>(w.data));
    c.h->Free(const_cast<uint8_t*>(w.scales));
  }
  c.h->Free(dws);
  c.h->Free(doff);
  return absl::OkStatus();
}

// ---- attention, top-k, and the row kernels ----------------------------------------------------------

absl::Status BenchAttention(Context& c, const ModelShape& s) {
  if (!c.Wants("attention")) return absl::OkStatus();
  const int64_t d = s.head_dim, H = s.heads, k = s.window + s.topk_index, cache_rows = 65536;
  DSV4_ASSIGN_OR_RETURN(void* kv, c.h->Alloc(cache_rows * d * 4));
  DSV4_BENCH_CUDA(FillFloats(static_cast<float*>(kv), cache_rows * d, 11, 1.f, c.h->stream()), "fill");
  DSV4_ASSIGN_OR_RETURN(void* sink, c.h->Alloc(H * 4));
  DSV4_BENCH_CUDA(FillFloats(static_cast<float*>(sink), H, 12, 1.f, c.h->stream()), "fill");
  kernels::KvSegments segs;
  segs.ptr[0] = static_cast<const float*>(kv), segs.len[0] = cache_rows;
  for (int64_t m : {1, 64, 512}) {
    std::vector<int32_t> idx(m * k);
    for (int64_t t = 0; t < m; ++t)  // a window of the newest rows, then scattered indexer picks
      for (int64_t j = 0; j < k; ++j)
        idx[t * k + j] = static_cast<int32_t>(j < s.window ? (cache_rows - s.window + j) : (j * 7919 + t * 104729) % cache_rows);
    DSV4_ASSIGN_OR_RETURN(void* didx, c.h->Alloc(m * k * 4));
    DSV4_BENCH_CUDA(cudaMemcpyAsync(didx, idx.data(), m * k * 4, cudaMemcpyHostToDevice, c.h->stream()), "copy");
    DSV4_BENCH_CUDA(FillFloats(c.x, m * H * d, 13, 0.05f, c.h->stream()), "fill");
    const float scale = 1.0f / std::sqrt(static_cast<float>(d));
    DSV4_ASSIGN_OR_RETURN(const double t, c.h->Time([&](cudaStream_t st) {
                            return kc::SparseAttention(c.x, m, H, d, segs, static_cast<const int32_t*>(didx), k,
                                                       static_cast<const float*>(sink), scale, c.y, c.workspace,
                                                       c.workspace_bytes, st);
                          }));
    Figure f{.kernel = "attention", .model = s.name, .name = absl::StrCat(H, " heads x ", d), .format = "f32",
             .path = "fused", .m = m, .shape = absl::StrCat(k, " rows"), .us = t * 1e6};
    f.gbps = (m * k * d * 4.0 + 2.0 * m * H * d * 4) / t / 1e9;  // rows gathered, q read, out written
    f.tflops = 4.0 * m * H * k * d / t / 1e12;
    f.ratio = f.gbps / c.copy_gbps;
    if (s.name == "flash" && m == 1) f.target_us = 60;
    if (s.name == "flash" && m == 64) f.target_us = 150;
    c.report->Add(f);
    c.h->Free(didx);
  }
  c.h->Free(kv);
  c.h->Free(sink);
  return absl::OkStatus();
}

absl::Status BenchTopK(Context& c, const ModelShape& s) {
  if (!c.Wants("topk")) return absl::OkStatus();
  const int64_t n = 262144, k = s.topk_index;
  for (int64_t m : {1, 64}) {
    DSV4_BENCH_CUDA(FillFloats(c.x, m * n, 21, 10.f, c.h->stream()), "fill");
    DSV4_ASSIGN_OR_RETURN(const double t, c.h->Time([&](cudaStream_t st) {
                            return kc::TopK(c.x, m, n, n, nullptr, k, reinterpret_cast<int32_t*>(c.y), k, st);
                          }));
    Figure f{.kernel = "topk", .model = s.name, .name = absl::StrCat(n, " -> ", k), .format = "f32", .path = "radix",
             .m = m, .shape = absl::StrCat(n), .us = t * 1e6};
    f.gbps = m * n * 4.0 / t / 1e9;
    f.ratio = f.gbps / c.copy_gbps;
    if (k == 512) f.target_us = 100;
    c.report->Add(f);
  }
  return absl::OkStatus();
}

// The row kernels at decode (m = 64) and prefill (m = 4096) token counts: bytes read + written.
absl::Status BenchRows(Context& c, const ModelShape& s) {
  const int64_t D = s.hidden;
  for (int64_t m : {64, 4096}) {
    auto add = [&](const std::string& kernel, const std::string& name, double bytes,
                   const std::function<cudaError_t(cudaStream_t)>& run) -> absl::Status {
      if (!c.Wants(kernel)) return absl::OkStatus();
      DSV4_ASSIGN_OR_RETURN(const double t, c.h->Time(run));
      Figure f{.kernel = kernel, .model = s.name, .name = name, .format = "f32", .path = "-", .m = m,
               .shape = absl::StrCat(D), .us = t * 1e6};
      f.gbps = bytes / t / 1e9;
      f.ratio = f.gbps / c.copy_gbps;
      c.report->Add(f);
      return absl::OkStatus();
    };
    DSV4_BENCH_CUDA(FillFloats(c.x, m * 4 * D, 31, 1.f, c.h->stream()), "fill");
    DSV4_RETURN_IF_ERROR(add("rmsnorm", "hidden", 2.0 * m * D * 4, [&](cudaStream_t st) {
      return kc::RmsNorm(c.x, nullptr, 1e-6f, m, D, D, c.y, D, st);
    }));
    DSV4_RETURN_IF_ERROR(add("qdq", "fp8 g128", 2.0 * m * D * 4, [&](cudaStream_t st) {
      return kc::QdqFp8(c.y, m, D, D, 128, st);
    }));
    DSV4_RETURN_IF_ERROR(add("hadamard", "64 heads x 128", 2.0 * m * 64 * 128 * 4, [&](cudaStream_t st) {
      return kc::Hadamard(c.y, m * 64, 128, 128, 1.f / std::sqrt(128.f), st);
    }));
    DSV4_RETURN_IF_ERROR(add("swiglu", "6 experts", 3.0 * m * 6 * s.inter * 4, [&](cudaStream_t st) {
      return kc::SwiGlu(c.x, c.x + m * 6 * s.inter, m * 6, s.inter, s.inter, nullptr, 10.f, c.y, st);
    }));
    DSV4_RETURN_IF_ERROR(add("hcpost", "4 streams", 2.0 * m * 4 * D * 4 + m * D * 4.0, [&](cudaStream_t st) {
      return kc::HcPost(c.x, D, c.x, c.x, m, 4, D, c.y, 4 * D, st);
    }));
  }
  return absl::OkStatus();
}

struct Target {
  std::string what;
  double worst = 0;
  bool pass = false;
  bool measured = false;
};

// Issue 13's acceptance figures from this run's figures.
std::vector<Target> Targets(const std::vector<Figure>& figs) {
  std::vector<Target> out;
  auto gemv = [&](const std::string& format, bool decode, double need) {
    Target t{absl::StrCat("linear ", format, decode ? " m<=8" : " m=64", " weight GB/s over copy >= ", need)};
    t.worst = 1e30;
    for (const Figure& f : figs)
      if (f.kernel == "linear" && absl::StartsWith(f.name, "issue.") && f.format == format &&
          (decode ? f.m <= 8 : f.m == 64)) {
        t.worst = std::min(t.worst, f.ratio), t.measured = true;
      }
    t.pass = t.measured && t.worst >= need;
    out.push_back(t);
  };
  for (const char* fmt : {"fp8", "fp4", "bf16"}) {
    gemv(fmt, true, 0.7);
    gemv(fmt, false, 0.6);
  }
  {  // prefill: the FP8 tensor-core path against cuBLASLt's FP8 GEMM on the same shape
    Target t{"linear fp8 m=512 (FP8-rounded activations) over cuBLASLt FP8 GEMM >= 0.5"};
    t.worst = 1e30;
    for (const Figure& f : figs)
      if (f.kernel == "linear" && f.name == "issue.fp8" && f.m == 512 && absl::EndsWith(f.path, "+fp8act") &&
          f.vs_cublas > 0)
        t.worst = std::min(t.worst, f.vs_cublas), t.measured = true;
    t.pass = t.measured && t.worst >= 0.5;
    out.push_back(t);
  }
  for (const Figure& f : figs)
    if (f.target_us > 0) {
      Target t{absl::StrCat(f.kernel, " ", f.model, " ", f.name, " m=", f.m, " us <= ", f.target_us)};
      t.worst = f.us, t.measured = true, t.pass = f.us <= f.target_us;
      out.push_back(t);
    }
  return out;
}

}  // namespace

absl::Status Kernels(const Flags& flags) {
  DSV4_ASSIGN_OR_RETURN(const std::vector<std::string> names, CheckKernelsFlags(flags));
  std::vector<const ModelShape*> models;
  for (const std::string& name : names) models.push_back(name == "flash" ? &kFlash : &kPro);
  Harness h;
  DSV4_RETURN_IF_ERROR(h.Init(static_cast<int>(flags.GetInt("iters")), static_cast<int>(flags.GetInt("warmup"))));
  Report report(flags.GetBool("json"));
  Context c;
  c.h = &h, c.report = &report, c.filter = flags.GetString("filter");
  const kc::DeviceCaps caps = kc::CurrentDeviceCaps();
  const std::string gpu = absl::StrFormat("%s (sm_%d, %d SMs, %.0f GiB, L2 %d MiB)", h.props().name, caps.arch,
                                          caps.sms, h.props().totalGlobalMem / double(1 << 30),
                                          h.props().l2CacheSize >> 20);
  if (!report.json()) std::printf("GPU: %s\n", gpu.c_str());
  DSV4_ASSIGN_OR_RETURN(c.copy_gbps, MeasureCopy(c));
  c.workspace_bytes = int64_t{1} << 30;
  DSV4_ASSIGN_OR_RETURN(c.workspace, h.Alloc(c.workspace_bytes));
  const int64_t act_floats = int64_t{160} << 20;  // 640 MiB each: every x and y below fits
  DSV4_ASSIGN_OR_RETURN(void* x, h.Alloc(act_floats * 4));
  DSV4_ASSIGN_OR_RETURN(void* y, h.Alloc(act_floats * 4));
  c.x = static_cast<float*>(x), c.y = static_cast<float*>(y);
  DSV4_BENCH_CUDA(FillFloats(c.x, act_floats, 5, 1.f, h.stream()), "fill");
  CublasLt cublas;
  c.cublas = &cublas;
  c.cublas_ok = cublas.Init(h);
  if (!c.cublas_ok) std::fprintf(stderr, "bench kernels: no cuBLASLt figures: %s\n", cublas.why().c_str());
  const int64_t low_elems = int64_t{512} * 16384;  // the largest m x K of LinearShapes
  DSV4_ASSIGN_OR_RETURN(c.x_fp8, h.Alloc(low_elems));
  DSV4_ASSIGN_OR_RETURN(c.x_bf16, h.Alloc(low_elems * 2));
  DSV4_BENCH_CUDA(FillBytes(c.x_fp8, low_elems, 6, 0xff, 0, true, h.stream()), "fill");
  DSV4_BENCH_CUDA(FillBytes(c.x_bf16, low_elems * 2, 7, 0xff, 0, false, h.stream()), "fill");
  DSV4_BENCH_CUDA(cudaMemset2DAsync(static_cast<char*>(c.x_bf16) + 1, 2, 0x3f, 1, low_elems, h.stream()), "fill");

  for (const ModelShape* model : models) {
    const ModelShape& s = *model;
    DSV4_RETURN_IF_ERROR(BenchLinear(c, s));
    DSV4_RETURN_IF_ERROR(BenchExperts(c, s));
    DSV4_RETURN_IF_ERROR(BenchAttention(c, s));
    DSV4_RETURN_IF_ERROR(BenchTopK(c, s));
    DSV4_RETURN_IF_ERROR(BenchRows(c, s));
  }
  const std::vector<Target> targets = Targets(report.figures());
  if (report.json()) {
    std::string t;
    for (const Target& x : targets)
      absl::StrAppend(&t, t.empty() ? "" : ", ",
                      absl::StrFormat("{\"what\": \"%s\", \"measured\": %s, \"worst\": %.4f, \"pass\": %s}", x.what,
                                      x.measured ? "true" : "false", x.measured ? x.worst : 0.0,
                                      x.pass ? "true" : "false"));
    std::printf("{\"bench\": \"kernels\", \"summary\": true, \"gpu\": \"%s\", \"copy_gbps\": %.1f, \"targets\": [%s]}\n",
                gpu.c_str(), c.copy_gbps, t.c_str());
  } else {
    std::printf("\ncopy bandwidth %.1f GB/s (read + written); issue 13 targets:\n", c.copy_gbps);
    for (const Target& x : targets)
      std::printf("  %-60s %s (worst %.3f)\n", x.what.c_str(), !x.measured ? "not measured" : x.pass ? "PASS" : "FAIL",
                  x.worst);
  }
  return absl::OkStatus();
}

#endif  // DSV4_CUDA

}  // namespace dsv4::bench
