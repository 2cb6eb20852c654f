// Launch configurations and supported shapes of the CUDA kernels (see launch.h, dispatch.h).
#include "kernels/cuda/launch.h"

#include <algorithm>

#include "kernels/cuda/dispatch.h"
#include "kernels/cuda/device_math.h"
#include "kernels/cuda/mma_model.h"

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

// ---- the tensor-core linear kernels -------------------------------------------------------------

namespace {

int64_t RoundUp256(int64_t b) { return RoundUp(b, 256); }

// Whether a block width tiles the 128-column chunks: a divisor of 128 or a multiple of it, and a
// multiple of `unit` (so one 16-byte load never straddles two blocks).
bool BlockTilesChunk(int64_t block_cols, int64_t unit) {
  return block_cols % unit == 0 && (128 % block_cols == 0 || block_cols % 128 == 0);
}

}  // namespace

const char* SkinnyUnsupported(const WeightMatrix& w, int arch, bool data_aligned) {
  if (arch < 80) return "the tensor-core kernels need sm_80 or newer";
  int64_t pitch = 0;
  switch (w.type) {
    case WeightType::kF32:
      return "F32 weights take the simple kernels";
    case WeightType::kBF16:
      pitch = w.ld * 2;
      break;
    case WeightType::kFP8:
      if (!BlockTilesChunk(w.block_cols, 16)) return "FP8 block width must be a multiple of 16 that tiles 128";
      pitch = w.ld;
      break;
    case WeightType::kFP4:
      if (!BlockTilesChunk(w.block_cols, 32)) return "FP4 block width must be a multiple of 32 that tiles 128";
      pitch = w.ld;
      break;
  }
  if (w.cols() % kSkinnyChunk != 0) return "K (the view's columns) must be a multiple of 128";
  if (w.col_begin % kSkinnyChunk != 0) return "the view's first column must be a multiple of 128";
  if (pitch % 16 != 0) return "weight rows must start on 16-byte boundaries (row pitch)";
  if (!data_aligned) return "weight data must be 16-byte aligned";
  return nullptr;
}

int64_t SkinnySmemBytes(int ntiles) {
  // Activation entries (16 bytes per step, n-tile and lane), the tokens' chunk scales, the lo flag.
  return int64_t{ntiles} * kSkinnySteps * kWarpSize * 16 + int64_t{ntiles} * 8 * 4 + 16;
}

SkinnyPlan PlanSkinny(int64_t max_tokens, int64_t rows, int64_t cols, int64_t groups, const DeviceCaps& dev,
                      bool allow_splits) {
  SkinnyPlan p;
  const int64_t block_tokens = std::clamp<int64_t>(max_tokens, 1, kSkinnyMaxTokens);
  p.ntiles = 1;
  while (p.ntiles * 8 < block_tokens) p.ntiles *= 2;
  p.warps = p.ntiles >= 4 ? 8 : 4;
  p.row_blocks = CeilDiv(rows, int64_t{p.warps} * kSkinnyRowsPerWarp);
  p.token_blocks = std::max<int64_t>(1, CeilDiv(max_tokens, kSkinnyMaxTokens));
  p.groups = std::max<int64_t>(1, groups);
  p.chunks = cols / kSkinnyChunk;
  p.splits = 1;
  if (allow_splits && groups == 1 && dev.sms > 0) {
    // Counted against blocks of 64 rows whatever m is, so the split (the summation order) depends
    // on the weight's shape and the device only.
    const int64_t ref_blocks = CeilDiv(rows, int64_t{4} * kSkinnyRowsPerWarp);
    const int64_t want = CeilDiv(int64_t{2} * dev.sms, ref_blocks);
    p.splits = std::clamp<int64_t>(want, 1, std::max<int64_t>(1, p.chunks / kSkinnyMinChunksPerSplit));
  }
  p.chunks_per_split = std::max<int64_t>(1, CeilDiv(p.chunks, p.splits));
  p.splits = std::max<int64_t>(1, CeilDiv(p.chunks, p.chunks_per_split));  // no empty split
  p.launch = {{p.row_blocks * p.splits, p.token_blocks, p.groups}, {int64_t{p.warps} * kWarpSize, 1, 1},
              SkinnySmemBytes(p.ntiles)};
  return p;
}

