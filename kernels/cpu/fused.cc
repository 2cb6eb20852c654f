// The model's fused row operations, with the names and signatures of their CUDA twins
// (kernels/cuda/kernels.h): clamped SwiGLU, mHC pre/post, compressor pooling, batched rotations,
// Hadamard and top-k over rows, row gathers and ordered combines. The model calls these through
// its backend; each keeps the exact arithmetic (and order) the model's own loops had, so moving
// a loop here changes no bit of the output.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/scratch.h"
#include "kernels/cpu/thread_pool.h"

namespace dsv4::kernels {

void SwiGlu(const float* g, const float* u, int64_t m, int64_t I, int64_t ld, const float* row_weight, float limit,
            float* h) {
  EnsureFlushDenormals();
  ParallelFor(m, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* gt = g + t * ld;
      const float* ut = u + t * ld;
      float* ht = h + t * ld;
      for (int64_t i = 0; i < I; ++i) {
        float gv = gt[i], uv = ut[i];
        if (limit > 0) {
          uv = std::clamp(uv, -limit, limit);
          gv = std::min(gv, limit);  // the gate has no lower clamp
        }
        float v = gv / (1.0f + std::exp(-gv)) * uv;
        if (row_weight) v *= row_weight[t];
        ht[i] = v;
      }
    }
  });
}

void HcPre(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale3,
           const float* base, int iters, float norm_eps, float hc_eps, float* collapsed, float* post, float* comb,
           float* pre_out) {
  EnsureFlushDenormals();
  const int64_t mix = int64_t{hc} * (hc + 2), width = hc * D;
  // mixes = (flat x . fn^T) / rms(flat x); no learned gain. One product for all tokens.
  Scratch<float> mixes(m * mix, NoInit{});
  WeightMatrix fw;
  fw.type = WeightType::kF32, fw.data = fn, fw.ld = width;
  fw.row_end = mix, fw.col_end = width;
  Linear(x, m, ldx, fw, mixes.data(), mix);
  ParallelFor(m, 1, [&](int64_t b, int64_t e) {
    float pre[kMaxHcStreams];
    for (int64_t t = b; t < e; ++t) {
      const float* xt = x + t * ldx;
      float* mt = &mixes[t * mix];
      const float rs = 1.0f / std::sqrt(Dot(xt, xt, width) / width + norm_eps);
      for (int64_t k = 0; k < mix; ++k) mt[k] *= rs;
      HcSplitSinkhorn(mt, scale3, base, hc, iters, hc_eps, pre, post + t * hc, comb + t * hc * hc);
      if (pre_out != nullptr) std::copy(pre, pre + hc, pre_out + t * hc);
      if (collapsed == nullptr) continue;
      float* u = collapsed + t * D;
      for (int64_t d = 0; d < D; ++d) u[d] = 0.f;
      for (int64_t i = 0; i < hc; ++i)
        for (int64_t d = 0; d < D; ++d) u[d] += pre[i] * xt[i * D + d];
    }
  });
}

void HcPost(const float* y, int64_t ldy, const float* post, const float* comb, int64_t m, int hc, int64_t D, float* x,
            int64_t ldx) {
  EnsureFlushDenormals();
  ParallelFor(m, 1, [&](int64_t b, int64_t e) {
    Scratch<float> mixed(hc * D, NoInit{});
    for (int64_t t = b; t < e; ++t) {
      float* xt = x + t * ldx;
      const float* yt = y + t * ldy;
      const float* ct = comb + t * hc * hc;
      // X'_j = post_j * y + sum_i comb[i][j] * X_i
      for (int64_t j = 0; j < hc; ++j) {
        float* out = &mixed[j * D];
        for (int64_t d = 0; d < D; ++d) out[d] = post[t * hc + j] * yt[d];
        for (int64_t i = 0; i < hc; ++i) {
          const float w = ct[i * hc + j];
          for (int64_t d = 0; d < D; ++d) out[d] += w * xt[i * D + d];
        }
      }
      std::copy(mixed.begin(), mixed.end(), xt);
    }
  });
}

void HcHead(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale,
            const float* base, float norm_eps, float hc_eps, float* out, int64_t ldo) {
  EnsureFlushDenormals();
  const int64_t width = hc * D;
  ParallelFor(m, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const float* xt = x + t * ldx;
      float* ot = out + t * ldo;
      std::fill(ot, ot + D, 0.f);
      const float rs = 1.0f / std::sqrt(Dot(xt, xt, width) / width + norm_eps);
      for (int64_t i = 0; i < hc; ++i) {
        const float mx = Dot(xt, fn + i * width, width) * rs;
        const float pre = 1.0f / (1.0f + std::exp(-(mx * scale[0] + base[i]))) + hc_eps;
        for (int64_t d = 0; d < D; ++d) ot[d] += pre * xt[i * D + d];
      }
    }
  });
}

