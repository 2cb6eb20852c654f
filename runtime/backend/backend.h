// The seam between the model and the machine (DESIGN.md, "Backends"): the model code is written
// once against this interface, and a backend owns its memory and runs each operation on its
// device. CpuBackend calls kernels/cpu; CudaBackend calls kernels/cuda on one stream of one GPU.
//
// Memory: every pointer an operation takes is memory of the backend's device: persistent
// allocations (weights copies, caches) that live as long as the backend, and a per-step workspace
// that Reset() recycles, so a step allocates nothing once the workspace has grown to its size.
//
// Operations only enqueue work (CUDA: on the backend's stream) and return nothing: the first
// failure (an unsupported shape, a launch error) is latched, later operations are skipped, and
// status() / Synchronize() report it with the operation's name. Shapes are host values; anything
// that changes from step to step without changing a launch (positions, row ids) is in device memory.
//
// Thread-safety: one thread drives a backend (the engine's step loop).
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <type_traits>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "kernels/cpu/kernels.h"

namespace dsv4 {

enum class Device { kCpu, kCuda };
const char* DeviceName(Device d);

// "cpu", "cuda" or "auto" (CUDA where a GPU is present).
enum class DeviceChoice { kAuto, kCpu, kCuda };
absl::StatusOr<DeviceChoice> ParseDeviceChoice(const std::string& s);

// One layer's routed experts placed on a backend's device (Backend::PlaceExperts); opaque.
class ExpertTable {
 public:
  virtual ~ExpertTable() = default;
};

// The (host) views of one expert's three matrices: w1, w3 [inter, D], w2 [D, inter].
struct ExpertViews {
  const kernels::WeightMatrix* w1 = nullptr;
  const kernels::WeightMatrix* w2 = nullptr;
  const kernels::WeightMatrix* w3 = nullptr;
};

// How the expert FFNs compute (MODEL.md 2.5).
struct ExpertFfnOptions {
  float swiglu_limit = 0;  // clamp of the SwiGLU inputs (<= 0: none)
  bool qdq = true;         // round the inputs of quantized products to FP8, as the reference
  int qdq_group = 128;     // in groups of this many values
};

// One ExpertFfn call's arguments (Backend::ExpertFfnGroup runs several at once).
struct ExpertFfnJob {
  const ExpertTable* table = nullptr;
  float* x = nullptr;  // [*, ldx]; its rows may be rounded in place
  int64_t ldx = 0;
  const int32_t* offsets = nullptr;  // [experts of the table + 1], device memory
  int64_t max_rows = 0;              // host bound on offsets[E]
  const float* row_weights = nullptr;
  float* y = nullptr;
  int64_t ldy = 0;
};

// A position in a backend's step workspace (Backend::Mark).
struct WorkspaceMark {
  int64_t chunk = 0, offset = 0;
};

struct BackendOptions {
  DeviceChoice device = DeviceChoice::kAuto;
  // Under a launcher: this process's node-local rank and the node's rank count; each rank takes
  // the GPU of its local rank, and two ranks on one GPU are an error.
  int local_rank = 0, local_size = 1;
  int64_t workspace_bytes = int64_t{1} << 30;  // CUDA: the step workspace (one allocation)
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual Device device() const = 0;
  // "cpu (avx512, 2 threads)", "cuda:0 NVIDIA H200 (sm_90, 139 GiB)".
  virtual std::string Describe() const = 0;