int64_t SkinnyPartialBytes(const SkinnyPlan& p, int64_t m, int64_t rows) {
  return p.splits > 1 ? RoundUp256(p.splits * m * rows * static_cast<int64_t>(sizeof(float))) : 0;
}

LaunchConfig SplitReduceLaunch(int64_t m, int64_t rows) {
  return {{m, CeilDiv(rows, kElementwiseThreads), 1}, {kElementwiseThreads, 1, 1}, 0};
}

const char* Fp8GemmUnsupported(const WeightMatrix& w, int act_group, int arch, bool data_aligned) {
  if (arch < 89) return "FP8 tensor cores need sm_89 or newer";
  if (w.type != WeightType::kFP8) return "the FP8 tiled kernel takes FP8 weights";
  if (act_group != 32 && act_group != 64 && act_group != 128) return "activation groups must be 32, 64 or 128";
  if (!BlockTilesChunk(w.block_cols, 32)) return "FP8 block width must be a multiple of 32 that tiles 128";
  if (w.cols() % kFp8TileK != 0) return "K (the view's columns) must be a multiple of 128";
  if (w.col_begin % kFp8TileK != 0) return "the view's first column must be a multiple of 128";
  if (w.ld % 16 != 0) return "weight rows must start on 16-byte boundaries (row pitch)";
  if (!data_aligned) return "weight data must be 16-byte aligned";
  return nullptr;
}

LaunchConfig Fp8GemmLaunch(int64_t m, int64_t rows) {
  return {{CeilDiv(rows, kFp8TileRows), CeilDiv(m, kFp8TileTokens), 1}, {kFp8Threads, 1, 1}, kFp8SmemBytes};
}

int64_t Fp8ActCodesBytes(int64_t m, int64_t cols) { return RoundUp256(m * cols); }
int64_t Fp8ActWorkspaceBytes(int64_t m, int64_t cols, int act_group) {
  return Fp8ActCodesBytes(m, cols) + RoundUp256(m * (cols / act_group) * static_cast<int64_t>(sizeof(float)));
}

LaunchConfig Fp8QuantLaunch(int64_t m, int64_t cols) {
  return {{m, CeilDiv(cols / kFp8TileK, kQuantWarps), 1}, {kQuantWarps * kWarpSize, 1, 1}, 0};
}

LinearChoice ChooseLinear(int64_t m, const WeightMatrix& w, int act_fp8_group, int64_t workspace_bytes,
                          const DeviceCaps& dev, bool data_aligned) {
  LinearChoice c;
  if (act_fp8_group > 0 && m > kSkinnyMaxTokens &&
      Fp8GemmUnsupported(w, act_fp8_group, dev.arch, data_aligned) == nullptr &&
      workspace_bytes >= Fp8ActWorkspaceBytes(m, w.cols(), act_fp8_group)) {
    c.path = LinearPath::kFp8Tiled;
    c.workspace_bytes = Fp8ActWorkspaceBytes(m, w.cols(), act_fp8_group);
    return c;
  }
  if (SkinnyUnsupported(w, dev.arch, data_aligned) == nullptr) {
    c.path = LinearPath::kSkinny;
    c.skinny = PlanSkinny(m, w.rows(), w.cols(), 1, dev, workspace_bytes > 0);
    if (SkinnyPartialBytes(c.skinny, m, w.rows()) > workspace_bytes)
      c.skinny = PlanSkinny(m, w.rows(), w.cols(), 1, dev, false);
    c.workspace_bytes = SkinnyPartialBytes(c.skinny, m, w.rows());
    return c;
  }
  c.path = ChooseGemm(m) == GemmKind::kGemv ? LinearPath::kLegacyGemv : LinearPath::kLegacyTiled;
  // The simple kernels multiply x as it is: with rounded activations they read a rounded copy.
  c.workspace_bytes = act_fp8_group > 0 ? RoundUp256(m * w.cols() * static_cast<int64_t>(sizeof(float))) : 0;
  return c;
}

