// Per-request state for incremental decoding, one LayerCache per layer.
//
// Window KV lives in a ring of `sliding_window` slots (slot = position mod window) on every layer.
// Compressed KV and indexer keys grow by one row per completed block, on the layers that store them
// (ModelConfig::compresses / owns_index_keys: every compressed layer in V4; in V4.1 only the KV
// sources, whose caches the later layers of the same ratio read). A compressor keeps the rows of
// the block being filled, and (V4 ratio 4, overlapping) the rows of the previous complete block.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/engram/history.h"

namespace dsv4 {

struct CompressorState {
  int64_t width = 0;              // channels of one projected row (coff * head_dim)
  int64_t ratio = 0;
  std::vector<float> cur_kv;      // [ratio, width]: rows of the block being filled
  std::vector<float> cur_score;   // [ratio, width]: gate scores (+ ape) of those rows
  std::vector<float> prev_kv;     // [ratio, width]: previous complete block (overlap only)
  std::vector<float> prev_score;
  bool has_prev = false;

  void Init(int64_t r, int64_t w, bool overlap) {
    ratio = r, width = w;
    cur_kv.assign(r * w, 0.f), cur_score.assign(r * w, 0.f);
    if (overlap) prev_kv.assign(r * w, 0.f), prev_score.assign(r * w, 0.f);
    has_prev = false;
  }
  int64_t floats() const {
    return static_cast<int64_t>(cur_kv.size() + cur_score.size() + prev_kv.size() + prev_score.size());
  }
};

struct LayerCache {
  std::vector<float> window;      // [sliding_window, head_dim]
  std::vector<float> compressed;  // [num_blocks, head_dim] (layers that compress)
  std::vector<float> index_keys;  // [num_blocks, index_head_dim] (layers that own index keys)
  CompressorState compressor, index_compressor;
};

struct SequenceCache {
  int64_t length = 0;  // tokens already processed (the next position)
  std::vector<LayerCache> layers;
  EngramHistory engram;  // the last tokens' compressed ids (Engram models)
  // The numerical watchdog's finding (Model::ForwardBatch): the first layer whose output at the
  // sequence's last position held a NaN or Inf, num_hidden_layers when only the logits did, -1
  // while everything stayed finite. Once set the sequence's state is poisoned for good.
  int64_t nonfinite_layer = -1;

  // Bytes held, for cache accounting.
  int64_t Bytes() const {
    int64_t floats = 0;
    for (const auto& l : layers)
      floats += static_cast<int64_t>(l.window.size() + l.compressed.size() + l.index_keys.size()) +
                l.compressor.floats() + l.index_compressor.floats();
    return 4 * floats;
  }
};

}  // namespace dsv4