  // ---- memory -----------------------------------------------------------------------------------
  // Persistent memory, alive as long as the backend (weights, caches): RESOURCE_EXHAUSTED naming
  // the size when the device has no room.
  virtual absl::StatusOr<void*> Allocate(int64_t bytes) = 0;
  // Gives back what Allocate returned (null: nothing), once the work enqueued before is done with it.
  virtual void Free(void* p) = 0;
  // Step workspace: valid until the next Reset(); 64-byte aligned. Never null: exhausting the
  // workspace latches RESOURCE_EXHAUSTED and returns a dummy region the skipped operations ignore.
  virtual void* Workspace(int64_t bytes) = 0;
  float* WorkspaceF32(int64_t n) { return static_cast<float*>(Workspace(n * 4)); }
  int32_t* WorkspaceI32(int64_t n) { return static_cast<int32_t*>(Workspace(n * 4)); }
  int64_t* WorkspaceI64(int64_t n) { return static_cast<int64_t*>(Workspace(n * 8)); }
  // Starts a step: the workspace is free again (only after the previous step's work is done).
  virtual void Reset() = 0;
  // Scoped temporaries (DeviceScratch): the Workspace() memory handed out after Mark() is free again
  // at Release(mark), marks released in reverse order (a stack, as kernels::Scratch is on the
  // host). Work enqueued after a release may reuse the memory at once: on a GPU it runs after the
  // work that used it, on the same stream.
  virtual WorkspaceMark Mark() const = 0;
  virtual void Release(WorkspaceMark mark) = 0;
  // Host <-> device copies, ordered with the operations. CopyToHost waits for them.
  virtual void CopyToDevice(void* dst, const void* src, int64_t bytes) = 0;
  virtual void CopyToHost(void* dst, const void* src, int64_t bytes) = 0;
  virtual void CopyOnDevice(void* dst, const void* src, int64_t bytes) = 0;
  virtual void Zero(void* x, int64_t bytes) = 0;
  // How the runtime reads a weight: in products (Linear) of inputs rounded as the reference rounds
  // them before FP8/FP4 products, in products of unrounded inputs, or by rows (an embedding table).
  enum class WeightUse { kProducts, kUnroundedProducts, kRows };
  // The view of a (host, mmapped) weight on this device: the same view on the CPU (at the amx
  // level, for FP8/FP4 products of rounded inputs, a copy stored for the tiles); a copy of the
  // rectangle the view covers on a GPU, uploaded once per rank shard.
  virtual absl::StatusOr<kernels::WeightMatrix> PlaceWeight(const kernels::WeightMatrix& host, WeightUse use) = 0;
  // Whether host memory is the device's own, so that placing host data is a view of it, not a copy
  // (the CPU backend's).
  virtual bool HostIsDevice() const { return device() == Device::kCpu; }
  // A float32 host vector placed on the device (norm gains, sinks, mHC parameters): persistent.
  absl::StatusOr<const float*> PlaceVector(const float* host, int64_t n);
  // Host int32 data (hash-routing tables) placed on the device: persistent.
  absl::StatusOr<const int32_t*> PlaceInts(const int32_t* host, int64_t n);
  // The experts of one layer; experts[e] with null views are not held on this rank (never routed
  // here). At least one must be held, all of one shape and format.
  virtual absl::StatusOr<std::unique_ptr<ExpertTable>> PlaceExperts(std::span<const ExpertViews> experts) = 0;

  // Waits for the enqueued work; returns the first latched error.
  virtual absl::Status Synchronize() = 0;
  // The first latched error (OK while none), without waiting.
  virtual absl::Status status() const = 0;

