// Backends for tests of code written against the seam (runtime/backend/backend.h).
//
// ForwardingBackend runs another backend's operations with a hook around each, told the operation's
// name and the pointers it takes that must be device memory. CountingBackend counts operations by
// name. GuardedBackend proves, without a GPU, that code touches the device's memory only as a GPU
// backend lets it: its memory (allocations and the step workspace) is one mapping that no thread
// may read or write except inside an operation or a copy (a host access is a fault, reported with
// the address), and an operation handed memory that is neither its own nor a placed weight latches
// an error naming the operation. The operations themselves are the CPU backend's.
#pragma once

#include <signal.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <initializer_list>
#include <map>
#include <memory>
#include <set>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "runtime/backend/backend.h"

namespace dsv4::testing {

class ForwardingBackend : public Backend {
 public:
  explicit ForwardingBackend(std::unique_ptr<Backend> in = MakeCpuBackend()) : in_(std::move(in)) {}

  Device device() const override { return in_->device(); }
  std::string Describe() const override { return in_->Describe(); }
  absl::StatusOr<void*> Allocate(int64_t bytes) override { return in_->Allocate(bytes); }
  void Free(void* p) override { in_->Free(p); }
  void* Workspace(int64_t bytes) override { return in_->Workspace(bytes); }
  void Reset() override { in_->Reset(); }
  WorkspaceMark Mark() const override { return in_->Mark(); }
  void Release(WorkspaceMark m) override { in_->Release(m); }
  void CopyToDevice(void* d, const void* s, int64_t b) override {
    const Op op(this, "CopyToDevice", {d});
    in_->CopyToDevice(d, s, b);
  }
  void CopyToHost(void* d, const void* s, int64_t b) override {
    const Op op(this, "CopyToHost", {s});
    in_->CopyToHost(d, s, b);
  }
  void CopyOnDevice(void* d, const void* s, int64_t b) override {
    const Op op(this, "CopyOnDevice", {d, s});
    in_->CopyOnDevice(d, s, b);
  }
  void Zero(void* x, int64_t bytes) override {
    const Op op(this, "Zero", {x});
    in_->Zero(x, bytes);
  }
  absl::StatusOr<kernels::WeightMatrix> PlaceWeight(const kernels::WeightMatrix& w, WeightUse use) override {
    const Op op(this, "PlaceWeight", {});
    return in_->PlaceWeight(w, use);
  }
  absl::StatusOr<std::unique_ptr<ExpertTable>> PlaceExperts(std::span<const ExpertViews> e) override {
    const Op op(this, "PlaceExperts", {});
    return in_->PlaceExperts(e);
  }
  absl::Status Synchronize() override { return in_->Synchronize(); }
  absl::Status status() const override { return in_->status(); }

