#include "runtime/model/candidates.h"

#include <algorithm>
#include <limits>
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/scratch.h"

namespace dsv4 {

void SelectCandidateBlocks(const float* scores, int64_t n, int64_t width, const int64_t* nvis, int64_t topk_blocks,
                           int64_t block_size, uint8_t* keep) {
  constexpr float kInf = std::numeric_limits<float>::infinity();
  const int64_t nb = CandidateBlockCount(width, block_size);
  kernels::Scratch<float> block(nb, kernels::NoInit{});
  kernels::Scratch<int32_t> best(nb, kernels::NoInit{});
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
    kernels::TopK(block.data(), vb, k, best.data());
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

}  // namespace dsv4