  // ---- operations: kernels/cpu/kernels.h and kernels/cuda/kernels.h say what each computes ------
  virtual void Linear(const float* x, int64_t m, int64_t ldx, const kernels::WeightMatrix& w, float* y,
                      int64_t ldy) = 0;
  // Independent products with views already placed on the device (MoE experts, grouped outputs).
  virtual void LinearGroup(const kernels::LinearJob* jobs, int64_t num_jobs) = 0;
  virtual void QdqFp8(float* x, int64_t m, int64_t n, int64_t ld, int group) = 0;
  virtual void QdqFp4(float* x, int64_t m, int64_t n, int64_t ld, int group) = 0;
  // FP4 with an E4M3 scale per group (V4.1's compressed KV).
  virtual void QdqFp4E4m3(float* x, int64_t m, int64_t n, int64_t ld, int group) = 0;
  virtual void RmsNorm(const float* x, const float* w, float eps, int64_t m, int64_t n, int64_t ldx, float* y,
                       int64_t ldy) = 0;
  virtual void Rope(float* x, int64_t rows, int64_t ldx, int64_t half, const float* cos, const float* sin,
                    int64_t rows_per_entry, bool inverse) = 0;
  virtual void Hadamard(float* x, int64_t m, int64_t n, int64_t ld, float scale) = 0;
  virtual void HcPre(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale3,
                     const float* base, int iters, float norm_eps, float hc_eps, float* collapsed, float* post,
                     float* comb, float* pre) = 0;
  virtual void HcPost(const float* y, int64_t ldy, const float* post, const float* comb, int64_t m, int hc, int64_t D,
                      float* x, int64_t ldx) = 0;
  virtual void HcHead(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale,
                      const float* base, float norm_eps, float hc_eps, float* out, int64_t ldo) = 0;
  virtual void EmbedRows(const kernels::WeightMatrix& table, const int32_t* ids, int64_t n, int copies, float* out,
                         int64_t ldo) = 0;
  virtual void SwiGlu(const float* g, const float* u, int64_t m, int64_t I, int64_t ld, const float* row_weight,
                      float limit, float* h) = 0;
  virtual void SparseAttention(const float* q, int64_t m, int64_t H, int64_t d, const kernels::KvSegments& kv,
                               const int32_t* idx, int64_t k, const float* sink, float scale, float* out) = 0;
  virtual void CompressPool(const float* kv, const float* score, int64_t ld, const float* ape, int64_t ratio,
                            int64_t hd, bool overlap, int64_t first_row, bool first_has_prev, int64_t num_blocks,
                            float* out, int64_t ldo) = 0;
  virtual void IndexerScores(const float* q, const float* w, int64_t m, int64_t H, int64_t d, const float* keys,
                             int64_t n, const int64_t* nvis, float* score) = 0;
  virtual void TopK(const float* x, int64_t m, int64_t n, int64_t ldx, const int64_t* nvalid, int64_t k, int32_t* idx,
                    int64_t ldidx) = 0;
  virtual void Route(float* scores, int64_t m, int64_t E, int64_t K, float temp, kernels::RouterScore score,
                     const float* bias, const int32_t* tid2eid, const int32_t* tokens, bool normalize, float norm_eps,
                     float scaling, int32_t* experts, float* weights) = 0;
  virtual void SortSlotsByExpert(int32_t* experts, float* weights, int64_t m, int64_t K) = 0;
  virtual void GroupByExpert(const int32_t* experts, int64_t pairs, int64_t K, int64_t E, int32_t* offsets,
                             int64_t* order, int64_t* order_tokens, int32_t* position, int64_t* counts) = 0;
  // Expert FFNs over rows grouped by expert: rows [offsets[e], offsets[e+1]) of x [*, ldx] (offsets
  // [E+1] in device memory) go through expert e of `table` into the same rows of y [*, ldy]:
  // y = (silu(min(x W1^T, limit)) * clamp(x W3^T, -limit, limit) * row_weights[row]) W2^T, the
  // inputs of quantized products rounded to FP8 first (options.qdq). x's rows may be rounded in
  // place. max_rows (host) bounds offsets[E]; rows past offsets[E] are computed and ignored.
  void ExpertFfn(const ExpertTable& table, float* x, int64_t ldx, const int32_t* offsets, int64_t max_rows,
                 const float* row_weights, const ExpertFfnOptions& options, float* y, int64_t ldy) {
    const ExpertFfnJob job{&table, x, ldx, offsets, max_rows, row_weights, y, ldy};
    ExpertFfnGroup(&job, 1, options);
  }
  // Independent ExpertFfn calls (a layer's routed experts and its shared expert, each a table of
  // its own format) as one: the CPU shares its threads across all their products.
  virtual void ExpertFfnGroup(const ExpertFfnJob* jobs, int64_t num_jobs, const ExpertFfnOptions& options) = 0;
  virtual void GatherRows(const void* src, int64_t src_pitch, const int64_t* ids, int64_t rows, int64_t row_bytes,
                          void* dst, int64_t dst_pitch) = 0;
  // kernels::ScatterRows: dst row ids[r] = src row r, ids[r] < 0 skipped (the step's window keys
  // into their pool rows).
  virtual void ScatterRows(const void* src, int64_t src_pitch, const int64_t* ids, int64_t rows, int64_t row_bytes,
                           void* dst, int64_t dst_pitch) = 0;
  // kernels::ScatterRowsTo: row r to the device address dst[r] (0: skipped), for rows that go to
  // different allocations (a batch's compressor states).
  virtual void ScatterRowsTo(const void* src, int64_t src_pitch, const uint64_t* dst, int64_t rows,
                             int64_t row_bytes) = 0;
  // x[i] = start + i * step for i < n: row and offset tables the model would otherwise write on the
  // host (a token's slots, a whole batch as one group).
  virtual void Iota(int32_t* x, int64_t n, int32_t start, int32_t step) = 0;
  // x[i] *= s for i < n.
  virtual void Scale(float* x, int64_t n, float s) = 0;
  // Engram's gate (kernels::EngramGate): x [n, hc, D] updated in place from emb [n, wkv.cols()]
  // (consumed: rounded to FP8 in place with act_qdq and a quantized wkv) through wkv and the
  // streams' gate weights [hc, D].
  virtual void EngramGate(const kernels::WeightMatrix& wkv, const float* gate_weight, float* emb, int64_t n, int hc,
                          int64_t D, float eps, bool act_qdq, float* x) = 0;
  // V4.1's two-level indexer on the device (kernels::SelectCandidateBlocks, MaskToCandidates,
  // DropMaskedPicks): level 1 keeps each query's best blocks of positions, level 2 masks the scores
  // outside them and drops the picks that fell on masked positions.
  virtual void SelectCandidateBlocks(const float* scores, int64_t n, int64_t width, const int64_t* nvis,
                                     int64_t topk_blocks, int64_t block_size, uint8_t* keep) = 0;
  virtual void MaskToCandidates(float* scores, int64_t n, int64_t width, const uint8_t* keep, int64_t block_size) = 0;
  virtual void DropMaskedPicks(const float* scores, int64_t n, int64_t width, const int64_t* nvis, int32_t* picks,
                               int64_t k) = 0;
  // Attention's rows from the indexer's picks (kernels::PickRows): rows[t * ldrows + i] = offset +
  // block_base[p / per_block] + p % per_block for each pick p = picks[t * k + i] >= 0, -1 for p < 0.
  // All in device memory: the picks never come back to the host.
  virtual void PickRows(const int32_t* picks, int64_t m, int64_t k, const int32_t* block_base, int64_t per_block,
                        int32_t offset, int32_t* rows, int64_t ldrows) = 0;
  // The numerical watchdog: flags[i] = 1 where row rows[i] of x (ldx) holds a NaN or an Inf among
  // its first n values, else 0.
  virtual void FlagNonFinite(const float* x, int64_t ldx, int64_t n, const int32_t* rows, int64_t count,
                             int32_t* flags) = 0;
  virtual void CombineRows(const float* src, int64_t lds, const int32_t* offsets, const int32_t* src_rows,
                           const float* weights, int64_t rows, int64_t D, bool accumulate, float* out, int64_t ldo) = 0;
};

// Frees, at the end of its scope, whatever the backend's workspace handed out inside it (the
// operations' own temporaries included): a step's buffers, however the step ends.
class WorkspaceScope {
 public:
  explicit WorkspaceScope(Backend& be) : be_(be), mark_(be.Mark()) {}
  ~WorkspaceScope() { be_.Release(mark_); }
  WorkspaceScope(const WorkspaceScope&) = delete;
  WorkspaceScope& operator=(const WorkspaceScope&) = delete;

