// The CUDA backend: one GPU (this local rank's), one non-blocking stream, kernels/cuda. Weights
// are copied to the device once (only the rectangle each rank's view covers); the step workspace is
// one preallocated pool, so a step makes no allocation and can be captured in a CUDA graph. Freed
// persistent memory is kept by size for reuse (kernels/cuda/memory_plan.h, BlockCache), and uploads
// are staged through pinned memory (StagingRing), so none waits for the stream.
#include <cuda_runtime_api.h>

#include <cstring>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/status.h"
#include "kernels/cuda/dispatch.h"
#include "kernels/cuda/kernels.h"
#include "kernels/cuda/memory.h"
#include "kernels/cuda/memory_plan.h"
#include "parallel/layout.h"
#include "runtime/backend/backend.h"

namespace dsv4 {

int VisibleCudaDevices() {
  int count = 0;
  return cudaGetDeviceCount(&count) == cudaSuccess ? count : 0;
}

namespace {

namespace kc = kernels::cuda;

absl::Status CudaError(cudaError_t err, const std::string& what) {
  const std::string msg = absl::StrCat(what, ": ", cudaGetErrorName(err), " (", cudaGetErrorString(err), ")");
  if (err == cudaErrorMemoryAllocation) return absl::ResourceExhaustedError(msg);
  if (err == cudaErrorInvalidValue) return absl::InvalidArgumentError(msg);
  return absl::InternalError(msg);
}

// A layer's experts on the device: for each of w1, w2, w3 a device array of one view per expert
// (experts not held here repeat a held one: their groups never have rows), and the host view that
// gives the shape and format.
class CudaExpertTable final : public ExpertTable {
 public:
  int64_t experts = 0;
  const kernels::WeightMatrix* w[3] = {nullptr, nullptr, nullptr};  // device arrays [experts]
  kernels::WeightMatrix like[3];
};

class CudaBackend final : public Backend {
 public:
  ~CudaBackend() override {
    if (stream_ != nullptr) {
      cudaStreamSynchronize(stream_);
      cudaStreamDestroy(stream_);
    }
    for (const auto& [p, size_class] : allocations_) cudaFree(p);
    for (void* p : free_blocks_.Drain()) cudaFree(p);
    for (cudaEvent_t e : events_) cudaEventDestroy(e);
    if (staging_ != nullptr) cudaFreeHost(staging_);
  }

  static absl::StatusOr<std::unique_ptr<Backend>> Create(const BackendOptions& o) {
    const int count = VisibleCudaDevices();
    if (count == 0)
      return absl::FailedPreconditionError("--device cuda: no CUDA device is visible (driver, CUDA_VISIBLE_DEVICES?)");
    DSV4_ASSIGN_OR_RETURN(const int device, DeviceForLocalRank(o.local_rank, o.local_size, count), "--device cuda");
    std::unique_ptr<CudaBackend> b(new CudaBackend());
    b->device_ = device;
    if (cudaError_t e = cudaSetDevice(device); e != cudaSuccess)
      return CudaError(e, absl::StrCat("cudaSetDevice(", device, ")"));
    if (cudaError_t e = cudaGetDeviceProperties(&b->props_, device); e != cudaSuccess)
      return CudaError(e, "cudaGetDeviceProperties");
    if (cudaError_t e = cudaStreamCreateWithFlags(&b->stream_, cudaStreamNonBlocking); e != cudaSuccess)
      return CudaError(e, "cudaStreamCreate");
    if (cudaError_t e = kc::DevicePool::Create(o.workspace_bytes, &b->workspace_); e != cudaSuccess)
      return CudaError(e, absl::StrCat("the step workspace (", o.workspace_bytes, " bytes)"));
    // Pinned staging for uploads; without it (the host refuses to pin) uploads go from pageable memory.
    if (cudaHostAlloc(&b->staging_, kStagingBytes, cudaHostAllocDefault) != cudaSuccess) {
      cudaGetLastError();
      b->staging_ = nullptr;
    }
    return std::unique_ptr<Backend>(std::move(b));
  }

  Device device() const override { return Device::kCuda; }
  std::string Describe() const override {
    return absl::StrFormat("cuda:%d %s (sm_%d%d, %.0f GiB)", device_, props_.name, props_.major, props_.minor,
                           static_cast<double>(props_.totalGlobalMem) / (1 << 30));
  }

