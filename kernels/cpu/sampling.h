// CPU kernels of token sampling (runtime/serving/sampler.h): the unnormalized probabilities of a
// whole vocabulary, computed once per sampled token, so they have to cost little next to a
// decode step (a 129k vocabulary, 16 sequences a step).
#pragma once

#include <cstdint>

namespace dsv4::kernels {

// e[i] = exp((x[i] - shift) * scale) for n values x[i] <= shift (scale > 0), and 0 where that is
// below 2^-126 (x[i] = -inf included). Returns the sum of e in double precision.
//
// exp is 2^t with t = (x - shift) * (scale * log2 e): t split into round(t) and f in [-1/2, 1/2],
// 2^f by its degree-6 Taylor polynomial in fused multiply-adds (relative error below 2e-7). The
// sum runs over 32 lanes in double (lane i % 32 within whole groups of 32, the lanes then added
// in a fixed tree, the rest last, in order). The vector paths and ref:: give the same bits: the result depends only on
// the inputs, whichever path this CPU takes.
double ExpShiftedSum(const float* x, int64_t n, float shift, float scale, float* e);

// The largest of x[0, n) (-inf when n == 0), and whether any of them is NaN (the largest is then
// meaningless). One read of the logits: the sampler copies them only when it must change them.
float MaxAndNaN(const float* x, int64_t n, bool* any_nan);

// Which weights the draw keeps after top-k, top-p and min-p: a weight e (its token id i) is kept
// when e > 0, e >= floor (min-p), and (e, i) is not after the top-p cutoff (cut_value, cut_id) in
// the best-first order (larger weight, then lower id). cut_id < 0: no top-p cutoff.
struct KeepRule {
  float floor = 0.f;
  float cut_value = 0.f;
  int64_t cut_id = -1;
  // Bitwise, not short-circuit: inside top-p's window the outcome is a coin toss a branch would
  // mispredict half the time.
  bool operator()(float e, int64_t i) const {
    return (e > 0.f) & (e >= floor) & ((cut_id < 0) | (e > cut_value) | ((e == cut_value) & (i <= cut_id)));
  }
};

// The sums of the kept weights of e[0, n) per block of `block` ids: sums[b] for ids
// [b * block, min(n, (b + 1) * block)), ceil(n / block) of them. Each block sums in double over
// 32 lanes as ExpShiftedSum does (lane (i - b * block) % 32), so the vector path and ref:: give the same bits. The draw
// then needs one vector pass and a scan of one block, not two scalar passes over the vocabulary.
void KeptBlockSums(const float* e, int64_t n, const KeepRule& keep, int64_t block, double* sums);

// One pass over e[0, n) that top-p's search asks of a weight range [lo, hi): the weights at or
// above `hi`, summed per block of `block` ids into sums[ceil(n / block)] as KeptBlockSums sums
// the kept ones (the draw's block sums when the cutoff falls inside the range), their total (the
// blocks' sums added in order) and their number; and the ids of the weights in [lo, hi) with the
// weights, in increasing id order (ids and weights hold n).
struct RangeSplit {
  double above = 0;         // the sum of the e[i] >= hi
  int64_t above_count = 0;  // how many e[i] >= hi
  int64_t count = 0;        // the ids written: lo <= e[i] < hi
};
RangeSplit SplitAtRange(const float* e, int64_t n, float lo, float hi, int64_t block, double* sums, int32_t* ids,
                        float* weights);

namespace ref {
double ExpShiftedSum(const float* x, int64_t n, float shift, float scale, float* e);
float MaxAndNaN(const float* x, int64_t n, bool* any_nan);
void KeptBlockSums(const float* e, int64_t n, const KeepRule& keep, int64_t block, double* sums);
RangeSplit SplitAtRange(const float* e, int64_t n, float lo, float hi, int64_t block, double* sums, int32_t* ids,
                        float* weights);
}  // namespace ref

}  // namespace dsv4::kernels
