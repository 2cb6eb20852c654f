// Engram in the forward pass: the table rows' dequantization and the model's per-step row gather;
// the gate is the backend's operation (kernels/cpu/engram.cc on the CPU).
#include "runtime/model/engram.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "kernels/cpu/formats.h"
#include "kernels/cpu/kernels.h"
#include "kernels/cpu/scratch.h"
#include "runtime/model/model.h"

namespace dsv4 {
namespace {

constexpr int64_t kGroup = 32;  // FP8 scale group of table rows

}  // namespace

void EngramDequantRows(const uint8_t* codes, const uint8_t* scales, int64_t count, int64_t head_dim, float* emb) {
  const int64_t groups = head_dim / kGroup;
  for (int64_t r = 0; r < count; ++r)
    for (int64_t g = 0; g < groups; ++g) {
      const float s = kernels::E8m0ToFloat(scales[r * groups + g]);
      const uint8_t* c = codes + r * head_dim + g * kGroup;
      float* out = emb + r * head_dim + g * kGroup;
      for (int64_t j = 0; j < kGroup; ++j) out[j] = kernels::Fp8E4m3ToFloat(c[j]) * s;
    }
}

// ---- the model's Engram step ------------------------------------------------------------------

std::vector<EngramTableView> Model::EngramTables() const {
  std::vector<EngramTableView> tables;
  if (!w_->engram_hasher) return tables;
  for (int64_t l : config().engram_layer_ids) {
    const WeightMatrix& t = w_->layers[l].engram.table;
    tables.push_back({static_cast<const uint8_t*>(t.data), t.scales, t.rows()});
  }
  return tables;
}

void Model::InitEngram() {
  if (!w_->engram_hasher) return;
  engram_rows_ = std::make_shared<LocalEngramRowSource>(EngramTables(), config().engram_head_dim);
}

void Model::SetEngramRowSource(std::shared_ptr<EngramRowSource> source) {
  DSV4_CHECK(w_->engram_hasher != nullptr, "the model has no Engram layers");
  DSV4_CHECK(source && source->head_dim() == config().engram_head_dim, "row source of the wrong head_dim");
  engram_rows_ = std::move(source);
}

absl::Status Model::CheckTokens(std::span<const int32_t> tokens) const {
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= config().vocab_size)
      return absl::OutOfRangeError(
          absl::StrCat("token id ", tokens[i], " at index ", i, " is outside [0, ", config().vocab_size, ")"));
  if (w_->engram_hasher) return w_->engram_hasher->CheckTokens(tokens);
  return absl::OkStatus();
}

absl::StatusOr<EngramStep> Model::BeginEngram(std::span<const int32_t> tokens, SequenceCache& cache) const {
  const EngramHasher& hasher = *w_->engram_hasher;
  DSV4_RETURN_IF_ERROR(hasher.CheckTokens(tokens));
  const int64_t n = static_cast<int64_t>(tokens.size()), layers = hasher.num_layers(), cols = hasher.num_cols();
  const int64_t hd = config().engram_head_dim;
  std::vector<int64_t> all(n * layers * cols);  // [n, layers, cols]
  hasher.Hash(tokens, /*mask=*/nullptr, cache.engram, all.data());
  EngramStep step;
  step.n = n;
  step.rows.resize(layers);
  step.codes.resize(layers);
  step.scales.resize(layers);
  step.fetches.resize(layers);
  // The fetches write into these buffers; moving `step` keeps them where they are.
  for (int64_t e = 0; e < layers; ++e) {
    step.rows[e].resize(n * cols);
    for (int64_t t = 0; t < n; ++t)
      std::copy_n(&all[(t * layers + e) * cols], cols, &step.rows[e][t * cols]);
    step.codes[e].resize(n * cols * hd);
    step.scales[e].resize(n * cols * hd / kGroup);
    DSV4_ASSIGN_OR_RETURN(step.fetches[e],
                          engram_rows_->Start(e, step.rows[e], step.codes[e].data(), step.scales[e].data()));
  }
  return step;
}

absl::Status Model::ApplyEngram(int64_t layer, EngramStep& step, float* x) const {
  const ModelConfig& c = config();
  const int64_t e = c.engram_index(layer);
  DSV4_CHECK(e >= 0 && step.fetches[e] != nullptr, "no Engram fetch for layer ", layer);
  if (absl::Status st = step.fetches[e]->Wait(); !st.ok())
    return absl::Status(st.code(), absl::StrCat("Engram rows of layer ", layer, ": ", st.message()));
  step.fetches[e].reset();
  // The rows are dequantized on the host, where they arrived, and go to the device for the gate.
  Backend& be = *backend_;
  const int64_t count = static_cast<int64_t>(step.rows[e].size()), size = count * c.engram_head_dim;
  DeviceScratch<float> emb(be, size);
  kernels::Scratch<float> host(be.HostIsDevice() ? 0 : size, kernels::NoInit{});
  float* rows = be.HostIsDevice() ? emb.data() : host.data();
  EngramDequantRows(step.codes[e].data(), step.scales[e].data(), count, c.engram_head_dim, rows);
  if (!be.HostIsDevice()) be.CopyToDevice(emb.data(), rows, emb.bytes());
  const BlockParams& bp = block_params_[layer];
  be.EngramGate(bp.engram_wkv, bp.engram_gate, emb.data(), step.n, static_cast<int>(c.hc_mult), c.hidden_size,
                static_cast<float>(c.rms_norm_eps), opt_.qdq, x);
  return absl::OkStatus();
}

}  // namespace dsv4