void EmbedRows(const WeightMatrix& table, const int32_t* ids, int64_t n, int copies, float* out, int64_t ldo) {
  EnsureFlushDenormals();
  const int64_t D = table.cols();
  for (int64_t t = 0; t < n; ++t) {
    float* row = out + t * ldo;
    DequantRow(table, ids[t], row);
    for (int i = 1; i < copies; ++i) std::memcpy(row + i * D, row, D * sizeof(float));
  }
}

void CompressPool(const float* kv, const float* score, int64_t ld, const float* ape, int64_t ratio, int64_t hd,
                  bool overlap, int64_t first_row, bool first_has_prev, int64_t num_blocks, float* out, int64_t ldo) {
  EnsureFlushDenormals();
  const int64_t width = overlap ? 2 * hd : hd;
  ParallelFor(num_blocks, 1, [&](int64_t b0, int64_t b1) {
    Scratch<float> s(2 * ratio * hd, NoInit{});
    Scratch<const float*> values(2 * ratio, NoInit{}), scores(2 * ratio, NoInit{});
    for (int64_t b = b0; b < b1; ++b) {
      // This block's rows first (channels [hd, 2hd) when overlapping), then the previous block's
      // (channels [0, hd)): all candidates in one softmax per channel, summed in that order.
      const int64_t cur = first_row + b * ratio, prev = cur - ratio, off = overlap ? hd : 0;
      int64_t n = 0;
      auto add = [&](int64_t row, int64_t i, int64_t channel) {
        float* sn = &s[n * hd];
        const float* sr = score + row * ld + channel;
        const float* ar = ape + i * width + channel;
        for (int64_t c = 0; c < hd; ++c) sn[c] = sr[c] + ar[c];
        values[n] = kv + row * ld + channel, scores[n] = sn;
        ++n;
      };
      for (int64_t i = 0; i < ratio; ++i) add(cur + i, i, off);
      if (overlap && (b > 0 || first_has_prev))
        for (int64_t i = 0; i < ratio; ++i) add(prev + i, i, 0);
      SoftmaxPool(values.data(), scores.data(), n, hd, out + b * ldo);
    }
  });
}

void Rope(float* x, int64_t rows, int64_t ldx, int64_t half, const float* cos, const float* sin, int64_t rows_per_entry,
          bool inverse) {
  EnsureFlushDenormals();
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t e = r / rows_per_entry;
    Rope(x + r * ldx, half, cos + e * half, sin + e * half, inverse);
  }
}

void Hadamard(float* x, int64_t m, int64_t n, int64_t ld, float scale) {
  EnsureFlushDenormals();
  for (int64_t r = 0; r < m; ++r) Hadamard(x + r * ld, n, scale);
}

void TopK(const float* x, int64_t m, int64_t n, int64_t ldx, const int64_t* nvalid, int64_t k, int32_t* idx,
          int64_t ldidx) {
  EnsureFlushDenormals();
  ParallelFor(m, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t valid = nvalid != nullptr ? std::clamp<int64_t>(nvalid[t], 0, n) : n;
      const int64_t kk = std::min(k, valid);
      int32_t* row = idx + t * ldidx;
      if (kk > 0) TopK(x + t * ldx, valid, kk, row);
      std::fill(row + kk, row + k, -1);
    }
  });
}

void GatherRows(const void* src, int64_t src_pitch, const int64_t* ids, int64_t rows, int64_t row_bytes, void* dst,
                int64_t dst_pitch) {
  EnsureFlushDenormals();
  const char* s = static_cast<const char*>(src);
  char* d = static_cast<char*>(dst);
  for (int64_t r = 0; r < rows; ++r) {
    if (ids[r] < 0) {
      std::memset(d + r * dst_pitch, 0, row_bytes);
    } else {
      std::memcpy(d + r * dst_pitch, s + ids[r] * src_pitch, row_bytes);
    }
  }
}

void ScatterRows(const void* src, int64_t src_pitch, const int64_t* ids, int64_t rows, int64_t row_bytes, void* dst,
                 int64_t dst_pitch) {
  const char* s = static_cast<const char*>(src);
  char* d = static_cast<char*>(dst);
  for (int64_t r = 0; r < rows; ++r)
    if (ids[r] >= 0) std::memcpy(d + ids[r] * dst_pitch, s + r * src_pitch, row_bytes);
}

