// Engram rows from a ShardedRowStore (parallel/row_store.h): the tables live in the host DRAM of
// the ranks of a communicator, split by row range, and a rank reads the rows it does not hold with
// one-sided gets. Which communicator decides the placement: every rank alone (local), the ranks
// of one node, or the whole world.
#pragma once

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "parallel/row_store.h"
#include "runtime/engram/row_source.h"

namespace dsv4 {

enum class EngramPlacement { kLocal, kNode, kWorld };
absl::StatusOr<EngramPlacement> ParseEngramPlacement(const std::string& s);

class ShardedEngramRowSource final : public EngramRowSource {
 public:
  // Collective over `comm`: each rank copies its row range of every table (codes and scales side
  // by side, one store row per table row) out of `tables` into its share of the store. Only that
  // range of the tables is read.
  static absl::StatusOr<std::shared_ptr<ShardedEngramRowSource>> Create(Communicator& comm,
                                                                       const std::vector<EngramTableView>& tables,
                                                                       int64_t head_dim);

  int64_t num_rows(int64_t engram_index) const override { return store_->num_rows(static_cast<int>(engram_index)); }
  int64_t head_dim() const override { return head_dim_; }
  absl::StatusOr<std::unique_ptr<EngramFetch>> Start(int64_t engram_index, std::span<const int64_t> row_ids,
                                                     uint8_t* codes_out, uint8_t* scales_out) override;
  ShardedRowStore& store() { return *store_; }

 private:
  ShardedEngramRowSource(std::unique_ptr<ShardedRowStore> store, int64_t head_dim)
      : store_(std::move(store)), head_dim_(head_dim) {}
  std::unique_ptr<ShardedRowStore> store_;
  int64_t head_dim_;
};

}  // namespace dsv4
