#include "runtime/model/model.h"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "kernels/cpu/isa.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/scratch.h"
#include "runtime/backend/device_communicator.h"
#include "runtime/model/engram.h"

namespace dsv4 {

Rope::Rope(int64_t rope_dim, double theta, int64_t original_len, double factor, double beta_fast, double beta_slow) {
  const int64_t half = rope_dim / 2;
  freqs_.resize(half);
  for (int64_t i = 0; i < half; ++i)
    freqs_[i] = 1.0f / std::pow(static_cast<float>(theta), static_cast<float>(2 * i) / static_cast<float>(rope_dim));
  if (original_len <= 0) return;
  // YaRN: interpolate low frequencies by `factor`, keep high ones, linear ramp in between.
  auto correction_dim = [&](double rotations) {
    return rope_dim * std::log(original_len / (rotations * 2 * M_PI)) / (2 * std::log(theta));
  };
  const double low = std::max(std::floor(correction_dim(beta_fast)), 0.0);
  double high = std::min(std::ceil(correction_dim(beta_slow)), static_cast<double>(rope_dim - 1));
  if (low == high) high += 0.001;
  for (int64_t i = 0; i < half; ++i) {
    const float ramp = std::clamp((static_cast<float>(i) - static_cast<float>(low)) / static_cast<float>(high - low),
                                  0.0f, 1.0f);
    const float smooth = 1.0f - ramp;
    freqs_[i] = freqs_[i] / static_cast<float>(factor) * (1.0f - smooth) + freqs_[i] * smooth;
  }
}

void Rope::CosSin(int64_t pos, float* cos, float* sin) const {
  for (size_t i = 0; i < freqs_.size(); ++i) {
    const float angle = static_cast<float>(pos) * freqs_[i];
    cos[i] = std::cos(angle);
    sin[i] = std::sin(angle);
  }
}

void Rope::Apply(float* x, int64_t pos, bool inverse) const { ApplyMany(x, 1, 0, pos, inverse); }

void Rope::ApplyMany(float* x, int64_t count, int64_t stride, int64_t pos, bool inverse) const {
  float cos[512], sin[512];
  DSV4_CHECK(freqs_.size() <= 512, "rope dim too large");
  CosSin(pos, cos, sin);
  for (int64_t i = 0; i < count; ++i)
    kernels::Rope(x + i * stride, static_cast<int64_t>(freqs_.size()), cos, sin, inverse);
}

Model::Model(std::shared_ptr<const ModelWeights> weights, ForwardOptions options, const ParallelContext* parallel,
             std::shared_ptr<Backend> backend)
    : w_(std::move(weights)), opt_(options), par_(parallel), backend_(std::move(backend)) {
  if (backend_ == nullptr) backend_ = MakeCpuBackend();
  const ModelConfig& c = config();
  rope_window_ = std::make_unique<Rope>(c.qk_rope_head_dim, c.rope_theta, 0, 1.0, c.beta_fast, c.beta_slow);
  rope_compressed_ = std::make_unique<Rope>(c.qk_rope_head_dim, c.compress_rope_theta,
                                            c.original_max_position_embeddings, c.rope_factor, c.beta_fast,
                                            c.beta_slow);
  block_tokens_ = KvPool::DefaultBlockTokens(c);
  InitAttentionKinds();
  InitEngram();
  const int64_t L = c.num_hidden_layers, E = c.n_routed_experts;
  expert_load_ = std::make_unique<std::atomic<int64_t>[]>(L * E);
  routed_.assign(L, std::vector<const ExpertWeights*>(E, nullptr));
  extra_.resize(L);
  for (int64_t l = 0; l < L; ++l) {
    extra_[l].resize(E);
    for (int64_t e = 0; e < E; ++e)
      if (w_->layers[l].expert_loaded[e]) routed_[l][e] = &w_->layers[l].experts[e];
  }
  // The parameters on the backend (views of the mapped checkpoint on the CPU): the MoE's, the
  // blocks' and the head's. A model without them cannot run, so a failure stops here.
  Backend& be = *backend_;
  auto check = [](const absl::Status& st) { DSV4_CHECK(st.ok(), "placing the model on the backend: ", st.message()); };
  auto placed = [&](auto status_or) {
    check(status_or.status());
    return *std::move(status_or);
  };
  auto place = [&](const std::vector<float>& v) -> const float* {
    return v.empty() ? nullptr : placed(be.PlaceVector(v.data(), static_cast<int64_t>(v.size())));
  };
  moe_.resize(L);
  for (int64_t l = 0; l < L; ++l) {
    const LayerWeights& lw = w_->layers[l];
    MoeLayer& ml = moe_[l];
    ml.gate = placed(be.PlaceWeight(lw.gate, Backend::WeightUse::kUnroundedProducts));
    ml.gate_bias = place(lw.gate_bias);
    if (!lw.tid2eid.empty())
      ml.tid2eid = placed(be.PlaceInts(lw.tid2eid.data(), static_cast<int64_t>(lw.tid2eid.size())));
    ml.routed = placed(PlaceRoutedExperts(routed_[l]));
    const ExpertViews shared{&lw.shared.w1, &lw.shared.w2, &lw.shared.w3};
    ml.shared = placed(be.PlaceExperts({&shared, 1}));
  }
  auto place_hc = [&](const std::vector<float>& fn, const std::vector<float>& scale, const std::vector<float>& base) {
    return HcParams{place(fn), place(scale), place(base)};
  };
  block_params_.resize(L);
  for (int64_t l = 0; l < L; ++l) {
    const LayerWeights& lw = w_->layers[l];
    BlockParams& bp = block_params_[l];
    bp.hc_attn = place_hc(lw.hc_attn_fn, lw.hc_attn_scale, lw.hc_attn_base);
    bp.hc_ffn = place_hc(lw.hc_ffn_fn, lw.hc_ffn_scale, lw.hc_ffn_base);
    bp.attn_norm = place(lw.attn_norm), bp.ffn_norm = place(lw.ffn_norm);
    if (lw.has_engram) {
      bp.engram_wkv = placed(be.PlaceWeight(lw.engram.wkv, Backend::WeightUse::kProducts));
      bp.engram_gate = place(lw.engram.gate_weight);
    }
  }
  auto place_weight = [&](const WeightMatrix& w, Backend::WeightUse use = Backend::WeightUse::kProducts) {
    return w.data == nullptr ? w : placed(be.PlaceWeight(w, use));
  };
  auto place_compressor = [&](const CompressorWeights& cw) {
    CompressorParams p{place_weight(cw.wkv), place_weight(cw.wgate), place(cw.ape), place(cw.norm)};
    if (p.ape == nullptr && cw.ratio > 1) {  // pooling adds a bias: a zero one adds nothing
      const int64_t bytes = cw.ratio * cw.width() * static_cast<int64_t>(sizeof(float));
      p.ape = static_cast<const float*>(placed(be.Allocate(bytes)));
      be.Zero(const_cast<float*>(p.ape), bytes);
    }
    return p;
  };
  attn_params_.resize(L);
  for (int64_t l = 0; l < L; ++l) {
    const LayerWeights& lw = w_->layers[l];
    AttentionParams& ap = attn_params_[l];
    ap.wq_a = place_weight(lw.wq_a), ap.wq_b = place_weight(lw.wq_b), ap.wkv = place_weight(lw.wkv);
    ap.wo_a = place_weight(lw.wo_a, Backend::WeightUse::kUnroundedProducts), ap.wo_b = place_weight(lw.wo_b);
    ap.q_norm = place(lw.q_norm), ap.kv_norm = place(lw.kv_norm), ap.attn_sink = place(lw.attn_sink);
    if (lw.has_compressor) ap.compressor = place_compressor(lw.compressor);
    if (lw.has_indexer) {
      if (lw.index_compressor.ratio > 0) ap.index_compressor = place_compressor(lw.index_compressor);
      ap.index_wq_b = place_weight(lw.index_wq_b);
      ap.index_weights_proj = place_weight(lw.index_weights_proj);
    }
    ap.index_wk = place_weight(lw.index_wk), ap.index_k_norm = place(lw.index_k_norm);
  }
  hc_head_ = place_hc(w_->hc_head_fn, w_->hc_head_scale, w_->hc_head_base);
  norm_ = place(w_->norm);
  embed_ = placed(be.PlaceWeight(w_->embed, Backend::WeightUse::kRows));
  head_ = placed(be.PlaceWeight(w_->head, Backend::WeightUse::kUnroundedProducts));
  load_counts_ = static_cast<int64_t*>(placed(be.Allocate(L * E * static_cast<int64_t>(sizeof(int64_t)))));
  be.Zero(load_counts_, L * E * static_cast<int64_t>(sizeof(int64_t)));
  check(be.Synchronize());
  if (par_ != nullptr) {
    placement_ = std::make_shared<const ModelPlacement>(par_->placement);
    auto rows = [&](Communicator* device, Communicator* host, std::unique_ptr<Communicator>& staged) {
      if (device != nullptr) return device;
      if (be.HostIsDevice()) return host;
      staged = MakeStagedCommunicator(be, *host);
      return staged.get();
    };
    tp_rows_ = rows(par_->tp_device, par_->tp, staged_tp_);
    ep_rows_ = rows(par_->ep_device, par_->ep, staged_ep_);
    if (be.HostIsDevice()) {
      dispatcher_ = std::make_unique<MoeDispatcher>(par_->ep);
    } else {
      exchange_ = std::make_unique<ExpertExchange>(be, *par_->ep, *ep_rows_);
    }
  }
}

absl::StatusOr<std::unique_ptr<ExpertTable>> Model::PlaceRoutedExperts(
    const std::vector<const ExpertWeights*>& experts) const {
  std::vector<ExpertViews> views(experts.size());
  bool any = false;
  for (size_t e = 0; e < experts.size(); ++e)
    if (experts[e] != nullptr) views[e] = {&experts[e]->w1, &experts[e]->w2, &experts[e]->w3}, any = true;
  if (!any) return nullptr;  // nothing is routed here
  return backend_->PlaceExperts(views);
}

void Model::PublishExpertLoad() const {
  const int64_t n = config().num_hidden_layers * config().n_routed_experts;
  kernels::Scratch<int64_t> host(n, kernels::NoInit{});
  backend_->CopyToHost(host.data(), load_counts_, n * static_cast<int64_t>(sizeof(int64_t)));
  for (int64_t i = 0; i < n; ++i) expert_load_[i].store(host[i], std::memory_order_relaxed);
}

std::vector<int64_t> Model::ExpertLoad() const {
  const int64_t L = config().num_hidden_layers, E = config().n_routed_experts;
  std::vector<int64_t> load(E, 0);
  for (int64_t l = 0; l < L; ++l)
    for (int64_t e = 0; e < E; ++e) load[e] += expert_load_[l * E + e].load(std::memory_order_relaxed);
  return load;
}

std::vector<int64_t> Model::ExpertLoadByLayer() const {
  std::vector<int64_t> load(config().num_hidden_layers * config().n_routed_experts);
  for (size_t i = 0; i < load.size(); ++i) load[i] = expert_load_[i].load(std::memory_order_relaxed);
  return load;
}

std::shared_ptr<const ModelPlacement> Model::placement() const {
  absl::MutexLock l(&placement_mu_);
  return placement_;
}

absl::Status Model::CheckPlacement(const ModelPlacement& next) const {
  if (par_ == nullptr) return absl::FailedPreconditionError("this model runs without expert parallelism");
  return next.CheckFits(config().num_hidden_layers, config().n_routed_experts, par_->layout.ep,
                        "the new expert placement");
}

absl::Status Model::SwitchPlacement(const ModelPlacement& next) {
  DSV4_RETURN_IF_ERROR(CheckPlacement(next));
  const ModelConfig& c = config();
  const int64_t L = c.num_hidden_layers, E = c.n_routed_experts;
  const int me = par_->layout.ep_rank;
  // Everything that can fail first: views of the experts this rank gains.
  struct Gain {
    int64_t layer, expert;
    std::unique_ptr<ExpertWeights> weights;  // null: the view loaded at start is reused
  };
  std::vector<Gain> gains;
  for (int64_t l = 0; l < L; ++l)
    for (int64_t e = 0; e < E; ++e) {
      if (!next.layer(l).Holds(me, e) || routed_[l][e] != nullptr) continue;
      Gain g{l, e, nullptr};
      if (!w_->layers[l].expert_loaded[e]) {
        DSV4_ASSIGN_OR_RETURN(ExpertWeights w, LoadExpertWeights(*w_->checkpoint, c, l, e));
        g.weights = std::make_unique<ExpertWeights>(w);
      }
      gains.push_back(std::move(g));
    }
  // The expert tables of the layers whose experts change, placed on the backend.
  std::vector<std::vector<const ExpertWeights*>> next_routed = routed_;
  std::vector<bool> changed(L, false);
  for (int64_t l = 0; l < L; ++l)
    for (int64_t e = 0; e < E; ++e)
      if (routed_[l][e] != nullptr && !next.layer(l).Holds(me, e)) next_routed[l][e] = nullptr, changed[l] = true;
  for (const Gain& g : gains) {
    next_routed[g.layer][g.expert] = g.weights ? g.weights.get() : &w_->layers[g.layer].experts[g.expert];
    changed[g.layer] = true;
  }
  std::vector<std::unique_ptr<ExpertTable>> tables(L);
  for (int64_t l = 0; l < L; ++l)
    if (changed[l]) {
      DSV4_ASSIGN_OR_RETURN(tables[l], PlaceRoutedExperts(next_routed[l]), "layer ", l, "'s experts");
    }
  // Then the switch, which cannot fail.
  for (int64_t l = 0; l < L; ++l)
    for (int64_t e = 0; e < E; ++e)
      if (routed_[l][e] != nullptr && !next.layer(l).Holds(me, e)) extra_[l][e].reset();
  for (Gain& g : gains)
    if (g.weights) extra_[g.layer][g.expert] = std::move(g.weights);
  routed_ = std::move(next_routed);
  for (int64_t l = 0; l < L; ++l)
    if (changed[l]) moe_[l].routed = std::move(tables[l]);
  absl::MutexLock l(&placement_mu_);
  placement_ = std::make_shared<const ModelPlacement>(next);
  return absl::OkStatus();
}

SequenceCache Model::NewCache(KvPool* pool) const {
  const ModelConfig& c = config();
  SequenceCache cache;
  cache.pool = pool;
  cache.layers.resize(c.num_hidden_layers);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerCache& lc = cache.layers[l];
    const LayerWeights& lw = w_->layers[l];
    // Ratio 1 completes a block with every token: no rows wait.
    if (lw.has_compressor && c.ratio(l) > 1)
      lc.compressor.Init(c.ratio(l), lw.compressor.width(), lw.compressor.overlap);
    if (lw.has_indexer && !c.index_keys_from_latent())
      lc.index_compressor.Init(c.ratio(l), lw.index_compressor.width(), lw.index_compressor.overlap);
  }
  if (w_->engram_hasher) cache.engram = w_->engram_hasher->NewHistory();
  return cache;
}