int64_t LinearWorkspaceBytesFor(int64_t m, const WeightMatrix& w, int act_fp8_group, const DeviceCaps& dev) {
  const LinearChoice c = ChooseLinear(m, w, act_fp8_group, int64_t{1} << 62, dev, true);
  return c.workspace_bytes;
}

// ---- sparse attention ---------------------------------------------------------------------------

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

int64_t FusedAttentionSmemBytes(int warps) {
  const int64_t heads = int64_t{kFusedHeadsPerWarp} * warps;
  // Two KV tiles, the tile's logits / probabilities [rows][heads], its row ids [2][rows], and the
  // per-head running max, sum and rescale factor.
  return 2 * kFusedRows * kFusedDim * 4 + kFusedRows * heads * 4 + 2 * kFusedRows * 4 + 3 * heads * 4;
}

AttentionPlan PlanAttention(int64_t m, int64_t H, int64_t d, int64_t k, const DeviceCaps& dev, bool aligned,
                            bool allow_splits) {
  AttentionPlan p;
  p.fused = d == kFusedDim && aligned && H >= 1 && k >= 0;
  if (!p.fused) {
    p.launch = AttentionLaunch(m, H, d);
    return p;
  }
  p.warps = 8;  // the fewest warps whose heads cover H, at most 8 (32 heads per block)
  while (p.warps > 1 && int64_t{kFusedHeadsPerWarp} * (p.warps / 2) >= H) p.warps /= 2;
  auto groups = [&](int w) { return CeilDiv(H, int64_t{kFusedHeadsPerWarp} * w); };
  if (!allow_splits)  // without splits, more blocks come only from smaller head groups
    while (p.warps > 2 && m * groups(p.warps) < dev.sms) p.warps /= 2;
  p.head_groups = groups(p.warps);
  const int64_t tiles = CeilDiv(k, kFusedRows);
  p.splits = 1;
  if (allow_splits && dev.sms > 0 && tiles > 0)
    p.splits = std::clamp<int64_t>(CeilDiv(int64_t{2} * dev.sms, m * p.head_groups), 1, std::max<int64_t>(1, tiles / 4));
  p.rows_per_split = std::max<int64_t>(1, CeilDiv(tiles, p.splits)) * kFusedRows;
  p.splits = std::max<int64_t>(1, CeilDiv(k, p.rows_per_split));
  p.launch = {{m, p.head_groups, p.splits}, {int64_t{p.warps} * kWarpSize, 1, 1}, FusedAttentionSmemBytes(p.warps)};
  return p;
}

int64_t AttentionPartialFloats(int warps) {
  const int64_t heads = int64_t{kFusedHeadsPerWarp} * warps;
  return heads * kFusedDim + 2 * heads;
}

int64_t AttentionWorkspaceBytesFor(const AttentionPlan& p, int64_t m) {
  if (!p.fused || p.splits <= 1) return 0;
  return RoundUp(m * p.head_groups * p.splits * AttentionPartialFloats(p.warps) * static_cast<int64_t>(sizeof(float)),
                 256);
}

LaunchConfig AttentionCombineLaunch(int64_t m, int64_t H) { return {{m, H, 1}, {kFusedDim / 4, 1, 1}, 0}; }

int64_t TopKFastSmemBytes() {
  return std::max<int64_t>(int64_t{kTopKHistCopies} * kTopKBins * 4, int64_t{kTopKCandidates} * 8);
}

LaunchConfig TopKFastLaunch(int64_t m) { return {{m, 1, 1}, {kTopKFastThreads, 1, 1}, TopKFastSmemBytes()}; }

int64_t IndexerSmemBytes(int64_t H, int64_t d) { return (H * (d + 1) + H) * static_cast<int64_t>(sizeof(float)); }

LaunchConfig IndexerLaunch(int64_t m, int64_t H, int64_t d, int64_t n) {
  return {{m, std::max<int64_t>(1, CeilDiv(n, kIndexerKeysPerBlock)), 1}, {kIndexerThreads, 1, 1},
          IndexerSmemBytes(H, d)};
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
