// Per-request state for incremental decoding, one LayerCache per layer.
//
// Window KV lives in a ring of `sliding_window` slots (slot = position mod window). Compressed KV
// and indexer keys grow by one row per completed block. A compressor keeps the rows of the block
// being filled, and (ratio 4, overlapping) the rows of the previous complete block.
#pragma once

#include <cstdint>
#include <vector>

#include "runtime/engram/history.h"

namespace dsv4 {

struct CompressorState {
  int64_t width = 0;              // coff * head_dim: channels of one projected row
  int64_t ratio = 0;
  std::vector<float> cur_kv;      // [ratio, width]: rows of the block being filled
  std::vector<float> cur_score;   // [ratio, width]: gate scores (+ ape) of those rows
  std::vector<float> prev_kv;     // [ratio, width]: previous complete block (overlap only)
  std::vector<float> prev_score;
  bool has_prev = false;

  void Init(int64_t r, int64_t w) {
    ratio = r, width = w;
    cur_kv.assign(r * w, 0.f), cur_score.assign(r * w, 0.f);
    prev_kv.assign(r * w, 0.f), prev_score.assign(r * w, 0.f);
    has_prev = false;
  }
};

struct LayerCache {
  std::vector<float> window;      // [sliding_window, head_dim]
  std::vector<float> compressed;  // [num_blocks, head_dim]
  std::vector<float> index_keys;  // [num_blocks, index_head_dim] (ratio-4 layers)
  CompressorState compressor, index_compressor;
};

struct SequenceCache {
  int64_t length = 0;  // tokens already processed (the next position)
  std::vector<LayerCache> layers;
  EngramHistory engram;  // the last tokens' compressed ids (Engram models)

  // Bytes held, for cache accounting.
  int64_t Bytes() const {
    int64_t b = 0;
    for (const auto& l : layers)
      b += 4 * (l.window.size() + l.compressed.size() + l.index_keys.size() + 4 * l.compressor.cur_kv.size() +
                4 * l.index_compressor.cur_kv.size());
    return b;
  }
};

}  // namespace dsv4