SequenceCache Model::NewCache(int64_t reserve_tokens) const {
  const ModelConfig& c = config();
  const int64_t B = block_tokens_;
  const int64_t reserve = std::max<int64_t>(1, (reserve_tokens + B - 1) / B);
  const int64_t windows = (c.sliding_window + B - 1) / B + 1;  // a window's blocks, and the next one
  absl::StatusOr<std::unique_ptr<KvPool>> pool = KvPool::Create(*backend_, c, B, reserve, windows);
  DSV4_CHECK(pool.ok(), pool.status().message());
  SequenceCache cache = NewCache(pool->get());
  cache.own_pool = *std::move(pool);
  cache.blocks.reserve(reserve + 1);
  cache.free_windows.reserve(windows);
  for (int64_t w = windows - 1; w >= 0; --w) cache.free_windows.push_back(static_cast<int32_t>(w));
  return cache;
}

absl::Status Model::PrepareBlocks(SequenceCache& cache, int64_t n) const {
  if (cache.pool == nullptr) return absl::InternalError("a sequence cache without a pool");
  DSV4_RETURN_IF_ERROR(cache.ReserveCompressors(*backend_));
  const int64_t B = cache.pool->block_tokens(), win = config().sliding_window;
  const int64_t L = cache.length, end = L + n, last_block = (end - 1) / B;
  if (cache.own_pool != nullptr) {
    // A private pool: compressed block b is id b; window parts go to the blocks the step's queries
    // read (positions from L - win + 1 on) and the blocks of the step's last `win` positions (the
    // only ones later steps read), and come back once out of every later window.
    KvPool& pool = *cache.own_pool;
    const int64_t first_read = L > 0 ? std::max<int64_t>(0, L - win + 1) : end;
    const int64_t first_block = std::min(first_read, std::max(L, end - win)) / B;
    for (int64_t b = 0; b < std::min<int64_t>(first_block, cache.blocks.size()); ++b)
      if (cache.blocks[b].window >= 0) {
        cache.free_windows.push_back(cache.blocks[b].window);
        cache.blocks[b].window = -1;
      }
    const int64_t had = static_cast<int64_t>(cache.blocks.size());
    if (had <= last_block) cache.blocks.resize(last_block + 1);
    if (last_block >= pool.num_blocks())
      DSV4_RETURN_IF_ERROR(pool.Grow(std::max(last_block + 1, 2 * pool.num_blocks()), pool.num_window_blocks()));
    for (int64_t b = had; b <= last_block; ++b) cache.blocks[b].block = static_cast<int32_t>(b);
    for (int64_t b = first_block; b <= last_block; ++b) {
      BlockRef& r = cache.blocks[b];
      if (r.window >= 0) continue;
      if (cache.free_windows.empty()) {
        cache.free_windows.push_back(static_cast<int32_t>(pool.num_window_blocks()));
        DSV4_RETURN_IF_ERROR(pool.Grow(pool.num_blocks(), pool.num_window_blocks() + 1));
      }
      r.window = cache.free_windows.back();
      cache.free_windows.pop_back();
    }
    return absl::OkStatus();
  }
  // A shared pool: the leader set the table; check that it covers the step.
  if (static_cast<int64_t>(cache.blocks.size()) <= last_block)
    return absl::InternalError(absl::StrCat("the sequence's block table has ", cache.blocks.size(),
                                            " blocks but the step writes position ", end - 1));
  const int64_t first_window = std::max<int64_t>(0, L - win + 1) / B;
  for (int64_t b = 0; b <= last_block; ++b) {
    const BlockRef& r = cache.blocks[b];
    const bool block_ok = r.block >= 0 && r.block < cache.pool->num_blocks();
    const bool window_ok = b < first_window || (r.window >= 0 && r.window < cache.pool->num_window_blocks());
    if (!block_ok || !window_ok)
      return absl::InternalError(absl::StrCat("block ", b, " of the sequence (positions ", b * B, "..",
                                              (b + 1) * B - 1, ") has no ", block_ok ? "window" : "compressed",
                                              " block where the step needs one"));
  }
  return absl::OkStatus();
}