  void Linear(const float* x, int64_t m, int64_t ldx, const kernels::WeightMatrix& w, float* y, int64_t ldy) override {
    const Op op(this, "Linear", {x, y, w.data});
    in_->Linear(x, m, ldx, w, y, ldy);
  }
  void LinearGroup(const kernels::LinearJob* jobs, int64_t n) override {
    const Op op(this, "LinearGroup", {});
    for (int64_t j = 0; j < n; ++j) Check("LinearGroup", {jobs[j].x, jobs[j].y, jobs[j].w->data});
    in_->LinearGroup(jobs, n);
  }
  void QdqFp8(float* x, int64_t m, int64_t n, int64_t ld, int g) override {
    const Op op(this, "QdqFp8", {x});
    in_->QdqFp8(x, m, n, ld, g);
  }
  void QdqFp4(float* x, int64_t m, int64_t n, int64_t ld, int g) override {
    const Op op(this, "QdqFp4", {x});
    in_->QdqFp4(x, m, n, ld, g);
  }
  void QdqFp4E4m3(float* x, int64_t m, int64_t n, int64_t ld, int g) override {
    const Op op(this, "QdqFp4E4m3", {x});
    in_->QdqFp4E4m3(x, m, n, ld, g);
  }
  void RmsNorm(const float* x, const float* w, float eps, int64_t m, int64_t n, int64_t ldx, float* y,
               int64_t ldy) override {
    const Op op(this, "RmsNorm", {x, w, y});
    in_->RmsNorm(x, w, eps, m, n, ldx, y, ldy);
  }
  void Rope(float* x, int64_t rows, int64_t ldx, int64_t half, const float* cos, const float* sin, int64_t per,
            bool inverse) override {
    const Op op(this, "Rope", {x, cos, sin});
    in_->Rope(x, rows, ldx, half, cos, sin, per, inverse);
  }
  void Hadamard(float* x, int64_t m, int64_t n, int64_t ld, float scale) override {
    const Op op(this, "Hadamard", {x});
    in_->Hadamard(x, m, n, ld, scale);
  }
  void HcPre(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale3,
             const float* base, int iters, float norm_eps, float hc_eps, float* collapsed, float* post, float* comb,
             float* pre) override {
    const Op op(this, "HcPre", {x, fn, scale3, base, collapsed, post, comb, pre});
    in_->HcPre(x, m, hc, D, ldx, fn, scale3, base, iters, norm_eps, hc_eps, collapsed, post, comb, pre);
  }
  void HcPost(const float* y, int64_t ldy, const float* post, const float* comb, int64_t m, int hc, int64_t D, float* x,
              int64_t ldx) override {
    const Op op(this, "HcPost", {y, post, comb, x});
    in_->HcPost(y, ldy, post, comb, m, hc, D, x, ldx);
  }
  void HcHead(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale,
              const float* base, float norm_eps, float hc_eps, float* out, int64_t ldo) override {
    const Op op(this, "HcHead", {x, fn, scale, base, out});
    in_->HcHead(x, m, hc, D, ldx, fn, scale, base, norm_eps, hc_eps, out, ldo);
  }
  void EmbedRows(const kernels::WeightMatrix& t, const int32_t* ids, int64_t n, int copies, float* out,
                 int64_t ldo) override {
    const Op op(this, "EmbedRows", {t.data, ids, out});
    in_->EmbedRows(t, ids, n, copies, out, ldo);
  }
  void SwiGlu(const float* g, const float* u, int64_t m, int64_t I, int64_t ld, const float* rw, float limit,
              float* h) override {
    const Op op(this, "SwiGlu", {g, u, rw, h});
    in_->SwiGlu(g, u, m, I, ld, rw, limit, h);
  }
  void SparseAttention(const float* q, int64_t m, int64_t H, int64_t d, const kernels::KvSegments& kv,
                       const int32_t* idx, int64_t k, const float* sink, float scale, float* out) override {
    const Op op(this, "SparseAttention", {q, kv.ptr[0], kv.ptr[1], kv.ptr[2], idx, sink, out});
    in_->SparseAttention(q, m, H, d, kv, idx, k, sink, scale, out);
  }
  void CompressPool(const float* kv, const float* score, int64_t ld, const float* ape, int64_t ratio, int64_t hd,
                    bool overlap, int64_t first_row, bool first_has_prev, int64_t num_blocks, float* out,
                    int64_t ldo) override {
    const Op op(this, "CompressPool", {kv, score, ape, out});
    in_->CompressPool(kv, score, ld, ape, ratio, hd, overlap, first_row, first_has_prev, num_blocks, out, ldo);
  }
  void IndexerScores(const float* q, const float* w, int64_t m, int64_t H, int64_t d, const float* keys, int64_t n,
                     const int64_t* nvis, float* score) override {
    const Op op(this, "IndexerScores", {q, w, keys, nvis, score});
    in_->IndexerScores(q, w, m, H, d, keys, n, nvis, score);
  }
  void TopK(const float* x, int64_t m, int64_t n, int64_t ldx, const int64_t* nvalid, int64_t k, int32_t* idx,
            int64_t ldidx) override {
    const Op op(this, "TopK", {x, nvalid, idx});
    in_->TopK(x, m, n, ldx, nvalid, k, idx, ldidx);
  }
  void Route(float* scores, int64_t m, int64_t E, int64_t K, float temp, kernels::RouterScore score, const float* bias,
             const int32_t* tid2eid, const int32_t* tokens, bool normalize, float norm_eps, float scaling,
             int32_t* experts, float* weights) override {
    const Op op(this, "Route", {scores, bias, tid2eid, tid2eid != nullptr ? tokens : nullptr, experts, weights});
    in_->Route(scores, m, E, K, temp, score, bias, tid2eid, tokens, normalize, norm_eps, scaling, experts, weights);
  }
  void SortSlotsByExpert(int32_t* experts, float* weights, int64_t m, int64_t K) override {
    const Op op(this, "SortSlotsByExpert", {experts, weights});
    in_->SortSlotsByExpert(experts, weights, m, K);
  }
  void GroupByExpert(const int32_t* experts, int64_t pairs, int64_t K, int64_t E, int32_t* offsets, int64_t* order,
                     int64_t* order_tokens, int32_t* position, int64_t* counts) override {
    const Op op(this, "GroupByExpert", {experts, offsets, order, order_tokens, position, counts});
    in_->GroupByExpert(experts, pairs, K, E, offsets, order, order_tokens, position, counts);
  }
  void ExpertFfnGroup(const ExpertFfnJob* jobs, int64_t n, const ExpertFfnOptions& o) override {
    const Op op(this, "ExpertFfnGroup", {});
    for (int64_t j = 0; j < n; ++j)
      Check("ExpertFfnGroup", {jobs[j].x, jobs[j].offsets, jobs[j].row_weights, jobs[j].y});
    in_->ExpertFfnGroup(jobs, n, o);
  }
  void GatherRows(const void* src, int64_t sp, const int64_t* ids, int64_t rows, int64_t rb, void* dst,
                  int64_t dp) override {
    const Op op(this, "GatherRows", {src, ids, dst});
    in_->GatherRows(src, sp, ids, rows, rb, dst, dp);
  }
  void ScatterRows(const void* src, int64_t sp, const int64_t* ids, int64_t rows, int64_t rb, void* dst,
                   int64_t dp) override {
    const Op op(this, "ScatterRows", {src, ids, dst});
    in_->ScatterRows(src, sp, ids, rows, rb, dst, dp);
  }
  void ScatterRowsTo(const void* src, int64_t sp, const uint64_t* dst, int64_t rows, int64_t rb) override {
    const Op op(this, "ScatterRowsTo", {src, dst});
    in_->ScatterRowsTo(src, sp, dst, rows, rb);
  }
  void Iota(int32_t* x, int64_t n, int32_t start, int32_t step) override {
    const Op op(this, "Iota", {x});
    in_->Iota(x, n, start, step);
  }
  void Scale(float* x, int64_t n, float f) override {
    const Op op(this, "Scale", {x});
    in_->Scale(x, n, f);
  }
  void EngramGate(const kernels::WeightMatrix& wkv, const float* gate_weight, float* emb, int64_t n, int hc, int64_t D,
                  float eps, bool act_qdq, float* x) override {
    const Op op(this, "EngramGate", {wkv.data, gate_weight, emb, x});
    in_->EngramGate(wkv, gate_weight, emb, n, hc, D, eps, act_qdq, x);
  }
  void SelectCandidateBlocks(const float* scores, int64_t n, int64_t width, const int64_t* nvis, int64_t topk_blocks,
                             int64_t block_size, uint8_t* keep) override {
    const Op op(this, "SelectCandidateBlocks", {scores, nvis, keep});
    in_->SelectCandidateBlocks(scores, n, width, nvis, topk_blocks, block_size, keep);
  }
  void MaskToCandidates(float* scores, int64_t n, int64_t width, const uint8_t* keep, int64_t block_size) override {
    const Op op(this, "MaskToCandidates", {scores, keep});
    in_->MaskToCandidates(scores, n, width, keep, block_size);
  }
  void DropMaskedPicks(const float* scores, int64_t n, int64_t width, const int64_t* nvis, int32_t* picks,
                       int64_t k) override {
    const Op op(this, "DropMaskedPicks", {scores, nvis, picks});
    in_->DropMaskedPicks(scores, n, width, nvis, picks, k);
  }
  void PickRows(const int32_t* picks, int64_t m, int64_t k, const int32_t* block_base, int64_t per_block,
                int32_t offset, int32_t* rows, int64_t ldrows) override {
    const Op op(this, "PickRows", {picks, block_base, rows});
    in_->PickRows(picks, m, k, block_base, per_block, offset, rows, ldrows);
  }
  void FlagNonFinite(const float* x, int64_t ldx, int64_t n, const int32_t* rows, int64_t count,
                     int32_t* flags) override {
    const Op op(this, "FlagNonFinite", {x, rows, flags});
    in_->FlagNonFinite(x, ldx, n, rows, count, flags);
  }
  void CombineRows(const float* src, int64_t lds, const int32_t* offsets, const int32_t* rows, const float* w,
                   int64_t n, int64_t D, bool accumulate, float* out, int64_t ldo) override {
    const Op op(this, "CombineRows", {src, offsets, rows, w, out});
    in_->CombineRows(src, lds, offsets, rows, w, n, D, accumulate, out, ldo);
  }

