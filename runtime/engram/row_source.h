// Where Engram table rows come from (DESIGN.md, "Engram store").
//
// A row is `head_dim` FP8 E4M3 codes plus head_dim / 32 E8M0 scales. Tables are far larger than a
// device (V4.1: ~384M rows per layer), so the model never indexes them directly: at the start of a
// step it hashes the tokens of every Engram layer and Start()s one gather per layer; each Engram
// layer Wait()s only for its own rows. The local source copies from the mmapped checkpoint; a
// distributed store (rows sharded by range over ranks' host memory, MPI RMA windows) implements
// the same interface with asynchronous remote reads.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv4 {

// One gather in flight. Destroying it without Wait() is allowed only once Wait() would not block
// on memory the caller is about to free (implementations must make the destructor wait).
class EngramFetch {
 public:
  virtual ~EngramFetch() = default;
  // Blocks until the rows are in the output buffers, or reports why they cannot be. Call once.
  virtual absl::Status Wait() = 0;
};

class EngramRowSource {
 public:
  virtual ~EngramRowSource() = default;

  // Table shape of Engram layer `engram_index` (its position in engram_layer_ids).
  virtual int64_t num_rows(int64_t engram_index) const = 0;
  virtual int64_t head_dim() const = 0;

  // Starts copying rows `row_ids[i]` of layer `engram_index` to codes_out [n, head_dim] and
  // scales_out [n, head_dim / 32]. The ids and both buffers must stay valid until the returned
  // fetch's Wait() returns. Ids outside [0, num_rows) fail here or in Wait(), naming the id.
  // Thread-compatible: concurrent Start calls need external synchronization.
  virtual absl::StatusOr<std::unique_ptr<EngramFetch>> Start(int64_t engram_index, std::span<const int64_t> row_ids,
                                                             uint8_t* codes_out, uint8_t* scales_out) = 0;
};

// One layer's table in memory (typically the mmapped checkpoint tensors).
struct EngramTableView {
  const uint8_t* codes = nullptr;   // [num_rows, head_dim] FP8 E4M3
  const uint8_t* scales = nullptr;  // [num_rows, head_dim / 32] E8M0
  int64_t num_rows = 0;
};

// Reads rows straight from in-memory tables: Start() copies synchronously (checking ids and the
// scales of each copied row: an E8M0 0xFF is NaN and is rejected) and returns a finished fetch.
class LocalEngramRowSource : public EngramRowSource {
 public:
  LocalEngramRowSource(std::vector<EngramTableView> tables, int64_t head_dim);

  int64_t num_rows(int64_t engram_index) const override { return tables_.at(engram_index).num_rows; }
  int64_t head_dim() const override { return head_dim_; }
  absl::StatusOr<std::unique_ptr<EngramFetch>> Start(int64_t engram_index, std::span<const int64_t> row_ids,
                                                     uint8_t* codes_out, uint8_t* scales_out) override;

 private:
  std::vector<EngramTableView> tables_;
  int64_t head_dim_;
};

}  // namespace dsv4