absl::Status Model::RestoreAtBlockEnd(SequenceCache& cache) const {
  const ModelConfig& c = config();
  if (cache.pool == nullptr || cache.own_pool != nullptr) return absl::InternalError("not a shared-pool cache");
  const int64_t B = cache.pool->block_tokens();
  if (cache.length <= 0 || cache.length % B != 0 || static_cast<int64_t>(cache.blocks.size()) < cache.length / B)
    return absl::InternalError(absl::StrCat("a sequence resumes at ", cache.length, ", not at the end of one of its ",
                                            cache.blocks.size(), " blocks of ", B));
  const int32_t last = cache.blocks[cache.length / B - 1].block;
  if (last < 0 || last >= cache.pool->num_blocks())
    return absl::InternalError(absl::StrCat("a sequence resumes after block ", cache.length / B - 1,
                                            ", which it does not hold"));
  DSV4_RETURN_IF_ERROR(cache.ReserveCompressors(*backend_));
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const KvPool::Layer& pl = cache.pool->layer(l);
    // Non-overlapping compressors hold nothing at a block end (B is a multiple of their ratio).
    // The tail [2 (kv, score), ratio, width] becomes the state's previous block.
    auto load = [&](CompressorState& st, const PoolRows& tail, int64_t width) {
      const float* t = tail.data() + last * 2 * pl.ratio * width;
      const int64_t bytes = pl.ratio * width * static_cast<int64_t>(sizeof(float));
      backend_->CopyOnDevice(st.kv(), t, bytes);
      backend_->CopyOnDevice(st.score(), t + pl.ratio * width, bytes);
      st.has_prev = true;
    };
    if (pl.tail_width > 0) load(cache.layers[l].compressor, pl.compressor_tail, pl.tail_width);
    if (pl.index_tail_width > 0) load(cache.layers[l].index_compressor, pl.index_tail, pl.index_tail_width);
  }
  if (cache.pool->engram_tail_length() > 0) {
    const int64_t* t = cache.pool->engram_tail(last);
    cache.engram.tail.assign(t, t + cache.pool->engram_tail_length());
  }
  return absl::OkStatus();
}

