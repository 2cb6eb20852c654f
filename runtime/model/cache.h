// Per-sequence state for incremental decoding, kept in fixed-size blocks of pooled memory.
//
// A sequence's positions are cut into KV blocks of `block_tokens` (B) positions; block i covers
// positions [i*B, (i+1)*B). B is a multiple of every compression ratio, so every compressed row
// lies inside one block and, at a block boundary, a non-overlapping compressor holds no partial
// rows. A block has two parts, from two pools (KvPool), so that their lifetimes can differ:
//
//  - the window part (a "window block"): the window keys (= values) of the block's positions,
//    [B, head_dim] per layer, stored by absolute position. A sequence needs it while its sliding
//    window overlaps the block; a later sequence that reuses the block as the last of a shared
//    prefix needs it too. Otherwise it is dropped.
//  - the compressed part (the block itself): per layer that stores them (ModelConfig::compresses
//    and owns_index_keys: every compressed layer in V4; in V4.1 only the KV sources and the index-
//    key owners, whose rows the later layers of the same ratio read through the same block table),
//    the compressed rows completed in the block's positions ([B / ratio, head_dim]) and the indexer
//    keys ([B / ratio, index_head_dim]); and what a sequence continuing from the block's end needs
//    beyond them: the previous block of rows of each overlapping compressor (V4 ratio 4), and the
//    Engram n-gram history. It lives as long as a sequence (or, once full, the prefix cache) holds it.
//
// A sequence's block table names, for each block, its compressed block id and its window block id
// (-1 once dropped). The serving engine shares one pool between the sequences of a rank; the
// leader decides every id and the plan carries them (blocks shared by sequences with a common
// prompt prefix are never written again). Model::NewCache() instead gives a sequence a private
// pool that grows with it and recycles window blocks that fell out of its window.
//
// The pools' memory is reserved, not touched: pages are backed as blocks are first written (every
// row is written before it is read), so a pool sized for a large budget costs what is used.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "runtime/backend/backend.h"
#include "runtime/config.h"
#include "runtime/engram/history.h"

namespace dsv4 {

// The compressor of one layer between steps, in the backend's memory: the rows (projected KV and
// raw gate scores) of the block being filled and, for the overlapping ratio-4 compressor (V4), of
// the previous complete block: [2 (kv, score), span(), width], each plane [previous block
// (overlap) | block being filled]. The rows are the state's part of its sequence's one compressor
// allocation (SequenceCache::ReserveCompressors), taken at the sequence's first step.
struct CompressorState {
  int64_t width = 0;  // channels of one projected row (coff * head_dim)
  int64_t ratio = 0;
  bool overlap = false;
  bool has_prev = false;  // the previous block's rows are there
  float* rows = nullptr;  // [2, span(), width]: null until reserved

  void Init(int64_t r, int64_t w, bool o) { ratio = r, width = w, overlap = o, has_prev = false; }
  int64_t span() const { return (overlap ? 2 : 1) * ratio; }
  int64_t floats() const { return 2 * span() * width; }
  float* kv() const { return rows; }
  float* score() const { return rows + span() * width; }
};

// Rows of floats in a backend's memory, not initialized (see above). Grow keeps the rows already
// there.
class PoolRows {
 public:
  float* data() const { return rows_.floats(); }
  int64_t size() const { return size_; }
  // RESOURCE_EXHAUSTED when the memory cannot be had (nothing changes then).
  absl::Status Grow(Backend& be, int64_t n);

 private:
  DeviceAllocation rows_;
  int64_t size_ = 0;
};

// The pooled storage of one rank: compressed blocks and window blocks of every layer. Ids index
// the pools; which id belongs to whom is the owner's business (a block table, the leader's block
// manager). Not thread-safe; sequences of one step touch disjoint rows.
class KvPool {
 public:
  // Positions per block for `config`: 128 rounded up to a multiple of every compression ratio.
  static int64_t DefaultBlockTokens(const ModelConfig& config);
  // Bytes of one compressed block and of one window block (every layer).
  static int64_t BlockBytes(const ModelConfig& config, int64_t block_tokens);
  static int64_t WindowBlockBytes(const ModelConfig& config, int64_t block_tokens);

  // A pool in the memory of `backend` (which outlives it). `block_tokens` must be a positive
  // multiple of every compression ratio of `config`. RESOURCE_EXHAUSTED (naming the bytes) when the
  // memory cannot be reserved.
  static absl::StatusOr<std::unique_ptr<KvPool>> Create(Backend& backend, const ModelConfig& config,
                                                        int64_t block_tokens, int64_t num_blocks,
                                                        int64_t num_window_blocks);

  Backend& backend() const { return *backend_; }