 private:
  Backend& be_;
  const WorkspaceMark mark_;
};

// Persistent memory of a backend, given back when its holder goes: the KV pool's rows, a sequence's
// compressor state. Move-only; empty when default-constructed.
class DeviceAllocation {
 public:
  DeviceAllocation() = default;
  // RESOURCE_EXHAUSTED (from Backend::Allocate) when the device has no room.
  static absl::StatusOr<DeviceAllocation> Make(Backend& be, int64_t bytes) {
    absl::StatusOr<void*> p = be.Allocate(bytes);
    if (!p.ok()) return p.status();
    DeviceAllocation a;
    a.be_ = &be, a.p_ = *p, a.bytes_ = bytes;
    return a;
  }
  DeviceAllocation(DeviceAllocation&& o) noexcept : be_(o.be_), p_(o.p_), bytes_(o.bytes_) { o.p_ = nullptr; }
  DeviceAllocation& operator=(DeviceAllocation&& o) noexcept {
    if (this != &o) {
      Reset();
      be_ = o.be_, p_ = o.p_, bytes_ = o.bytes_;
      o.p_ = nullptr;
    }
    return *this;
  }
  ~DeviceAllocation() { Reset(); }

  void* get() const { return p_; }
  float* floats() const { return static_cast<float*>(p_); }
  int64_t bytes() const { return p_ != nullptr ? bytes_ : 0; }

 private:
  void Reset() {
    if (p_ != nullptr) be_->Free(p_);
    p_ = nullptr;
  }
  Backend* be_ = nullptr;
  void* p_ = nullptr;
  int64_t bytes_ = 0;
};

// `n` values of T in a backend's step workspace for the rest of the scope: the model's step
// buffers, which are device memory wherever the backend runs. Objects of one backend are destroyed
// in reverse order of construction (automatic variables are); the memory is not initialized (Zero
// it where it must start at 0), and only the backend's operations and copies may touch it.
template <typename T>
class DeviceScratch {
  static_assert(std::is_trivially_copyable_v<T>, "DeviceScratch holds plain data only");

 public:
  DeviceScratch(Backend& be, int64_t n)
      : scope_(be),
        n_(std::max<int64_t>(n, 0)),
        data_(static_cast<T*>(be.Workspace(n_ * static_cast<int64_t>(sizeof(T))))) {}

  T* data() const { return data_; }
  int64_t size() const { return n_; }
  int64_t bytes() const { return n_ * static_cast<int64_t>(sizeof(T)); }

 private:
  const WorkspaceScope scope_;  // first: the mark is taken before the buffer is
  const int64_t n_;
  T* const data_;
};

// The backend `options` ask for: a CPU backend, or the GPU of this local rank. `auto` is CUDA when
// this build has the CUDA backend and a GPU is visible, else the CPU. Asking for CUDA where there
// is none is FAILED_PRECONDITION saying why (no CUDA in this build, no device, too few devices).
absl::StatusOr<std::unique_ptr<Backend>> MakeBackend(const BackendOptions& options);

// The CPU backend (always built). Of the options it takes local_size: the ranks of a node share
// its memory, so the default limit of what the weights stored for the tiles take
// (DSV4_CPU_STORE_LIMIT_MB) is each one's share.
std::unique_ptr<Backend> MakeCpuBackend(const BackendOptions& options = {});

}  // namespace dsv4
