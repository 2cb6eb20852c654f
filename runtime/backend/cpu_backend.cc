// The CPU backend: host memory and kernels/cpu. Weights stay views of the mmapped checkpoint.
#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <memory>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "base/env.h"
#include "base/log.h"
#include "base/page_arena.h"
#include "base/status.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/scratch.h"
#include "kernels/cpu/thread_pool.h"
#include "runtime/backend/backend.h"

namespace dsv4 {
namespace {

// The host memory the copies stored for this CPU may take together: DSV4_CPU_STORE_LIMIT_MB, by
// default three quarters of what the system says it can give when the backend starts (the KV pool,
// the step's workspaces and other processes keep the rest), shared by the node's ranks. A copy that
// would pass it is not made: its weight runs as it is, on the avx512_bf16 paths (slower; the
// results that level gives), where packing on would end in the OOM killer part-way through
// start-up. The first refusal is logged. Expert tables give their copies' share back when they go
// (a rebalance places new ones first).
class StoreBudget {
 public:
  explicit StoreBudget(int local_size) {
    const int64_t mb = env::Int(env::Knob::kCpuStoreLimit);
    const int64_t available = AvailableHostMemoryBytes();
    limit_ = mb >= 0          ? mb << 20
             : available >= 0 ? available / 4 * 3 / std::max(local_size, 1)
                              : std::numeric_limits<int64_t>::max();
  }
  // Whether a copy of `bytes` is made (and charged).
  bool Take(int64_t bytes) {
    if (bytes <= limit_ - used_) {
      used_ += bytes;
      return true;
    }
    auto size = [](int64_t b) {
      return b < (1 << 20) ? absl::StrFormat("%.1f KiB", static_cast<double>(b) / (1 << 10))
                           : absl::StrFormat("%.1f MiB", static_cast<double>(b) / (1 << 20));
    };
    if (!warned_)
      DSV4_LOG(kWarn, "weights stored for the AMX tiles reach ", size(used_), " of their limit of ", size(limit_), " (",
               env::Info(env::Knob::kCpuStoreLimit).name, "): a copy of ", size(bytes),
               " is not made, nor any that would pass the limit; those weights run as they are, on the "
               "avx512_bf16 paths");
    warned_ = true;
    return false;
  }
  void Give(int64_t bytes) { used_ -= bytes; }

 private:
  int64_t limit_ = 0, used_ = 0;
  bool warned_ = false;
};

// w stored for this CPU (kernels::StoreForThisCpu) in memory from `arena` where the budget takes
// it (adding what it charges to *charged), or w itself.
absl::StatusOr<kernels::WeightMatrix> Store(const kernels::WeightMatrix& w, PageArena& arena, StoreBudget& budget,
                                            int64_t* charged = nullptr) {
  const int64_t bytes = kernels::StoredBytes(w);
  if (bytes == 0 || !budget.Take(bytes)) return w;
  if (charged != nullptr) *charged += bytes;
  DSV4_ASSIGN_OR_RETURN(uint8_t * out, arena.Allocate(bytes), "storing a ", w.rows(), " x ", w.cols(),
                        " weight for this CPU");
  return kernels::StoreForThisCpu(w, out);
}

// A bump allocator over chunks that are kept across Reset(): once a step has run, the same step
// allocates nothing. Pointers stay valid until Reset(), or until the Release() of a mark taken
// before them.
class ChunkArena {
 public:
  void* Allocate(int64_t bytes) {
    bytes = std::max<int64_t>(64, (bytes + 63) / 64 * 64);
    while (current_ < chunks_.size() && used_ + bytes > chunks_[current_].size) ++current_, used_ = 0;
    if (current_ == chunks_.size()) {
      const int64_t size = std::max<int64_t>(bytes, int64_t{16} << 20);
      char* p = static_cast<char*>(std::aligned_alloc(64, static_cast<size_t>(size)));
      DSV4_CHECK(p != nullptr, "out of host memory for a ", size, "-byte step workspace");
      chunks_.push_back(Chunk{std::unique_ptr<char, FreeDeleter>(p), size});
      used_ = 0;
    }
    void* p = chunks_[current_].data.get() + used_;
    used_ += bytes;
    return p;
  }
  void Reset() { current_ = 0, used_ = 0; }
  WorkspaceMark Mark() const { return {static_cast<int64_t>(current_), used_}; }
  void Release(WorkspaceMark m) { current_ = static_cast<size_t>(m.chunk), used_ = m.offset; }

