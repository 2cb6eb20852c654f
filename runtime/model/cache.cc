#include "runtime/model/cache.h"

#include <algorithm>
#include <cstring>
#include <new>
#include <numeric>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace dsv4 {
namespace {

constexpr int64_t kMinBlockTokens = 128;

// The widths of a layer's overlapping compressors (0: none): the KV's, and the indexer's own (V4).
int64_t TailWidth(const ModelConfig& c, int64_t l) {
  return c.compresses(l) && c.compressor_overlap(l) ? 2 * c.head_dim : 0;
}
int64_t IndexTailWidth(const ModelConfig& c, int64_t l) {
  return c.runs_indexer(l) && !c.index_keys_from_latent() && c.compressor_overlap(l) ? 2 * c.index_head_dim : 0;
}

}  // namespace

absl::Status PoolRows::Grow(Backend& be, int64_t n) {
  if (n <= size_) return absl::OkStatus();
  absl::StatusOr<DeviceAllocation> rows = DeviceAllocation::Make(be, n * static_cast<int64_t>(sizeof(float)));
  if (!rows.ok())
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot reserve ", (n * sizeof(float)) >> 20, " MiB for the KV pool: ", rows.status().message()));
  if (size_ > 0) be.CopyOnDevice(rows->get(), rows_.get(), size_ * static_cast<int64_t>(sizeof(float)));
  rows_ = *std::move(rows);
  size_ = n;
  return absl::OkStatus();
}

absl::Status SequenceCache::ReserveCompressors(Backend& be) {
  if (compressor_rows.get() != nullptr) return absl::OkStatus();
  int64_t floats = 0;
  for (const LayerCache& l : layers) floats += l.compressor.floats() + l.index_compressor.floats();
  if (floats == 0) return absl::OkStatus();
  const int64_t bytes = floats * static_cast<int64_t>(sizeof(float));
  absl::StatusOr<DeviceAllocation> a = DeviceAllocation::Make(be, bytes);
  if (!a.ok())
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot allocate a sequence's compressor state (", bytes >> 10, " KiB): ", a.status().message()));
  compressor_rows = *std::move(a);
  be.Zero(compressor_rows.get(), bytes);
  float* at = compressor_rows.floats();
  for (LayerCache& l : layers)
    for (CompressorState* st : {&l.compressor, &l.index_compressor}) {
      st->rows = st->floats() > 0 ? at : nullptr;
      at += st->floats();
    }
  return absl::OkStatus();
}

int64_t KvPool::DefaultBlockTokens(const ModelConfig& c) {
  int64_t b = kMinBlockTokens;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    if (c.ratio(l) > 0) b = std::lcm(b, c.ratio(l));
  return b;
}

int64_t KvPool::BlockBytes(const ModelConfig& c, int64_t B) {
  int64_t floats = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const int64_t r = c.ratio(l);
    if (c.compresses(l)) floats += B / r * c.head_dim;
    if (c.owns_index_keys(l)) floats += B / r * c.index_head_dim;
    floats += 2 * r * (TailWidth(c, l) + IndexTailWidth(c, l));
  }
  const int64_t engram = c.has_engram() ? std::max<int64_t>(c.engram_max_ngram_size - 1, 0) : 0;
  return floats * 4 + engram * 8;
}

int64_t KvPool::WindowBlockBytes(const ModelConfig& c, int64_t B) { return c.num_hidden_layers * B * c.head_dim * 4; }

KvPool::KvPool(Backend& backend, const ModelConfig& c, int64_t block_tokens)
    : backend_(&backend), block_tokens_(block_tokens) {
  DSV4_CHECK(block_tokens > 0, "block_tokens must be positive");
  layers_.resize(c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    Layer& pl = layers_[l];
    pl.ratio = c.ratio(l), pl.head_dim = c.head_dim, pl.index_dim = c.index_head_dim;
    DSV4_CHECK(pl.ratio == 0 || block_tokens % pl.ratio == 0, "block_tokens ", block_tokens,
               " is not a multiple of compression ratio ", pl.ratio);
    pl.per_block = pl.ratio > 0 && (c.compresses(l) || c.owns_index_keys(l)) ? block_tokens / pl.ratio : 0;
    pl.compresses = c.compresses(l);
    pl.tail_width = TailWidth(c, l);
    pl.index_tail_width = IndexTailWidth(c, l);
    if (!c.owns_index_keys(l)) pl.index_dim = 0;
  }
  if (c.has_engram()) engram_tail_length_ = std::max<int64_t>(c.engram_max_ngram_size - 1, 0);
}

