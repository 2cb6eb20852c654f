#include "runtime/engram/sharded_source.h"

#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace dsv4 {
namespace {

// Splits the store's rows (codes then scales) into the caller's buffers once they have arrived,
// rejecting E8M0 NaN scales as the local source does.
class ShardedFetch final : public EngramFetch {
 public:
  ShardedFetch(std::unique_ptr<RowGather> gather, std::vector<uint8_t> staging, int64_t n, int64_t head_dim,
               uint8_t* codes_out, uint8_t* scales_out, std::vector<int64_t> ids)
      : gather_(std::move(gather)), staging_(std::move(staging)), n_(n), hd_(head_dim), codes_(codes_out),
        scales_(scales_out), ids_(std::move(ids)) {}
  ~ShardedFetch() override {
    if (gather_) (void)gather_->Wait();
  }

  absl::Status Wait() override {
    if (!gather_) return absl::FailedPreconditionError("Engram fetch waited on twice");
    const absl::Status st = gather_->Wait();
    gather_.reset();
    DSV4_RETURN_IF_ERROR(st);
    const int64_t ns = hd_ / 32, row = hd_ + ns;
    for (int64_t i = 0; i < n_; ++i) {
      const uint8_t* src = &staging_[i * row];
      std::memcpy(codes_ + i * hd_, src, hd_);
      for (int64_t s = 0; s < ns; ++s)
        if (src[hd_ + s] == 0xff)
          return absl::DataLossError(absl::StrCat("Engram row ", ids_[i], ": scale ", s, " is 0xFF (E8M0 NaN)"));
      std::memcpy(scales_ + i * ns, src + hd_, ns);
    }
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<RowGather> gather_;
  std::vector<uint8_t> staging_;
  int64_t n_, hd_;
  uint8_t* codes_;
  uint8_t* scales_;
  std::vector<int64_t> ids_;
};

}  // namespace

absl::StatusOr<EngramPlacement> ParseEngramPlacement(const std::string& s) {
  if (s == "local") return EngramPlacement::kLocal;
  if (s == "node") return EngramPlacement::kNode;
  if (s == "world") return EngramPlacement::kWorld;
  return absl::InvalidArgumentError(
      absl::StrCat("--engram-placement must be local, node or world, got '", s, "'"));
}

absl::StatusOr<std::shared_ptr<ShardedEngramRowSource>> ShardedEngramRowSource::Create(
    Communicator& comm, const std::vector<EngramTableView>& tables, int64_t head_dim) {
  if (head_dim <= 0 || head_dim % 32 != 0)
    return absl::InvalidArgumentError(absl::StrCat("Engram head_dim ", head_dim, " is not a positive multiple of 32"));
  std::vector<int64_t> rows;
  for (const auto& t : tables) rows.push_back(t.num_rows);
  const int64_t ns = head_dim / 32, row = head_dim + ns;
  auto store = ShardedRowStore::Create(comm, rows, row, [&](int t, int64_t first, int64_t count, uint8_t* dst) {
    for (int64_t i = 0; i < count; ++i) {
      std::memcpy(dst + i * row, tables[t].codes + (first + i) * head_dim, head_dim);
      std::memcpy(dst + i * row + head_dim, tables[t].scales + (first + i) * ns, ns);
    }
  });
  if (!store.ok()) return store.status();
  return std::shared_ptr<ShardedEngramRowSource>(new ShardedEngramRowSource(std::move(*store), head_dim));
}

absl::StatusOr<std::unique_ptr<EngramFetch>> ShardedEngramRowSource::Start(int64_t engram_index,
                                                                           std::span<const int64_t> row_ids,
                                                                           uint8_t* codes_out, uint8_t* scales_out) {
  const int64_t n = static_cast<int64_t>(row_ids.size());
  std::vector<uint8_t> staging(n * store_->row_bytes());
  std::vector<int64_t> ids(row_ids.begin(), row_ids.end());
  DSV4_ASSIGN_OR_RETURN(auto gather, store_->Start(static_cast<int>(engram_index), ids, staging.data()));
  // `ids` and `staging` move into the fetch: vector moves keep their heap buffers in place.
  return std::unique_ptr<EngramFetch>(
      new ShardedFetch(std::move(gather), std::move(staging), n, head_dim_, codes_out, scales_out, std::move(ids)));
}

}  // namespace dsv4