 private:
  struct FreeDeleter {
    void operator()(char* p) const { std::free(p); }
  };
  struct Chunk {
    std::unique_ptr<char, FreeDeleter> data;
    int64_t size;
  };
  std::vector<Chunk> chunks_;
  size_t current_ = 0;
  int64_t used_ = 0;
};

// The experts' matrices as this CPU multiplies them fastest (kernels::StoreForThisCpu: FP8/FP4 ones,
// whose inputs are rounded, stored for the tiles at the amx level), else the checkpoint's views.
class CpuExpertTable final : public ExpertTable {
 public:
  static absl::StatusOr<std::unique_ptr<CpuExpertTable>> Make(std::span<const ExpertViews> e,
                                                              std::shared_ptr<StoreBudget> budget) {
    std::unique_ptr<CpuExpertTable> t(new CpuExpertTable(e, std::move(budget)));
    for (size_t i = 0; i < t->experts.size(); ++i) {
      const kernels::WeightMatrix** w[3] = {&t->experts[i].w1, &t->experts[i].w2, &t->experts[i].w3};
      for (int k = 0; k < 3; ++k) {
        if (*w[k] == nullptr) continue;
        kernels::WeightMatrix& s = t->stored_[3 * i + k];
        DSV4_ASSIGN_OR_RETURN(s, Store(**w[k], t->arena_, *t->budget_, &t->charged_), "expert ", i);
        if (s.data != (*w[k])->data) *w[k] = &s;
      }
    }
    return t;
  }
  ~CpuExpertTable() override { budget_->Give(charged_); }
  std::vector<ExpertViews> experts;

 private:
  CpuExpertTable(std::span<const ExpertViews> e, std::shared_ptr<StoreBudget> budget)
      : experts(e.begin(), e.end()), budget_(std::move(budget)), stored_(3 * e.size()) {}
  std::shared_ptr<StoreBudget> budget_;
  int64_t charged_ = 0;  // of budget_, given back when the table goes
  PageArena arena_;
  std::vector<kernels::WeightMatrix> stored_;  // never resized after construction: the views point into it
};

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(int local_size) : budget_(std::make_shared<StoreBudget>(local_size)) {}
  Device device() const override { return Device::kCpu; }
  std::string Describe() const override {
    return absl::StrCat("cpu (", kernels::IsaName(kernels::ActiveIsa()), ", ", kernels::NumThreads(), " threads)");
  }

  // Not value-initialized: the pages of a large reservation (a KV pool) are backed as they are
  // first written.
  absl::StatusOr<void*> Allocate(int64_t bytes) override {
    std::unique_ptr<char[]> p(new (std::nothrow) char[std::max<int64_t>(bytes, 1)]);
    if (p == nullptr)
      return absl::ResourceExhaustedError(absl::StrCat("cannot allocate ", bytes >> 20, " MiB of host memory"));
    void* at = p.get();
    persistent_.emplace(at, std::move(p));
    return at;
  }
  void Free(void* p) override {
    if (p != nullptr) persistent_.erase(p);
  }
  void* Workspace(int64_t bytes) override { return workspace_.Allocate(bytes); }
  void Reset() override { workspace_.Reset(); }
  WorkspaceMark Mark() const override { return workspace_.Mark(); }
  void Release(WorkspaceMark mark) override { workspace_.Release(mark); }
  void CopyToDevice(void* dst, const void* src, int64_t bytes) override { Copy(dst, src, bytes); }
  void CopyToHost(void* dst, const void* src, int64_t bytes) override { Copy(dst, src, bytes); }
  void CopyOnDevice(void* dst, const void* src, int64_t bytes) override { Copy(dst, src, bytes); }
  void Zero(void* x, int64_t bytes) override {
    if (bytes > 0) std::memset(x, 0, static_cast<size_t>(bytes));
  }
  // At the amx level, a copy stored for the tiles (kernels::StoreForThisCpu), kept for the backend's
  // life, of the FP8/FP4 weights whose products take inputs rounded as the reference rounds them.
  // Not an embedding table (read by rows), nor wo_a's FP8 rows, whose inputs are not rounded: with
  // wo_a stored, batch-1 decode read 0.74-0.79 of STREAM, against 0.81-0.84 without.
  absl::StatusOr<kernels::WeightMatrix> PlaceWeight(const kernels::WeightMatrix& host, WeightUse use) override {
    if (use != WeightUse::kProducts) return host;
    return Store(host, stored_, *budget_);
  }
  absl::StatusOr<std::unique_ptr<ExpertTable>> PlaceExperts(std::span<const ExpertViews> experts) override {
    DSV4_ASSIGN_OR_RETURN(auto table, CpuExpertTable::Make(experts, budget_));
    return std::unique_ptr<ExpertTable>(std::move(table));
  }
  absl::Status Synchronize() override { return absl::OkStatus(); }
  absl::Status status() const override { return absl::OkStatus(); }