  // Persistent memory comes from the freed blocks of its size class where one is cached (in stream
  // order, so without waiting), else from cudaMalloc; when the device is full, the cached blocks
  // go back to the driver and the allocation is tried once more.
  absl::StatusOr<void*> Allocate(int64_t bytes) override {
    const int64_t size_class = kc::BlockCache::SizeClass(bytes);
    void* p = free_blocks_.Take(size_class);
    if (p == nullptr) {
      cudaError_t e = cudaMalloc(&p, static_cast<size_t>(size_class));
      if (e == cudaErrorMemoryAllocation && free_blocks_.blocks() > 0) {
        cudaGetLastError();  // clears the failure
        for (void* q : free_blocks_.Drain()) cudaFree(q);
        e = cudaMalloc(&p, static_cast<size_t>(size_class));
      }
      if (e != cudaSuccess) return CudaError(e, absl::StrCat("cudaMalloc of ", bytes, " bytes on GPU ", device_));
    }
    allocations_.emplace(p, size_class);
    return p;
  }
  void Free(void* p) override {
    auto it = p == nullptr ? allocations_.end() : allocations_.find(p);
    if (it == allocations_.end()) return;
    const int64_t size_class = it->second;
    allocations_.erase(it);
    // Kept for the next allocation of its class; what the cache lets go, cudaFree gives back (it
    // waits for the device, so the stream's work that used the block is done by then).
    for (void* q : free_blocks_.Give(p, size_class))
      if (cudaError_t e = cudaFree(q); e != cudaSuccess) Latch(CudaError(e, "cudaFree"));
  }

  void* Workspace(int64_t bytes) override {
    void* p = workspace_.Allocate(bytes, 64);
    if (p != nullptr) return p;
    Latch(absl::ResourceExhaustedError(absl::StrCat("the step workspace (", workspace_.capacity(),
                                                    " bytes) is exhausted by a request of ", bytes, " bytes")));
    return workspace_.base();
  }
  void Reset() override { workspace_.Reset(); }
  WorkspaceMark Mark() const override { return {0, workspace_.used()}; }
  void Release(WorkspaceMark mark) override { workspace_.Reset(mark.offset); }

