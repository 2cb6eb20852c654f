// Engram n-gram hashing (MODEL.md section 2.7): token ids -> the table rows each Engram layer reads.
//
// For position t, c_k = compressed[t - k] (k < max_ngram), replaced by the pad once t - k < 0 or any
// position in [t - k, t] is masked (image tokens: the block is cumulative, so an n-gram never spans
// one, and a masked token's own c_0 is the pad). P_k = c_k * mult[layer][k] (int64, cannot
// overflow); R = P_0; for n = 2..max_ngram: R ^= P_{n-1} and column (n - 2) * n_heads + h reads row
// R mod primes[layer][col] + offsets[layer][col] of that layer's table.
//
// Hash ids depend only on token ids, so a step computes them for every Engram layer up front (the
// row gather is issued before the first layer runs).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "runtime/config.h"
#include "runtime/engram/compression.h"
#include "runtime/engram/history.h"
#include "runtime/engram/layout.h"

namespace dsv4 {

class EngramHasher {
 public:
  // `multipliers` [num_layers][max_ngram]; `token_map` compressed ids in [0, compressed_vocab).
  EngramHasher(EngramLayout layout, std::vector<int32_t> token_map, int64_t compressed_vocab, int64_t pad_compressed,
               std::vector<std::vector<int64_t>> multipliers);

  const EngramLayout& layout() const { return layout_; }
  const std::vector<int32_t>& token_map() const { return token_map_; }
  const std::vector<std::vector<int64_t>>& multipliers() const { return multipliers_; }
  int64_t compressed_vocab() const { return compressed_vocab_; }
  int64_t pad_compressed() const { return pad_; }
  int64_t num_layers() const { return layout_.num_layers(); }
  int64_t num_cols() const { return layout_.num_cols(); }

  EngramHistory NewHistory() const;

  // OK when every id has a compressed id; the error names the offending index.
  absl::Status CheckTokens(std::span<const int32_t> tokens) const;

  // Rows for tokens [n] that continue `history` (updated): rows [n, num_layers, num_cols], offsets
  // added. `mask` [n] may be null (all tokens take part); 0 marks a masked token. `compressed_out`
  // [n, max_ngram] (optional) receives the padded n-gram ids c_0..c_{max-1}. Tokens must pass
  // CheckTokens.
  void Hash(std::span<const int32_t> tokens, const uint8_t* mask, EngramHistory& history, int64_t* rows,
            int64_t* compressed_out = nullptr) const;

 private:
  EngramLayout layout_;
  std::vector<int32_t> token_map_;
  int64_t compressed_vocab_, pad_;
  std::vector<std::vector<int64_t>> multipliers_;
};

// The hasher for a config from a tokenizer's compression map: checks that the map's key count
// equals engram_compressed_vocab_size (the multipliers depend on it), that the table layout's row
// counts equal engram_num_embeddings, and that engram_pad_id has a compressed id.
absl::StatusOr<std::shared_ptr<const EngramHasher>> MakeEngramHasher(const ModelConfig& config,
                                                                   TokenCompression compression,
                                                                   const std::string& tokenizer_source);
// Same, reading `tokenizer_json_path`.
absl::StatusOr<std::shared_ptr<const EngramHasher>> LoadEngramHasher(const ModelConfig& config,
                                                                   const std::string& tokenizer_json_path);

}  // namespace dsv4
