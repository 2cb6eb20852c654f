// Tables far larger than one device (Engram: ~384M rows per layer) kept in host DRAM, sharded by
// row range over the ranks of a communicator and read with one-sided gets (MPI RMA, passive
// target: the owner does nothing to serve a read; OpenMPI maps MPI_Rget to RDMA reads on
// InfiniBand/RoCE). A read is started as soon as the row ids are known and waited on only where
// the rows are used, so remote latency hides behind earlier layers' compute.
//
// Table t has rows[t] rows of row_bytes bytes; rank r holds rows [RowBegin(t, r), RowBegin(t, r+1)).
// Creation and destruction are collective over the communicator; Start/Wait are local.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "parallel/communicator.h"

namespace dsv4 {

class RowGather {
 public:
  virtual ~RowGather() = default;
  // Blocks until every row is in the output buffer (bounded by the communicator's timeout).
  virtual absl::Status Wait() = 0;
};

class ShardedRowStore {
 public:
  // Writes `count` rows of table t starting at `first` into dst [count, row_bytes].
  using FillFn = std::function<void(int table, int64_t first, int64_t count, uint8_t* dst)>;

  // Collective over `comm` (which must outlive the store). Each rank allocates and fills only its
  // own ranges. A communicator of size 1 keeps everything local (no window).
  static absl::StatusOr<std::unique_ptr<ShardedRowStore>> Create(Communicator& comm, std::vector<int64_t> rows,
                                                                 int64_t row_bytes, const FillFn& fill);
  virtual ~ShardedRowStore() = default;

  int64_t RowBegin(int table, int rank) const;
  int Owner(int table, int64_t row) const;
  int64_t row_bytes() const { return row_bytes_; }
  int64_t num_rows(int table) const { return rows_[table]; }
  int64_t local_bytes() const { return local_bytes_; }

  // Starts reading rows ids[i] of `table` into out [ids.size(), row_bytes]: rows this rank holds
  // are copied now, the others requested with one-sided gets. ids and out must stay valid until
  // Wait() returns. An id outside [0, rows) is an error naming it.
  virtual absl::StatusOr<std::unique_ptr<RowGather>> Start(int table, std::span<const int64_t> ids, uint8_t* out) = 0;

  struct Counters {
    int64_t local_rows = 0, remote_rows = 0;
  };
  const Counters& counters() const { return counters_; }

 protected:
  ShardedRowStore(int ranks, std::vector<int64_t> rows, int64_t row_bytes);
  uint8_t* LocalRow(int table, int64_t row);  // a row this rank holds

  int ranks_;
  std::vector<int64_t> rows_;
  int64_t row_bytes_;
  std::vector<int64_t> table_offset_;  // byte offset of each table's local range in local memory
  int64_t local_bytes_ = 0;
  uint8_t* local_ = nullptr;
  int my_rank_ = 0;
  Counters counters_;
};

}  // namespace dsv4