void Model::Project(const WeightMatrix& w, const float* x, int64_t n, int64_t ldx, float* y) const {
  Backend& be = *backend_;
  if (opt_.qdq && IsQuantized(w)) {
    // The reference rounds the input of every FP8/FP4 linear to FP8 in groups of act_quant_group.
    const int64_t cols = w.cols(), row_bytes = cols * static_cast<int64_t>(sizeof(float));
    DeviceScratch<float> xq(be, n * cols);
    if (ldx == cols) {
      be.CopyOnDevice(xq.data(), x, n * row_bytes);
    } else {
      for (int64_t t = 0; t < n; ++t) be.CopyOnDevice(xq.data() + t * cols, x + t * ldx, row_bytes);
    }
    be.QdqFp8(xq.data(), n, cols, cols, static_cast<int>(config().act_quant_group()));
    be.Linear(xq.data(), n, cols, w, y, w.rows());
  } else {
    be.Linear(x, n, ldx, w, y, w.rows());
  }
}

void Model::Embed(std::span<const int32_t> tokens, float* x) const {
  const int64_t D = config().hidden_size, hc = config().hc_mult, n = static_cast<int64_t>(tokens.size());
  Backend& be = *backend_;
  DeviceScratch<int32_t> ids(be, n);
  be.CopyToDevice(ids.data(), tokens.data(), ids.bytes());
  be.EmbedRows(embed_, ids.data(), n, static_cast<int>(hc), x, hc * D);
}

