// Launch configurations and supported shapes of the CUDA kernels (see launch.h, dispatch.h).
#include "kernels/cuda/launch.h"

#include <algorithm>

#include "kernels/cuda/dispatch.h"
#include "kernels/cuda/device_math.h"

namespace dsv4::kernels::cuda {
namespace {

int64_t CeilDiv(int64_t a, int64_t b) { return (a + b - 1) / b; }
int64_t RoundUp(int64_t a, int64_t b) { return CeilDiv(a, b) * b; }

}  // namespace

bool Launchable(const LaunchConfig& c, int64_t smem_limit) {
  const int64_t threads = c.block.count();
  if (threads < 1 || threads > kMaxThreadsPerBlock || threads % kWarpSize != 0) return false;
  if (c.grid.x < 1 || c.grid.y < 1 || c.grid.z < 1) return false;
  if (c.grid.x > kMaxGridX || c.grid.y > kMaxGridYZ || c.grid.z > kMaxGridYZ) return false;
  return c.smem_bytes >= 0 && c.smem_bytes <= smem_limit;
}

LaunchConfig QdqLaunch(int64_t rows) { return {{rows, 1, 1}, {kQdqThreads, 1, 1}, 0}; }

LaunchConfig RmsNormLaunch(int64_t rows, int64_t n) {
  return {{rows, 1, 1}, {std::clamp<int64_t>(RoundUp(n, kWarpSize), kWarpSize, 256), 1, 1}, 0};
}

LaunchConfig HadamardLaunch(int64_t rows, int64_t n) {
  const int64_t threads = std::clamp<int64_t>(RoundUp(n / 2, kWarpSize), kWarpSize, 512);
  return {{rows, 1, 1}, {threads, 1, 1}, n * static_cast<int64_t>(sizeof(float))};
}

LaunchConfig ElementwiseLaunch(int64_t count) {
  return {{std::clamp<int64_t>(CeilDiv(count, kElementwiseThreads), 1, kElementwiseMaxBlocks), 1, 1},
          {kElementwiseThreads, 1, 1},
          0};
}

LaunchConfig HcPreLaunch(int64_t tokens, int hc) {
  // Per warp: the partial sum of squares and hc*(hc+2) partial dots, reduced across warps.
  const int64_t values = 1 + static_cast<int64_t>(hc) * (hc + 2);
  return {{tokens, 1, 1},
          {kHcPreThreads, 1, 1},
          (kHcPreThreads / kWarpSize) * values * static_cast<int64_t>(sizeof(float))};
}

LaunchConfig HcHeadLaunch(int64_t tokens, int hc) {
  const int64_t values = 1 + static_cast<int64_t>(hc);
  return {{tokens, 1, 1},
          {kHcHeadThreads, 1, 1},
          (kHcHeadThreads / kWarpSize) * values * static_cast<int64_t>(sizeof(float))};
}

LaunchConfig HcPostLaunch(int64_t tokens, int64_t D) {
  return {{tokens, CeilDiv(D, kHcPostThreads), 1}, {kHcPostThreads, 1, 1}, 0};
}

GemmKind ChooseGemm(int64_t m) { return m <= kGemvMaxTokens ? GemmKind::kGemv : GemmKind::kTiled; }

LaunchConfig LinearLaunch(int64_t m, int64_t n_out) {
  if (ChooseGemm(m) == GemmKind::kGemv) return {{CeilDiv(n_out, kGemvWarps), 1, 1}, {kGemvWarps * kWarpSize, 1, 1}, 0};
  return {{CeilDiv(n_out, kTileN), CeilDiv(m, kTileM), 1}, {kTileThreads, 1, 1}, 0};
}

LaunchConfig GroupedLinearLaunch(int64_t max_rows, int64_t n_out, int64_t groups) {
  return {{CeilDiv(n_out, kTileN), std::max<int64_t>(1, CeilDiv(max_rows, kTileM)), groups}, {kTileThreads, 1, 1}, 0};
}

int AttnDimsPerThread(int64_t d) {
  if (d < 1) return 0;
  const int64_t r = CeilDiv(d, kAttnThreads);
  if (r == 1 || r == 2) return static_cast<int>(r);
  return r <= kAttnMaxDimsPerThread ? kAttnMaxDimsPerThread : 0;
}

LaunchConfig AttentionLaunch(int64_t m, int64_t H, int64_t d) {
  // Queries of the block's heads, the chunk's logits/probabilities per head, the chunk's row ids.
  const int64_t smem = (kAttnHeadsPerBlock * d + kAttnHeadsPerBlock * kAttnChunk) * static_cast<int64_t>(sizeof(float)) +
                       kAttnChunk * static_cast<int64_t>(sizeof(int32_t));
  return {{m, CeilDiv(H, kAttnHeadsPerBlock), 1}, {kAttnThreads, 1, 1}, smem};
}

int64_t IndexerSmemBytes(int64_t H, int64_t d) { return (H * (d + 1) + H) * static_cast<int64_t>(sizeof(float)); }

LaunchConfig IndexerLaunch(int64_t m, int64_t H, int64_t d, int64_t n) {
  return {{m, std::max<int64_t>(1, CeilDiv(n, kIndexerKeysPerBlock)), 1}, {kIndexerThreads, 1, 1},
          IndexerSmemBytes(H, d)};
}

int64_t TopKSortSize(int64_t k) {
  int64_t p = 1;
  while (p < k) p *= 2;
  return p;
}

LaunchConfig TopKLaunch(int64_t m, int64_t k) {
  const int64_t smem = TopKSortSize(k) * static_cast<int64_t>(sizeof(uint64_t));
  return {{m, 1, 1}, {kTopKThreads, 1, 1}, smem};
}

LaunchConfig CompressLaunch(int64_t num_blocks, int64_t hd) {
  return {{num_blocks, CeilDiv(hd, kCompressThreads), 1}, {kCompressThreads, 1, 1}, 0};
}

LaunchConfig GatherLaunch(int64_t rows) { return {{rows, 1, 1}, {kGatherThreads, 1, 1}, 0}; }

LaunchConfig CombineLaunch(int64_t rows, int64_t D) {
  return {{rows, CeilDiv(D, kCombineThreads), 1}, {kCombineThreads, 1, 1}, 0};
}

LaunchConfig RouteLaunch(int64_t tokens, int64_t E) {
  return {{tokens, 1, 1}, {kRouteThreads, 1, 1}, (2 * E + 2 * kWarpSize) * static_cast<int64_t>(sizeof(float))};
}

LaunchConfig EmbedLaunch(int64_t tokens, int64_t cols) {
  return {{tokens, CeilDiv(cols, kEmbedThreads), 1}, {kEmbedThreads, 1, 1}, 0};
}

std::vector<int64_t> GraphBuckets(int64_t max_batch) {
  std::vector<int64_t> b;
  for (int64_t n : {1, 2, 4})
    if (n < max_batch) b.push_back(n);
  for (int64_t n = 8; n < max_batch; n += 8) b.push_back(n);
  if (max_batch >= 1) b.push_back(max_batch);
  return b;
}

int64_t PickGraphBucket(const std::vector<int64_t>& buckets, int64_t n) {
  auto it = std::lower_bound(buckets.begin(), buckets.end(), n);
  return it == buckets.end() ? -1 : *it;
}

// ---- supported shapes (dispatch.h) ---------------------------------------------------------------

const char* CheckWeight(const WeightMatrix& w) {
  if (w.data == nullptr) return "weight data is null";
  if (w.rows() < 1 || w.cols() < 1 || w.row_begin < 0 || w.col_begin < 0) return "empty or negative weight view";
  switch (w.type) {
    case WeightType::kF32:
    case WeightType::kBF16:
      if (w.ld < w.col_end) return "ld smaller than the view's last column";
      return nullptr;
    case WeightType::kFP8:
      if (w.scales == nullptr || w.block_rows < 1 || w.block_cols < 1) return "FP8 needs scales and blocks >= 1";
      if (w.ld < w.col_end) return "ld smaller than the view's last column";
      if (w.scale_ld < (w.col_end + w.block_cols - 1) / w.block_cols) return "scale_ld too small";
      return nullptr;
    case WeightType::kFP4:
      if (w.scales == nullptr || w.block_rows != 1 || w.block_cols < 2 || w.block_cols % 2 != 0)
        return "FP4 needs scales, block_rows 1 and an even block_cols";
      if (2 * w.ld < w.col_end) return "ld (bytes) smaller than the view's last column pair";
      if (w.scale_ld < (w.col_end + w.block_cols - 1) / w.block_cols) return "scale_ld too small";
      return nullptr;
  }
  return "unknown weight type";
}

const char* CheckLinear(int64_t m, const WeightMatrix& w, int64_t ldx, int64_t ldy) {
  if (const char* e = CheckWeight(w)) return e;
  if (m < 0) return "negative m";
  if (ldx < w.cols() || ldy < w.rows()) return "ldx < cols or ldy < rows";
  if (!Launchable(LinearLaunch(std::max<int64_t>(m, 1), w.rows()))) return "grid too large";
  return nullptr;
}

const char* CheckQdq(int64_t n, int64_t ld, int group) {
  if (group < 1) return "group must be >= 1";
  if (n < 0 || ld < n) return "ld < n";
  return nullptr;
}

const char* CheckHadamard(int64_t n) {
  if (n < 2 || n > 8192 || (n & (n - 1)) != 0) return "Hadamard length must be a power of two in [2, 8192]";
  return nullptr;
}

const char* CheckHc(int hc) { return hc >= 1 && hc <= kMaxHc ? nullptr : "hc must be in [1, 4]"; }

const char* CheckAttention(int64_t H, int64_t d, int64_t k) {
  if (H < 1 || k < 0) return "H >= 1 and k >= 0 required";
  if (AttnDimsPerThread(d) == 0) return "head dim must be in [1, 512]";
  if (!Launchable(AttentionLaunch(1, H, d))) return "too many heads";
  return nullptr;
}

const char* CheckIndexer(int64_t H, int64_t d) {
  if (H < 1 || d < 1) return "H and d must be >= 1";
  if (IndexerSmemBytes(H, d) > kSmemNoOptIn) return "indexer queries of one token exceed 48 KiB";
  return nullptr;
}

const char* CheckTopK(int64_t n, int64_t k) {
  if (k < 0 || k > kMaxTopK) return "k must be in [0, 2048]";
  if (n < k || n >= (int64_t{1} << 31)) return "need k <= n < 2^31";
  return nullptr;
}

const char* CheckRoute(int64_t E, int64_t K) {
  if (K < 1 || K > kMaxRouteK) return "experts per token must be in [1, 32]";
  if (E < K || E > kMaxRouteExperts) return "need experts per token <= routed experts <= 4096";
  return nullptr;
}

const char* CheckCompress(int64_t ratio, int64_t hd) {
  if (ratio < 1 || hd < 1) return "ratio and head dim must be >= 1";
  return nullptr;
}

}  // namespace dsv4::kernels::cuda