void ScatterRowsTo(const void* src, int64_t src_pitch, const uint64_t* dst, int64_t rows, int64_t row_bytes) {
  const char* s = static_cast<const char*>(src);
  for (int64_t r = 0; r < rows; ++r)
    if (dst[r] != 0) std::memcpy(reinterpret_cast<void*>(dst[r]), s + r * src_pitch, row_bytes);
}

void Iota(int32_t* x, int64_t n, int32_t start, int32_t step) {
  for (int64_t i = 0; i < n; ++i)
    x[i] = static_cast<int32_t>(static_cast<uint32_t>(start) + static_cast<uint32_t>(i) * static_cast<uint32_t>(step));
}

void Scale(float* x, int64_t n, float s) {
  EnsureFlushDenormals();
  for (int64_t i = 0; i < n; ++i) x[i] *= s;
}

bool AllFinite(const float* x, int64_t n) {
  // NaN and Inf are the floats whose exponent bits are all ones: integer operations without an
  // early exit, which the compiler vectorizes.
  uint32_t bad = 0;
  for (int64_t i = 0; i < n; ++i) {
    uint32_t bits;
    std::memcpy(&bits, x + i, sizeof(bits));
    bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);
  }
  return bad == 0;
}

void SelectCandidateBlocks(const float* scores, int64_t n, int64_t width, const int64_t* nvis, int64_t topk_blocks,
                           int64_t block_size, uint8_t* keep) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const int64_t nb = CandidateBlockCount(width, block_size);
  Scratch<float> block(nb, NoInit{});
  Scratch<int32_t> best(nb, NoInit{});
  for (int64_t t = 0; t < n; ++t) {
    const float* row = scores + t * width;
    uint8_t* kept = keep + t * nb;
    std::fill(kept, kept + nb, 0);
    const int64_t visible = std::min(nvis[t], width);
    if (visible <= 0) continue;
    const int64_t vb = CandidateBlockCount(visible, block_size);  // blocks with a visible position
    for (int64_t b = 0; b < vb; ++b) {
      const int64_t p1 = std::min(visible, (b + 1) * block_size);
      block[b] = *std::max_element(row + b * block_size, row + p1);
    }
    block[vb - 1] = kInf;  // the newest position's block
    const int64_t k = std::min(topk_blocks, vb);
    TopK(block.data(), vb, k, best.data());
    for (int64_t i = 0; i < k; ++i)
      if (block[best[i]] > -kInf) kept[best[i]] = 1;
  }
}

void MaskToCandidates(float* scores, int64_t n, int64_t width, const uint8_t* keep, int64_t block_size) {
  const int64_t nb = CandidateBlockCount(width, block_size);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t p = 0; p < width; ++p)
      if (!keep[t * nb + p / block_size]) scores[t * width + p] = -std::numeric_limits<float>::infinity();
}

void DropMaskedPicks(const float* scores, int64_t n, int64_t width, const int64_t* nvis, int32_t* picks, int64_t k) {
  for (int64_t t = 0; t < n; ++t) {
    const float* row = scores + t * width;
    int32_t* p = picks + t * k;
    for (int64_t i = 0; i < std::min(k, nvis[t]); ++i)
      if (row[p[i]] == -std::numeric_limits<float>::infinity()) p[i] = -1;
  }
}

void PickRows(const int32_t* picks, int64_t m, int64_t k, const int32_t* block_base, int64_t per_block, int32_t offset,
              int32_t* rows, int64_t ldrows) {
  for (int64_t t = 0; t < m; ++t)
    for (int64_t i = 0; i < k; ++i) {
      const int32_t p = picks[t * k + i];
      rows[t * ldrows + i] = p < 0 ? -1 : offset + block_base[p / per_block] + static_cast<int32_t>(p % per_block);
    }
}

void FlagNonFinite(const float* x, int64_t ldx, int64_t n, const int32_t* rows, int64_t count, int32_t* flags) {
  // Rows are cut into pieces so one long row (a vocabulary's logits, half a megabyte) spreads over
  // the threads as well as many short ones (the residual streams): on one thread the pass over a
  // batch of 16 logit rows took 5% of a small model's decode step while the other cores waited.
  // A thread takes at least 4 pieces' worth (256 KB): below that the fork and join cost more.
  constexpr int64_t kPiece = 16384;
  const int64_t piece = std::clamp<int64_t>(n, 1, kPiece), pieces = (std::max<int64_t>(n, 1) + piece - 1) / piece;
  std::fill(flags, flags + count, 0);
  ParallelFor(count * pieces, (4 * kPiece + piece - 1) / piece, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      const int64_t i = t / pieces, begin = (t % pieces) * piece;
      if (!AllFinite(x + rows[i] * ldx + begin, std::min(piece, n - begin)))
        std::atomic_ref<int32_t>(flags[i]).store(1, std::memory_order_relaxed);
    }
  });
}