absl::Status Model::BlockBatch(int64_t layer, float* x, std::span<const int32_t> tokens, std::span<const SeqSlice> seqs,
                               const StepTableViews& tables, float* pre_mix, const ForwardTaps* taps) const {
  const ModelConfig& c = config();
  const int64_t n = static_cast<int64_t>(tokens.size()), D = c.hidden_size, hc = c.hc_mult;
  const float eps = static_cast<float>(c.rms_norm_eps);
  const bool lagged = c.hc_lagged();
  const BlockParams& bp = block_params_[layer];
  Backend& be = *backend_;
  DeviceScratch<float> u(be, n * D), y(be, n * D), post(be, n * hc), comb(be, n * hc * hc), attn_pre(be, n * hc),
      ffn_pre(be, n * hc);
  // A tap's host copy of a device tensor.
  auto tap = [&](std::vector<std::vector<float>>* to, const float* from, int64_t count) {
    if (to == nullptr) return;
    std::vector<float>& v = (*to)[layer];
    v.resize(count);
    be.CopyToHost(v.data(), from, count * static_cast<int64_t>(sizeof(float)));
  };

  // Each sub-layer computes its mixes from its input streams; V4 collapses with its own pre
  // weights, V4.1 with those computed one sub-layer earlier (attention: the previous block's FFN).
  HcPreLayer(bp.hc_attn, x, n, lagged ? pre_mix : nullptr, u.data(), post.data(), comb.data(),
             lagged ? attn_pre.data() : nullptr);
  be.RmsNorm(u.data(), bp.attn_norm, eps, n, D, D, u.data(), D);
  DSV4_RETURN_IF_ERROR(Attention(layer, u.data(), n, seqs, tables, y.data()));
  if (taps) tap(taps->attn_out, y.data(), n * D);
  be.HcPost(y.data(), D, post.data(), comb.data(), n, static_cast<int>(hc), D, x, hc * D);

  HcPreLayer(bp.hc_ffn, x, n, lagged ? attn_pre.data() : nullptr, u.data(), post.data(), comb.data(),
             lagged ? ffn_pre.data() : nullptr);
  be.RmsNorm(u.data(), bp.ffn_norm, eps, n, D, D, u.data(), D);
  DSV4_RETURN_IF_ERROR(MoE(layer, u.data(), n, tables.tokens, y.data()));
  if (taps) tap(taps->ffn_out, y.data(), n * D);
  be.HcPost(y.data(), D, post.data(), comb.data(), n, static_cast<int>(hc), D, x, hc * D);
  if (lagged) {
    be.CopyOnDevice(pre_mix, ffn_pre.data(), ffn_pre.bytes());
    if (taps) tap(taps->pre_mix, ffn_pre.data(), n * hc);
  }
  if (taps) tap(taps->block_out, x, n * hc * D);
  return absl::OkStatus();
}

