#include "runtime/builtin.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"
#include "kernels/cpu/formats.h"
#include "kernels/cpu/thread_pool.h"
#include "runtime/engram/layout.h"

namespace dsv4 {
namespace {

struct Spec {
  int64_t vocab, hidden, layers, heads, head_dim, rope_dim, q_lora, o_groups, o_lora, experts, topk, inter;
  int64_t hash_layers, window, index_heads, index_dim, index_topk;
  std::vector<int64_t> ratios;
  bool engram = false;  // Engram before layers 1 and 3 (EngramKeys)
  bool fast_sampling = false;  // cheap approximate normals, in parallel (multi-GB models)
};

Spec SpecFor(const std::string& name, bool* ok) {
  *ok = true;
  if (name == "v4-tiny") return {129280, 256, 5, 8, 128, 64, 128, 2, 64, 16, 4, 128, 2, 32, 16, 64, 8, {0, 4, 128, 4, 0}};
  if (name == "v4-tiny-engram")
    return {129280, 256, 5, 8, 128, 64, 128, 2, 64, 16, 4, 128, 2, 32, 16, 64, 8, {0, 4, 128, 4, 0}, true};
  // The V4-Flash architecture at about 4.7 GB: attention and vocabulary at full Flash width per layer,
  // 12 layers on the Flash ratio schedule, 64 experts of width 1024. About 1.9 GB read per token.
  if (name == "v4-bench")
    return {129280, 2048, 12,  64, 512, 64, 1024, 8, 1024, 64, 6, 1024, 3, 128, 64, 128, 512,
            {0, 0, 4, 128, 4, 128, 4, 128, 4, 128, 4, 128}, false, true};
  *ok = false;
  return {};
}

// Engram keys for `layers` with the table layout of BuildEngramLayout and the compressed vocabulary
// of the npm DeepSeek tokenizer the built-in models use (98627 keys).
std::string EngramKeys(const std::vector<int64_t>& layers, int64_t vocab_size, int64_t max_ngram, int64_t heads,
                       int64_t head_dim) {
  const absl::StatusOr<EngramLayout> layout = BuildEngramLayout(vocab_size, layers, max_ngram, heads);
  DSV4_CHECK(layout.ok(), layout.status().message());
  return absl::StrCat(R"("engram_layer_ids": [)", absl::StrJoin(layers, ", "), R"(], "engram_num_embeddings": [)",
                      absl::StrJoin(layout->num_rows, ", "), R"(],
  "engram_max_ngram_size": )", max_ngram, R"(, "engram_vocab_size": )", vocab_size, R"(, "engram_n_heads": )", heads,
                      R"(, "engram_head_dim": )", head_dim, R"(,
  "engram_pad_id": 2, "engram_compressed_vocab_size": 98627)");
}

// v41-tiny: the layout of golden/v41-tiny (MODEL.md 1.4 at small sizes) in the released V4.1 file
// format (text_config nesting, 32 x 32 tiles): 8 layers with ratios [0, 0, 2, 2, 2, 1, 1, 1], KV
// sources 2, 4, 5, index sources 2, 4, 5, 7, level-1 candidates at layer 5 (6 blocks of 4), Engram
// before layers 1 and 4 (2- to 4-grams, 4 heads of 32, primes from 600).
std::string V41TinyConfigJson() {
  return absl::StrCat(R"({
  "architectures": ["DeepseekV41ForCausalLM"], "model_type": "deepseek_v41", "dtype": "bfloat16",
  "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 2, "image_token_id": 129264,
  "quantization_config": {"quant_method": "fp8", "activation_scheme": "dynamic", "weight_block_size": [32, 32],
                          "scale_fmt": "ue8m0", "expert_dtype": "fp4"},
  "text_config": {
    "model_type": "deepseek_v41_text", "vocab_size": 129280, "hidden_size": 64, "num_hidden_layers": 8,
    "num_attention_heads": 4, "num_key_value_heads": 1, "head_dim": 96, "qk_rope_head_dim": 32,
    "q_lora_rank": 96, "o_groups": 2, "o_lora_rank": 32,
    "n_routed_experts": 8, "n_shared_experts": 1, "num_experts_per_tok": 3, "moe_intermediate_size": 96,
    "scoring_func": "sqrtsoftplus", "topk_method": "noaux_tc", "norm_topk_prob": true, "routed_scaling_factor": 1.5,
    "swiglu_limit": 10.0, "hidden_act": "silu", "sliding_window": 32,
    "compress_ratios": [0, 0, 2, 2, 2, 1, 1, 1], "kv_source_layer_ids": [2, 4, 5],
    "index_source_layer_ids": [2, 4, 5, 7], "candidate_source_layer_id": 5, "candidate_topk_blocks": 6,
    "candidate_block_size": 4, "index_n_heads": 16, "index_head_dim": 64, "index_topk": 8,
    "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-06, "rms_norm_eps": 1e-20,
    "rope_theta": 10000, "compress_rope_theta": 160000,
    "rope_scaling": {"rope_type": "yarn", "factor": 16, "original_max_position_embeddings": 65536, "beta_fast": 32,
                     "beta_slow": 1},
    "max_position_embeddings": 1048576, "num_nextn_predict_layers": 0,
    )", EngramKeys({1, 4}, 600, 4, 4, 32), R"(
  }
})");
}

