// The tables every layer of a step shares (model.h, StepTables): token ids, the watchdog's rows,
// the rotations of the step's positions, where each token's window key goes, and per sequence and
// attention kind the rows its queries attend, the compressed blocks' pool rows, and the index keys'
// rows and visible counts. They depend only on the step's positions and block tables, so they are
// made once per step on the host and reach the backend in one copy; before, each layer made its own
// and uploaded them one by one (on a GPU, thousands of small copies per batched step).
#include <algorithm>
#include <type_traits>
#include <utility>

#include "base/status.h"
#include "runtime/model/model.h"

namespace dsv4 {

void Model::InitAttentionKinds() {
  const ModelConfig& c = config();
  layer_kind_.assign(c.num_hidden_layers, 0);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    AttentionKind k;
    k.ratio = c.ratio(l);
    k.picked = k.ratio > 0 && c.index_source(l) >= 0;
    k.indexed = w_->layers[l].has_indexer;
    k.comp_layer = k.ratio > 0 ? c.kv_source(l) : -1;
    k.key_layer = k.indexed ? c.index_key_source(l) : -1;
    // Layers of a kind differ only in which layer they name; what the tables depend on is those
    // layers' ratios (their pool rows per block).
    auto same = [&](const AttentionKind& o) {
      auto ratio_of = [&](int64_t layer) { return layer < 0 ? int64_t{0} : c.ratio(layer); };
      return o.ratio == k.ratio && o.picked == k.picked && o.indexed == k.indexed &&
             ratio_of(o.comp_layer) == ratio_of(k.comp_layer) && ratio_of(o.key_layer) == ratio_of(k.key_layer);
    };
    auto it = std::find_if(kinds_.begin(), kinds_.end(), same);
    if (it == kinds_.end()) it = kinds_.insert(kinds_.end(), k);
    layer_kind_[l] = static_cast<int>(it - kinds_.begin());
  }
}