absl::Status Model::HeadBatch(const float* const* x_last, const float* const* pre_last, int64_t count,
                              float* logits) const {
  const ModelConfig& c = config();
  const int64_t D = c.hidden_size, hc = c.hc_mult, V = c.vocab_size;
  Backend& be = *backend_;
  DeviceScratch<float> u(be, count * D);
  for (int64_t b = 0; b < count; ++b) {
    if (c.hc_lagged()) {  // V4.1: the last block's FFN mix
      HcCollapse(x_last[b], pre_last[b], 1, u.data() + b * D);
    } else {  // V4: collapse the streams with sigmoid weights of their own (no Sinkhorn)
      be.HcHead(x_last[b], 1, static_cast<int>(hc), D, hc * D, hc_head_.fn, hc_head_.scale, hc_head_.base,
                static_cast<float>(c.rms_norm_eps), static_cast<float>(c.hc_eps), u.data() + b * D, D);
    }
  }
  // The final norm and the vocab head. The logits go to the host (the sampler's memory): the head
  // writes them there where host memory is the device's, else into a temporary copied back.
  be.RmsNorm(u.data(), norm_, static_cast<float>(c.rms_norm_eps), count, D, D, u.data(), D);
  const WeightMatrix& head = head_;
  const bool direct = be.HostIsDevice();
  auto head_into = [&](float* host, int64_t rows) {
    DeviceScratch<float> out(be, direct ? 0 : count * rows);
    be.Linear(u.data(), count, D, head, direct ? host : out.data(), rows);
    if (!direct) be.CopyToHost(host, out.data(), out.bytes());
  };
  if (!w_->vocab_parallel_head) {
    head_into(logits, V);
    return be.status();
  }
  // Vocab-parallel head: each TP rank computes its rows [count, part], then gather and interleave.
  const int64_t part = head.rows(), tp = par_->tp->size();
  std::vector<float> mine(count * part), all(tp * count * part);
  head_into(mine.data(), part);
  std::vector<int64_t> counts(tp, count * part);
  DSV4_RETURN_IF_ERROR(par_->tp->AllGatherV(mine.data(), counts.data(), all.data()));
  for (int64_t r = 0; r < tp; ++r)
    for (int64_t b = 0; b < count; ++b)
      std::memcpy(logits + b * V + r * part, &all[(r * count + b) * part], part * sizeof(float));
  return absl::OkStatus();
}

