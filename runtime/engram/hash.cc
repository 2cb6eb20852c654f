#include "runtime/engram/hash.h"

#include <algorithm>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"

namespace dsv4 {

EngramHasher::EngramHasher(EngramLayout layout, std::vector<int32_t> token_map, int64_t compressed_vocab,
                           int64_t pad_compressed, std::vector<std::vector<int64_t>> multipliers)
    : layout_(std::move(layout)),
      token_map_(std::move(token_map)),
      compressed_vocab_(compressed_vocab),
      pad_(pad_compressed),
      multipliers_(std::move(multipliers)) {
  DSV4_CHECK(static_cast<int64_t>(multipliers_.size()) == layout_.num_layers());
  for (const auto& m : multipliers_) DSV4_CHECK(static_cast<int64_t>(m.size()) == layout_.max_ngram);
  DSV4_CHECK(pad_ >= 0 && pad_ < compressed_vocab_);
  for (int32_t c : token_map_) DSV4_CHECK(c >= 0 && c < compressed_vocab_, "compressed id ", c, " out of range");
}

EngramHistory EngramHasher::NewHistory() const {
  EngramHistory h;
  h.tail.assign(layout_.max_ngram - 1, EngramHistory::kDead);  // before the start = blocked
  return h;
}

absl::Status EngramHasher::CheckTokens(std::span<const int32_t> tokens) const {
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= static_cast<int64_t>(token_map_.size()))
      return absl::OutOfRangeError(absl::StrCat("token id ", tokens[i], " at index ", i,
                                                " has no Engram compressed id (the tokenizer has ", token_map_.size(),
                                                " tokens)"));
  return absl::OkStatus();
}

void EngramHasher::Hash(std::span<const int32_t> tokens, const uint8_t* mask, EngramHistory& history, int64_t* rows,
                        int64_t* compressed_out) const {
  const int64_t max_n = layout_.max_ngram, heads = layout_.n_heads, cols = num_cols();
  DSV4_CHECK(static_cast<int64_t>(history.tail.size()) == max_n - 1, "history of the wrong length");
  // Inside the loop, window[k] = compressed id of position t - k (kDead when masked or before the
  // start); before it, the window of position t - 1 (shifted by one as each token arrives).
  std::vector<int64_t> window(max_n, EngramHistory::kDead);
  for (int64_t k = 0; k + 1 < max_n; ++k) window[k] = history.tail[max_n - 2 - k];
  std::vector<uint64_t> c(max_n);
  for (size_t t = 0; t < tokens.size(); ++t) {
    DSV4_CHECK(tokens[t] >= 0 && tokens[t] < static_cast<int64_t>(token_map_.size()), "unchecked token id ",
               tokens[t]);
    for (int64_t k = max_n - 1; k > 0; --k) window[k] = window[k - 1];
    window[0] = (mask != nullptr && mask[t] == 0) ? EngramHistory::kDead : token_map_[tokens[t]];
    bool blocked = false;
    for (int64_t k = 0; k < max_n; ++k) {
      blocked = blocked || window[k] == EngramHistory::kDead;
      c[k] = static_cast<uint64_t>(blocked ? pad_ : window[k]);
      if (compressed_out) compressed_out[t * max_n + k] = static_cast<int64_t>(c[k]);
    }
    for (int64_t l = 0; l < num_layers(); ++l) {
      const std::vector<int64_t>& mult = multipliers_[l];
      int64_t* out = rows + (t * num_layers() + l) * cols;
      // Both factors are non-negative and the product is < 2^63, so unsigned math is exact.
      uint64_t r = c[0] * static_cast<uint64_t>(mult[0]);
      for (int64_t n = 2; n <= max_n; ++n) {
        r ^= c[n - 1] * static_cast<uint64_t>(mult[n - 1]);
        for (int64_t h = 0; h < heads; ++h) {
          const int64_t col = (n - 2) * heads + h;
          out[col] = static_cast<int64_t>(r % static_cast<uint64_t>(layout_.primes[l][col])) + layout_.offsets[l][col];
        }
      }
    }
  }
  for (int64_t k = 1; k < max_n; ++k) history.tail[max_n - 1 - k] = window[k - 1];
}

absl::StatusOr<std::shared_ptr<const EngramHasher>> MakeEngramHasher(const ModelConfig& config,
                                                                   TokenCompression compression,
                                                                   const std::string& tokenizer_source) {
  if (!config.has_engram()) return absl::InvalidArgumentError("the config has no Engram layers (engram_layer_ids)");
  if (compression.num_keys != config.engram_compressed_vocab_size)
    return absl::InvalidArgumentError(absl::StrCat(
        "engram_compressed_vocab_size = ", config.engram_compressed_vocab_size, " in config.json, but the compression ",
        "map of ", tokenizer_source, " (", compression.map.size(), " tokens) has ", compression.num_keys,
        " keys; the hash multipliers depend on this size, so the tokenizer and config must match"));
  if (config.engram_pad_id >= static_cast<int64_t>(compression.map.size()))
    return absl::InvalidArgumentError(absl::StrCat("engram_pad_id = ", config.engram_pad_id, " is not a token of ",
                                                   tokenizer_source, " (", compression.map.size(), " tokens)"));
  DSV4_ASSIGN_OR_RETURN(EngramLayout layout,
                        BuildEngramLayout(config.engram_vocab_size, config.engram_layer_ids,
                                          config.engram_max_ngram_size, config.engram_n_heads));
  if (layout.num_rows != config.engram_num_embeddings)
    return absl::InvalidArgumentError(absl::StrCat(
        "engram_num_embeddings = [", absl::StrJoin(config.engram_num_embeddings, ", "),
        "] in config.json, but the prime layout of engram_vocab_size ", config.engram_vocab_size,
        ", engram_max_ngram_size ", config.engram_max_ngram_size, " and engram_n_heads ", config.engram_n_heads,
        " gives [", absl::StrJoin(layout.num_rows, ", "), "] rows"));
  const int64_t pad = compression.map[config.engram_pad_id];
  auto mult = EngramHashMultipliers(config.engram_layer_ids, config.engram_max_ngram_size, compression.num_keys);
  return std::make_shared<const EngramHasher>(std::move(layout), std::move(compression.map), compression.num_keys, pad,
                                              std::move(mult));
}

absl::StatusOr<std::shared_ptr<const EngramHasher>> LoadEngramHasher(const ModelConfig& config,
                                                                   const std::string& tokenizer_json_path) {
  if (!std::filesystem::exists(tokenizer_json_path))
    return absl::NotFoundError(absl::StrCat("the Engram layers need the tokenizer's compression map, but ",
                                            tokenizer_json_path, " does not exist"));
  DSV4_ASSIGN_OR_RETURN(TokenCompression tc, LoadTokenCompression(tokenizer_json_path));
  return MakeEngramHasher(config, std::move(tc), tokenizer_json_path);
}

}  // namespace dsv4
