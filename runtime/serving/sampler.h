// Sampling parameters, their validation, and the per-request sampler.
//
// The sampler of a request owns its random generator, seeded from the request's seed and advanced
// once per sampled token, so a request's tokens depend only on its own logits and seed — never on
// which other requests share its steps.
//
// Order of operations on the logits of one step (a copy; the model's output is not changed):
//   logit_bias -> repetition penalty (prompt and output tokens) -> presence / frequency penalties
//   (output tokens) -> greedy argmax when temperature == 0, else temperature -> top-k -> top-p ->
//   min-p -> draw. Ties are broken by the lower token id everywhere, so the result is a pure
//   function of (logits, history, parameters, generator state).
//
// Cost: a few linear passes over the vocabulary and no sort of it (a vector pass for the largest
// logit, read in place unless penalties or NaNs need a copy; one for the weights; top-p selects
// its cutoff by a histogram of the weights, then by mass inside one bucket; the draw sums the kept
// weights per block of ids in one vector pass, then scans one block), so sampling stays small next
// to a decode step even for a flat distribution, where top-p keeps most of a 129k vocabulary.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"

namespace dsv4 {

struct SamplingParams {
  double temperature = 1.0;         // [0, 2]; 0 = greedy
  double top_p = 1.0;               // (0, 1]
  int64_t top_k = 0;                // 0 or -1 = off, else [1, vocab]
  double min_p = 0.0;               // [0, 1]
  double repetition_penalty = 1.0;  // (0, 10]
  double presence_penalty = 0.0;    // [-2, 2]
  double frequency_penalty = 0.0;   // [-2, 2]
  int64_t seed = -1;                // -1 = chosen at admission
  int64_t max_tokens = -1;          // -1 = the engine's default (bounded by the context)
  std::vector<std::string> stop;    // non-empty UTF-8 strings
  std::vector<int32_t> stop_token_ids;
  bool ignore_eos = false;
  bool skip_special_tokens = true;
  std::vector<std::pair<int32_t, double>> logit_bias;  // values clamped to [-100, 100] by Validate
  int32_t logprobs = 0;                                // [0, 20]
};

// Caps on per-request sizes (rows RQ-04 to RQ-06 of ecosystem_reliability.md).
struct SamplingLimits {
  int64_t vocab_size = 0;
  int64_t max_stop = 16;
  int64_t max_stop_bytes = 256;
  int64_t max_stop_token_ids = 64;
  int64_t max_logit_bias = 1024;
  int32_t max_logprobs = 20;
};

// Checks every field; INVALID_ARGUMENT names the first bad one as "sampling.<field>". Clamps
// logit_bias values to [-100, 100] (NaN is rejected). max_tokens is checked by the engine, which
// knows the prompt length and the context limit.
absl::Status ValidateSamplingParams(SamplingParams& params, const SamplingLimits& limits);

// The log-probabilities reported for one sampled token (log-softmax of the raw logits).
struct TokenLogprobs {
  int32_t token_id = 0;
  double logprob = 0;
  std::vector<std::pair<int32_t, double>> top;  // best first
};

// One sampler per request; a sampler is used by one thread at a time (the engine samples a step's
// requests in parallel on the CPU pool).
class Sampler {
 public:
  // `params` must be valid; `seed` is the resolved seed (>= 0); `prompt` feeds the repetition penalty.
  Sampler(const SamplingParams& params, uint64_t seed, std::span<const int32_t> prompt);

  // Picks the next token from `logits` [vocab] (left unchanged) and records it in the history.
  // Fills `logprobs` when params.logprobs > 0 or it is non-null and wanted.
  int32_t Sample(std::span<const float> logits, TokenLogprobs* logprobs = nullptr);

  // Raw log-softmax figures for `token`, with the top `n` alternatives.
  static TokenLogprobs Logprobs(std::span<const float> logits, int32_t token, int32_t n);

 private:
  double Uniform();  // [0, 1) from 53 random bits
  void ApplyPenalties(std::vector<float>& l) const;
  bool Penalized() const;  // whether ApplyPenalties would change anything

  SamplingParams p_;
  uint64_t state_;
  absl::flat_hash_map<int32_t, int32_t> seen_;    // prompt and output tokens (repetition penalty)
  absl::flat_hash_map<int32_t, int32_t> output_;  // output token -> count (presence / frequency)
  // The vocabulary-sized buffers are per thread, not per request (sampler.cc).
};

namespace sampling_internal {  // the sampler's pieces, public for tests

// The order of candidates by weight: larger first, then lower id (a total order).
inline bool Before(const float* e, int32_t a, int32_t b) { return e[a] > e[b] || (e[a] == e[b] && a < b); }

// The draw's blocks of ids: it finds the block by the blocks' kept weight, then the token in it.
inline constexpr int64_t kDrawBlock = 2048;

struct TopPScratch {
  std::vector<double> hist, sub;
  std::vector<int32_t> ids;    // the candidates of the weight range searched...
  std::vector<float> weights;  // ...with their weights
  std::vector<int32_t> candidates;  // of one sub-bucket, sorted best first
  std::vector<double> block_sums;  // per kDrawBlock ids
};

struct TopPCut {
  int32_t id = -1;  // the cutoff: the last (worst) candidate kept; -1: every candidate is kept
  // Where window_hi > 0, block_sums holds the sums of the weights >= window_hi per draw block (every
  // one of them is kept by the cutoff), and ids / weights [0, window) the weights just below it,
  // among which the cutoff fell.
  float window_hi = 0;
  int64_t window = 0;
  // Which step of the search found it (sampler.cc): 1 the bracket, 2 above it, 3 below it, 4 the
  // whole histogram.
  int step = 0;
};

// Top-p over weights e[V] in [0, 1] (0 = not a candidate) whose sum is z: the smallest set of
// candidates, best first in the order of Before, whose weights sum to at least top_p * z.
TopPCut TopPCutoff(const float* e, int32_t V, double z, double top_p, TopPScratch& s);

}  // namespace sampling_internal
}  // namespace dsv4
