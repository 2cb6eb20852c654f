// The Engram module of V4.1 (MODEL.md section 2.7, reference `Engram.forward`): gathered FP8 table
// rows -> W_kv -> one key per residual stream plus a shared value; each stream is gated by the
// normalized dot product of stream and key, then x_i += gate_i * value.
//
//   kv     = emb W_kv^T                         emb [n, cols * head_dim] (dequantized rows)
//   key_i  = kv[i D : (i + 1) D], value = kv[hc D : (hc + 1) D]
//   dot_i  = sum_d x_i w_i key_i * rsqrt(mean x_i^2 + eps) * rsqrt(mean key_i^2 + eps) * D^-0.5
//            (w = q_weight * k_weight; each stream normalized over its own D)
//   gate_i = sigmoid(copysign(sqrt(max(|dot_i|, 1e-6)), dot_i)), 0 for masked tokens
//
// W_kv accumulates 32-wide K blocks in K order into fp32, as the reference's blockwise FP8 GEMM.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/cpu/kernels.h"
#include "runtime/engram/row_source.h"
#include "runtime/weights.h"

namespace dsv4 {

using EngramGateOptions = kernels::EngramGateOptions;
using EngramGateTaps = kernels::EngramGateTaps;

// emb [count, head_dim] = FP8 codes [count, head_dim] times their E8M0 scales [count, head_dim / 32].
void EngramDequantRows(const uint8_t* codes, const uint8_t* scales, int64_t count, int64_t head_dim, float* emb);

// Updates x [n, hc, D] in place (kernels::EngramGate, with the module's weights).
inline void EngramGate(const EngramWeights& w, float* emb, int64_t n, int64_t hc, int64_t D, float eps,
                       const uint8_t* mask, const EngramGateOptions& options, float* x,
                       const EngramGateTaps* taps = nullptr) {
  kernels::EngramGate(w.wkv, w.gate_weight.data(), emb, n, hc, D, eps, mask, options, x, taps);
}

// The Engram rows of one forward step: hashed, and requested from the row source, for every
// Engram layer before the first layer runs; each Engram layer waits only for its own fetch.
struct EngramStep {
  int64_t n = 0;
  std::vector<std::vector<int64_t>> rows;     // [engram layer][n * cols]
  std::vector<std::vector<uint8_t>> codes;    // [engram layer][n * cols * head_dim]
  std::vector<std::vector<uint8_t>> scales;   // [engram layer][n * cols * head_dim / 32]
  std::vector<std::unique_ptr<EngramFetch>> fetches;  // [engram layer]; null once waited on
};

}  // namespace dsv4
