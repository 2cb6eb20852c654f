// Between the wire (dsv4.v1 messages) and the engine: requests are checked and tokenized here;
// every error is INVALID_ARGUMENT naming the field.
#pragma once

#include <string>

#include "absl/status/statusor.h"
#include "dsv4/v1/inference.pb.h"
#include "runtime/serving/engine.h"
#include "runtime/tokenizer/tokenizer.h"

namespace dsv4 {

struct InputLimits {
  int64_t max_model_len = 16384;
  // Text longer than this many bytes per context token cannot fit; it is rejected before
  // tokenizing, which bounds the time one request can spend in the tokenizer (row TK-03).
  int64_t max_bytes_per_token = 64;
};

// `tokenizer` may be null (then only token ids are accepted).
absl::StatusOr<GenerateSpec> ToGenerateSpec(const v1::GenerateRequest& request, const Tokenizer* tokenizer,
                                            const InputLimits& limits);

void ToProto(const std::string& request_id, GenerateOutput&& out, v1::GenerateResponse* response);

}  // namespace dsv4
