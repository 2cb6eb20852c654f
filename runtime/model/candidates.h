// Level 1 of V4.1's two-level indexer (MODEL.md 2.4): the candidate-source layer keeps, for each
// query, the best blocks of `block_size` consecutive compressed positions; the index sources after
// it pick their top-k only inside those blocks. Plain functions over score rows (no model state).
#pragma once

#include <cstdint>

namespace dsv4 {

// Blocks covering `width` positions: ceil(width / block_size).
inline int64_t CandidateBlockCount(int64_t width, int64_t block_size) { return (width + block_size - 1) / block_size; }

// scores [n, width]: indexer scores of n queries, -inf from each query's nvis[t] visible positions
// on. A block scores the max of its positions. For each query, keep [n, CandidateBlockCount] gets 1
// for the block holding its newest visible position (always kept: it may be only partly filled)
// and for the best of the others, topk_blocks in all, leaving out blocks with no visible position.
// Ties between block scores go to the lower block.
void SelectCandidateBlocks(const float* scores, int64_t n, int64_t width, const int64_t* nvis, int64_t topk_blocks,
                           int64_t block_size, uint8_t* keep);

// Level 2: scores [n, width] of positions outside the kept blocks become -inf.
void MaskToCandidates(float* scores, int64_t n, int64_t width, const uint8_t* keep, int64_t block_size);

}  // namespace dsv4