 protected:
  // Around every operation and copy; `device`: the pointers it takes that must be device memory
  // (null ones are absent arguments).
  virtual void Enter(const char* op, std::initializer_list<const void*> device) {}
  virtual void Leave() {}
  // More pointers of the operation being entered (the jobs of a grouped one).
  virtual void Check(const char* op, std::initializer_list<const void*> device) {}
  Backend& inner() { return *in_; }

 private:
  struct Op {
    Op(ForwardingBackend* b, const char* name, std::initializer_list<const void*> device) : be(b) {
      be->Enter(name, device);
    }
    ~Op() { be->Leave(); }
    ForwardingBackend* be;
  };
  std::unique_ptr<Backend> in_;
};

// Counts the operations by name, and the persistent allocations. With `separate_memory`, it says its
// memory is not the host's (as a GPU's), so that the model takes the device path (copies, uploads)
// the counts are about; the memory is still the host's, which the operations read.
class CountingBackend final : public ForwardingBackend {
 public:
  explicit CountingBackend(bool separate_memory = false) : separate_(separate_memory) {}
  bool HostIsDevice() const override { return !separate_ && ForwardingBackend::HostIsDevice(); }
  std::map<std::string, int> calls;
  int allocations = 0;
  absl::StatusOr<void*> Allocate(int64_t bytes) override {
    ++allocations;
    return ForwardingBackend::Allocate(bytes);
  }

