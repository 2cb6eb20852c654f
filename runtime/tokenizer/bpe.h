// The model stage of a byte-level BPE tokenizer.json: the vocabulary and the ranked merges, and
// the merge loop that turns one pre-token's symbols into token ids.
#pragma once

#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"

namespace dsv4 {

// Ids must stay below this bound: it keeps tables indexed by id small and refuses files whose ids
// are clearly corrupt.
inline constexpr int64_t kMaxTokenId = 1 << 24;

// Immutable after FromJson; safe to share between threads.
class BpeModel {
 public:
  // Parses tokenizer.json's "model" value. Fails on anything this implementation would not
  // reproduce exactly: a type other than BPE, dropout, subword prefixes/suffixes, duplicate or
  // non-dense ids, and merges that name unknown tokens or produce a token absent from the vocab.
  static absl::StatusOr<std::unique_ptr<BpeModel>> FromJson(const nlohmann::json& model);

  // Appends the ids of one pre-token. `symbols` are the ids of its single characters, in order
  // (for byte-level models, one per byte). Applies the lowest-ranked merge first, the leftmost
  // one among equal ranks, until no adjacent pair has a merge.
  void Encode(std::span<const int32_t> symbols, std::vector<int32_t>& out) const;

  // The id of `token` in the vocabulary, if any.
  std::optional<int32_t> Find(std::string_view token) const;
  // id -> token string, for ids in [0, size()).
  const std::string& Token(int32_t id) const { return tokens_[id]; }
  int32_t size() const { return static_cast<int32_t>(tokens_.size()); }
  // When set, a pre-token that is itself in the vocabulary is emitted whole, without merging.
  bool ignore_merges() const { return ignore_merges_; }

 private:
  struct Merge {
    int32_t rank;
    int32_t id;  // the merged token
  };
  static uint64_t PairKey(int32_t left, int32_t right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  const Merge* FindMerge(int32_t left, int32_t right) const {
    auto it = merges_.find(PairKey(left, right));
    return it == merges_.end() ? nullptr : &it->second;
  }
  absl::Status ParseVocab(const nlohmann::json& vocab);
  absl::Status ParseMerges(const nlohmann::json& merges);

  absl::flat_hash_map<std::string, int32_t> vocab_;
  std::vector<std::string> tokens_;
  absl::flat_hash_map<uint64_t, Merge> merges_;
  bool ignore_merges_ = false;
};

}  // namespace dsv4