  // Uploads go through the pinned staging ring: the host copies into it and the device copy is
  // queued without waiting (a copy from pageable memory may wait for the whole stream first). A
  // region of the ring is rewritten once the copy that used it last has completed; uploads over
  // half the ring are copied directly.
  void CopyToDevice(void* dst, const void* src, int64_t bytes) override {
    if (!ok() || bytes <= 0) return;
    const kc::StagingRing::Region r = staging_ != nullptr ? ring_.Reserve(bytes) : kc::StagingRing::Region{};
    if (r.offset < 0) {
      Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_), "copy to device");
      return;
    }
    for (int64_t f : r.waits) {
      Check(cudaEventSynchronize(events_[f]), "staged copy to device");
      free_events_.push_back(f);
    }
    char* slot = static_cast<char*>(staging_) + r.offset;
    std::memcpy(slot, src, static_cast<size_t>(bytes));
    Check(cudaMemcpyAsync(dst, slot, bytes, cudaMemcpyHostToDevice, stream_), "copy to device");
    int64_t f = -1;
    if (!free_events_.empty()) {
      f = free_events_.back();
      free_events_.pop_back();
    } else {
      cudaEvent_t e = nullptr;
      if (!Check(cudaEventCreateWithFlags(&e, cudaEventDisableTiming), "staging event")) return;
      f = static_cast<int64_t>(events_.size());
      events_.push_back(e);
    }
    if (Check(cudaEventRecord(events_[f], stream_), "staging event")) ring_.Issued(f);
  }
  void CopyToHost(void* dst, const void* src, int64_t bytes) override {
    if (!ok() || bytes <= 0) return;
    Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_), "copy to host");
    Check(cudaStreamSynchronize(stream_), "copy to host");
  }
  void CopyOnDevice(void* dst, const void* src, int64_t bytes) override {
    if (ok() && bytes > 0) Check(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_), "device copy");
  }
  void Zero(void* x, int64_t bytes) override {
    if (ok() && bytes > 0) Check(cudaMemsetAsync(x, 0, bytes, stream_), "memset");
  }

  absl::StatusOr<kernels::WeightMatrix> PlaceWeight(const kernels::WeightMatrix& host, WeightUse) override {
    const auto key = std::make_tuple(host.data, host.row_begin, host.row_end, host.col_begin, host.col_end);
    if (auto it = placed_.find(key); it != placed_.end()) return it->second;
    if (const char* why = kc::CheckWeight(host); why != nullptr)
      return absl::InvalidArgumentError(absl::StrCat("a weight the CUDA kernels cannot take: ", why));
    const kc::WeightUploadPlan plan = kc::PlanWeightUpload(host);
    kc::DevicePool pool;
    const int64_t bytes = plan.data.bytes() + plan.scales.bytes() + 2 * kc::kDeviceAlignment;
    if (cudaError_t e = kc::DevicePool::Create(bytes, &pool); e != cudaSuccess)
      return CudaError(e, absl::StrCat("placing a ", bytes, "-byte weight on GPU ", device_));
    kernels::WeightMatrix device;
    if (cudaError_t e = kc::UploadWeight(host, pool, stream_, &device); e != cudaSuccess)
      return CudaError(e, "uploading a weight");
    weights_.push_back(std::move(pool));
    placed_.emplace(key, device);
    return device;
  }

  absl::StatusOr<std::unique_ptr<ExpertTable>> PlaceExperts(std::span<const ExpertViews> experts) override {
    auto table = std::make_unique<CudaExpertTable>();
    table->experts = static_cast<int64_t>(experts.size());
    std::vector<kernels::WeightMatrix> views[3];
    for (auto& v : views) v.resize(experts.size());
    int64_t first_held = -1;
    for (size_t e = 0; e < experts.size(); ++e) {
      if (experts[e].w1 == nullptr) continue;
      const kernels::WeightMatrix* host[3] = {experts[e].w1, experts[e].w2, experts[e].w3};
      for (int k = 0; k < 3; ++k) {
        DSV4_ASSIGN_OR_RETURN(views[k][e], PlaceWeight(*host[k], WeightUse::kProducts), "expert ", e);
      }
      if (first_held < 0) first_held = static_cast<int64_t>(e);
    }
    if (first_held < 0) return absl::InvalidArgumentError("a layer with no expert held on this rank");
    for (int k = 0; k < 3; ++k) {
      table->like[k] = views[k][first_held];
      for (size_t e = 0; e < experts.size(); ++e)
        if (experts[e].w1 == nullptr) views[k][e] = views[k][first_held];
      const int64_t bytes = static_cast<int64_t>(experts.size() * sizeof(kernels::WeightMatrix));
      DSV4_ASSIGN_OR_RETURN(void* dev, Allocate(bytes));
      CopyToDevice(dev, views[k].data(), bytes);
      table->w[k] = static_cast<const kernels::WeightMatrix*>(dev);
    }
    DSV4_RETURN_IF_ERROR(Synchronize());
    return std::unique_ptr<ExpertTable>(std::move(table));
  }

  absl::Status Synchronize() override {
    if (ok()) Check(cudaStreamSynchronize(stream_), "synchronize");
    return status_;
  }
  absl::Status status() const override { return status_; }

  // ---- operations -----------------------------------------------------------------------------
  void Linear(const float* x, int64_t m, int64_t ldx, const kernels::WeightMatrix& w, float* y, int64_t ldy) override {
    if (ok()) Check(kc::Linear(x, m, ldx, w, y, ldy, stream_), "Linear");
  }
  void LinearGroup(const kernels::LinearJob* jobs, int64_t num_jobs) override {
    for (int64_t j = 0; j < num_jobs && ok(); ++j)
      if (jobs[j].m > 0)
        Check(kc::Linear(jobs[j].x, jobs[j].m, jobs[j].ldx, *jobs[j].w, jobs[j].y, jobs[j].ldy, stream_),
              "LinearGroup");
  }
  void QdqFp8(float* x, int64_t m, int64_t n, int64_t ld, int group) override {
    if (ok() && m > 0) Check(kc::QdqFp8(x, m, n, ld, group, stream_), "QdqFp8");
  }
  void QdqFp4(float* x, int64_t m, int64_t n, int64_t ld, int group) override {
    if (ok() && m > 0) Check(kc::QdqFp4(x, m, n, ld, group, stream_), "QdqFp4");
  }
  void QdqFp4E4m3(float* x, int64_t m, int64_t n, int64_t ld, int group) override {
    if (ok() && m > 0) Check(kc::QdqFp4E4m3(x, m, n, ld, group, stream_), "QdqFp4E4m3");
  }
  void RmsNorm(const float* x, const float* w, float eps, int64_t m, int64_t n, int64_t ldx, float* y,
               int64_t ldy) override {
    if (ok() && m > 0) Check(kc::RmsNorm(x, w, eps, m, n, ldx, y, ldy, stream_), "RmsNorm");
  }
  void Rope(float* x, int64_t rows, int64_t ldx, int64_t half, const float* cos, const float* sin,
            int64_t rows_per_entry, bool inverse) override {
    if (ok() && rows > 0) Check(kc::Rope(x, rows, ldx, half, cos, sin, rows_per_entry, inverse, stream_), "Rope");
  }
  void Hadamard(float* x, int64_t m, int64_t n, int64_t ld, float scale) override {
    if (ok() && m > 0) Check(kc::Hadamard(x, m, n, ld, scale, stream_), "Hadamard");
  }
  void HcPre(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale3,
             const float* base, int iters, float norm_eps, float hc_eps, float* collapsed, float* post, float* comb,
             float* pre) override {
    if (ok() && m > 0)
      Check(kc::HcPre(x, m, hc, D, ldx, fn, scale3, base, iters, norm_eps, hc_eps, collapsed, post, comb, pre, stream_),
            "HcPre");
  }
  void HcPost(const float* y, int64_t ldy, const float* post, const float* comb, int64_t m, int hc, int64_t D, float* x,
              int64_t ldx) override {
    if (ok() && m > 0) Check(kc::HcPost(y, ldy, post, comb, m, hc, D, x, ldx, stream_), "HcPost");
  }
  void HcHead(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale,
              const float* base, float norm_eps, float hc_eps, float* out, int64_t ldo) override {
    if (ok() && m > 0)
      Check(kc::HcHead(x, m, hc, D, ldx, fn, scale, base, norm_eps, hc_eps, out, ldo, stream_), "HcHead");
  }
  void EmbedRows(const kernels::WeightMatrix& table, const int32_t* ids, int64_t n, int copies, float* out,
                 int64_t ldo) override {
    if (ok() && n > 0) Check(kc::EmbedRows(table, ids, n, copies, out, ldo, stream_), "EmbedRows");
  }
  void SwiGlu(const float* g, const float* u, int64_t m, int64_t I, int64_t ld, const float* row_weight, float limit,
              float* h) override {
    if (ok() && m > 0) Check(kc::SwiGlu(g, u, m, I, ld, row_weight, limit, h, stream_), "SwiGlu");
  }
  void SparseAttention(const float* q, int64_t m, int64_t H, int64_t d, const kernels::KvSegments& kv,
                       const int32_t* idx, int64_t k, const float* sink, float scale, float* out) override {
    if (ok() && m > 0) Check(kc::SparseAttention(q, m, H, d, kv, idx, k, sink, scale, out, stream_), "SparseAttention");
  }
  void CompressPool(const float* kv, const float* score, int64_t ld, const float* ape, int64_t ratio, int64_t hd,
                    bool overlap, int64_t first_row, bool first_has_prev, int64_t num_blocks, float* out,
                    int64_t ldo) override {
    if (ok() && num_blocks > 0)
      Check(kc::CompressPool(kv, score, ld, ape, ratio, hd, overlap, first_row, first_has_prev, num_blocks, out, ldo,
                             stream_),
            "CompressPool");
  }
  void IndexerScores(const float* q, const float* w, int64_t m, int64_t H, int64_t d, const float* keys, int64_t n,
                     const int64_t* nvis, float* score) override {
    if (ok() && m > 0 && n > 0) Check(kc::IndexerScores(q, w, m, H, d, keys, n, nvis, score, stream_), "IndexerScores");
  }
  void TopK(const float* x, int64_t m, int64_t n, int64_t ldx, const int64_t* nvalid, int64_t k, int32_t* idx,
            int64_t ldidx) override {
    if (ok() && m > 0 && k > 0) Check(kc::TopK(x, m, n, ldx, nvalid, k, idx, ldidx, stream_), "TopK");
  }
  void Route(float* scores, int64_t m, int64_t E, int64_t K, float temp, kernels::RouterScore score, const float* bias,
             const int32_t* tid2eid, const int32_t* tokens, bool normalize, float norm_eps, float scaling,
             int32_t* experts, float* weights) override {
    if (ok() && m > 0)
      Check(kc::Route(scores, m, E, K, temp, score, bias, tid2eid, tokens, normalize, norm_eps, scaling, experts,
                      weights, stream_),
            "Route");
  }
  void GroupByExpert(const int32_t* experts, int64_t pairs, int64_t K, int64_t E, int32_t* offsets, int64_t* order,
                     int64_t* order_tokens, int32_t* position, int64_t* counts) override {
    if (!ok()) return;
    const int64_t bytes = kc::GroupByExpertWorkspaceBytes(pairs, E);
    if (bytes < 0) return Latch(absl::InvalidArgumentError(absl::StrCat("GroupByExpert of ", pairs, " pairs")));
    void* w = Workspace(bytes);
    if (ok())
      Check(kc::GroupByExpert(experts, pairs, K, E, offsets, order, order_tokens, position, counts, w, bytes, stream_),
            "GroupByExpert");
  }
  void SortSlotsByExpert(int32_t* experts, float* weights, int64_t m, int64_t K) override {
    if (ok() && m > 0) Check(kc::SortSlotsByExpert(experts, weights, m, K, stream_), "SortSlotsByExpert");
  }
  // The jobs one after the other on the stream (each is three grouped launches).
  void ExpertFfnGroup(const ExpertFfnJob* jobs, int64_t num_jobs, const ExpertFfnOptions& o) override {
    for (int64_t j = 0; j < num_jobs; ++j)
      OneExpertFfn(*jobs[j].table, jobs[j].x, jobs[j].ldx, jobs[j].offsets, jobs[j].max_rows, jobs[j].row_weights, o,
                   jobs[j].y, jobs[j].ldy);
  }
  void OneExpertFfn(const ExpertTable& table, float* x, int64_t ldx, const int32_t* offsets, int64_t max_rows,
                    const float* row_weights, const ExpertFfnOptions& o, float* y, int64_t ldy) {
    if (!ok() || max_rows == 0) return;
    const auto& t = static_cast<const CudaExpertTable&>(table);
    const int64_t I = t.like[0].rows(), D = t.like[1].rows();
    float* g = WorkspaceF32(max_rows * I);
    float* u = WorkspaceF32(max_rows * I);
    if (o.qdq && IsQuantized(t.like[0])) QdqFp8(x, max_rows, D, ldx, o.qdq_group);
    if (ok()) Check(kc::GroupedLinear(x, ldx, t.w[0], t.like[0], offsets, t.experts, max_rows, g, I, stream_), "w1");
    if (ok()) Check(kc::GroupedLinear(x, ldx, t.w[2], t.like[2], offsets, t.experts, max_rows, u, I, stream_), "w3");
    SwiGlu(g, u, max_rows, I, I, row_weights, o.swiglu_limit, g);
    if (o.qdq && IsQuantized(t.like[1])) QdqFp8(g, max_rows, I, I, o.qdq_group);
    if (ok()) Check(kc::GroupedLinear(g, I, t.w[1], t.like[1], offsets, t.experts, max_rows, y, ldy, stream_), "w2");
  }
  void GatherRows(const void* src, int64_t src_pitch, const int64_t* ids, int64_t rows, int64_t row_bytes, void* dst,
                  int64_t dst_pitch) override {
    if (ok() && rows > 0)
      Check(kc::GatherRows(src, src_pitch, ids, rows, row_bytes, dst, dst_pitch, stream_), "GatherRows");
  }
  void ScatterRows(const void* src, int64_t src_pitch, const int64_t* ids, int64_t rows, int64_t row_bytes, void* dst,
                   int64_t dst_pitch) override {
    if (ok() && rows > 0)
      Check(kc::ScatterRows(src, src_pitch, ids, rows, row_bytes, dst, dst_pitch, stream_), "ScatterRows");
  }
  void ScatterRowsTo(const void* src, int64_t src_pitch, const uint64_t* dst, int64_t rows,
                     int64_t row_bytes) override {
    if (ok() && rows > 0) Check(kc::ScatterRowsTo(src, src_pitch, dst, rows, row_bytes, stream_), "ScatterRowsTo");
  }
  void Iota(int32_t* x, int64_t n, int32_t start, int32_t step) override {
    if (ok() && n > 0) Check(kc::Iota(x, n, start, step, stream_), "Iota");
  }
  void Scale(float* x, int64_t n, float s) override {
    if (ok() && n > 0) Check(kc::Scale(x, n, s, stream_), "Scale");
  }
  void EngramGate(const kernels::WeightMatrix& wkv, const float* gate_weight, float* emb, int64_t n, int hc, int64_t D,
                  float eps, bool act_qdq, float* x) override {
    if (!ok() || n == 0) return;
    const int64_t K = wkv.cols(), N = wkv.rows();
    if (act_qdq && IsQuantized(wkv)) QdqFp8(emb, n, K, K, 32);
    const DeviceScratch<float> kv(*this, n * N);
    Linear(emb, n, K, wkv, kv.data(), N);
    if (ok()) Check(kc::EngramGateRows(kv.data(), N, gate_weight, n, hc, D, eps, x, stream_), "EngramGate");
  }
  void SelectCandidateBlocks(const float* scores, int64_t n, int64_t width, const int64_t* nvis, int64_t topk_blocks,
                             int64_t block_size, uint8_t* keep) override {
    if (!ok() || n == 0 || width == 0) return;
    const int64_t bytes = kc::SelectCandidateBlocksWorkspaceBytes(n, width, topk_blocks, block_size);
    if (bytes < 0) return Latch(absl::InvalidArgumentError(absl::StrCat("SelectCandidateBlocks of ", n, " x ", width)));
    void* w = Workspace(bytes);
    if (ok())
      Check(kc::SelectCandidateBlocks(scores, n, width, nvis, topk_blocks, block_size, keep, w, bytes, stream_),
            "SelectCandidateBlocks");
  }
  void MaskToCandidates(float* scores, int64_t n, int64_t width, const uint8_t* keep, int64_t block_size) override {
    if (ok() && n > 0 && width > 0)
      Check(kc::MaskToCandidates(scores, n, width, keep, block_size, stream_), "MaskToCandidates");
  }
  void DropMaskedPicks(const float* scores, int64_t n, int64_t width, const int64_t* nvis, int32_t* picks,
                       int64_t k) override {
    if (ok() && n > 0 && k > 0)
      Check(kc::DropMaskedPicks(scores, n, width, nvis, picks, k, stream_), "DropMaskedPicks");
  }
  void PickRows(const int32_t* picks, int64_t m, int64_t k, const int32_t* block_base, int64_t per_block,
                int32_t offset, int32_t* rows, int64_t ldrows) override {
    if (ok() && m > 0 && k > 0)
      Check(kc::PickRows(picks, m, k, block_base, per_block, offset, rows, ldrows, stream_), "PickRows");
  }
  void FlagNonFinite(const float* x, int64_t ldx, int64_t n, const int32_t* rows, int64_t count,
                     int32_t* flags) override {
    if (ok() && count > 0) Check(kc::FlagNonFinite(x, ldx, n, rows, count, flags, stream_), "FlagNonFinite");
  }
  void CombineRows(const float* src, int64_t lds, const int32_t* offsets, const int32_t* src_rows, const float* weights,
                   int64_t rows, int64_t D, bool accumulate, float* out, int64_t ldo) override {
    if (ok() && rows > 0)
      Check(kc::CombineRows(src, lds, offsets, src_rows, weights, rows, D, accumulate, out, ldo, stream_),
            "CombineRows");
  }

 private:
  CudaBackend() = default;
  bool ok() const { return status_.ok(); }
  void Latch(absl::Status st) {
    if (status_.ok()) status_ = std::move(st);
  }
  bool Check(cudaError_t err, const char* op) {
    if (err != cudaSuccess) Latch(CudaError(err, absl::StrCat(op, " on GPU ", device_)));
    return err == cudaSuccess;
  }

  int device_ = 0;
  cudaDeviceProp props_{};
  cudaStream_t stream_ = nullptr;
  kc::DevicePool workspace_;
  absl::flat_hash_map<void*, int64_t> allocations_;  // live persistent blocks -> size class
  // Freed persistent blocks for reuse, up to 1 GiB: tens of a V4-Flash-sized model's per-sequence
  // compressor states, which a server allocates and frees with each request.
  kc::BlockCache free_blocks_{int64_t{1} << 30};
  // Pinned host memory uploads are staged in (null: none), the ring's bookkeeping, and the events
  // that tell when a staged copy is done (indices are the ring's fences).
  static constexpr int64_t kStagingBytes = int64_t{64} << 20;
  void* staging_ = nullptr;
  kc::StagingRing ring_{kStagingBytes};
  std::vector<cudaEvent_t> events_;
  std::vector<int64_t> free_events_;
  std::vector<kc::DevicePool> weights_;
  std::map<std::tuple<const void*, int64_t, int64_t, int64_t, int64_t>, kernels::WeightMatrix> placed_;
  absl::Status status_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Backend>> MakeCudaBackend(const BackendOptions& options) {
  return CudaBackend::Create(options);
}

}  // namespace dsv4
