#include "runtime/serving/output_text.h"

#include <algorithm>

namespace dsv4 {

OutputText::OutputText(const Tokenizer* tokenizer, bool skip_special, std::vector<std::string> stop)
    : stop_(std::move(stop)) {
  if (tokenizer != nullptr) decoder_ = std::make_unique<Tokenizer::StreamDecoder>(*tokenizer, skip_special);
  for (const auto& s : stop_) max_stop_ = std::max(max_stop_, s.size());
}

std::string OutputText::Release(size_t end) {
  std::string out = text_.substr(released_, end - released_);
  released_ = end;
  return out;
}

OutputText::Delta OutputText::Push(int32_t token) {
  Delta d;
  if (!decoder_) return d;
  const size_t before = text_.size();
  text_ += decoder_->Push(token);
  if (stop_.empty()) {
    d.text = Release(text_.size());
    return d;
  }
  // A stop string that completes now ends inside the new text; it may start up to max_stop_ - 1
  // bytes earlier, but never inside released text (that was released because no stop could start
  // there). The earliest match wins.
  const size_t from = std::max(released_, before >= max_stop_ ? before - max_stop_ + 1 : size_t{0});
  size_t best = std::string::npos;
  for (const auto& s : stop_) {
    const size_t at = text_.find(s, from);
    if (at != std::string::npos && at < best) best = at, d.matched = s;
  }
  if (best != std::string::npos) {
    d.stopped = true;
    d.text = Release(best);
    text_.resize(best);
    return d;
  }
  // Hold back the longest tail of text_ that is a proper prefix of some stop string. Such a tail
  // starts with a stop string's first byte, which is a UTF-8 lead byte, so the cut is a character
  // boundary.
  size_t hold = 0;
  const size_t avail = text_.size() - released_;
  for (const auto& s : stop_)
    for (size_t n = std::min(avail, s.size() - 1); n > hold; --n)
      if (text_.compare(text_.size() - n, n, s, 0, n) == 0) {
        hold = n;
        break;
      }
  d.text = Release(text_.size() - hold);
  return d;
}

std::string OutputText::Finish() {
  if (!decoder_) return "";
  text_ += decoder_->Flush();
  return Release(text_.size());
}

}  // namespace dsv4