std::string ConfigJson(const Spec& s) {
  return absl::StrCat(R"({
  "architectures": ["DeepseekV4ForCausalLM"], "model_type": "deepseek_v4",
  "vocab_size": )", s.vocab, R"(, "hidden_size": )", s.hidden, R"(, "num_hidden_layers": )", s.layers, R"(,
  "num_attention_heads": )", s.heads, R"(, "num_key_value_heads": 1, "head_dim": )", s.head_dim,
                      R"(, "qk_rope_head_dim": )", s.rope_dim, R"(,
  "q_lora_rank": )", s.q_lora, R"(, "o_groups": )", s.o_groups, R"(, "o_lora_rank": )", s.o_lora, R"(,
  "n_routed_experts": )", s.experts, R"(, "n_shared_experts": 1, "num_experts_per_tok": )", s.topk,
                      R"(, "moe_intermediate_size": )", s.inter, R"(,
  "scoring_func": "sqrtsoftplus", "topk_method": "noaux_tc", "norm_topk_prob": true, "routed_scaling_factor": 1.5,
  "swiglu_limit": 10.0, "hidden_act": "silu", "num_hash_layers": )", s.hash_layers, R"(, "sliding_window": )",
                      s.window, R"(,
  "index_n_heads": )", s.index_heads, R"(, "index_head_dim": )", s.index_dim, R"(, "index_topk": )", s.index_topk,
                      R"(,
  "hc_mult": 4, "hc_sinkhorn_iters": 20, "hc_eps": 1e-06, "rms_norm_eps": 1e-06,
  "rope_theta": 10000, "compress_rope_theta": 160000,
  "rope_scaling": {"type": "yarn", "factor": 16, "original_max_position_embeddings": 65536, "beta_fast": 32, "beta_slow": 1},
  "max_position_embeddings": 1048576, "tie_word_embeddings": false, "bos_token_id": 0, "eos_token_id": 1,
  "compress_ratios": [)", absl::StrJoin(s.ratios, ", "), R"(], "num_nextn_predict_layers": 0,
  "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "scale_fmt": "ue8m0", "weight_block_size": [128, 128], "activation_scheme": "dynamic"},
  "expert_dtype": "fp4", "torch_dtype": "bfloat16")", s.engram ? ",\n  " + EngramKeys({1, 3}, 1000, 3, 4, 64) : "",
                      R"(
})");
}