absl::Status Model::Forward(std::span<const int32_t> tokens, SequenceCache& cache, float* logits,
                            const ForwardTaps* taps) const {
  if (tokens.empty()) return absl::OkStatus();
  const SequenceChunk seq{&cache, static_cast<int64_t>(tokens.size())};
  DSV4_RETURN_IF_ERROR(ForwardBatch(tokens, {&seq, 1}, logits, taps));
  return NumericalError(cache);
}

absl::Status Model::NumericalError(const SequenceCache& cache) const {
  const int64_t l = cache.nonfinite_layer;
  if (l < 0) return absl::OkStatus();
  return absl::DataLossError(
      l < config().num_hidden_layers
          ? absl::StrCat("non-finite values (NaN or Inf) in the hidden state after layer ", l,
                         ": the weights or the model are broken (run with --check-weights)")
          : "non-finite values (NaN or Inf) in the logits: the head's weights are broken (run with --check-weights)");
}

absl::Status Model::ForwardBatch(std::span<const int32_t> tokens, std::span<const SequenceChunk> seqs, float* logits,
                                 const ForwardTaps* taps) const {
  const ModelConfig& c = config();
  const int64_t n = static_cast<int64_t>(tokens.size()), D = c.hidden_size, hc = c.hc_mult;
  const int64_t num_seqs = static_cast<int64_t>(seqs.size());
  int64_t total = 0, num_logits = 0;
  for (const SequenceChunk& s : seqs) {
    if (s.cache == nullptr || s.n < 1) return absl::InvalidArgumentError("ForwardBatch: every sequence needs tokens");
    total += s.n;
    num_logits += s.logits ? 1 : 0;
  }
  if (total != n) return absl::InvalidArgumentError("ForwardBatch: the sequences' tokens do not add up");
  // Alone, an empty step has nothing to do; in a job its collectives still have to be joined.
  if (n == 0 && !distributed()) return absl::OkStatus();
  for (const SequenceChunk& s : seqs) DSV4_RETURN_IF_ERROR(PrepareBlocks(*s.cache, s.n));
  Backend& be = *backend_;
  const WorkspaceScope step(be);  // the step's device buffers, the operations' own included
  // What each sequence's index sources hand to later layers: top-k picks, level-1 candidates.
  const int64_t cand = c.candidate_source_layer_id;
  auto cand_entries = [&](const SequenceChunk& s) {  // level 1 keeps [n, blocks of the positions]
    if (cand < 0) return int64_t{0};
    return s.n * kernels::CandidateBlockCount((s.cache->length + s.n) / c.ratio(cand), c.candidate_block_size);
  };
  int64_t cand_room = 0;
  for (const SequenceChunk& s : seqs) cand_room += cand_entries(s);
  DeviceScratch<int32_t> pick_rows(be, n * c.index_topk);
  DeviceScratch<uint8_t> cand_rows(be, cand_room);
  kernels::Scratch<StepPicks> picks(num_seqs);
  kernels::Scratch<SeqSlice> slices(num_seqs);
  int64_t at = 0, cand_at = 0;
  for (int64_t i = 0; i < num_seqs; ++i) {
    const SequenceChunk& s = seqs[i];
    picks[i].picks = pick_rows.data() + at * c.index_topk;
    picks[i].candidates = cand_rows.data() + cand_at;
    picks[i].candidates_capacity = cand_entries(s);
    cand_at += picks[i].candidates_capacity;
    slices[i] = {at, s.n, s.cache->length, s.cache, &picks[i]};
    at += s.n;
  }
  // The tables every layer shares, in one copy: token ids, rotations, attention rows, ...
  const StepTables step_tables(*this, tokens, {slices.data(), static_cast<size_t>(slices.size())});
  const StepTableViews& tables = step_tables.views();
  DeviceScratch<float> x(be, n * hc * D);  // the residual streams
  be.EmbedRows(embed_, tables.tokens, n, static_cast<int>(hc), x.data(), hc * D);
  // Every Engram layer's rows are requested before the first layer runs, per sequence (the n-gram
  // history is the sequence's own).
  std::vector<EngramStep> engram;
  if (w_->engram_hasher) {
    int64_t at_token = 0;
    for (const SequenceChunk& s : seqs) {
      DSV4_ASSIGN_OR_RETURN(EngramStep step, BeginEngram(tokens.subspan(at_token, s.n), *s.cache));
      engram.push_back(std::move(step));
      at_token += s.n;
      // At a block's end, its Engram history is kept with it (for a sequence resuming there).
      KvPool& pool = *s.cache->pool;
      const int64_t end = s.cache->length + s.n, B = pool.block_tokens();
      if (s.cache->own_pool == nullptr && end % B == 0 && pool.engram_tail_length() > 0)
        std::copy(s.cache->engram.tail.begin(), s.cache->engram.tail.end(),
                  pool.engram_tail(s.cache->blocks[end / B - 1].block));
    }
  }
  // V4.1: the first block collapses its attention input with the one-hot mix [1, 0, ..., 0].
  DeviceScratch<float> pre_mix(be, c.hc_lagged() ? n * hc : 0);
  if (pre_mix.size() > 0) be.CopyOnDevice(pre_mix.data(), tables.one_hot, pre_mix.bytes());
  // The watchdog: after each layer, whether each sequence's last row holds a NaN or an Inf, flagged
  // on the device ([layers, sequences]) and read once at the step's end.
  const int64_t L = c.num_hidden_layers;
  kernels::Scratch<int32_t> flags(L * num_seqs, kernels::NoInit{});
  DeviceScratch<int32_t> dflags(be, L * num_seqs);
  for (int64_t l = 0; l < L; ++l) {
    if (w_->layers[l].has_engram) {
      for (int64_t i = 0; i < num_seqs; ++i)
        DSV4_RETURN_IF_ERROR(ApplyEngram(l, engram[i], x.data() + slices[i].begin * hc * D));
      if (taps && taps->engram_out) {
        (*taps->engram_out)[l].resize(x.size());
        be.CopyToHost((*taps->engram_out)[l].data(), x.data(), x.bytes());
      }
    }
    DSV4_RETURN_IF_ERROR(BlockBatch(l, x.data(), tokens, {slices.data(), static_cast<size_t>(slices.size())}, tables,
                                    pre_mix.size() > 0 ? pre_mix.data() : nullptr, taps));
    be.FlagNonFinite(x.data(), hc * D, hc * D, tables.last_rows, num_seqs, dflags.data() + l * num_seqs);
  }
  be.CopyToHost(flags.data(), dflags.data(), dflags.bytes());
  for (int64_t i = 0; i < num_seqs; ++i) {
    SequenceCache& cache = *seqs[i].cache;
    for (int64_t l = 0; l < L && cache.nonfinite_layer < 0; ++l)
      if (flags[l * num_seqs + i] != 0) cache.nonfinite_layer = l;
  }
  kernels::Scratch<const float*> last(num_logits), last_pre(num_logits);
  int64_t k = 0;
  for (int64_t i = 0; i < num_seqs; ++i) {
    seqs[i].cache->length += seqs[i].n;
    if (!seqs[i].logits) continue;
    const int64_t row = slices[i].begin + slices[i].n - 1;
    last[k] = x.data() + row * hc * D;
    last_pre[k++] = pre_mix.size() > 0 ? pre_mix.data() + row * hc : nullptr;
  }
  if (logits) {
    DSV4_RETURN_IF_ERROR(HeadBatch(last.data(), last_pre.data(), num_logits, logits));
    kernels::Scratch<int32_t> logit_rows(num_logits), bad(num_logits);
    for (int64_t r = 0; r < num_logits; ++r) logit_rows[r] = static_cast<int32_t>(r);
    kernels::FlagNonFinite(logits, c.vocab_size, c.vocab_size, logit_rows.data(), num_logits, bad.data());
    int64_t row = 0;
    for (int64_t i = 0; i < num_seqs; ++i) {
      if (!seqs[i].logits) continue;
      if (seqs[i].cache->nonfinite_layer < 0 && bad[row] != 0) seqs[i].cache->nonfinite_layer = c.num_hidden_layers;
      ++row;
    }
  }
  PublishExpertLoad();
  return absl::OkStatus();
}

}  // namespace dsv4