  void Linear(const float* x, int64_t m, int64_t ldx, const kernels::WeightMatrix& w, float* y, int64_t ldy) override {
    kernels::Linear(x, m, ldx, w, y, ldy);
  }
  void LinearGroup(const kernels::LinearJob* jobs, int64_t num_jobs) override { kernels::LinearGroup(jobs, num_jobs); }
  void QdqFp8(float* x, int64_t m, int64_t n, int64_t ld, int group) override { kernels::QdqFp8(x, m, n, ld, group); }
  void QdqFp4(float* x, int64_t m, int64_t n, int64_t ld, int group) override { kernels::QdqFp4(x, m, n, ld, group); }
  void QdqFp4E4m3(float* x, int64_t m, int64_t n, int64_t ld, int group) override {
    kernels::QdqFp4E4m3(x, m, n, ld, group);
  }
  void RmsNorm(const float* x, const float* w, float eps, int64_t m, int64_t n, int64_t ldx, float* y,
               int64_t ldy) override {
    kernels::RmsNorm(x, w, eps, m, n, ldx, y, ldy);
  }
  void Rope(float* x, int64_t rows, int64_t ldx, int64_t half, const float* cos, const float* sin,
            int64_t rows_per_entry, bool inverse) override {
    kernels::Rope(x, rows, ldx, half, cos, sin, rows_per_entry, inverse);
  }
  void Hadamard(float* x, int64_t m, int64_t n, int64_t ld, float scale) override {
    kernels::Hadamard(x, m, n, ld, scale);
  }
  void HcPre(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale3,
             const float* base, int iters, float norm_eps, float hc_eps, float* collapsed, float* post, float* comb,
             float* pre) override {
    kernels::HcPre(x, m, hc, D, ldx, fn, scale3, base, iters, norm_eps, hc_eps, collapsed, post, comb, pre);
  }
  void HcPost(const float* y, int64_t ldy, const float* post, const float* comb, int64_t m, int hc, int64_t D, float* x,
              int64_t ldx) override {
    kernels::HcPost(y, ldy, post, comb, m, hc, D, x, ldx);
  }
  void HcHead(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale,
              const float* base, float norm_eps, float hc_eps, float* out, int64_t ldo) override {
    kernels::HcHead(x, m, hc, D, ldx, fn, scale, base, norm_eps, hc_eps, out, ldo);
  }
  void EmbedRows(const kernels::WeightMatrix& table, const int32_t* ids, int64_t n, int copies, float* out,
                 int64_t ldo) override {
    kernels::EmbedRows(table, ids, n, copies, out, ldo);
  }
  void SwiGlu(const float* g, const float* u, int64_t m, int64_t I, int64_t ld, const float* row_weight, float limit,
              float* h) override {
    kernels::SwiGlu(g, u, m, I, ld, row_weight, limit, h);
  }
  void SparseAttention(const float* q, int64_t m, int64_t H, int64_t d, const kernels::KvSegments& kv,
                       const int32_t* idx, int64_t k, const float* sink, float scale, float* out) override {
    kernels::SparseAttention(q, m, H, d, kv, idx, k, sink, scale, out);
  }
  void CompressPool(const float* kv, const float* score, int64_t ld, const float* ape, int64_t ratio, int64_t hd,
                    bool overlap, int64_t first_row, bool first_has_prev, int64_t num_blocks, float* out,
                    int64_t ldo) override {
    kernels::CompressPool(kv, score, ld, ape, ratio, hd, overlap, first_row, first_has_prev, num_blocks, out, ldo);
  }
  void IndexerScores(const float* q, const float* w, int64_t m, int64_t H, int64_t d, const float* keys, int64_t n,
                     const int64_t* nvis, float* score) override {
    kernels::IndexerScores(q, w, m, H, d, keys, n, nvis, score);
  }
  void TopK(const float* x, int64_t m, int64_t n, int64_t ldx, const int64_t* nvalid, int64_t k, int32_t* idx,
            int64_t ldidx) override {
    kernels::TopK(x, m, n, ldx, nvalid, k, idx, ldidx);
  }
  void Route(float* scores, int64_t m, int64_t E, int64_t K, float temp, kernels::RouterScore score, const float* bias,
             const int32_t* tid2eid, const int32_t* tokens, bool normalize, float norm_eps, float scaling,
             int32_t* experts, float* weights) override {
    kernels::Route(scores, m, E, K, temp, score, bias, tid2eid, tokens, normalize, norm_eps, scaling, experts, weights);
  }
  void GroupByExpert(const int32_t* experts, int64_t pairs, int64_t K, int64_t E, int32_t* offsets, int64_t* order,
                     int64_t* order_tokens, int32_t* position, int64_t* counts) override {
    kernels::GroupByExpert(experts, pairs, K, E, offsets, order, order_tokens, position, counts);
  }
  void SortSlotsByExpert(int32_t* experts, float* weights, int64_t m, int64_t K) override {
    kernels::SortSlotsByExpert(experts, weights, m, K);
  }
  // The experts that received rows, of every job, as three grouped products (w1 and w3 together,
  // then w2): every expert's weights are read once for all its rows, and the threads share out all
  // the products. The temporaries live only for the call (the thread's scratch, not the step
  // workspace: a layer's g and u are dead once its w2 has run).
  void ExpertFfnGroup(const ExpertFfnJob* jobs, int64_t num_jobs, const ExpertFfnOptions& o) override {
    using kernels::NoInit;
    using kernels::Scratch;
    Scratch<int64_t> first(num_jobs + 1, NoInit{});  // job j's rows of g and u start at first[j]
    Scratch<int64_t> inter(num_jobs, NoInit{});
    int64_t total = 0, num_products = 0;
    for (int64_t j = 0; j < num_jobs; ++j) {
      const auto& experts = static_cast<const CpuExpertTable&>(*jobs[j].table).experts;
      first[j] = total;
      inter[j] = 0;
      const int64_t E = static_cast<int64_t>(experts.size()), rows = jobs[j].offsets[E];
      if (rows == 0) continue;
      for (const ExpertViews& e : experts)
        if (e.w1 != nullptr) inter[j] = e.w1->rows();
      total += rows * inter[j];
      num_products += E;
    }
    first[num_jobs] = total;
    if (total == 0) return;
    Scratch<float> g(total, NoInit{}), u(total, NoInit{});
    Scratch<kernels::LinearJob> products(2 * num_products, NoInit{});
    int64_t count = 0;
    for (int64_t j = 0; j < num_jobs; ++j) {
      const ExpertFfnJob& job = jobs[j];
      const auto& experts = static_cast<const CpuExpertTable&>(*job.table).experts;
      const int64_t I = inter[j];
      float *gj = &g[first[j]], *uj = &u[first[j]];
      for (size_t e = 0; e < experts.size(); ++e) {
        const int64_t b = job.offsets[e], m = job.offsets[e + 1] - b;
        if (m == 0) continue;
        DSV4_CHECK(experts[e].w1 != nullptr, "rows routed to expert ", e, ", which this rank does not hold");
        const int64_t D = experts[e].w1->cols();
        if (o.qdq && IsQuantized(*experts[e].w1)) kernels::QdqFp8(job.x + b * job.ldx, m, D, job.ldx, o.qdq_group);
        products[count++] = {job.x + b * job.ldx, m, job.ldx, experts[e].w1, gj + b * I, I};
        products[count++] = {job.x + b * job.ldx, m, job.ldx, experts[e].w3, uj + b * I, I};
      }
    }
    kernels::LinearGroup(products.data(), count);
    count = 0;
    for (int64_t j = 0; j < num_jobs; ++j) {
      const ExpertFfnJob& job = jobs[j];
      const auto& experts = static_cast<const CpuExpertTable&>(*job.table).experts;
      const int64_t I = inter[j], rows = job.offsets[experts.size()];
      if (rows == 0) continue;
      float* gj = &g[first[j]];
      kernels::SwiGlu(gj, &u[first[j]], rows, I, I, job.row_weights, o.swiglu_limit, gj);
      for (size_t e = 0; e < experts.size(); ++e) {
        const int64_t b = job.offsets[e], m = job.offsets[e + 1] - b;
        if (m == 0) continue;
        if (o.qdq && IsQuantized(*experts[e].w2)) kernels::QdqFp8(gj + b * I, m, I, I, o.qdq_group);
        products[count++] = {gj + b * I, m, I, experts[e].w2, job.y + b * job.ldy, job.ldy};
      }
    }
    kernels::LinearGroup(products.data(), count);
  }
  void GatherRows(const void* src, int64_t src_pitch, const int64_t* ids, int64_t rows, int64_t row_bytes, void* dst,
                  int64_t dst_pitch) override {
    kernels::GatherRows(src, src_pitch, ids, rows, row_bytes, dst, dst_pitch);
  }
  void ScatterRows(const void* src, int64_t src_pitch, const int64_t* ids, int64_t rows, int64_t row_bytes, void* dst,
                   int64_t dst_pitch) override {
    kernels::ScatterRows(src, src_pitch, ids, rows, row_bytes, dst, dst_pitch);
  }
  void ScatterRowsTo(const void* src, int64_t src_pitch, const uint64_t* dst, int64_t rows,
                     int64_t row_bytes) override {
    kernels::ScatterRowsTo(src, src_pitch, dst, rows, row_bytes);
  }
  void Iota(int32_t* x, int64_t n, int32_t start, int32_t step) override { kernels::Iota(x, n, start, step); }
  void Scale(float* x, int64_t n, float s) override { kernels::Scale(x, n, s); }
  void EngramGate(const kernels::WeightMatrix& wkv, const float* gate_weight, float* emb, int64_t n, int hc, int64_t D,
                  float eps, bool act_qdq, float* x) override {
    kernels::EngramGate(wkv, gate_weight, emb, n, hc, D, eps, /*mask=*/nullptr, {.act_qdq = act_qdq}, x);
  }
  void SelectCandidateBlocks(const float* scores, int64_t n, int64_t width, const int64_t* nvis, int64_t topk_blocks,
                             int64_t block_size, uint8_t* keep) override {
    kernels::SelectCandidateBlocks(scores, n, width, nvis, topk_blocks, block_size, keep);
  }
  void MaskToCandidates(float* scores, int64_t n, int64_t width, const uint8_t* keep, int64_t block_size) override {
    kernels::MaskToCandidates(scores, n, width, keep, block_size);
  }
  void DropMaskedPicks(const float* scores, int64_t n, int64_t width, const int64_t* nvis, int32_t* picks,
                       int64_t k) override {
    kernels::DropMaskedPicks(scores, n, width, nvis, picks, k);
  }
  void PickRows(const int32_t* picks, int64_t m, int64_t k, const int32_t* block_base, int64_t per_block,
                int32_t offset, int32_t* rows, int64_t ldrows) override {
    kernels::PickRows(picks, m, k, block_base, per_block, offset, rows, ldrows);
  }
  void FlagNonFinite(const float* x, int64_t ldx, int64_t n, const int32_t* rows, int64_t count,
                     int32_t* flags) override {
    kernels::FlagNonFinite(x, ldx, n, rows, count, flags);
  }
  void CombineRows(const float* src, int64_t lds, const int32_t* offsets, const int32_t* src_rows, const float* weights,
                   int64_t rows, int64_t D, bool accumulate, float* out, int64_t ldo) override {
    kernels::CombineRows(src, lds, offsets, src_rows, weights, rows, D, accumulate, out, ldo);
  }

 private:
  static void Copy(void* dst, const void* src, int64_t bytes) {
    if (bytes > 0 && dst != src) std::memmove(dst, src, static_cast<size_t>(bytes));
  }

  absl::flat_hash_map<void*, std::unique_ptr<char[]>> persistent_;
  PageArena stored_;  // weights stored for this CPU (PlaceWeight)
  // The limit those and the expert tables' copies share.
  std::shared_ptr<StoreBudget> budget_;
  ChunkArena workspace_;
};

}  // namespace

std::unique_ptr<Backend> MakeCpuBackend(const BackendOptions& options) {
  return std::make_unique<CpuBackend>(options.local_size);
}

}  // namespace dsv4