 protected:
  void Enter(const char* op, std::initializer_list<const void*>) override { ++calls[op]; }

 private:
  const bool separate_;
};

class GuardedBackend final : public ForwardingBackend {
 public:
  // The device's memory: `bytes` of address space (committed only where used), the first quarter
  // for allocations, the rest the step workspace.
  explicit GuardedBackend(int64_t bytes = int64_t{1} << 30) : size_(bytes) {
    base_ = static_cast<char*>(
        mmap(nullptr, static_cast<size_t>(size_), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0));
    if (base_ == MAP_FAILED) std::abort();
    persistent_end_ = size_ / 4;
    workspace_ = persistent_end_;
    Region() = {base_, base_ + size_};
    struct sigaction sa {};
    sa.sa_sigaction = OnFault;
    sa.sa_flags = SA_SIGINFO;
    sigaction(SIGSEGV, &sa, nullptr);
  }
  ~GuardedBackend() override {
    Region() = {nullptr, nullptr};
    munmap(base_, static_cast<size_t>(size_));
  }

  std::string Describe() const override { return "guarded " + ForwardingBackend::Describe(); }
  bool HostIsDevice() const override { return false; }
  absl::StatusOr<void*> Allocate(int64_t bytes) override {
    const int64_t at = Align(persistent_);
    if (at + bytes > persistent_end_) return absl::ResourceExhaustedError("guarded backend: allocations are full");
    persistent_ = at + bytes;
    return static_cast<void*>(base_ + at);
  }
  // The address space is not reused: a freed allocation stays mapped (and guarded) until the end.
  void Free(void*) override {}
  void* Workspace(int64_t bytes) override {
    const int64_t at = Align(workspace_);
    if (at + bytes > size_) std::abort();
    workspace_ = at + bytes;
    return base_ + at;
  }
  void Reset() override { workspace_ = persistent_end_; }
  WorkspaceMark Mark() const override { return {0, workspace_}; }
  void Release(WorkspaceMark m) override { workspace_ = m.offset; }
  // A placed weight stays the CPU backend's view of host memory: the operations may read it.
  absl::StatusOr<kernels::WeightMatrix> PlaceWeight(const kernels::WeightMatrix& w, WeightUse use) override {
    auto placed = ForwardingBackend::PlaceWeight(w, use);
    if (placed.ok()) placed_.insert(placed->data);
    return placed;
  }
  absl::StatusOr<std::unique_ptr<ExpertTable>> PlaceExperts(std::span<const ExpertViews> e) override {
    for (const ExpertViews& v : e)
      for (const kernels::WeightMatrix* w : {v.w1, v.w2, v.w3})
        if (w != nullptr) placed_.insert(w->data);
    return ForwardingBackend::PlaceExperts(e);
  }
  absl::Status status() const override { return first_error_.ok() ? ForwardingBackend::status() : first_error_; }
  absl::Status Synchronize() override {
    const absl::Status s = ForwardingBackend::Synchronize();
    return first_error_.ok() ? s : first_error_;
  }

