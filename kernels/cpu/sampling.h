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

namespace ref {
double ExpShiftedSum(const float* x, int64_t n, float shift, float scale, float* e);
}  // namespace ref

}  // namespace dsv4::kernels