// Deterministic normal samples (splitmix64 + Box-Muller), independent of the C++ library.
class Rng {
 public:
  explicit Rng(uint64_t seed) : s_(seed) {}
  uint64_t Next() {
    uint64_t z = (s_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double Uniform() { return (Next() >> 11) * (1.0 / 9007199254740992.0); }
  float Normal() {
    const double u1 = std::max(Uniform(), 1e-300), u2 = Uniform();
    return static_cast<float>(std::sqrt(-2 * std::log(u1)) * std::cos(2 * M_PI * u2));
  }

 private:
  uint64_t s_;
};

uint8_t EncodeFp8(float q) {  // q already on the E4M3 grid
  const float a = std::fabs(q);
  uint8_t mag;
  if (a < std::ldexp(1.0f, -6)) {
    mag = static_cast<uint8_t>(std::lround(a / std::ldexp(1.0f, -9)));
  } else {
    int e;
    std::frexp(a, &e);
    --e;
    const int m = static_cast<int>(std::lround(a / std::ldexp(1.0f, e) * 8)) - 8;
    mag = static_cast<uint8_t>(((e + 7) << 3) | m);
  }
  return std::signbit(q) ? (mag | 0x80) : mag;
}

uint8_t EncodeFp4(float q) {
  for (uint8_t i = 0; i < 16; ++i)
    if (kernels::kFp4E2m1[i] == q && std::signbit(kernels::kFp4E2m1[i]) == std::signbit(q)) return i;
  return 0;
}

uint8_t EncodeE8m0(float pow2) {
  int e;
  std::frexp(pow2, &e);
  return static_cast<uint8_t>(e - 1 + 127);
}

// Approximately normal samples for the large built-in models, cheap enough for billions of
// weights: z = (sum of four uniform random bytes - 510) / 147.8 (mean 0, variance 1, |z| < 3.5).
// The encoded value of each of the 1021 possible sums is tabulated per tensor; blocks of 64K
// elements draw from their own splitmix64 stream, so the bytes do not depend on the thread count.
class FastSampler {
 public:
  static constexpr int kSums = 1021;
  static float Z(int sum) { return (static_cast<float>(sum) - 510.0f) / 147.8f; }

  // dst[i] = table[sum_i] for n elements of type T.
  template <typename T>
  static void Fill(T* dst, int64_t n, uint64_t seed, const std::vector<T>& table) {
    Blocks(n, [&](int64_t b, int64_t e, Rng& rng) {
      for (int64_t i = b; i < e; i += 2) {
        const uint64_t r = rng.Next();
        dst[i] = table[Sum(r)];
        if (i + 1 < e) dst[i + 1] = table[Sum(r >> 32)];
      }
    }, seed);
  }
  // Packed FP4 nibbles, two per byte: 16 states are coarse enough for a sum of two random bytes
  // (triangular, standard deviation 104.5, |z| < 2.5), so one draw fills two bytes. table2 holds
  // the codes of the 511 possible sums of two bytes.
  static constexpr int kSums2 = 511;
  static float Z2(int sum) { return (static_cast<float>(sum) - 255.0f) / 104.5f; }
  static void FillNibbles(uint8_t* dst, int64_t n, uint64_t seed, const std::vector<uint8_t>& table2) {
    Blocks(n, [&](int64_t b, int64_t e, Rng& rng) {
      for (int64_t i = b; i < e; i += 2) {
        const uint64_t r = rng.Next();
        dst[i] = static_cast<uint8_t>(table2[Sum2(r)] | (table2[Sum2(r >> 16)] << 4));
        if (i + 1 < e) dst[i + 1] = static_cast<uint8_t>(table2[Sum2(r >> 32)] | (table2[Sum2(r >> 48)] << 4));
      }
    }, seed);
  }

 private:
  static int Sum2(uint64_t r) { return static_cast<int>((r & 0xff) + ((r >> 8) & 0xff)); }
  static int Sum(uint64_t r) {
    return static_cast<int>((r & 0xff) + ((r >> 8) & 0xff) + ((r >> 16) & 0xff) + ((r >> 24) & 0xff));
  }
  template <typename Fn>
  static void Blocks(int64_t n, Fn fn, uint64_t seed) {
    constexpr int64_t kBlock = 1 << 16;
    kernels::ParallelFor((n + kBlock - 1) / kBlock, 1, [&](int64_t b0, int64_t b1) {
      for (int64_t blk = b0; blk < b1; ++blk) {
        Rng rng(seed ^ (0x9e3779b97f4a7c15ull * static_cast<uint64_t>(blk + 1)));
        fn(blk * kBlock, std::min(n, (blk + 1) * kBlock), rng);
      }
    });
  }
};

class Writer {
 public:
  explicit Writer(uint64_t seed, bool fast = false) : rng_(seed), fast_(fast) {}

  void F32(const std::string& name, std::vector<int64_t> shape, float std, float mean = 0.f) {
    const int64_t n = Numel(shape);
    std::vector<uint8_t> bytes(n * 4);
    for (int64_t i = 0; i < n; ++i) {
      const float v = mean + std * rng_.Normal();
      std::memcpy(&bytes[i * 4], &v, 4);
    }
    out_.push_back({name, DType::kF32, std::move(shape), std::move(bytes)});
  }

  void Bf16(const std::string& name, std::vector<int64_t> shape, float std, float mean = 0.f) {
    const int64_t n = Numel(shape);
    if (fast_ && n >= kFastMin) {
      std::vector<uint16_t> table(FastSampler::kSums);
      for (int i = 0; i < FastSampler::kSums; ++i) table[i] = kernels::FloatToBf16(mean + std * FastSampler::Z(i));
      const uint64_t seed = rng_.Next();
      out_.push_back({name, DType::kBF16, std::move(shape), {}, [n, seed, table](uint8_t* dst) {
                        FastSampler::Fill(reinterpret_cast<uint16_t*>(dst), n, seed, table);
                      }});
      return;
    }
    std::vector<uint8_t> bytes(n * 2);
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t v = kernels::FloatToBf16(mean + std * rng_.Normal());
      std::memcpy(&bytes[i * 2], &v, 2);
    }
    out_.push_back({name, DType::kBF16, std::move(shape), std::move(bytes)});
  }

  // FP8 E4M3 weight [out, in] with power-of-two scales per br x bc block (the config's tiles).
  void Fp8(const std::string& prefix, int64_t out, int64_t in, int64_t br = 128, int64_t bc = 128) {
    Fp8Blocked(prefix, out, in, br, bc, 1.0f / std::sqrt(static_cast<float>(in)));
  }

  // FP8 E4M3 values N(0, std^2) [out, in] with one power-of-two scale per br x bc block (Engram:
  // W_kv 32 x 32, table rows 1 x 32).
  void Fp8Blocked(const std::string& prefix, int64_t out, int64_t in, int64_t br, int64_t bc, float std) {
    const int64_t sr = (out + br - 1) / br, sc = (in + bc - 1) / bc;
    if (fast_ && out * in >= kFastMin) {
      const float scale = kernels::Pow2Ceil(4.0f * std / 448.0f);  // the same for every block
      std::vector<uint8_t> table(FastSampler::kSums);
      for (int i = 0; i < FastSampler::kSums; ++i)
        table[i] = EncodeFp8(kernels::RoundToFp8E4m3(std * FastSampler::Z(i) / scale));
      const uint64_t seed = rng_.Next();
      const int64_t n = out * in;
      out_.push_back({prefix + ".weight", DType::kF8_E4M3, {out, in}, {},
                      [n, seed, table](uint8_t* dst) { FastSampler::Fill(dst, n, seed, table); }});
      out_.push_back({prefix + ".scale", DType::kF8_E8M0, {sr, sc}, std::vector<uint8_t>(sr * sc, EncodeE8m0(scale))});
      return;
    }
    std::vector<uint8_t> w(out * in), s(sr * sc);
    for (int64_t bi = 0; bi < sr; ++bi)
      for (int64_t bj = 0; bj < sc; ++bj) {
        // One scale per block: values are drawn, then stored as codes times the block's scale.
        const float scale = kernels::Pow2Ceil(4.0f * std / 448.0f);
        s[bi * sc + bj] = EncodeE8m0(scale);
        for (int64_t r = bi * br; r < std::min(out, (bi + 1) * br); ++r)
          for (int64_t c = bj * bc; c < std::min(in, (bj + 1) * bc); ++c)
            w[r * in + c] = EncodeFp8(kernels::RoundToFp8E4m3(std * rng_.Normal() / scale));
      }
    out_.push_back({prefix + ".weight", DType::kF8_E4M3, {out, in}, std::move(w)});
    out_.push_back({prefix + ".scale", DType::kF8_E8M0, {sr, sc}, std::move(s)});
  }

  // Packed FP4 E2M1 weight [out, in] (I8 [out, in/2], low nibble first), E8M0 scale per 32 inputs.
  void Fp4(const std::string& prefix, int64_t out, int64_t in) {
    const float std = 1.0f / std::sqrt(static_cast<float>(in));
    const float scale = kernels::Pow2Ceil(2.5f * std / 6.0f);
    if (fast_) {
      std::vector<uint8_t> table(FastSampler::kSums2);
      for (int i = 0; i < FastSampler::kSums2; ++i)
        table[i] = EncodeFp4(kernels::RoundToFp4E2m1(std * FastSampler::Z2(i) / scale));
      const uint64_t seed = rng_.Next();
      const int64_t n = out * in / 2;
      out_.push_back({prefix + ".weight", DType::kI8, {out, in / 2}, {},
                      [n, seed, table](uint8_t* dst) { FastSampler::FillNibbles(dst, n, seed, table); }});
      out_.push_back({prefix + ".scale", DType::kF8_E8M0, {out, in / 32}, std::vector<uint8_t>(out * in / 32, EncodeE8m0(scale))});
      return;
    }
    std::vector<uint8_t> w(out * in / 2), s(out * in / 32);
    for (int64_t r = 0; r < out; ++r) {
      for (int64_t g = 0; g < in / 32; ++g) s[r * (in / 32) + g] = EncodeE8m0(scale);
      for (int64_t c = 0; c < in; ++c) {
        const uint8_t code = EncodeFp4(kernels::RoundToFp4E2m1(std * rng_.Normal() / scale));
        w[r * (in / 2) + c / 2] |= (c & 1) ? static_cast<uint8_t>(code << 4) : code;
      }
    }
    out_.push_back({prefix + ".weight", DType::kI8, {out, in / 2}, std::move(w)});
    out_.push_back({prefix + ".scale", DType::kF8_E8M0, {out, in / 32}, std::move(s)});
  }

  void HashTable(const std::string& name, int64_t vocab, int64_t k, int64_t experts) {
    std::vector<uint8_t> bytes(vocab * k * 8);
    std::vector<int64_t> pick(experts);
    for (int64_t t = 0; t < vocab; ++t) {
      for (int64_t e = 0; e < experts; ++e) pick[e] = e;
      for (int64_t j = 0; j < k; ++j) {  // k distinct experts (partial Fisher-Yates)
        const int64_t r = j + static_cast<int64_t>(rng_.Next() % (experts - j));
        std::swap(pick[j], pick[r]);
        std::memcpy(&bytes[(t * k + j) * 8], &pick[j], 8);
      }
    }
    out_.push_back({name, DType::kI64, {vocab, k}, std::move(bytes)});
  }

  std::vector<TensorToWrite>& tensors() { return out_; }

 private:
  static int64_t Numel(const std::vector<int64_t>& s) {
    int64_t n = 1;
    for (int64_t d : s) n *= d;
    return n;
  }
  static constexpr int64_t kFastMin = 1 << 16;  // smaller tensors keep the exact sampler
  Rng rng_;
  bool fast_;
  std::vector<TensorToWrite> out_;
};

// A compressor as weights.cc loads it: V4 with `ape` (ratio 4 overlapping, 2 x hd channels);
// V4.1 without, and without a gate at ratio 1.
void WriteCompressor(Writer& w, const std::string& p, const ModelConfig& c, int64_t layer, int64_t hd) {
  const int64_t D = c.hidden_size, ratio = c.ratio(layer), width = (c.compressor_overlap(layer) ? 2 : 1) * hd;
  w.Bf16(p + ".wkv.weight", {width, D}, 1.0f / std::sqrt(static_cast<float>(D)));
  if (c.compressor_gate(layer)) w.Bf16(p + ".wgate.weight", {width, D}, 1.0f / std::sqrt(static_cast<float>(D)));
  if (c.compressor_ape()) w.F32(p + ".ape", {ratio, width}, 0.5f);
  w.Bf16(p + ".norm.weight", {hd}, 0.1f, 1.0f);
}

}  // namespace