void CombineRows(const float* src, int64_t lds, const int32_t* offsets, const int32_t* src_rows, const float* weights,
                 int64_t rows, int64_t D, bool accumulate, float* out, int64_t ldo) {
  EnsureFlushDenormals();
  ParallelFor(rows, 1, [&](int64_t b, int64_t e) {
    for (int64_t t = b; t < e; ++t) {
      float* o = out + t * ldo;
      if (!accumulate) std::fill(o, o + D, 0.f);
      for (int32_t j = offsets[t]; j < offsets[t + 1]; ++j) {
        if (src_rows[j] < 0) continue;
        const float* v = src + static_cast<int64_t>(src_rows[j]) * lds;
        if (weights == nullptr) {
          AddTo(o, v, D);
        } else {
          const float w = weights[j];
          for (int64_t c = 0; c < D; ++c) o[c] += w * v[c];
        }
      }
    }
  });
}

namespace ref {

void SwiGlu(const float* g, const float* u, int64_t m, int64_t I, int64_t ld, const float* row_weight, float limit,
            float* h) {
  for (int64_t t = 0; t < m; ++t)
    for (int64_t i = 0; i < I; ++i) {
      double gv = g[t * ld + i], uv = u[t * ld + i];
      if (limit > 0) uv = std::clamp<double>(uv, -limit, limit), gv = std::min<double>(gv, limit);
      h[t * ld + i] = static_cast<float>(gv / (1.0 + std::exp(-gv)) * uv * (row_weight ? row_weight[t] : 1.0));
    }
}

void HcPre(const float* x, int64_t m, int hc, int64_t D, int64_t ldx, const float* fn, const float* scale3,
           const float* base, int iters, float norm_eps, float hc_eps, float* collapsed, float* post, float* comb) {
  const int64_t width = hc * D, mix = int64_t{hc} * (hc + 2);
  std::vector<float> mixes(mix), pre(hc);
  for (int64_t t = 0; t < m; ++t) {
    const float* xt = x + t * ldx;
    double ss = 0;
    for (int64_t i = 0; i < width; ++i) ss += static_cast<double>(xt[i]) * xt[i];
    const double rs = 1.0 / std::sqrt(ss / width + norm_eps);
    for (int64_t k = 0; k < mix; ++k) {
      double dot = 0;
      for (int64_t i = 0; i < width; ++i) dot += static_cast<double>(xt[i]) * fn[k * width + i];
      mixes[k] = static_cast<float>(dot * rs);
    }
    HcSplitSinkhorn(mixes.data(), scale3, base, hc, iters, hc_eps, pre.data(), post + t * hc, comb + t * hc * hc);
    for (int64_t d = 0; d < D; ++d) {
      double u = 0;
      for (int i = 0; i < hc; ++i) u += static_cast<double>(pre[i]) * xt[i * D + d];
      collapsed[t * D + d] = static_cast<float>(u);
    }
  }
}

void CompressPool(const float* kv, const float* score, int64_t ld, const float* ape, int64_t ratio, int64_t hd,
                  bool overlap, int64_t first_row, bool first_has_prev, int64_t num_blocks, float* out, int64_t ldo) {
  const int64_t width = overlap ? 2 * hd : hd;
  for (int64_t b = 0; b < num_blocks; ++b) {
    const int64_t cur = first_row + b * ratio, prev = cur - ratio;
    const bool with_prev = overlap && (b > 0 || first_has_prev);
    for (int64_t ch = 0; ch < hd; ++ch) {
      const int64_t cc = overlap ? hd + ch : ch;
      double mx = -INFINITY;
      for (int64_t r = 0; r < ratio; ++r) mx = std::max<double>(mx, score[(cur + r) * ld + cc] + ape[r * width + cc]);
      if (with_prev)
        for (int64_t r = 0; r < ratio; ++r)
          mx = std::max<double>(mx, score[(prev + r) * ld + ch] + ape[r * width + ch]);
      double num = 0, den = 0;
      for (int64_t r = 0; r < ratio; ++r) {
        const double p = std::exp(score[(cur + r) * ld + cc] + ape[r * width + cc] - mx);
        den += p, num += p * kv[(cur + r) * ld + cc];
      }
      if (with_prev)
        for (int64_t r = 0; r < ratio; ++r) {
          const double p = std::exp(score[(prev + r) * ld + ch] + ape[r * width + ch] - mx);
          den += p, num += p * kv[(prev + r) * ld + ch];
        }
      out[b * ldo + ch] = static_cast<float>(num / den);
    }
  }
}

}  // namespace ref

}  // namespace dsv4::kernels