absl::StatusOr<std::unique_ptr<KvPool>> KvPool::Create(Backend& backend, const ModelConfig& c, int64_t block_tokens,
                                                       int64_t num_blocks, int64_t num_window_blocks) {
  if (block_tokens < 1 || num_blocks < 0 || num_window_blocks < 0)
    return absl::InvalidArgumentError(absl::StrCat("bad KV pool geometry: ", num_blocks, " blocks and ",
                                                   num_window_blocks, " window blocks of ", block_tokens,
                                                   " positions"));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l)
    if (c.ratio(l) > 0 && block_tokens % c.ratio(l) != 0)
      return absl::InvalidArgumentError(absl::StrCat("KV blocks of ", block_tokens,
                                                     " positions are not a multiple of layer ", l,
                                                     "'s compression ratio ", c.ratio(l)));
  std::unique_ptr<KvPool> pool(new KvPool(backend, c, block_tokens));
  if (absl::Status st = pool->Grow(num_blocks, num_window_blocks); !st.ok())
    return absl::ResourceExhaustedError(absl::StrCat(
        "the KV pool of ", num_blocks, " blocks (", BlockBytes(c, block_tokens) >> 10, " KiB each) and ",
        num_window_blocks, " window blocks (", WindowBlockBytes(c, block_tokens) >> 10,
        " KiB each) cannot be reserved: ", st.message(), " (lower --cache-mb)"));
  return pool;
}

absl::Status KvPool::Grow(int64_t num_blocks, int64_t num_window_blocks) {
  num_blocks = std::max(num_blocks_, num_blocks);
  num_window_blocks = std::max(num_window_blocks_, num_window_blocks);
  const int64_t B = block_tokens_;
  for (Layer& pl : layers_) {
    DSV4_RETURN_IF_ERROR(pl.window.Grow(*backend_, num_window_blocks * B * pl.head_dim));
    if (pl.per_block == 0) continue;
    if (pl.compresses) DSV4_RETURN_IF_ERROR(pl.compressed.Grow(*backend_, num_blocks * pl.per_block * pl.head_dim));
    if (pl.index_dim > 0) DSV4_RETURN_IF_ERROR(pl.index_keys.Grow(*backend_, num_blocks * pl.per_block * pl.index_dim));
    DSV4_RETURN_IF_ERROR(pl.compressor_tail.Grow(*backend_, num_blocks * 2 * pl.ratio * pl.tail_width));
    DSV4_RETURN_IF_ERROR(pl.index_tail.Grow(*backend_, num_blocks * 2 * pl.ratio * pl.index_tail_width));
  }
  engram_tail_.resize(num_blocks * engram_tail_length_);
  num_blocks_ = num_blocks;
  num_window_blocks_ = num_window_blocks;
  return absl::OkStatus();
}

const float* SequenceCache::CompressedRow(int64_t l, int64_t r) const {
  const KvPool::Layer& pl = pool->layer(l);
  return pl.compressed.data() + PoolRow(pl, r) * pl.head_dim;
}

const float* SequenceCache::IndexKeyRow(int64_t l, int64_t r) const {
  const KvPool::Layer& pl = pool->layer(l);
  return pl.index_keys.data() + PoolRow(pl, r) * pl.index_dim;
}

namespace {

// Rows of the pool's memory, one by one, copied out to the host.
template <typename RowAt>
std::vector<float> CopyRows(Backend& be, int64_t first, int64_t end, int64_t dim, RowAt row_at) {
  std::vector<float> rows(std::max<int64_t>(end - first, 0) * dim);
  for (int64_t r = first; r < end; ++r)
    be.CopyToHost(&rows[(r - first) * dim], row_at(r), dim * static_cast<int64_t>(sizeof(float)));
  return rows;
}

}  // namespace

std::vector<float> SequenceCache::CompressedRows(const ModelConfig& c, int64_t l) const {
  if (!c.compresses(l)) return {};
  return CopyRows(pool->backend(), 0, length / c.ratio(l), c.head_dim, [&](int64_t r) { return CompressedRow(l, r); });
}

std::vector<float> SequenceCache::IndexKeyRows(const ModelConfig& c, int64_t l) const {
  if (!c.owns_index_keys(l)) return {};
  return CopyRows(pool->backend(), 0, length / c.ratio(l), c.index_head_dim,
                  [&](int64_t r) { return IndexKeyRow(l, r); });
}

std::vector<float> SequenceCache::WindowRows(const ModelConfig& c, int64_t l) const {
  const int64_t B = pool->block_tokens(), hd = c.head_dim;
  return CopyRows(pool->backend(), std::max<int64_t>(0, length - c.sliding_window), length, hd,
                  [&](int64_t p) { return pool->layer(l).window.data() + (blocks[p / B].window * B + p % B) * hd; });
}

int64_t SequenceCache::Bytes(const ModelConfig& config) const {
  if (pool == nullptr) return 0;
  int64_t b = 0;
  for (const BlockRef& r : blocks) {
    if (r.block >= 0) b += KvPool::BlockBytes(config, pool->block_tokens());
    if (r.window >= 0) b += KvPool::WindowBlockBytes(config, pool->block_tokens());
  }
  for (const LayerCache& l : layers) b += 4 * (l.compressor.floats() + l.index_compressor.floats());
  return b;
}

}  // namespace dsv4
