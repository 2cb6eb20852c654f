#include "runtime/tokenizer/bpe.h"

#include <nlohmann/json.hpp>
#include <queue>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace dsv4 {
namespace {

// True when the optional string field `key` of `j` is absent, null or empty.
bool UnsetString(const nlohmann::json& j, const char* key) {
  if (!j.contains(key) || j[key].is_null()) return true;
  return j[key].is_string() && j[key].get<std::string>().empty();
}

// A candidate merge of the symbol at `left` with its right neighbour `right`. Ordered so that a
// std::priority_queue pops the lowest rank first and, among equal ranks, the leftmost pair.
struct Candidate {
  int32_t rank;
  int32_t left;
  int32_t right;
  int32_t id;  // what the pair merges into
  bool operator<(const Candidate& o) const { return rank != o.rank ? rank > o.rank : left > o.left; }
};

// One symbol of the word being merged, in a doubly linked list over the original positions.
struct Symbol {
  int32_t id;
  int32_t prev;  // -1 at the start
  int32_t next;  // -1 at the end
  bool alive;
};

}  // namespace

absl::StatusOr<std::unique_ptr<BpeModel>> BpeModel::FromJson(const nlohmann::json& model) {
  if (!model.is_object()) return absl::InvalidArgumentError("model: expected an object");
  const std::string type = model.value("type", "BPE");
  if (type != "BPE") return absl::UnimplementedError(absl::StrCat("model: unsupported type '", type, "'"));
  if (model.contains("dropout") && !model["dropout"].is_null() && model["dropout"] != 0 && model["dropout"] != 1.0)
    return absl::UnimplementedError("model: BPE dropout is not supported");
  if (!UnsetString(model, "continuing_subword_prefix") || !UnsetString(model, "end_of_word_suffix"))
    return absl::UnimplementedError("model: continuing_subword_prefix / end_of_word_suffix are not supported");
  if (!model.contains("vocab") || !model.contains("merges"))
    return absl::InvalidArgumentError("model: 'vocab' and 'merges' are required");
  auto bpe = std::unique_ptr<BpeModel>(new BpeModel());
  bpe->ignore_merges_ = model.value("ignore_merges", false);
  DSV4_RETURN_IF_ERROR(bpe->ParseVocab(model["vocab"]));
  DSV4_RETURN_IF_ERROR(bpe->ParseMerges(model["merges"]));
  return bpe;
}

absl::Status BpeModel::ParseVocab(const nlohmann::json& vocab) {
  if (!vocab.is_object() || vocab.empty())
    return absl::InvalidArgumentError("model.vocab: expected a non-empty object");
  if (static_cast<int64_t>(vocab.size()) > kMaxTokenId)
    return absl::InvalidArgumentError(absl::StrCat("model.vocab: more than ", kMaxTokenId, " entries"));
  tokens_.assign(vocab.size(), std::string());
  std::vector<bool> seen(vocab.size(), false);
  vocab_.reserve(vocab.size());
  for (const auto& [token, id_json] : vocab.items()) {
    if (!id_json.is_number_integer())
      return absl::InvalidArgumentError(absl::StrCat("model.vocab: id of '", token, "' is not an integer"));
    const int64_t id = id_json.get<int64_t>();
    // Ids must be exactly 0..n-1: with n entries, an id outside the range implies a gap.
    if (id < 0 || id >= static_cast<int64_t>(vocab.size()))
      return absl::InvalidArgumentError(absl::StrCat("model.vocab: id ", id, " of '", token, "' is outside [0, ",
                                                     vocab.size(), "): ids must be dense"));
    if (seen[id]) return absl::InvalidArgumentError(absl::StrCat("model.vocab: duplicate id ", id));
    seen[id] = true;
    tokens_[id] = token;
    vocab_.emplace(token, static_cast<int32_t>(id));
  }
  return absl::OkStatus();
}

absl::Status BpeModel::ParseMerges(const nlohmann::json& merges) {
  if (!merges.is_array()) return absl::InvalidArgumentError("model.merges: expected a list");
  merges_.reserve(merges.size());
  int32_t rank = 0;
  for (const auto& m : merges) {
    std::string left, right;
    if (m.is_string()) {
      // Legacy form "left right": exactly one space.
      const std::string s = m.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        return absl::InvalidArgumentError(absl::StrCat("model.merges[", rank, "]: '", s, "' is not 'left right'"));
      left = s.substr(0, sp);
      right = s.substr(sp + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>();
      right = m[1].get<std::string>();
    } else {
      return absl::InvalidArgumentError(absl::StrCat("model.merges[", rank, "]: expected 'a b' or [a, b]"));
    }
    auto l = Find(left), r = Find(right), merged = Find(left + right);
    if (!l || !r || !merged)
      return absl::InvalidArgumentError(absl::StrCat("model.merges[", rank, "]: '", left, "' + '", right,
                                                     "' refers to a token missing from the vocab"));
    // A repeated pair keeps its last rank, as the reference implementation's map insert does.
    merges_[PairKey(*l, *r)] = Merge{rank, *merged};
    ++rank;
  }
  return absl::OkStatus();
}

std::optional<int32_t> BpeModel::Find(std::string_view token) const {
  auto it = vocab_.find(absl::string_view(token.data(), token.size()));
  if (it == vocab_.end()) return std::nullopt;
  return it->second;
}

void BpeModel::Encode(std::span<const int32_t> symbols, std::vector<int32_t>& out) const {
  const auto n = static_cast<int32_t>(symbols.size());
  if (n <= 1) {
    out.insert(out.end(), symbols.begin(), symbols.end());
    return;
  }
  std::vector<Symbol> word(n);
  std::priority_queue<Candidate> queue;
  for (int32_t i = 0; i < n; ++i) {
    word[i] = {symbols[i], i - 1, i + 1 < n ? i + 1 : -1, true};
    if (i + 1 < n)
      if (const Merge* m = FindMerge(symbols[i], symbols[i + 1])) queue.push({m->rank, i, i + 1, m->id});
  }
  while (!queue.empty()) {
    const Candidate c = queue.top();
    queue.pop();
    Symbol& left = word[c.left];
    // Stale when either side was merged away or changed since the candidate was queued.
    if (!left.alive || left.next != c.right) continue;
    const Merge* current = FindMerge(left.id, word[c.right].id);
    if (current == nullptr || current->id != c.id) continue;
    left.id = c.id;
    word[c.right].alive = false;
    left.next = word[c.right].next;
    if (left.next >= 0) word[left.next].prev = c.left;
    if (left.prev >= 0)
      if (const Merge* m = FindMerge(word[left.prev].id, left.id)) queue.push({m->rank, left.prev, c.left, m->id});
    if (left.next >= 0)
      if (const Merge* m = FindMerge(left.id, word[left.next].id)) queue.push({m->rank, c.left, left.next, m->id});
  }
  // After the loop, the live symbols reachable from position 0 are the final tokens.
  for (int32_t i = 0; i >= 0; i = word[i].next) out.push_back(word[i].id);
}

}  // namespace dsv4
