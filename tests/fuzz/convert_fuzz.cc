// Request conversion (rpc/convert.h): a serialized dsv4.v1.GenerateRequest, as the server receives
// it, to the engine's GenerateSpec. Any bytes end in a status; a spec that converts has a
// non-empty prompt of in-vocabulary ids (text and chat go through the real tokenizer).
#include <cstdint>
#include <cstdlib>
#include <string>

#include "rpc/convert.h"
#include "runtime/tokenizer/utf8.h"
#include "tests/fuzz/builtin_tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const dsv4::Tokenizer* tok = dsv4::fuzz::BuiltinTokenizer("fuzz_convert");
  dsv4::v1::GenerateRequest req;
  if (!req.ParseFromArray(data, static_cast<int>(size))) return 0;
  dsv4::InputLimits limits;
  limits.max_model_len = 4096;
  for (const dsv4::Tokenizer* t : {tok, static_cast<const dsv4::Tokenizer*>(nullptr)}) {
    auto spec = dsv4::ToGenerateSpec(req, t, limits);
    if (!spec.ok()) continue;
    if (spec->prompt.empty()) std::abort();
    if (req.input_case() != dsv4::v1::GenerateRequest::kTokens)
      for (int32_t id : spec->prompt)
        if (id < 0 || id >= tok->vocab_size()) std::abort();
  }
  // The way back: an output with the request's text fields serializes.
  dsv4::GenerateOutput out;
  out.text = dsv4::utf8::Sanitize(req.text());  // a string field: UTF-8 only
  out.finished = true;
  dsv4::v1::GenerateResponse resp;
  dsv4::ToProto(req.request_id(), std::move(out), &resp);
  std::string wire;
  (void)resp.SerializeToString(&wire);
  return 0;
}