std::vector<std::string> BuiltinModelNames() { return {"v4-tiny", "v4-tiny-engram", "v41-tiny", "v4-bench"}; }

absl::StatusOr<std::string> BuiltinConfigJson(const std::string& name) {
  if (name == "v41-tiny") return V41TinyConfigJson();
  bool ok;
  const Spec s = SpecFor(name, &ok);
  if (!ok)
    return absl::NotFoundError(absl::StrCat("unknown built-in model 'builtin:", name, "' (known: builtin:",
                                            absl::StrJoin(BuiltinModelNames(), ", builtin:"), ")"));
  return ConfigJson(s);
}

absl::StatusOr<BuiltinModel> MakeBuiltinModel(const std::string& name) {
  DSV4_ASSIGN_OR_RETURN(std::string json, BuiltinConfigJson(name));
  uint64_t seed = 0x5eed0000ull;
  for (char ch : name) seed = seed * 131 + static_cast<unsigned char>(ch);  // stable across platforms
  bool ok;
  return MakeRandomModel(json, seed, "builtin:" + name, SpecFor(name, &ok).fast_sampling);
}

absl::StatusOr<BuiltinModel> MakeRandomModel(const std::string& json, uint64_t seed, const std::string& name,
                                             bool fast_sampling) {
  DSV4_ASSIGN_OR_RETURN(ModelConfig c, ParseModelConfig(json, name));
  Writer w(seed, fast_sampling);
  const int64_t D = c.hidden_size, hc = c.hc_mult, mix = hc * (hc + 2), H = c.num_attention_heads;
  const float inv_d = 1.0f / std::sqrt(static_cast<float>(D));
  w.Bf16("embed.weight", {c.vocab_size, D}, 1.0f);
  w.Bf16("head.weight", {c.vocab_size, D}, inv_d);
  w.Bf16("norm.weight", {D}, 0.1f, 1.0f);
  if (!c.hc_lagged()) {
    w.F32("hc_head_fn", {hc, hc * D}, 1.0f / std::sqrt(static_cast<float>(hc * D)));
    w.F32("hc_head_base", {hc}, 0.5f);
    w.F32("hc_head_scale", {1}, 0.1f, 1.0f);
  }
  const int64_t br = c.fp8_block_rows, bc = c.fp8_block_cols;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = absl::StrCat("layers.", l, ".");
    for (const char* sub : {"attn", "ffn"}) {
      w.F32(absl::StrCat(p, "hc_", sub, "_fn"), {mix, hc * D}, 1.0f / std::sqrt(static_cast<float>(hc * D)));
      w.F32(absl::StrCat(p, "hc_", sub, "_base"), {mix}, 0.5f);
      w.F32(absl::StrCat(p, "hc_", sub, "_scale"), {3}, 0.1f, 1.0f);
    }
    w.Bf16(p + "attn_norm.weight", {D}, 0.1f, 1.0f);
    w.Bf16(p + "ffn_norm.weight", {D}, 0.1f, 1.0f);
    w.Fp8(p + "attn.wq_a", c.q_lora_rank, D, br, bc);
    w.Bf16(p + "attn.q_norm.weight", {c.q_lora_rank}, 0.1f, 1.0f);
    w.Fp8(p + "attn.wq_b", H * c.head_dim, c.q_lora_rank, br, bc);
    w.Fp8(p + "attn.wkv", c.head_dim, D, br, bc);
    w.Bf16(p + "attn.kv_norm.weight", {c.head_dim}, 0.1f, 1.0f);
    w.F32(p + "attn.attn_sink", {H}, 1.0f);
    w.Fp8(p + "attn.wo_a", c.o_groups * c.o_lora_rank, H * c.head_dim / c.o_groups, br, bc);
    w.Fp8(p + "attn.wo_b", D, c.o_groups * c.o_lora_rank, br, bc);
    if (c.compresses(l)) WriteCompressor(w, p + "attn.compressor", c, l, c.head_dim);
    if (c.runs_indexer(l)) {
      if (!c.index_keys_from_latent()) WriteCompressor(w, p + "attn.indexer.compressor", c, l, c.index_head_dim);
      w.Fp8(p + "attn.indexer.wq_b", c.index_n_heads * c.index_head_dim, c.q_lora_rank, br, bc);
      w.Bf16(p + "attn.indexer.weights_proj.weight", {c.index_n_heads, D}, inv_d);
      if (c.index_keys_from_latent() && c.owns_index_keys(l)) {
        w.Bf16(p + "attn.indexer.wk.weight", {c.index_head_dim, c.head_dim},
               1.0f / std::sqrt(static_cast<float>(c.head_dim)));
        w.Bf16(p + "attn.indexer.k_norm.weight", {c.index_head_dim}, 0.1f, 1.0f);
      }
    }
    w.Bf16(p + "ffn.gate.weight", {c.n_routed_experts, D}, inv_d);
    if (c.is_hash_layer(l)) {
      w.HashTable(p + "ffn.gate.tid2eid", c.vocab_size, c.num_experts_per_tok, c.n_routed_experts);
    } else {
      w.F32(p + "ffn.gate.bias", {c.n_routed_experts}, 0.1f);
    }
    for (int64_t e = 0; e < c.n_routed_experts; ++e) {
      const std::string ep = absl::StrCat(p, "ffn.experts.", e);
      w.Fp4(ep + ".w1", c.moe_intermediate_size, D);
      w.Fp4(ep + ".w2", D, c.moe_intermediate_size);
      w.Fp4(ep + ".w3", c.moe_intermediate_size, D);
    }
    w.Fp8(p + "ffn.shared_experts.w1", c.moe_intermediate_size, D, br, bc);
    w.Fp8(p + "ffn.shared_experts.w2", D, c.moe_intermediate_size, br, bc);
    w.Fp8(p + "ffn.shared_experts.w3", c.moe_intermediate_size, D, br, bc);
    if (const int64_t e = c.engram_index(l); e >= 0) {
      const int64_t hd = c.engram_head_dim, K = (c.engram_max_ngram_size - 1) * c.engram_n_heads * hd;
      w.Fp8Blocked(p + "engram.embed", c.engram_num_embeddings[e], hd, 1, 32, 1.0f);
      w.Fp8Blocked(p + "engram.wkv", (hc + 1) * D, K, 32, 32, 1.0f / std::sqrt(static_cast<float>(K)));
      w.Bf16(p + "engram.q_weight", {hc, D}, 0.1f, 1.0f);
      w.Bf16(p + "engram.k_weight", {hc, D}, 0.1f, 1.0f);
    }
  }
  auto image = std::make_shared<const std::vector<uint8_t>>(WriteSafetensors(w.tensors(), {{"format", "pt"}}));
  DSV4_ASSIGN_OR_RETURN(auto file, SafetensorsFile::FromMemory(image, name));
  std::vector<std::unique_ptr<SafetensorsFile>> files;
  files.push_back(std::move(file));
  BuiltinModel m;
  m.config = c;
  m.config_json = json;
  m.checkpoint = Checkpoint::FromFiles(std::move(files));
  return m;
}

}  // namespace dsv4