  bool IsDevice(const void* p) const {
    const char* c = static_cast<const char*>(p);
    return c >= base_ && c < base_ + size_;
  }

 protected:
  void Enter(const char* op, std::initializer_list<const void*> device) override {
    Check(op, device);
    if (depth_++ == 0) mprotect(base_, static_cast<size_t>(size_), PROT_READ | PROT_WRITE);
  }
  void Leave() override {
    if (--depth_ == 0) mprotect(base_, static_cast<size_t>(size_), PROT_NONE);
  }
  void Check(const char* op, std::initializer_list<const void*> device) override {
    for (const void* p : device)
      if (p != nullptr && !IsDevice(p) && placed_.count(p) == 0 && first_error_.ok())
        first_error_ = absl::FailedPreconditionError(absl::StrCat(op, " was handed host memory (",
                                                                  absl::Hex(reinterpret_cast<uintptr_t>(p)),
                                                                  ") where a GPU backend needs device memory"));
  }

 private:
  static int64_t Align(int64_t at) { return (at + 63) / 64 * 64; }
  struct Range {
    char* begin;
    char* end;
  };
  // The live guarded backend's memory, for the fault handler (one guarded backend at a time).
  static Range& Region() {
    static Range r{nullptr, nullptr};
    return r;
  }
  // A fault inside the device's memory is a host access to it: say so and stop (the test fails).
  static void OnFault(int, siginfo_t* info, void*) {
    const char* a = static_cast<const char*>(info->si_addr);
    const Range r = Region();
    const char* what = a >= r.begin && a < r.end ? "host access to device memory outside an operation\n"
                                                 : "segmentation fault outside the device's memory\n";
    if (write(2, what, std::strlen(what)) < 0) {
    }
    std::abort();
  }

  char* base_ = nullptr;
  int64_t size_ = 0, persistent_ = 0, persistent_end_ = 0, workspace_ = 0;
  int depth_ = 0;
  std::set<const void*> placed_;
  absl::Status first_error_;
};

}  // namespace dsv4::testing