int64_t Model::WriteStepTables(std::span<const int32_t> tokens, std::span<SeqSlice> seqs, char* host, char* device,
                               StepTableViews* views, SeqKindTables* kinds) const {
  const ModelConfig& c = config();
  const int64_t n = static_cast<int64_t>(tokens.size()), hc = c.hc_mult, half = c.qk_rope_head_dim / 2;
  const int64_t win = c.sliding_window, num_kinds = static_cast<int64_t>(kinds_.size());
  const bool write = host != nullptr;
  // Each table at the next 64-byte boundary; `take` returns where it is written (host) and where the
  // backend reads it (device).
  int64_t used = 0;
  auto take = [&](int64_t count, auto* type) {
    using T = std::remove_pointer_t<decltype(type)>;
    used = (used + 63) / 64 * 64;
    const int64_t off = used;
    used += count * static_cast<int64_t>(sizeof(T));
    return std::pair<T*, T*>{write ? reinterpret_cast<T*>(host + off) : nullptr,
                             write ? reinterpret_cast<T*>(device + off) : nullptr};
  };

  auto [tok, dtok] = take(n, static_cast<int32_t*>(nullptr));
  auto [last, dlast] = take(static_cast<int64_t>(seqs.size()), static_cast<int32_t*>(nullptr));
  if (write) {
    std::copy(tokens.begin(), tokens.end(), tok);
    for (size_t i = 0; i < seqs.size(); ++i) last[i] = static_cast<int32_t>(seqs[i].begin + seqs[i].n - 1);
    views->tokens = dtok, views->last_rows = dlast;
  }
  if (c.hc_lagged()) {
    auto [mix, dmix] = take(n * hc, static_cast<float*>(nullptr));
    if (write) {
      std::fill(mix, mix + n * hc, 0.f);
      for (int64_t t = 0; t < n; ++t) mix[t * hc] = 1.f;
      views->one_hot = dmix;
    }
  }
  // The rotations: one table per rotary kind some layer uses.
  for (int kind = 0; kind < 2; ++kind) {
    bool used_by_some = false;
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) used_by_some |= (c.ratio(l) > 0) == (kind == 1);
    if (!used_by_some) continue;
    const Rope& rope = kind == 1 ? *rope_compressed_ : *rope_window_;
    auto [cs, dcs] = take(n * half, static_cast<float*>(nullptr));
    auto [sn, dsn] = take(n * half, static_cast<float*>(nullptr));
    if (!write) continue;
    for (const SeqSlice& s : seqs)
      for (int64_t t = 0; t < s.n; ++t) rope.CosSin(s.start + t, cs + (s.begin + t) * half, sn + (s.begin + t) * half);
    views->cos[kind] = dcs, views->sin[kind] = dsn;
  }
  // Where each row joins its compressor's state: for the sequences whose step completes no block,
  // the state's next rows (the others go through PoolBlocks one sequence at a time).
  bool states = false;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) states |= c.ratio(l) > 1 && w_->layers[l].has_compressor;
  if (states) {
    const int64_t L = c.num_hidden_layers;
    auto [appends, dappends] = take(L * 4 * n, static_cast<uint64_t*>(nullptr));
    if (write) {
      std::fill(appends, appends + L * 4 * n, uint64_t{0});
      for (int64_t l = 0; l < L; ++l) {
        const LayerWeights& lw = w_->layers[l];
        if (!lw.has_compressor) continue;
        const bool own_index = lw.has_indexer && !c.index_keys_from_latent();
        for (int k = 0; k < (own_index ? 2 : 1); ++k) {
          const CompressorWeights& cw = k == 1 ? lw.index_compressor : lw.compressor;
          if (cw.ratio <= 1) continue;
          uint64_t* kv = appends + ((l * 2 + k) * 2) * n;
          uint64_t* score = kv + n;
          for (const SeqSlice& s : seqs) {
            const int64_t r0 = s.start % cw.ratio;
            if ((r0 + s.n) / cw.ratio > 0) continue;  // completes a block
            const CompressorState& st = k == 1 ? s.cache->layers[l].index_compressor : s.cache->layers[l].compressor;
            const int64_t at = ((cw.overlap ? cw.ratio : 0) + r0) * st.width;
            for (int64_t t = 0; t < s.n; ++t) {
              kv[s.begin + t] = reinterpret_cast<uint64_t>(st.kv() + at + t * st.width);
              score[s.begin + t] = reinterpret_cast<uint64_t>(st.score() + at + t * st.width);
            }
          }
        }
      }
      views->compressor_appends = dappends;
    }
  }
  // Where each token's window key goes: its block's window rows, if the block keeps a window part.
  auto [wrows, dwrows] = take(n, static_cast<int64_t*>(nullptr));
  if (write) views->window_rows = dwrows;
  for (size_t i = 0; i < seqs.size(); ++i) {
    SeqSlice& s = seqs[i];
    const SequenceCache& cache = *s.cache;
    const KvPool& pool = *cache.pool;
    const int64_t B = pool.block_tokens(), window_rows = pool.num_window_blocks() * B;
    if (write) {
      for (int64_t t = 0; t < s.n; ++t) {
        const int64_t p = s.start + t;
        const int32_t w = cache.blocks[p / B].window;
        wrows[s.begin + t] = w >= 0 ? w * B + p % B : -1;
      }
      s.kinds = kinds + i * num_kinds;
    }
    for (int64_t kind = 0; kind < num_kinds; ++kind) {
      const AttentionKind& ak = kinds_[kind];
      SeqKindTables* out = write ? kinds + i * num_kinds + kind : nullptr;
      const int64_t ratio = ak.ratio, nblocks = ratio > 0 ? (s.start + s.n) / ratio : 0;
      const KvPool::Layer* comp = ak.comp_layer >= 0 ? &pool.layer(ak.comp_layer) : nullptr;
      const int64_t k_comp = ak.picked ? std::min(c.index_topk, nblocks) : nblocks;
      const int64_t k = win + k_comp;
      // The rows each query attends: the window's (older positions from the pool, this step's from
      // its own keys), then (ratio 128) every visible block's; picked kinds leave those to PickRows.
      auto [rows, drows] = take(s.n * k, static_cast<int32_t*>(nullptr));
      if (write) {
        std::fill(rows, rows + s.n * k, -1);
        for (int64_t t = 0; t < s.n; ++t) {
          const int64_t p0 = s.start + t;
          int32_t* row = rows + t * k;
          int64_t j = 0;
          for (int64_t p = std::max<int64_t>(0, p0 - win + 1); p <= p0; ++p)
            row[j++] = static_cast<int32_t>(p >= s.start ? window_rows + (p - s.start)
                                                         : cache.blocks[p / B].window * B + p % B);
          if (!ak.picked && ratio > 0) {
            const int64_t visible = std::min(nblocks, (p0 + 1) / ratio);
            for (int64_t b = 0; b < visible; ++b)
              row[win + b] = static_cast<int32_t>(window_rows + s.n + cache.PoolRow(*comp, b));
          }
        }
        out->k = k, out->rows = drows;  // PickRows writes the picked columns
      }
      if (ratio > 0) {
        const int64_t j0 = s.start / ratio, blocks = (s.start % ratio + s.n) / ratio;
        auto [bc, dbc] = take(blocks * half, static_cast<float*>(nullptr));
        auto [bs, dbs] = take(blocks * half, static_cast<float*>(nullptr));
        if (write) {
          for (int64_t b = 0; b < blocks; ++b) rope_compressed_->CosSin((j0 + b) * ratio, bc + b * half, bs + b * half);
          out->block_cos = dbc, out->block_sin = dbs;
        }
      }
      if (ak.picked && k_comp > 0) {
        // The pool row of each KV block's first compressed row: PickRows adds j % per_block to it.
        const int64_t per = comp->per_block, blocks_used = (nblocks + per - 1) / per;
        auto [bases, dbases] = take(blocks_used, static_cast<int32_t*>(nullptr));
        if (write) {
          for (int64_t b = 0; b < blocks_used; ++b) bases[b] = static_cast<int32_t>(cache.PoolRow(*comp, b * per));
          out->bases = dbases;
        }
      }
      if (ak.indexed) {
        // The index keys complete by the step's end; a query at position p sees those of the
        // blocks completed by then. Keys of blocks that are not consecutive in the pool are
        // gathered through their rows.
        const KvPool::Layer& owner = pool.layer(ak.key_layer);
        const int64_t per = owner.per_block, blocks_used = (nblocks + per - 1) / per;
        auto [nvis, dnvis] = take(s.n, static_cast<int64_t*>(nullptr));
        bool consecutive = true;
        for (int64_t b = 1; b < blocks_used && consecutive; ++b)
          consecutive = cache.blocks[b].block == cache.blocks[0].block + b;
        if (write) {
          for (int64_t t = 0; t < s.n; ++t) nvis[t] = std::min(nblocks, (s.start + t + 1) / ratio);
          out->nkeys = nblocks, out->nvis = dnvis;
        }
        if (!consecutive) {
          auto [keys, dkeys] = take(nblocks, static_cast<int64_t*>(nullptr));
          if (write) {
            for (int64_t j = 0; j < nblocks; ++j) keys[j] = cache.PoolRow(owner, j);
            out->key_rows = dkeys;
          }
        }
      }
    }
  }
  return used;
}

StepTables::StepTables(const Model& model, std::span<const int32_t> tokens, std::span<SeqSlice> seqs)
    : bytes_(model.WriteStepTables(tokens, seqs, nullptr, nullptr, nullptr, nullptr)),
      host_(bytes_, kernels::NoInit{}),
      device_(model.backend(), model.backend().HostIsDevice() ? 0 : bytes_),
      kinds_(static_cast<int64_t>(seqs.size() * model.kinds_.size())) {
  Backend& be = model.backend();
  char* device = be.HostIsDevice() ? host_.data() : device_.data();
  const int64_t written = model.WriteStepTables(tokens, seqs, host_.data(), device, &views_, kinds_.data());
  DSV4_CHECK(written == bytes_, "the step's tables were laid out as ", bytes_, " bytes and written as ", written);
  if (!be.HostIsDevice() && bytes_ > 0) be.CopyToDevice(device_.data(), host_.data(), bytes_);
}

}  // namespace dsv4
