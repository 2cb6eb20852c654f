// Launch configurations of the CUDA kernels: grid, block and dynamic shared memory as functions of
// the problem shape, and the tile constants the kernels are written for.
//
// Plain C++ with no CUDA header: the launchers in kernels/cuda/*.cu use exactly these functions,
// and tests/kernels/cuda_host_test.cc checks them on machines without a GPU (every grid within the
// hardware limits, every index reached once). Sizes are int64 so the checks see overflow.
#pragma once

#include <cstdint>
#include <vector>

#include "kernels/cpu/kernels.h"
#include "kernels/cuda/device_math.h"

namespace dsv4::kernels::cuda {

struct Dim3 {
  int64_t x = 1, y = 1, z = 1;
  int64_t count() const { return x * y * z; }
};

struct LaunchConfig {
  Dim3 grid;
  Dim3 block;
  int64_t smem_bytes = 0;  // dynamic shared memory
};

// Hardware limits common to sm_80, sm_89 and sm_90.
inline constexpr int kWarpSize = 32;
inline constexpr int64_t kMaxThreadsPerBlock = 1024;
inline constexpr int64_t kMaxGridX = 2147483647;
inline constexpr int64_t kMaxGridYZ = 65535;
inline constexpr int64_t kSmemNoOptIn = 48 * 1024;  // dynamic + static, without cudaFuncSetAttribute

// True when `c` can be launched: block within limits and a multiple of the warp size, grid within
// limits, at least one block, shared memory within `smem_limit`.
bool Launchable(const LaunchConfig& c, int64_t smem_limit = kSmemNoOptIn);

// ---- row kernels: one block per row --------------------------------------------------------------
inline constexpr int kQdqThreads = 128;  // 4 warps; warp w rounds groups w, w+4, ...
LaunchConfig QdqLaunch(int64_t rows);
LaunchConfig RmsNormLaunch(int64_t rows, int64_t n);  // min(256, n rounded up to a warp) threads
// Hadamard of length n: n/2 butterflies per stage spread over min(n/2, 512) threads (at least one
// warp), the row staged in n floats of shared memory.
LaunchConfig HadamardLaunch(int64_t rows, int64_t n);

// ---- element-wise --------------------------------------------------------------------------------
inline constexpr int kElementwiseThreads = 256;
inline constexpr int64_t kElementwiseMaxBlocks = 65536;  // grid-stride loops beyond this
LaunchConfig ElementwiseLaunch(int64_t count);

// ---- mHC ----------------------------------------------------------------------------------------
// Pre: one block per token reduces the token's [hc*D] stream against fn [hc*(hc+2), hc*D] and its
// sum of squares, one thread runs Sinkhorn, all collapse. Post: threads over D, one y row per token.
inline constexpr int kHcPreThreads = 256;
inline constexpr int kHcPostThreads = 256;
LaunchConfig HcPreLaunch(int64_t tokens, int hc);
LaunchConfig HcPostLaunch(int64_t tokens, int64_t D);
// Head collapse: one block per token, the warps' partial sum of squares and hc dots in shared memory.
inline constexpr int kHcHeadThreads = 256;
LaunchConfig HcHeadLaunch(int64_t tokens, int hc);

// ---- linear layers: y = x W^T with W dequantized on the fly -------------------------------------
//
// Three kernels (gemm.cu chooses, ChooseLinear below is the rule, host-tested):
//  - skinny (gemm_skinny.cu): the tensor-core weight stream for BF16 / FP8 / FP4 weights, any m in
//    blocks of up to 64 tokens; preconditions in SkinnyUnsupported (sm_80+, K and the view's first
//    column multiples of 128, 16-byte aligned weight rows, block shapes that tile 128);
//  - FP8 tiled (gemm_fp8.cu): prefill with FP8 weights when the activations are rounded to FP8
//    (LinearOptions::act_fp8_group), e4m3 tensor cores on sm_89+, m > 64, with a workspace;
//  - the simple kernels below (warp-per-row GEMV, 32x64 CUDA-core tiles): F32 weights and every
//    shape or device the others do not take. They are also the reference the others are tested
//    against besides the CPU.
inline constexpr int64_t kGemvMaxTokens = 4;
inline constexpr int kGemvWarps = 8;
inline constexpr int kTileM = 32, kTileN = 64, kTileK = 32, kTileThreads = 256;
inline constexpr int kThreadM = 2, kThreadN = 4;  // kTileThreads = (kTileM/kThreadM) * (kTileN/kThreadN)
enum class GemmKind { kGemv, kTiled };
GemmKind ChooseGemm(int64_t m);
LaunchConfig LinearLaunch(int64_t m, int64_t n_out);
// Grouped (MoE experts): one z-slice per group, y covers the largest group; blocks past a group's
// row count return at once. `max_rows` is a host-side bound (e.g. every token), so the launch does
// not depend on the routing and can sit in a CUDA graph.
LaunchConfig GroupedLinearLaunch(int64_t max_rows, int64_t n_out, int64_t groups);

// The device the launchers plan for: compute capability (major * 10 + minor) and multiprocessors.
struct DeviceCaps {
  int arch = 0;
  int sms = 0;
};

// Null when the skinny kernel takes `w` on a device of compute capability `arch`, else why not.
// `data_aligned`: the view's first element sits on a 16-byte boundary (a device address property
// the launcher checks).
const char* SkinnyUnsupported(const WeightMatrix& w, int arch, bool data_aligned);

// The skinny kernel's launch: block = `warps` warps of 16 weight rows each, all sharing one chunk of
// activations in shared memory; grid x = row blocks x K splits (x = row_block * splits + split),
// y = blocks of up to 64 tokens, z = groups. `ntiles` n-tiles of 8 tokens are compiled in (1, 2, 4
// or 8); a block runs only those its tokens fill. With splits > 1 the blocks write partial sums to
// a workspace [splits][m][rows] that one more kernel adds in split order.
struct SkinnyPlan {
  int ntiles = 1, warps = 4;
  int64_t row_blocks = 0, splits = 1, token_blocks = 1, groups = 1;
  int64_t chunks = 0, chunks_per_split = 0;
  LaunchConfig launch;
};
// `max_tokens`: m (or a grouped call's bound on every group's rows); `allow_splits`: a workspace is
// there. The split count depends on rows, cols and the device only, never on m, so a token's result
// is the same whatever else is in the batch.
SkinnyPlan PlanSkinny(int64_t max_tokens, int64_t rows, int64_t cols, int64_t groups, const DeviceCaps& dev,
                      bool allow_splits);
inline constexpr int kSkinnyMinChunksPerSplit = 4;
int64_t SkinnySmemBytes(int ntiles);
// Split-K partial sums: [splits][m][rows] floats; the reduction's grid x = tokens, y = row slices.
int64_t SkinnyPartialBytes(const SkinnyPlan& p, int64_t m, int64_t rows);
LaunchConfig SplitReduceLaunch(int64_t m, int64_t rows);

// Null when the FP8 tiled kernel takes `w` with activations rounded to FP8 in groups of
// `act_group` on `arch`, else why not.
const char* Fp8GemmUnsupported(const WeightMatrix& w, int act_group, int arch, bool data_aligned);
// Block tile 128 weight rows x 128 tokens; grid x = row tiles, y = token tiles.
LaunchConfig Fp8GemmLaunch(int64_t m, int64_t rows);
// Its workspace: activations as E4M3 codes [m, cols] then their scales [m, cols / act_group]
// (floats), each 256-byte aligned.
int64_t Fp8ActCodesBytes(int64_t m, int64_t cols);
int64_t Fp8ActWorkspaceBytes(int64_t m, int64_t cols, int act_group);
// Activation quantization: one warp per (token, 128 columns); grid x = tokens, y = groups of
// kQuantWarps chunks of 128 columns.
inline constexpr int kQuantWarps = 8;
LaunchConfig Fp8QuantLaunch(int64_t m, int64_t cols);

enum class LinearPath { kLegacyGemv, kLegacyTiled, kSkinny, kFp8Tiled };
struct LinearChoice {
  LinearPath path = LinearPath::kLegacyGemv;
  SkinnyPlan skinny;            // kSkinny
  int64_t workspace_bytes = 0;  // what the path uses of the caller's workspace
};
// The one rule: the FP8 tiled kernel when activations are rounded to FP8, m > 64, the weights FP8
// and the workspace large enough; else the skinny kernel when it takes the weights; else the
// simple kernels. `workspace_bytes` is what the caller offers (0: none).
LinearChoice ChooseLinear(int64_t m, const WeightMatrix& w, int act_fp8_group, int64_t workspace_bytes,
                          const DeviceCaps& dev, bool data_aligned);
// Workspace the fastest path of Linear needs for these shapes (0 when it needs none).
int64_t LinearWorkspaceBytesFor(int64_t m, const WeightMatrix& w, int act_fp8_group, const DeviceCaps& dev);

// ---- sparse attention with sinks ----------------------------------------------------------------
// Block = (query token, group of kAttnHeadsPerBlock heads): the heads of a token share its KV rows,
// read once per group. Keys in chunks of kAttnChunk: one warp per key for the logits, then every
// thread accumulates its dims of P.V. Head dim d <= 128 * kAttnMaxDimsPerThread.
inline constexpr int kAttnThreads = 128;
inline constexpr int kAttnHeadsPerBlock = 4;
inline constexpr int kAttnChunk = 64;
inline constexpr int kAttnMaxDimsPerThread = 4;
int AttnDimsPerThread(int64_t d);  // 1, 2 or 4 (registers per head), 0 when d is unsupported
LaunchConfig AttentionLaunch(int64_t m, int64_t H, int64_t d);

// The fused kernel (d = 512, the V4 head dim): block = (query token, group of 4 * warps heads, KV
// split), warps x 32 threads. KV rows go through shared memory in tiles of kFusedRows rows (double
// buffered, cp.async), read once per block for all its heads: warp w computes the logits of heads
// 4w..4w+3 (lanes split the 512 dims, a reduce-scatter over the lanes ends with one logit per lane),
// a per-head online softmax, then every warp accumulates P.V for all the block's heads over its
// slice of 512 / warps dims. Splits of the KV rows (when a workspace is given) write unnormalized
// partial outputs with their running max and sum; a combine kernel merges them in split order.
inline constexpr int64_t kFusedDim = 512;
inline constexpr int kFusedRows = 8;
inline constexpr int kFusedHeadsPerWarp = 4;
struct AttentionPlan {
  bool fused = false;
  int warps = 8;  // 1, 2, 4 or 8: 4 * warps heads per block
  int64_t head_groups = 0, splits = 1, rows_per_split = 0;
  LaunchConfig launch;
};
// `aligned`: q, out and every KV segment 16-byte aligned. `allow_splits`: a workspace is there.
AttentionPlan PlanAttention(int64_t m, int64_t H, int64_t d, int64_t k, const DeviceCaps& dev, bool aligned,
                            bool allow_splits);
int64_t FusedAttentionSmemBytes(int warps);
// Split partials: per (token, head group, split) the block's outputs [4 warps][512], then running
// max and sum [4 warps] each.
int64_t AttentionPartialFloats(int warps);
int64_t AttentionWorkspaceBytesFor(const AttentionPlan& p, int64_t m);
LaunchConfig AttentionCombineLaunch(int64_t m, int64_t H);

// ---- lightning indexer --------------------------------------------------------------------------
// Block = (query token, slice of kIndexerKeysPerBlock keys): the token's H x d queries sit in shared memory
// (rows padded to d+1 floats against bank conflicts), one warp per key, one lane per head.
inline constexpr int kIndexerThreads = 128;
inline constexpr int kIndexerKeysPerBlock = 64;
int64_t IndexerSmemBytes(int64_t H, int64_t d);
LaunchConfig IndexerLaunch(int64_t m, int64_t H, int64_t d, int64_t n);

// ---- top-k ---------------------------------------------------------------------------------------
// One block per row. The exact radix select (8 bits per pass from the top, the winners sorted in
// shared memory by a bitonic network over the next power of two >= k) is the fallback of:
inline constexpr int64_t kMaxTopK = 2048;
inline constexpr int kTopKRadixBins = 256;
// (TopKSortSize, the bitonic size for k keys, is in device_math.h.)
// The fast path (kTopKFastThreads per row): an 11-bit histogram of the top of each ordered key finds
// the bin holding the k-th largest (a second 11-bit level inside that bin when needed); every key at
// or above that bin's start, at most kTopKCandidates of them, is collected in shared memory and
// bitonic-sorted by (value, index); the first k are the answer. When more than kTopKCandidates keys
// tie in their top 22 bits the block falls back to the exact radix select above. Any k <= 2048.
inline constexpr int kTopKFastThreads = 1024;
inline constexpr int kTopKBins = 2048;       // 11 bits per level
inline constexpr int kTopKHistCopies = 4;     // warps w, w+4, ... share copy w % 4
inline constexpr int kTopKCandidates = 4096;  // 32 KiB of 64-bit keys
int64_t TopKFastSmemBytes();
LaunchConfig TopKFastLaunch(int64_t m);

// ---- MoE router: one block per token, its E scores (and biased copies) in shared memory -------------
inline constexpr int kRouteThreads = 256;
inline constexpr int64_t kMaxRouteK = 32;
inline constexpr int64_t kMaxRouteExperts = 4096;
LaunchConfig RouteLaunch(int64_t tokens, int64_t E);

// ---- compressor pooling: thread per (output block, channel); grid x = blocks, y = channel slices --
inline constexpr int kCompressThreads = 128;
LaunchConfig CompressLaunch(int64_t num_blocks, int64_t hd);

// ---- row gather (Engram rows from pinned host memory, MoE packing) and ordered combine ------------
inline constexpr int kGatherThreads = 128;
LaunchConfig GatherLaunch(int64_t rows);
inline constexpr int kCombineThreads = 256;
LaunchConfig CombineLaunch(int64_t rows, int64_t D);
// Embedding rows: grid x over tokens, y over column slices of kEmbedThreads.
inline constexpr int kEmbedThreads = 256;
LaunchConfig EmbedLaunch(int64_t tokens, int64_t cols);

// ---- CUDA graphs for decode ----------------------------------------------------------------------
// Decode steps are captured once per batch-size bucket (1, 2, 4, 8, then multiples of 8 up to
// max_batch, then max_batch) and a step runs the smallest bucket that holds it, padded.
std::vector<int64_t> GraphBuckets(int64_t max_batch);
// The bucket for a batch of n, or -1 when n exceeds every bucket (run uncaptured).
int64_t PickGraphBucket(const std::vector<int64_t>& buckets, int64_t n);

}  // namespace dsv4::kernels::cuda
