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
// sum runs over 8 lanes in double (lane i % 8 within whole groups of 8, the lanes then added in a
// fixed order, the tail last). The vector path and ref:: give the same bits: the result depends
// only on the inputs, whichever path this CPU takes.
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
  bool operator()(float e, int64_t i) const {
    return e > 0.f && e >= floor && (cut_id < 0 || e > cut_value || (e == cut_value && i <= cut_id));
  }
};

// The sums of the kept weights of e[0, n) per block of `block` ids (a multiple of 8): sums[b] for
// ids [b * block, min(n, (b + 1) * block)), ceil(n / block) of them. Each block sums in double
// over 8 lanes as ExpShiftedSum does, so the vector path and ref:: give the same bits. The draw
// then needs one vector pass and a scan of one block, not two scalar passes over the vocabulary.
void KeptBlockSums(const float* e, int64_t n, const KeepRule& keep, int64_t block, double* sums);

// Writes to ids, in increasing order, every i in [0, n) with lo <= e[i] < hi; returns how many
// (ids holds n). Top-p's second pass: the ids of the one histogram bucket where the mass ends.
int64_t IdsInRange(const float* e, int64_t n, float lo, float hi, int32_t* ids);

namespace ref {
double ExpShiftedSum(const float* x, int64_t n, float shift, float scale, float* e);
float MaxAndNaN(const float* x, int64_t n, bool* any_nan);
void KeptBlockSums(const float* e, int64_t n, const KeepRule& keep, int64_t block, double* sums);
int64_t IdsInRange(const float* e, int64_t n, float lo, float hi, int32_t* ids);
}  // namespace ref

}  // namespace dsv4::kernels
