#include "cluster/planner.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "cluster/simulator.h"

namespace dsv4::cluster {
namespace {

using nlohmann::json;

constexpr double kGB = 1e9;
constexpr double kDefaultBudget = 8192;          // tokens per step per attention group (chunked prefill)
constexpr double kDefaultPrefillTokens = 16384;  // tokens per device in one prefill step when unset
constexpr double kMaxAutoBatch = 512;            // sequences per device when the batch is "what fits"

double Round(double x, int digits) {
  const double f = std::pow(10.0, digits);
  return std::round(x * f) / f;
}

json MemoryJson(const MemoryBreakdown& m) {
  json j = {{"total", Round(m.total, 2)},
            {"weights_attention", Round(m.weights_attention, 2)},
            {"weights_dense_and_shared", Round(m.weights_dense, 2)},
            {"weights_routed_experts", Round(m.weights_experts, 2)},
            {"weights_embed_head", Round(m.weights_embed_head, 2)},
            {"weights_mtp", Round(m.weights_mtp, 2)},
            {"engram", Round(m.engram, 2)},
            {"kv_and_compressed_cache", Round(m.kv_cache, 2)},
            {"activations_and_buffers", Round(m.activations, 2)},
            {"runtime_reserve", Round(m.reserve, 2)},
            {"free", Round(m.free, 2)}};
  j["host"] = {{"routed_experts", Round(m.experts_on_host, 2)}, {"engram_tables", Round(m.engram_tables_host, 2)}};
  return j;
}

json StepJson(const StepTime& st) {
  json ops = json::array();
  std::vector<OpTime> sorted = st.ops;
  std::sort(sorted.begin(), sorted.end(), [](const OpTime& a, const OpTime& b) { return a.seconds > b.seconds; });
  for (const OpTime& o : sorted)
    ops.push_back({{"op", o.name},
                   {"ms", Round(o.seconds * 1e3, 4)},
                   {"bound", o.bound},
                   {"gflop", Round(o.flops / 1e9, 3)},
                   {"gb", Round(o.bytes / kGB, 4)}});
  return {{"step_ms", Round(st.seconds * 1e3, 4)},
          {"compute_ms", Round(st.compute_s * 1e3, 4)},
          {"host_ms", Round(st.host_s * 1e3, 4)},
          {"comm_ms", Round(st.comm_s * 1e3, 4)},
          {"exposed_comm_ms", Round(st.exposed_comm_s * 1e3, 4)},
          {"micro_batches", st.micro_batches},
          {"expert_imbalance", Round(st.imbalance, 3)},
          {"bottleneck", st.bottleneck},
          {"ops", ops}};
}

// $ per million tokens for a device-hour price and a per-device token rate.
double CostPerMillion(double price_per_hour, double tokens_per_s_per_device) {
  if (price_per_hour <= 0 || tokens_per_s_per_device <= 0) return 0;
  return price_per_hour / (tokens_per_s_per_device * 3600) * 1e6;
}

struct Ctx {
  const Resolved& r;
  const StepModel& model;
  json& out;
  std::vector<std::string> reasons, warnings;
};

double SeqCacheBytes(const Resolved& r, double tokens) { return SequenceCacheBytes(r.model, tokens, r.s.precision); }

// Sequences per device that fit in memory for sequences of `tokens` tokens.
double MaxBatchPerDevice(const Resolved& r, const StepModel& model, double tokens, double new_tokens) {
  const double per_seq_dev = SeqCacheBytes(r, tokens) * r.s.tp;  // the group's cache is on every TP rank
  double lo = 0, hi = kMaxAutoBatch;
  for (int i = 0; i < 40; ++i) {
    const double mid = (lo + hi) / 2;
    const MemoryBreakdown m = model.Memory(mid * per_seq_dev, mid * new_tokens);
    (m.free >= 0 ? lo : hi) = mid;
  }
  return std::floor(lo);
}

void CheckMemory(Ctx& c, const MemoryBreakdown& m) {
  c.out["memory_per_device_gb"] = MemoryJson(m);
  if (!c.model.WeightsFit())
    c.reasons.push_back(absl::StrCat("weights do not fit: ", Round(m.Weights(), 1), " GB per device of ",
                                     Round(m.total, 1), " GB, with the runtime reserve and a 512-token step"));
  else if (m.free < 0)
    c.reasons.push_back(
        absl::StrCat("memory over by ", Round(-m.free, 2), " GB per device (cache ", Round(m.kv_cache, 2), " GB)"));
  const double host_need = m.experts_on_host + m.engram_tables_host;
  if (host_need > 0 && !c.r.device.unified_memory)
    c.out["host_memory_needed_gb_per_host"] =
        Round(host_need * std::max(1, std::min(c.r.s.devices_per_node, c.r.device.devices_per_host)), 1);
  if (host_need > c.r.host_gb && !c.r.device.unified_memory && (c.r.host_gb_given || m.spilled_expert_fraction > 0))
    c.reasons.push_back(absl::StrCat("host memory too small: ", Round(m.experts_on_host + m.engram_tables_host, 1),
                                     " GB per device needed, ", Round(c.r.host_gb, 1), " GB per device available"));
  if (m.spilled_expert_fraction > 0)
    c.warnings.push_back(absl::StrCat(Round(m.spilled_expert_fraction * 100, 1),
                                      "% of routed experts do not fit on the device and run from host memory "
                                      "(as llama.cpp / ds4 offload does)"));
}

void AnswerPrefill(Ctx& c) {
  const Resolved& r = c.r;
  const Scenario& s = r.s;
  const double new_tokens = std::max(1.0, s.input_tokens * (1 - s.prefix_cache_hit));
  const double cached = s.input_tokens - new_tokens;
  const double seqs_dev =
      s.batch_per_device > 0 ? s.batch_per_device : std::max(1.0, std::round(kDefaultPrefillTokens / new_tokens));
  const double group_seqs = seqs_dev * s.tp;
  const StepTime st = c.model.Step({{group_seqs, new_tokens, cached, true}});
  const double per_device = group_seqs * new_tokens / s.tp / r.pp / st.seconds;
  c.out["prefill_tokens_per_s_per_device"] = Round(per_device, 2);
  c.out["prefill_tokens_per_s_per_node"] = Round(per_device * s.devices_per_node, 1);
  c.out["prefill_batch_per_device"] = seqs_dev;
  c.out["prefill"] = StepJson(st);
  c.out["bottleneck"]["prefill"] = st.bottleneck;
  c.out["cost_per_million_input_tokens"] = Round(CostPerMillion(r.price_per_hour, per_device), 4);
  // A prefill instance's share of the cost of a million output tokens of this workload: the prompts
  // behind them (1e6 / output_tokens requests).
  c.out["cost_per_million_output_tokens"] =
      Round(CostPerMillion(r.price_per_hour, per_device / new_tokens * s.output_tokens), 4);
  CheckMemory(c, c.model.Memory(group_seqs * SeqCacheBytes(r, s.input_tokens), seqs_dev * new_tokens));
}

// Prefill tokens per second per device with the scenario's layout, chunks of 16K tokens per device.
double PrefillRatePerDevice(const Resolved& r, const StepModel& model) {
  const Scenario& s = r.s;
  const double new_tokens = std::max(1.0, s.input_tokens * (1 - s.prefix_cache_hit));
  const double seqs_dev = std::max(1.0, std::round(kDefaultPrefillTokens / new_tokens));
  const StepTime st = model.Step({{seqs_dev * s.tp, new_tokens, s.input_tokens - new_tokens, true}});
  return seqs_dev * new_tokens / r.pp / st.seconds;
}

void AnswerDecode(Ctx& c) {
  const Resolved& r = c.r;
  const Scenario& s = r.s;
  const double ctx = s.input_tokens + s.output_tokens / 2;
  const double step_tokens = 1 + c.model.Drafts();
  const double per_step = c.model.TokensPerDecodeStep();
  auto tpot_ms = [&](double b) { return c.model.Step({{b * s.tp, step_tokens, ctx, false}}).seconds / per_step * 1e3; };
  double batch = s.batch_per_device;
  if (batch <= 0 && s.concurrency > 0) batch = std::max(1.0, s.concurrency / r.dp / s.tp);
  if (batch <= 0) {
    const double fits = std::max(1.0, MaxBatchPerDevice(r, c.model, s.input_tokens + s.output_tokens, step_tokens));
    if (s.slo_tpot_ms > 0) {
      // Throughput at an interactivity: the largest batch whose time per output token meets the SLO.
      double lo = 1, hi = fits;
      if (tpot_ms(lo) > s.slo_tpot_ms) {
        c.reasons.push_back(absl::StrCat("slo.tpot_ms = ", s.slo_tpot_ms, " is not met even at batch 1 (",
                                         Round(tpot_ms(lo), 2), " ms)"));
        hi = lo;
      }
      while (hi - lo > 0.5) {
        const double mid = std::floor((lo + hi) / 2);
        if (mid <= lo) break;
        (tpot_ms(mid) <= s.slo_tpot_ms ? lo : hi) = mid;
      }
      batch = tpot_ms(hi) <= s.slo_tpot_ms ? hi : lo;
      c.warnings.push_back(absl::StrCat("batch_per_device not given: the largest that meets slo.tpot_ms = ",
                                        s.slo_tpot_ms, ", ", batch));
    } else {
      batch = fits;
      c.warnings.push_back(absl::StrCat("batch_per_device not given: using the most that fits, ", batch));
    }
  }
  const double group_seqs = batch * s.tp;
  const StepTime st = c.model.Step({{group_seqs, step_tokens, ctx, false}});
  const double per_device = group_seqs * per_step / s.tp / r.pp / st.seconds;
  c.out["decode_tokens_per_s_per_device"] = Round(per_device, 2);
  c.out["decode_tokens_per_s_per_node"] = Round(per_device * s.devices_per_node, 1);
  c.out["decode_batch_per_device"] = batch;
  c.out["tpot_ms"] = Round(st.seconds / per_step * 1e3, 3);
  c.out["tokens_per_s_per_user"] = Round(per_step / st.seconds, 2);
  // End to end: the devices also prefill the prompts (in a disaggregated deployment, a prefill pool
  // sized to the decode pool). Each output token needs input/output prompt tokens prefilled, so a
  // device's output rate is 1 / (1/decode + (input/output)/prefill) (InferenceX's tok/s/GPU counts
  // input and output tokens over all GPUs).
  const double prefill = PrefillRatePerDevice(r, c.model);
  const double new_input = std::max(1.0, s.input_tokens * (1 - s.prefix_cache_hit));
  const double serving_out = 1 / (1 / per_device + new_input / s.output_tokens / prefill);
  c.out["serving_output_tokens_per_s_per_device"] = Round(serving_out, 2);
  c.out["serving_tokens_per_s_per_device"] = Round(serving_out * (s.input_tokens + s.output_tokens) / s.output_tokens, 2);
  c.out["decode"] = StepJson(st);
  c.out["bottleneck"]["decode"] = st.bottleneck;
  c.out["cost_per_million_output_tokens"] = Round(CostPerMillion(r.price_per_hour, per_device), 4);
  CheckMemory(c, c.model.Memory(group_seqs * SeqCacheBytes(r, s.input_tokens + s.output_tokens), batch * step_tokens));
}

void AnswerSingleStream(Ctx& c) {
  const Resolved& r = c.r;
  const Scenario& s = r.s;
  // Prefill in chunks of the token budget, each chunk attending to the ones before it.
  const double budget = s.token_budget > 0 ? s.token_budget : kDefaultBudget;
  const double new_tokens = std::max(1.0, s.input_tokens * (1 - s.prefix_cache_hit));
  double done = s.input_tokens - new_tokens, prefill_s = 0;
  StepTime last_prefill;
  for (double left = new_tokens; left > 0;) {
    const double chunk = std::min(left, budget);
    last_prefill = c.model.Step({{1, chunk, done, true}});
    prefill_s += last_prefill.seconds;
    done += chunk;
    left -= chunk;
  }
  const double step_tokens = 1 + c.model.Drafts();
  const StepTime st = c.model.Step({{1, step_tokens, s.input_tokens + s.output_tokens / 2, false}});
  const double decode_tps = c.model.TokensPerDecodeStep() / st.seconds;
  c.out["single_stream_decode_tokens_per_s"] = Round(decode_tps, 2);
  c.out["single_stream_prefill_tokens_per_s"] = Round(new_tokens / prefill_s, 2);
  c.out["ttft_ms"] = Round(prefill_s * 1e3, 2);
  c.out["tpot_ms"] = Round(1e3 / decode_tps, 3);
  c.out["decode"] = StepJson(st);
  c.out["prefill"] = StepJson(last_prefill);
  c.out["bottleneck"]["decode"] = st.bottleneck;
  c.out["bottleneck"]["prefill"] = last_prefill.bottleneck;
  c.out["cost_per_million_output_tokens"] = Round(CostPerMillion(r.price_per_hour * r.world, decode_tps), 4);
  CheckMemory(c, c.model.Memory(SeqCacheBytes(r, s.input_tokens + s.output_tokens), std::min(budget, new_tokens)));
}

json PercentilesJson(const SimResult& res) {
  return {{"ttft_ms_p50", Round(res.ttft_ms.p50, 2)},
          {"ttft_ms_p90", Round(res.ttft_ms.p90, 2)},
          {"ttft_ms_p99", Round(res.ttft_ms.p99, 2)},
          {"tpot_ms_p50", Round(res.tpot_ms.p50, 3)},
          {"tpot_ms_p90", Round(res.tpot_ms.p90, 3)},
          {"tpot_ms_p99", Round(res.tpot_ms.p99, 3)},
          {"output_tokens_per_s_per_group", Round(res.output_tokens_per_s, 2)},
          {"mean_running_per_group", Round(res.mean_running, 2)},
          {"simulated_steps", res.steps},
          {"cache_limited_steps", res.cache_limited_steps}};
}

void AnswerCapacity(Ctx& c) {
  const Resolved& r = c.r;
  const Scenario& s = r.s;
  const CapacityResult cap = Capacity(r, c.model);
  const bool pd = s.disaggregated != Disaggregation::kNone;
  c.out["devices_needed"] = cap.devices_needed;
  c.out["qps_served_output_tokens_per_s"] = Round(s.qps * s.output_tokens, 1);
  c.out["deployment_unit_devices"] = r.world;
  if (pd) {
    c.out["prefill_units"] = cap.prefill_units;
    c.out["decode_units"] = cap.decode_units;
    c.out["max_qps_per_prefill_unit"] = Round(cap.max_qps_per_prefill_unit, 4);
    c.out["max_qps_per_decode_unit"] = Round(cap.max_qps_per_decode_unit, 4);
    c.out["kv_transfer_ms"] = Round(cap.kv_transfer_ms, 3);
  } else {
    c.out["units"] = cap.units;
    c.out["token_budget"] = cap.token_budget;
    c.out["max_qps_per_unit"] = Round(cap.max_qps_per_unit, 4);
  }
  const SimResult& t = cap.at_target;
  const SimResult& tp = pd ? cap.prefill_at_target : cap.at_target;
  c.out["ttft_ms_p50"] = Round(tp.ttft_ms.p50 + cap.kv_transfer_ms, 2);
  c.out["ttft_ms_p90"] = Round(tp.ttft_ms.p90 + cap.kv_transfer_ms, 2);
  c.out["ttft_ms_p99"] = Round(tp.ttft_ms.p99 + cap.kv_transfer_ms, 2);
  c.out["tpot_ms_p50"] = Round(t.tpot_ms.p50, 3);
  c.out["tpot_ms_p90"] = Round(t.tpot_ms.p90, 3);
  c.out["tpot_ms_p99"] = Round(t.tpot_ms.p99, 3);
  c.out["simulation"] = PercentilesJson(t);
  for (const std::string& why : cap.reasons) c.reasons.push_back(why);
  if (cap.devices_needed > 0 && r.price_per_hour > 0)
    c.out["cost_per_million_output_tokens"] =
        Round(cap.devices_needed * r.price_per_hour / (s.qps * s.output_tokens * 3600) * 1e6, 4);
  // The steady-state decode step at the simulated mean batch, for the bottleneck.
  const double batch = std::max(1.0, t.mean_running);
  const StepTime st = c.model.Step({{batch, 1.0 + c.model.Drafts(), s.input_tokens + s.output_tokens / 2, false}});
  c.out["decode"] = StepJson(st);
  c.out["bottleneck"]["decode"] = st.bottleneck;
  const double chunk = std::min(s.input_tokens, cap.token_budget > 0 ? cap.token_budget : kDefaultBudget);
  const StepTime pre = c.model.Step({{1, chunk, 0, true}});
  c.out["prefill"] = StepJson(pre);
  c.out["bottleneck"]["prefill"] = pre.bottleneck;
  const double per_seq = SeqCacheBytes(r, s.input_tokens + s.output_tokens) * s.tp;
  CheckMemory(c, c.model.Memory(std::max(1.0, t.mean_running / s.tp) * per_seq,
                                (cap.token_budget > 0 ? cap.token_budget : kDefaultBudget) / s.tp));
}

json ModelJson(const Resolved& r) {
  const ParamCounts pc = CountParams(r.model);
  const WeightBytes wb = CountWeightBytes(r.model, r.s.precision);
  json comps = json::array();
  for (const ComponentRow& row : ComponentTable(r.model, r.s.precision))
    comps.push_back(
        {{"component", row.component}, {"params_b", Round(row.params / 1e9, 3)}, {"gb", Round(row.bytes / kGB, 3)}});
  json per_token = json::array();
  for (const TokenCostRow& row : PerTokenCosts(r.model, r.s.precision, r.s.input_tokens))
    per_token.push_back(
        {{"component", row.component}, {"gflop", Round(row.flops / 1e9, 4)}, {"mb_moved", Round(row.bytes / 1e6, 3)}});
  return {{"name", r.model.name},
          {"decode_token_costs_at_input_context", per_token},
          {"total_params_b", Round(pc.Total() / 1e9, 2)},
          {"active_params_b", Round(pc.active / 1e9, 2)},
          {"weights_gb", Round(wb.Total() / kGB, 2)},
          {"cache_bytes_per_token_per_layer", Round(MeanCacheBytesPerTokenPerLayer(r.model, r.s.precision), 1)},
          {"components", comps}};
}

// Decode batch sweep (throughput against latency) and a layout sweep (cost per million tokens).
json Sweeps(const Resolved& r, const PlanOptions& o) {
  json sweeps;
  const bool spec = UsesSpeculation(r);
  StepModel model(r, o.profile, spec);
  const double ctx = r.s.input_tokens + r.s.output_tokens / 2;
  const double max_b = std::max(1.0, MaxBatchPerDevice(r, model, r.s.input_tokens + r.s.output_tokens, 1));
  json batch = json::array();
  for (double b = 1; b <= max_b; b *= 2) {
    const StepTime st = model.Step({{b * r.s.tp, 1.0 + model.Drafts(), ctx, false}});
    const double per_step = model.TokensPerDecodeStep();
    const double per_dev = b * per_step / st.seconds;
    batch.push_back({{"batch_per_device", b},
                     {"tpot_ms", Round(st.seconds / per_step * 1e3, 3)},
                     {"tokens_per_s_per_device", Round(per_dev, 2)},
                     {"tokens_per_s_per_user", Round(per_step / st.seconds, 2)}});
  }
  sweeps["decode_batch"] = batch;
  json layouts = json::array();
  for (int tp = 1; tp <= std::min(r.world, 16); tp *= 2) {
    if (r.world % tp != 0 || r.model.heads % tp != 0) continue;
    Resolved alt = r;
    alt.s.tp = tp;
    alt.s.dp_attention = 0;
    alt.dp = r.world / tp;
    StepModel m(alt, o.profile, spec);
    if (!m.WeightsFit()) continue;
    const double b = std::max(1.0, MaxBatchPerDevice(alt, m, r.s.input_tokens + r.s.output_tokens, 1));
    const StepTime st = m.Step({{b * tp, 1.0 + m.Drafts(), ctx, false}});
    const double per_dev = b * m.TokensPerDecodeStep() / st.seconds;
    layouts.push_back({{"layout", absl::StrCat("TP", tp, " DP", alt.dp, " EP", r.ep)},
                       {"batch_per_device", b},
                       {"tokens_per_s_per_device", Round(per_dev, 2)},
                       {"cost_per_million_output_tokens", Round(CostPerMillion(r.price_per_hour, per_dev), 4)}});
  }
  sweeps["layouts"] = layouts;
  return sweeps;
}

}  // namespace

bool UsesSpeculation(const Resolved& r) {
  if (r.s.speculative_tokens == 0) return false;
  if (r.s.speculative_tokens > 0 || r.s.speculative_accept >= 0) return true;
  return r.s.question == Question::kSingleStream && r.device.device_class == "datacenter" && r.model.mtp_layers > 0;
}

CapacityResult Capacity(const Resolved& r, const StepModel& model) {
  CapacityResult out;
  const Scenario& s = r.s;
  // The token budget: the scenario's, else the largest power of two up to 8192 whose activations leave
  // room for the cache of a few requests (SGLang/vLLM size their chunked-prefill budget the same way).
  const double seq_bytes = SequenceCacheBytes(r.model, s.input_tokens + s.output_tokens, s.precision) * s.tp;
  double budget = s.token_budget > 0 ? s.token_budget : kDefaultBudget;
  while (s.token_budget <= 0 && budget > 256 && model.Memory(4 * seq_bytes, budget / s.tp).free < 0) budget /= 2;
  out.token_budget = budget;
  SimConfig base;
  base.requests = s.requests > 0 ? s.requests : 400;
  base.seed = s.seed;
  base.input_tokens = s.input_tokens;
  base.output_tokens = s.output_tokens;
  base.prefix_cache_hit = s.prefix_cache_hit;
  base.lengths = s.lengths;
  base.token_budget = budget;
  const MemoryBreakdown mem = model.Memory(0, budget / s.tp);
  base.kv_capacity_bytes = std::max(0.0, mem.free) * kGB;
  if (!model.WeightsFit() || mem.free <= 0) {
    out.reasons.push_back("the model does not fit on the deployment unit");
    return out;
  }
  if (seq_bytes > base.kv_capacity_bytes) {
    out.reasons.push_back("one request's cache does not fit in the memory left on a device");
    return out;
  }
  const bool pd = s.disaggregated != Disaggregation::kNone;
  auto meets = [&](const SimResult& res, bool check_ttft, bool check_tpot, double extra_ttft_ms) {
    auto pick = [&](const Percentiles& p) {
      return s.slo_percentile >= 99 ? p.p99 : (s.slo_percentile >= 90 ? p.p90 : p.p50);
    };
    if (res.completed < base.requests) return false;
    if (check_ttft && s.slo_ttft_ms > 0 && pick(res.ttft_ms) + extra_ttft_ms > s.slo_ttft_ms) return false;
    if (check_tpot && s.slo_tpot_ms > 0 && pick(res.tpot_ms) > s.slo_tpot_ms) return false;
    return true;
  };
  // Analytic upper estimate of a unit's request rate, to place the QPS grid.
  const double max_seqs = std::min(kMaxAutoBatch * s.tp, std::floor(base.kv_capacity_bytes / seq_bytes));
  const StepTime dstep = model.Step({{max_seqs, 1.0 + model.Drafts(), s.input_tokens + s.output_tokens / 2, false}});
  const double decode_rps = max_seqs * model.TokensPerDecodeStep() / dstep.seconds / s.output_tokens;
  const StepTime pstep =
      model.Step({{std::max(1.0, budget / s.input_tokens), std::min(budget, s.input_tokens), 0, true}});
  const double prefill_rps = std::max(budget, s.input_tokens) / pstep.seconds / s.input_tokens;
  const double est = r.dp * std::min(decode_rps, prefill_rps);
  // A rate at which requests almost never overlap: what one request sees on an idle unit.
  const double alone_s =
      model.Step({{1, std::min(budget, s.input_tokens), 0, true}}, 0).seconds * std::ceil(s.input_tokens / budget) +
      s.output_tokens * model.Step({{1, 1, s.input_tokens, false}}, 0).seconds;
  const double idle_qps = 0.02 / alone_s;
  // Largest grid QPS before the first that misses the SLO (a fixed grid keeps the answer monotone in the
  // SLO: a tighter SLO fails at the same grid point or an earlier one).
  auto search = [&](SimConfig::Mode mode, bool ttft, bool tpot, double extra_ms) {
    double best = 0;
    for (double q = est * 0.01; q <= est * 3; q *= 1.2) {
      SimConfig c = base;
      c.mode = mode;
      c.qps = q / r.dp;
      if (!meets(Simulate(model, c), ttft, tpot, extra_ms)) break;
      best = q;
    }
    return best;
  };
  auto run = [&](SimConfig::Mode mode, double unit_qps) {
    SimConfig c = base;
    c.mode = mode;
    c.qps = unit_qps / r.dp;
    return Simulate(model, c);
  };
  if (!pd) {
    out.max_qps_per_unit = search(SimConfig::Mode::kColocated, true, true, 0);
    if (out.max_qps_per_unit <= 0) {
      out.reasons.push_back(
          "no load meets the SLO: even one request alone on a unit misses it (the latencies "
          "reported are those of requests alone on an idle unit)");
      out.at_target = run(SimConfig::Mode::kColocated, idle_qps);
      return out;
    }
    out.units = static_cast<int>(std::ceil(s.qps / out.max_qps_per_unit - 1e-9));
    out.devices_needed = out.units * r.world;
    out.at_target = run(SimConfig::Mode::kColocated, s.qps / out.units);
    return out;
  }
  // Disaggregated: prefill pool for TTFT (plus the cache transfer), decode pool for TPOT.
  const double nic = r.scale_out.gbps > 0 ? r.scale_out.gbps * 0.85 : r.scale_up.gbps * 0.77;
  out.kv_transfer_ms = nic > 0 ? SequenceCacheBytes(r.model, s.input_tokens, s.precision) / (nic * kGB) * 1e3 : 0;
  out.max_qps_per_prefill_unit = search(SimConfig::Mode::kPrefillOnly, true, false, out.kv_transfer_ms);
  out.max_qps_per_decode_unit = search(SimConfig::Mode::kDecodeOnly, false, true, 0);
  if (out.max_qps_per_prefill_unit <= 0) out.reasons.push_back("no prefill load meets the TTFT SLO");
  if (out.max_qps_per_decode_unit <= 0) out.reasons.push_back("no decode load meets the TPOT SLO");
  if (!out.reasons.empty()) {
    out.prefill_at_target = run(SimConfig::Mode::kPrefillOnly, idle_qps);
    out.at_target = run(SimConfig::Mode::kDecodeOnly, idle_qps);
    return out;
  }
  out.prefill_units = static_cast<int>(std::ceil(s.qps / out.max_qps_per_prefill_unit - 1e-9));
  out.decode_units = static_cast<int>(std::ceil(s.qps / out.max_qps_per_decode_unit - 1e-9));
  out.devices_needed = (out.prefill_units + out.decode_units) * r.world;
  out.prefill_at_target = run(SimConfig::Mode::kPrefillOnly, s.qps / out.prefill_units);
  out.at_target = run(SimConfig::Mode::kDecodeOnly, s.qps / out.decode_units);
  return out;
}

double CapacityForDevices(const CapacityResult& c, int unit_devices, int devices) {
  if (unit_devices <= 0) return 0;
  const int units = devices / unit_devices;
  if (c.max_qps_per_unit > 0) return units * c.max_qps_per_unit;
  if (c.max_qps_per_prefill_unit <= 0 || c.max_qps_per_decode_unit <= 0 || units < 2) return 0;
  // Split whole units between the pools in proportion to their per-unit rates.
  double best = 0;
  for (int p = 1; p < units; ++p)
    best = std::max(best, std::min(p * c.max_qps_per_prefill_unit, (units - p) * c.max_qps_per_decode_unit));
  return best;
}

absl::StatusOr<json> Plan(const Scenario& s, const Catalog& catalog, const PlanOptions& options) {
  DSV4_ASSIGN_OR_RETURN(const Resolved r, Resolve(s, catalog, options.tuning));
  if (options.profile != nullptr && !options.profile->device.empty() && options.profile->device != r.device.name)
    return absl::InvalidArgumentError(absl::StrCat("--profile: measured on '", options.profile->device,
                                                   "' but scenario.hardware.device is '", r.device.name, "'"));
  const bool spec = UsesSpeculation(r);
  StepModel model(r, options.profile, spec);
  json out;
  out["scenario"] = s.name;
  out["question"] = QuestionName(s.question);
  out["model"] = options.brief ? json{{"name", r.model.name}} : ModelJson(r);
  out["hardware"] = {{"device", r.device.name},
                     {"devices", r.world},
                     {"nodes", s.nodes},
                     {"devices_per_node", s.devices_per_node},
                     {"scale_up", r.scale_up.name},
                     {"scale_out", r.scale_out.name},
                     {"price_per_device_hour", r.price_per_hour}};
  out["layout"] = {{"tp", s.tp},
                   {"pp", r.pp},
                   {"dp_attention", r.dp},
                   {"ep", r.ep},
                   {"experts_on", s.experts_on_host ? "host" : "device"},
                   {"redundant_experts", s.redundant_experts},
                   {"routed_experts", r.routed_experts}};
  out["workload"] = {{"input_tokens", s.input_tokens}, {"output_tokens", s.output_tokens}};
  out["speculative"] = {
      {"enabled", spec}, {"draft_tokens", model.Drafts()}, {"tokens_per_step", Round(model.TokensPerDecodeStep(), 3)}};
  out["calibration"] = options.profile != nullptr ? options.profile->source : "catalog efficiencies";
  out["software"] = {{"engine", r.engine.name},
                     {"engine_assumed", r.engine_assumed},
                     {"engine_version", s.engine_version},
                     {"date", s.software_date},
                     {"maturity", MaturityName(r.maturity)},
                     {"maturity_reason", r.maturity_reason},
                     {"maturity_factor", Round(r.maturity_factor, 3)},
                     {"fused_moe", r.fused_moe}};
  out["host"] = {{"cpu", r.host.cpu},
                 {"runs_experts", s.experts_on_host || r.device.IsHostOnly()},
                 {"sockets", r.host.sockets},
                 {"cores", r.host.cores},
                 {"ghz", Round(r.host.ghz, 2)},
                 {"dram_peak_gbps", Round(r.host.peak_gbps, 1)},
                 {"stream_gbps", Round(r.host.stream_gbps, 1)},
                 {"expert_gbps_per_device", Round(r.host_gbps, 2)},
                 {"expert_gflops_per_device", Round(r.host_gflops, 1)}};
  out["bottleneck"] = json::object();
  Ctx c{r, model, out, {}, r.notes};
  if (r.engine_assumed)
    c.warnings.push_back(absl::StrCat("software.engine not given: planned as ", r.engine.name,
                                      ", the usual engine for this setup"));
  switch (s.question) {
    case Question::kPrefillThroughput:
      AnswerPrefill(c);
      break;
    case Question::kDecodeThroughput:
      AnswerDecode(c);
      break;
    case Question::kSingleStream:
      AnswerSingleStream(c);
      break;
    case Question::kCapacity:
      AnswerCapacity(c);
      break;
  }
  if (spec && r.s.speculative_accept < 0)
    c.warnings.push_back("speculative decoding assumed (engine default for this setup): 3 MTP drafts, 0.6 acceptance");
  if (!out.contains("cost_per_million_output_tokens")) out["cost_per_million_output_tokens"] = nullptr;
  if (r.price_per_hour <= 0) out["cost_per_million_output_tokens"] = nullptr;
  out["feasible"] = c.reasons.empty();
  out["reasons"] = c.reasons;
  out["warnings"] = c.warnings;
  if (options.sweeps) out["sweeps"] = Sweeps(r, options);
  return out;
}

}  // namespace dsv4::cluster