  int64_t block_tokens() const { return block_tokens_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t num_window_blocks() const { return num_window_blocks_; }
  // Adds blocks (private pools grow with their sequence); rows move, ids stay valid.
  absl::Status Grow(int64_t num_blocks, int64_t num_window_blocks);

  struct Layer {
    int64_t ratio = 0, per_block = 0;   // compressed rows per block: B / ratio (0: none)
    bool compresses = false;            // stores compressed rows (else at most index keys)
    int64_t head_dim = 0, index_dim = 0;
    int64_t tail_width = 0, index_tail_width = 0;  // overlapping compressors' row widths (0: none)
    PoolRows window;      // [window blocks * B, head_dim]
    PoolRows compressed;  // [blocks * per_block, head_dim] (layers that compress)
    PoolRows index_keys;  // [blocks * per_block, index_dim] (layers that own index keys)
    // At each block's end, the overlapping compressors' previous complete block of rows:
    // [blocks, 2 (kv, score), ratio, tail_width], and the same for the indexer's compressor.
    PoolRows compressor_tail, index_tail;
  };
  Layer& layer(int64_t l) { return layers_[l]; }
  const Layer& layer(int64_t l) const { return layers_[l]; }
  // The Engram n-gram history at each block's end: [blocks, tail_length] (Engram models).
  int64_t* engram_tail(int32_t block) { return &engram_tail_[block * engram_tail_length_]; }
  const int64_t* engram_tail(int32_t block) const { return &engram_tail_[block * engram_tail_length_]; }
  int64_t engram_tail_length() const { return engram_tail_length_; }

 private:
  KvPool(Backend& backend, const ModelConfig& config, int64_t block_tokens);

  Backend* backend_;
  int64_t block_tokens_, num_blocks_ = 0, num_window_blocks_ = 0;
  int64_t engram_tail_length_ = 0;
  std::vector<Layer> layers_;
  std::vector<int64_t> engram_tail_;
};

// One KV block of a sequence: its compressed block id and window block id (-1: none).
struct BlockRef {
  int32_t block = -1;
  int32_t window = -1;
};

struct LayerCache {
  CompressorState compressor, index_compressor;  // their partial blocks: always the sequence's own
};

struct SequenceCache {
  int64_t length = 0;            // tokens already processed (the next position)
  KvPool* pool = nullptr;        // where the blocks live
  std::vector<BlockRef> blocks;  // block i covers positions [i * B, (i + 1) * B)
  std::vector<LayerCache> layers;
  EngramHistory engram;          // the last tokens' compressed ids (Engram models)
  // Model::NewCache(): the sequence's own pool, grown as the sequence grows, and its window blocks
  // not in use (Model::PrepareBlocks recycles them).
  std::unique_ptr<KvPool> own_pool;
  std::vector<int32_t> free_windows;
  // Every layer's compressor states (LayerCache), in one allocation of the backend: a GPU pays one
  // cudaMalloc per admitted sequence, not one per compressor (about 60 for V4-Flash).
  DeviceAllocation compressor_rows;
  // Takes (and zeroes) that allocation once and points each state at its part; RESOURCE_EXHAUSTED
  // when the device has no room.
  absl::Status ReserveCompressors(Backend& be);
  // The numerical watchdog's finding (Model::ForwardBatch): the first layer whose output at the
  // sequence's last position held a NaN or Inf, num_hidden_layers when only the logits did, -1
  // while everything stayed finite. Once set the sequence's state is poisoned for good.
  int64_t nonfinite_layer = -1;

  // The pool row of compressed position r of a layer whose pool part is `pl` (its compressed KV,
  // index keys): through the block table, blocks[r / per_block] holds it.
  int64_t PoolRow(const KvPool::Layer& pl, int64_t r) const {
    return blocks[r / pl.per_block].block * pl.per_block + r % pl.per_block;
  }
  // Row r of layer l's compressed KV / index keys (the r-th compressed position), in the pool
  // (the backend's memory).
  const float* CompressedRow(int64_t l, int64_t r) const;
  const float* IndexKeyRow(int64_t l, int64_t r) const;
  // The same rows, copied out to the host in order of position (tests and checks): the compressed
  // rows of layer l completed so far, its index keys, and the window keys of its last
  // min(length, window) positions (oldest first).
  std::vector<float> CompressedRows(const ModelConfig& config, int64_t l) const;
  std::vector<float> IndexKeyRows(const ModelConfig& config, int64_t l) const;
  std::vector<float> WindowRows(const ModelConfig& config, int64_t l) const;

  // Bytes of the pool this sequence's blocks occupy (shared blocks counted in full), plus its own
  // compressor state: for cache accounting.
  int64_t Bytes(const ModelConfig& config) const;
};

}  // namespace dsv4
