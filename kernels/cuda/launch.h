// Launch configurations of the CUDA kernels: grid, block and dynamic shared memory as functions of
// the problem shape, and the tile constants the kernels are written for.
//
// Plain C++ with no CUDA header: the launchers in kernels/cuda/*.cu use exactly these functions,
// and tests/kernels/cuda_host_test.cc checks them on machines without a GPU (every grid within the
// hardware limits, every index reached once). Sizes are int64 so the checks see overflow.
#pragma once

#include <cstdint>
#include <vector>

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
// Up to kGemvMaxTokens tokens: one warp per output row, kGemvWarps rows per block, every token in
// registers. More: 32x64 output tiles over 32-column slices of K, 256 threads, 2x4 per thread.
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

// ---- lightning indexer --------------------------------------------------------------------------
// Block = (query token, slice of kIndexerKeysPerBlock keys): the token's H x d queries sit in shared memory
// (rows padded to d+1 floats against bank conflicts), one warp per key, one lane per head.
inline constexpr int kIndexerThreads = 128;
inline constexpr int kIndexerKeysPerBlock = 64;
int64_t IndexerSmemBytes(int64_t H, int64_t d);
LaunchConfig IndexerLaunch(int64_t m, int64_t H, int64_t d, int64_t n);

// ---- top-k ---------------------------------------------------------------------------------------
// One block per row: 4-pass radix select of the k-th largest key, then the winners are sorted in
// shared memory (bitonic over the next power of two >= k).
inline constexpr int kTopKThreads = 256;
inline constexpr int64_t kMaxTopK = 2048;
inline constexpr int kTopKRadixBins = 256;
int64_t TopKSortSize(int64_t k);
LaunchConfig TopKLaunch(int64_t m, int64_t k);

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
