#include "runtime/serving/engine.h"

#include <algorithm>
#include <cmath>
#include <random>

#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "base/log.h"
#include "base/status.h"
#include "kernels/cpu/thread_pool.h"

namespace dsv4 {
namespace {

using Clock = std::chrono::steady_clock;

double MsSince(Clock::time_point t0, Clock::time_point t1) {
  return std::chrono::duration<double, std::milli>(t1 - t0).count();
}

constexpr size_t kMaxRequestIdBytes = 256;
constexpr int32_t kMaxSlots = 1 << 16;

}  // namespace

const char* FinishReasonName(FinishReason r) {
  switch (r) {
    case FinishReason::kStop:
      return "stop";
    case FinishReason::kLength:
      return "length";
    case FinishReason::kAbort:
      return "abort";
    case FinishReason::kNone:
      break;
  }
  return "";
}

void GenerateOutput::MergeFrom(GenerateOutput&& next) {
  token_ids.insert(token_ids.end(), next.token_ids.begin(), next.token_ids.end());
  text += next.text;
  for (auto& lp : next.logprobs) logprobs.push_back(std::move(lp));
  if (!next.prompt_token_ids.empty()) prompt_token_ids = std::move(next.prompt_token_ids);
  if (!next.prompt_text.empty()) prompt_text = std::move(next.prompt_text);
  if (next.finished) {
    finished = true;
    finish_reason = next.finish_reason;
    matched_stop = std::move(next.matched_stop);
    matched_stop_token_id = next.matched_stop_token_id;
    prompt_tokens = next.prompt_tokens, completion_tokens = next.completion_tokens;
    seed = next.seed, queue_ms = next.queue_ms, ttft_ms = next.ttft_ms;
  }
}

// ---- RequestHandle ------------------------------------------------------------------------------

absl::StatusOr<GenerateOutput> RequestHandle::Next(absl::Duration timeout) {
  absl::MutexLock l(&mu_);
  auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty() || closed_; };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  if (!queue_.empty()) {
    GenerateOutput out = std::move(queue_.front());
    queue_.pop_front();
    while (!queue_.empty()) {
      out.MergeFrom(std::move(queue_.front()));
      queue_.pop_front();
    }
    return out;
  }
  if (!closed_) return absl::DeadlineExceededError("no output yet");
  if (!end_.ok()) return end_;
  return absl::OutOfRangeError("the request has finished");
}

void RequestHandle::Push(GenerateOutput out) {
  {
    absl::MutexLock l(&mu_);
    if (closed_) return;
    queue_.push_back(std::move(out));
  }
  Notify();
}

void RequestHandle::Close(const absl::Status& status) {
  {
    absl::MutexLock l(&mu_);
    if (closed_) return;
    closed_ = true;
    end_ = status;
  }
  Notify();
}

void RequestHandle::Notify() {
  absl::MutexLock l(&notify_mu_);
  if (notify_) notify_();
}

void RequestHandle::SetNotify(std::function<void()> notify) {
  // notify_mu_ first: a piece queued after the look below waits in Notify for the new function;
  // one queued before it is seen here. Either way it is announced.
  absl::MutexLock l(&notify_mu_);
  bool pending;
  {
    absl::MutexLock q(&mu_);
    pending = !queue_.empty() || closed_;
  }
  notify_ = std::move(notify);
  if (notify_ && pending) notify_();
}

// ---- PlanExecutor -------------------------------------------------------------------------------

namespace {

// The window blocks one running sequence holds: its window and its prompt chunk.
int64_t WindowBlocksPerSequence(const ModelConfig& c, const EngineOptions& o, int64_t B) {
  return (c.sliding_window - 1 + B - 1) / B + (o.scheduler.prefill_chunk + B - 1) / B + 1;
}

}  // namespace

int64_t RunningThatFit(const ModelConfig& c, const EngineOptions& o) {
  const int64_t B = KvPool::DefaultBlockTokens(c);
  const int64_t one = (o.max_model_len + B - 1) / B * KvPool::BlockBytes(c, B);
  return std::max<int64_t>(0,
                           (o.cache_bytes - one) / (WindowBlocksPerSequence(c, o, B) * KvPool::WindowBlockBytes(c, B)));
}

absl::StatusOr<KvPoolSizes> PoolSizes(const ModelConfig& c, const EngineOptions& o) {
  KvPoolSizes p;
  p.block_tokens = KvPool::DefaultBlockTokens(c);
  const int64_t B = p.block_tokens;
  p.block_bytes = KvPool::BlockBytes(c, B);
  p.window_block_bytes = KvPool::WindowBlockBytes(c, B);
  const int64_t per_seq = WindowBlocksPerSequence(c, o, B);
  const int64_t windows = o.scheduler.max_running * per_seq;
  const int64_t rest = o.cache_bytes - windows * p.window_block_bytes;
  const int64_t need = (o.max_model_len + B - 1) / B;  // one sequence of max_model_len
  if (rest < need * p.block_bytes)
    return absl::InvalidArgumentError(absl::StrCat(
        "the cache budget (", o.cache_bytes >> 20, " MiB) cannot hold the windows of ", o.scheduler.max_running,
        " running sequences (", windows, " window blocks of ", p.window_block_bytes >> 10, " KiB) and one sequence of ",
        o.max_model_len, " tokens (", need, " blocks of ", p.block_bytes >> 10,
        " KiB): raise the budget, or lower max_running or max_model_len"));
  p.num_blocks = std::max(need, rest * 3 / 4 / p.block_bytes);
  p.num_window_blocks = windows + std::max<int64_t>(0, (rest - p.num_blocks * p.block_bytes) / p.window_block_bytes);
  return p;
}

// ---- PlanExecutor -------------------------------------------------------------------------------

PlanExecutor::PlanExecutor(Model& model, Communicator& world, std::unique_ptr<KvPool> pool)
    : model_(model), world_(world), pool_(std::move(pool)) {
  if (const ParallelContext* par = model.parallel(); par != nullptr && par->layout.world > 1) {
    dp_ = par->layout.dp, tp_ = par->layout.tp, group_ = par->layout.dp_rank;
  }
  // Only the leader samples; another rank computes logits when it holds part of a split vocab
  // head (HeadBatch gathers it over the TP group) or sends its group's logits to the leader.
  want_logits_ = world.rank() == 0 || model.weights().vocab_parallel_head || dp_ > 1;
}

absl::Status PlanExecutor::Execute(const StepPlan& plan) {
  if (plan.pool_blocks != pool_->num_blocks() || plan.pool_window_blocks != pool_->num_window_blocks())
    return absl::InternalError(absl::StrCat("step ", plan.step, ": the leader's KV pool has ", plan.pool_blocks, "+",
                                            plan.pool_window_blocks, " blocks, this rank's ", pool_->num_blocks(), "+",
                                            pool_->num_window_blocks(), " (different --cache-mb or --max-running?)"));
  if (!plan.placement.empty()) {
    DSV4_ASSIGN_OR_RETURN(const ModelPlacement next, ModelPlacement::Decode(plan.placement), "step ", plan.step);
    DSV4_RETURN_IF_ERROR(model_.SwitchPlacement(next), "step ", plan.step);
    DSV4_LOG(kInfo, "switched to a new expert placement (", next.num_maps(), " layer map(s), ", next.redundant(),
             " redundant slots)");
  }
  for (int32_t slot : plan.free_slots)
    if (slot >= 0 && slot < static_cast<int32_t>(caches_.size())) caches_[slot].reset(), started_[slot] = false;
  // Table changes for this group's sequences; a slot's first change (or first chunk) makes its cache.
  auto cache_of = [&](int32_t slot) -> std::optional<SequenceCache>& {
    if (slot >= static_cast<int32_t>(caches_.size())) caches_.resize(slot + 1), started_.resize(slot + 1, false);
    if (!caches_[slot].has_value()) caches_[slot] = model_.NewCache(pool_.get());
    return caches_[slot];
  };
  for (const BlockOp& op : plan.block_ops) {
    if (op.group != group_) continue;
    if (op.slot < 0 || op.slot >= kMaxSlots || op.index < 0 || op.block < 0 || op.block >= pool_->num_blocks() ||
        op.window >= pool_->num_window_blocks())
      return absl::InternalError(absl::StrCat("step ", plan.step, ": malformed block change for slot ", op.slot));
    SequenceCache& c = *cache_of(op.slot);
    if (op.index >= static_cast<int64_t>(c.blocks.size())) c.blocks.resize(op.index + 1);
    c.blocks[op.index] = BlockRef{op.block, op.window};
  }
  const int64_t V = model_.config().vocab_size;
  step_tokens_.clear();
  chunks_.clear();
  row_of_.clear();
  std::vector<int64_t> group_rows(dp_, 0);  // logit rows of each dp group
  // chunks_ points into caches_: it must not reallocate while they are collected.
  for (const StepSeq& s : plan.seqs)
    if (s.group == group_ && s.slot >= 0 && s.slot < kMaxSlots) cache_of(s.slot);
  size_t offset = 0;
  for (const StepSeq& s : plan.seqs) {
    if (s.slot < 0 || s.slot >= kMaxSlots || s.num_tokens < 1 || offset + s.num_tokens > plan.tokens.size() ||
        s.group < 0 || s.group >= dp_)
      return absl::InternalError(absl::StrCat("step ", plan.step, ": malformed entry for sequence ", s.request));
    const std::span<const int32_t> tokens(plan.tokens.data() + offset, s.num_tokens);
    offset += s.num_tokens;
    if (s.logits) {
      // dp 1: rows of logits_ in plan order; dp > 1: (group, row in group), made global below.
      row_of_.push_back(dp_ == 1 ? group_rows[0] : (int64_t{s.group} << 32) | group_rows[s.group]);
      ++group_rows[s.group];
    }
    if (s.group != group_) continue;
    SequenceCache& cache = *caches_[s.slot];
    if (!started_[s.slot] && s.start > 0) {
      // Its first step starts after blocks another sequence computed (a shared prompt prefix).
      if (s.start % pool_->block_tokens() != 0 ||
          static_cast<int64_t>(cache.blocks.size()) < s.start / pool_->block_tokens())
        return absl::InternalError(absl::StrCat("step ", plan.step, ": sequence ", s.request, " starts at ", s.start,
                                                " without the blocks before it"));
      cache.length = s.start;
      DSV4_RETURN_IF_ERROR(model_.RestoreAtBlockEnd(cache), "step ", plan.step, ": sequence ", s.request);
    } else if (cache.length != s.start) {
      return absl::InternalError(absl::StrCat("step ", plan.step, ": sequence ", s.request, " continues at position ",
                                              s.start, " but slot ", s.slot, " holds ", cache.length,
                                              " tokens: ranks are out of step"));
    }
    step_tokens_.insert(step_tokens_.end(), tokens.begin(), tokens.end());
    chunks_.push_back(SequenceChunk{&cache, s.num_tokens, s.logits && want_logits_});
    started_[s.slot] = true;
  }
  const int64_t mine = group_rows[group_];
  if (want_logits_) logits_.resize(mine * V);
  DSV4_RETURN_IF_ERROR(model_.ForwardBatch(step_tokens_, chunks_, want_logits_ ? logits_.data() : nullptr));
  if (dp_ == 1) return absl::OkStatus();
  // The first rank of every dp group sends its group's logits; the leader keeps them all.
  std::vector<int64_t> counts(world_.size(), 0), first_row(dp_ + 1, 0);
  for (int g = 0; g < dp_; ++g) {
    counts[g * tp_] = group_rows[g] * V;
    first_row[g + 1] = first_row[g] + group_rows[g];
  }
  gathered_.resize(first_row[dp_] * V);
  DSV4_RETURN_IF_ERROR(world_.AllGatherV(logits_.data(), counts.data(), gathered_.data()),
                       "step ", plan.step, ": gathering the dp groups' logits");
  for (int64_t& r : row_of_) r = first_row[r >> 32] + (r & 0xffffffff);
  return absl::OkStatus();
}

std::span<const float> PlanExecutor::logits(int64_t k) const {
  const int64_t V = model_.config().vocab_size;
  const std::vector<float>& rows = dp_ == 1 ? logits_ : gathered_;
  return std::span<const float>(rows.data() + row_of_[k] * V, V);
}

absl::Status PlanExecutor::NumericalError(const StepSeq& seq, std::span<const float> logits) const {
  // This rank's own sequences: the watchdog's finding in their cache, naming the layer.
  if (seq.group == group_ && seq.slot >= 0 && seq.slot < static_cast<int32_t>(caches_.size()) &&
      caches_[seq.slot].has_value())
    return model_.NumericalError(*caches_[seq.slot]);
  // Another dp group's sequence: its logits are all this rank has; a NaN or Inf in the hidden state
  // reaches them.
  for (float v : logits)
    if (!std::isfinite(v))
      return absl::DataLossError(
          "non-finite values (NaN or Inf) in the logits: the weights or the model are broken (run with "
          "--check-weights)");
  return absl::OkStatus();
}

int64_t PlanExecutor::cache_bytes() const {
  // Blocks shared by several sequences count once.
  absl::flat_hash_set<int32_t> blocks, windows;
  int64_t own = 0;
  for (const auto& c : caches_) {
    if (!c.has_value()) continue;
    for (const BlockRef& r : c->blocks) {
      if (r.block >= 0) blocks.insert(r.block);
      if (r.window >= 0) windows.insert(r.window);
    }
    for (const LayerCache& l : c->layers)
      own += 4 * (l.compressor.floats() + l.index_compressor.floats());
  }
  const ModelConfig& cfg = model_.config();
  return own + static_cast<int64_t>(blocks.size()) * KvPool::BlockBytes(cfg, pool_->block_tokens()) +
         static_cast<int64_t>(windows.size()) * KvPool::WindowBlockBytes(cfg, pool_->block_tokens());
}

int64_t PlanExecutor::sequences() const {
  return std::count_if(caches_.begin(), caches_.end(), [](const auto& c) { return c.has_value(); });
}

// ---- Engine -------------------------------------------------------------------------------------

struct Engine::Request {
  int64_t seq = 0;
  std::string id;
  std::vector<int32_t> tokens;  // prompt, then sampled tokens
  int64_t prompt_len = 0;
  int64_t max_tokens = 0;
  SamplingParams params;
  uint64_t seed = 0;
  bool echo = false;
  std::shared_ptr<RequestHandle> handle;
  std::unique_ptr<Sampler> sampler;  // engine thread only, like everything below
  std::unique_ptr<OutputText> text;
  Clock::time_point arrival, scheduled, first_token, last_token;
  bool was_scheduled = false;
  std::string cache_salt;
  int64_t completion = 0;
  FinishReason finished = FinishReason::kNone;  // set by Sampled on the last token
  absl::Status fault;                           // the numerical watchdog ended it (engine thread)
  bool abort_requested = false;                 // guarded by Engine::mu_
};

namespace {

// The scheduler's options with the pool's geometry, the layout's dp groups and the prefix cache.
absl::StatusOr<EngineOptions> Complete(const Model& model, EngineOptions o) {
  if (o.max_model_len < 2) return absl::InvalidArgumentError("max_model_len must be >= 2");
  if (o.default_max_tokens < 1) return absl::InvalidArgumentError("default_max_tokens must be >= 1");
  if (o.scheduler.max_running < 1) return absl::InvalidArgumentError("max_running must be >= 1");
  if (o.fit_max_running) {
    const int64_t fit = RunningThatFit(model.config(), o);
    if (fit >= 1 && fit < o.scheduler.max_running) {
      DSV4_LOG(kInfo, "the cache budget (", o.cache_bytes >> 20, " MiB per rank) holds the windows of ", fit,
               " running sequences, not ", o.scheduler.max_running, ": running at most ", fit,
               " at once (raise --cache-mb, or give --max-running to insist)");
      o.scheduler.max_running = fit;
    }
  }
  DSV4_ASSIGN_OR_RETURN(const KvPoolSizes pool, PoolSizes(model.config(), o));
  o.scheduler.kv.block_tokens = pool.block_tokens;
  o.scheduler.kv.num_blocks = pool.num_blocks;
  o.scheduler.kv.num_window_blocks = pool.num_window_blocks;
  o.scheduler.kv.window = model.config().sliding_window;
  o.scheduler.kv.prefix_cache = o.prefix_cache;
  if (const ParallelContext* par = model.parallel(); par != nullptr && par->layout.world > 1)
    o.scheduler.dp_groups = par->layout.dp;
  DSV4_RETURN_IF_ERROR(o.scheduler.Validate());
  return o;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Engine>> Engine::Create(Model& model, const Tokenizer* tokenizer, Communicator& world,
                                                       EngineOptions options) {
  DSV4_ASSIGN_OR_RETURN(options, Complete(model, options));
  DSV4_ASSIGN_OR_RETURN(const KvPoolSizes sizes, PoolSizes(model.config(), options));
  DSV4_ASSIGN_OR_RETURN(
      std::unique_ptr<KvPool> pool,
      KvPool::Create(model.backend(), model.config(), sizes.block_tokens, sizes.num_blocks, sizes.num_window_blocks));
  return std::unique_ptr<Engine>(new Engine(model, tokenizer, world, options, sizes, std::move(pool)));
}

Engine::Engine(Model& model, const Tokenizer* tokenizer, Communicator& world, EngineOptions options,
               const KvPoolSizes& sizes, std::unique_ptr<KvPool> pool)
    : model_(model),
      tokenizer_(tokenizer),
      world_(world),
      opt_(options),
      eos_id_(tokenizer != nullptr && tokenizer->eos_id() >= 0 ? tokenizer->eos_id()
                                                               : static_cast<int32_t>(model.config().eos_token_id)),
      pool_(sizes),
      executor_(model, world, std::move(pool)),
      scheduler_(options.scheduler) {}

Engine::~Engine() = default;

absl::StatusOr<std::shared_ptr<RequestHandle>> Engine::Submit(GenerateSpec spec) {
  const Clock::time_point arrival = Clock::now();
  const ModelConfig& c = model_.config();
  auto reject = [this](absl::Status st) {
    absl::MutexLock l(&mu_);
    ++counters_.received, ++counters_.rejected;
    return st;
  };
  // Checks that need no lock.
  if (spec.request_id.size() > kMaxRequestIdBytes)
    return reject(absl::InvalidArgumentError(
        absl::StrCat("request_id is ", spec.request_id.size(), " bytes; at most ", kMaxRequestIdBytes)));
  if (spec.prompt.empty()) return reject(absl::InvalidArgumentError("the prompt is empty"));
  for (size_t i = 0; i < spec.prompt.size(); ++i)
    if (spec.prompt[i] < 0 || spec.prompt[i] >= c.vocab_size)
      return reject(absl::InvalidArgumentError(absl::StrCat("tokens: id ", spec.prompt[i], " at index ", i,
                                                            " is outside the vocabulary [0, ", c.vocab_size, ")")));
  if (auto st = model_.CheckTokens(spec.prompt); !st.ok()) return reject(absl::InvalidArgumentError(st.message()));
  SamplingLimits limits;
  limits.vocab_size = c.vocab_size;
  if (auto st = ValidateSamplingParams(spec.sampling, limits); !st.ok()) return reject(st);
  if (!spec.sampling.stop.empty() && tokenizer_ == nullptr)
    return reject(absl::InvalidArgumentError("sampling.stop needs a tokenizer, and this model has none"));
  const int64_t prompt_len = static_cast<int64_t>(spec.prompt.size());
  const int64_t room = opt_.max_model_len - prompt_len;
  int64_t max_tokens = spec.sampling.max_tokens;
  if (max_tokens != -1 && max_tokens < 1)
    return reject(absl::InvalidArgumentError(absl::StrCat("sampling.max_tokens must be at least 1, got ", max_tokens)));
  if (max_tokens == -1) max_tokens = std::min(opt_.default_max_tokens, room);
  if (room < 1 || max_tokens > room)
    return reject(absl::InvalidArgumentError(absl::StrCat(
        "This model's maximum context length is ", opt_.max_model_len, " tokens. However, you requested ",
        prompt_len + std::max<int64_t>(max_tokens, 1), " tokens (", prompt_len, " in the prompt, ",
        std::max<int64_t>(max_tokens, 1), " for the completion). Please reduce the prompt or sampling.max_tokens.")));

  auto r = std::make_unique<Request>();
  r->prompt_len = prompt_len;
  r->max_tokens = max_tokens;
  r->echo = spec.echo;
  r->arrival = arrival;
  r->seed = spec.sampling.seed >= 0
                ? static_cast<uint64_t>(spec.sampling.seed)
                : ((static_cast<uint64_t>(std::random_device{}()) << 32) ^ std::random_device{}()) >> 1;
  r->params = std::move(spec.sampling);
  r->sampler = std::make_unique<Sampler>(r->params, r->seed, spec.prompt);
  r->text = std::make_unique<OutputText>(tokenizer_, r->params.skip_special_tokens, r->params.stop);
  r->tokens = std::move(spec.prompt);
  r->tokens.reserve(prompt_len + max_tokens);
  r->cache_salt = std::move(spec.cache_salt);

  absl::MutexLock l(&mu_);
  ++counters_.received;
  if (state_ != EngineState::kServing) {
    ++counters_.rejected;
    return state_ == EngineState::kFailed
               ? absl::UnavailableError(absl::StrCat("the server has failed: ", fail_status_.message()))
               : absl::UnavailableError("the server is shutting down and admits no new requests");
  }
  r->seq = next_seq_++;
  r->id = spec.request_id.empty() ? absl::StrCat("req-", r->seq) : std::move(spec.request_id);
  if (by_id_.contains(r->id)) {
    ++counters_.rejected;
    return absl::InvalidArgumentError(absl::StrCat("request_id '", r->id, "' is already in flight"));
  }
  if (auto st = scheduler_.Add(r->seq, r->tokens, prompt_len + max_tokens, r->cache_salt); !st.ok()) {
    ++counters_.rejected;
    return st;
  }
  r->handle = std::make_shared<RequestHandle>(r->id);
  counters_.prompt_tokens += prompt_len;
  auto handle = r->handle;
  by_id_[r->id] = r->seq;
  requests_[r->seq] = std::move(r);
  wake_.Signal();
  return handle;
}

bool Engine::Abort(std::string_view request_id) {
  absl::MutexLock l(&mu_);
  auto it = by_id_.find(std::string(request_id));
  if (it == by_id_.end()) return false;
  requests_[it->second]->abort_requested = true;
  wake_.Signal();
  return true;
}

void Engine::Drain(absl::Duration grace) {
  absl::MutexLock l(&mu_);
  if (state_ != EngineState::kServing) return;
  state_ = EngineState::kDraining;
  drain_deadline_ = absl::Now() + grace;
  wake_.Signal();
}

void Engine::Stop() {
  absl::MutexLock l(&mu_);
  stop_requested_ = true;
  wake_.Signal();
}

void Engine::Fail(const absl::Status& status) {
  absl::MutexLock l(&mu_);
  if (state_ == EngineState::kFailed) return;
  DSV4_LOG(kError, "the engine failed: ", status.message(), " (", requests_.size(), " requests in flight end with it)");
  state_ = EngineState::kFailed;
  fail_status_ = status;
  // Only the handles are touched here: the engine thread may be inside a step with the requests.
  for (auto& [seq, r] : requests_) {
    ++counters_.failed;
    r->handle->Close(status);
  }
  wake_.Signal();
}

absl::StatusOr<int64_t> Engine::SwitchPlacement(const ModelPlacement& placement, absl::Duration timeout) {
  DSV4_RETURN_IF_ERROR(model_.CheckPlacement(placement));
  absl::MutexLock l(&mu_);
  if (state_ != EngineState::kServing)
    return absl::FailedPreconditionError("the engine is not serving: no placement switch");
  if (!pending_placement_.empty() || placement_done_ < placement_asked_)
    return absl::FailedPreconditionError("another placement switch is pending");
  pending_placement_ = placement.Encode();
  const int64_t ticket = ++placement_asked_;
  wake_.Signal();
  auto done = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return placement_done_ >= ticket || state_ == EngineState::kFailed || state_ == EngineState::kStopped;
  };
  if (!mu_.AwaitWithTimeout(absl::Condition(&done), timeout))
    return absl::DeadlineExceededError(
        absl::StrCat("the placement switch did not run within ", absl::FormatDuration(timeout)));
  if (placement_done_ >= ticket) return placement_step_;
  if (state_ == EngineState::kFailed) return fail_status_;
  // Stopped before the plan carrying it went out.
  pending_placement_.clear();
  placement_asked_ = placement_done_;
  return absl::UnavailableError("the engine stopped before the placement switch");
}

void Engine::CountRejected() {
  absl::MutexLock l(&mu_);
  ++counters_.received, ++counters_.rejected;
}

EngineState Engine::state() const {
  absl::MutexLock l(&mu_);
  return state_;
}

EngineStats Engine::Stats() const {
  absl::MutexLock l(&mu_);
  EngineStats s = counters_;
  s.state = state_;
  s.active = scheduler_.running();
  s.queued = scheduler_.queued();
  s.max_queued = opt_.scheduler.max_queued;
  const KvBlockStats kv = scheduler_.block_stats();
  s.block_tokens = pool_.block_tokens, s.block_bytes = pool_.block_bytes;
  s.window_block_bytes = pool_.window_block_bytes;
  s.blocks_total = kv.blocks_total, s.blocks_used = kv.blocks_used, s.blocks_cached = kv.blocks_cached;
  s.window_blocks_total = kv.window_blocks_total, s.window_blocks_used = kv.window_blocks_used;
  s.prefix_queries = kv.prefix_queries, s.prefix_hits = kv.prefix_hits;
  s.preemptions = scheduler_.preemptions();
  s.cache_bytes = cache_bytes_;
  s.cache_sequences = cache_sequences_;
  s.step = step_;
  return s;
}

void Engine::FinishLocked(Request& r, FinishReason reason, const absl::Status& status) {
  // One line per request: what came in, what went out, how it ended, how long the first token took.
  const double ttft_ms = r.completion > 0 ? MsSince(r.arrival, r.first_token) : -1;
  if (status.ok() || reason == FinishReason::kAbort) {
    DSV4_LOG(kInfo, "request ", r.id, ": ", r.prompt_len, " prompt tokens, ", r.completion, " generated, finish ",
             FinishReasonName(reason == FinishReason::kNone ? r.finished : reason), ", ttft ",
             ttft_ms >= 0 ? absl::StrCat(static_cast<int64_t>(ttft_ms), " ms") : "none");
  } else {
    DSV4_LOG(kWarn, "request ", r.id, ": ", r.prompt_len, " prompt tokens, ", r.completion, " generated, ended with ",
             status.ToString());
  }
  if (reason == FinishReason::kAbort) {
    GenerateOutput out;
    out.finished = true;
    out.finish_reason = FinishReason::kAbort;
    out.prompt_tokens = r.prompt_len, out.completion_tokens = r.completion;
    out.seed = r.seed;
    r.handle->Push(std::move(out));
    r.handle->Close(absl::AbortedError(absl::StrCat("request '", r.id, "' was aborted")));
    ++counters_.aborted;
  } else if (status.ok()) {
    r.handle->Close(absl::OkStatus());  // the final piece went out with the last token
    ++counters_.completed;
    ++(reason == FinishReason::kStop ? counters_.finished_stop : counters_.finished_length);
  } else {
    r.handle->Close(status);
    ++counters_.failed;
  }
  const int32_t slot = scheduler_.Remove(r.seq);
  if (slot >= 0) pending_frees_.push_back(slot);
  by_id_.erase(r.id);
  requests_.erase(r.seq);  // r is gone
}

void Engine::EndAllLocked(const absl::Status& status) {
  std::vector<Request*> all;
  for (auto& [seq, r] : requests_) all.push_back(r.get());
  for (Request* r : all) FinishLocked(*r, FinishReason::kNone, status);
}

GenerateOutput Engine::Sampled(Request& r, std::span<const float> logits) {
  TokenLogprobs lp;
  const int32_t token = r.sampler->Sample(logits, r.params.logprobs > 0 ? &lp : nullptr);
  r.tokens.push_back(token);
  ++r.completion;
  GenerateOutput out;
  out.token_ids.push_back(token);
  if (r.params.logprobs > 0) out.logprobs.push_back(std::move(lp));
  const Clock::time_point now = Clock::now();
  EngineObserver* observer = observer_.load(std::memory_order_relaxed);
  if (observer != nullptr) {
    if (r.completion == 1)
      observer->FirstToken(MsSince(r.arrival, r.scheduled) / 1e3, MsSince(r.arrival, now) / 1e3);
    else
      observer->NextToken(MsSince(r.last_token, now) / 1e3);
  }
  r.last_token = now;
  if (r.completion == 1) {
    r.first_token = now;
    if (r.echo) {
      out.prompt_token_ids.assign(r.tokens.begin(), r.tokens.begin() + r.prompt_len);
      if (tokenizer_ != nullptr)
        out.prompt_text = tokenizer_->Decode(out.prompt_token_ids, r.params.skip_special_tokens);
    }
  }
  OutputText::Delta d = r.text->Push(token);
  out.text = std::move(d.text);
  FinishReason reason = FinishReason::kNone;
  if (d.stopped) {
    reason = FinishReason::kStop;
    out.matched_stop = d.matched;
  } else if (!r.params.ignore_eos && token == eos_id_) {
    reason = FinishReason::kStop;
    out.matched_stop_token_id = token;
  } else if (std::find(r.params.stop_token_ids.begin(), r.params.stop_token_ids.end(), token) !=
             r.params.stop_token_ids.end()) {
    reason = FinishReason::kStop;
    out.matched_stop_token_id = token;
  } else if (r.completion >= r.max_tokens) {
    reason = FinishReason::kLength;
  }
  if (reason != FinishReason::kNone) {
    if (!d.stopped) out.text += r.text->Finish();
    out.finished = true;
    out.finish_reason = reason;
    out.prompt_tokens = r.prompt_len, out.completion_tokens = r.completion;
    out.seed = r.seed;
    out.queue_ms = MsSince(r.arrival, r.scheduled);
    out.ttft_ms = MsSince(r.arrival, r.first_token);
    r.finished = reason;
    if (observer != nullptr) observer->Finished(MsSince(r.arrival, now) / 1e3);
  }
  return out;
}

absl::Status Engine::Run() {
  for (;;) {
    StepPlan plan;
    Scheduler::Step scheduled;
    std::vector<Request*> batch;  // parallel to plan.seqs
    {
      absl::MutexLock l(&mu_);
      for (;;) {
        if (state_ == EngineState::kFailed) return fail_status_;
        std::vector<Request*> aborts;
        for (auto& [seq, r] : requests_)
          if (r->abort_requested) aborts.push_back(r.get());
        for (Request* r : aborts) FinishLocked(*r, FinishReason::kAbort, absl::OkStatus());
        if (stop_requested_) {
          EndAllLocked(absl::UnavailableError("the server stopped before the request finished"));
          state_ = EngineState::kStopped;
        } else if (state_ == EngineState::kDraining) {
          if (requests_.empty()) {
            state_ = EngineState::kStopped;
          } else if (absl::Now() >= drain_deadline_) {
            EndAllLocked(absl::UnavailableError("the server is shutting down: the drain grace period expired"));
            state_ = EngineState::kStopped;
          }
        }
        if (state_ == EngineState::kStopped) {
          plan.stop = true;
          break;
        }
        scheduled = scheduler_.Schedule();
        // Table changes must reach the ranks even in a step without work (an admission whose first
        // chunk waits for blocks): the leader's tables already include them.
        if (!scheduled.work.empty() || !scheduled.freed_slots.empty() || !scheduled.block_ops.empty() ||
            !pending_frees_.empty() || !pending_placement_.empty())
          break;
        // Idle: wait for work; followers get an empty step every idle_tick so their wait for the
        // next plan never times out.
        absl::Duration wait = world_.size() > 1 ? opt_.idle_tick : absl::Seconds(1);
        if (state_ == EngineState::kDraining) wait = std::min(wait, drain_deadline_ - absl::Now());
        if (wake_.WaitWithTimeout(&mu_, std::max(wait, absl::ZeroDuration())) && world_.size() > 1) break;  // tick
      }
      plan.step = step_;
      plan.pool_blocks = pool_.num_blocks, plan.pool_window_blocks = pool_.num_window_blocks;
      if (!plan.stop) {
        plan.free_slots = std::move(pending_frees_);
        pending_frees_.clear();
        plan.placement = std::move(pending_placement_);
        pending_placement_.clear();
        plan.free_slots.insert(plan.free_slots.end(), scheduled.freed_slots.begin(), scheduled.freed_slots.end());
        plan.block_ops = std::move(scheduled.block_ops);
        const Clock::time_point now = Clock::now();
        for (const Scheduler::Work& w : scheduled.work) {
          Request* r = requests_.at(w.seq).get();
          if (!r->was_scheduled) r->was_scheduled = true, r->scheduled = now;
          plan.seqs.push_back(
              StepSeq{r->seq, w.slot, w.begin, static_cast<int32_t>(w.end - w.begin), w.last, w.group});
          plan.tokens.insert(plan.tokens.end(), r->tokens.begin() + w.begin, r->tokens.begin() + w.end);
          batch.push_back(r);
        }
      }
    }
    log::SetStep(plan.step);
    const Clock::time_point step_start = Clock::now();
    absl::Status st = BroadcastStep(world_, plan.step, plan);
    if (st.ok() && plan.stop) return absl::OkStatus();
    MaybeInjectFault(world_.rank(), plan.step);
    if (st.ok()) st = executor_.Execute(plan);
    if (st.ok()) {
      // Each request's sampler on its own logits row; requests are independent, so they are
      // sampled in parallel on the CPU pool (the model is idle now). Sampling from non-finite
      // logits would stream garbage (token 0 every step): the request ends with the watchdog's
      // error instead.
      std::vector<size_t> sampled;
      for (size_t i = 0; i < plan.seqs.size(); ++i)
        if (plan.seqs[i].logits) sampled.push_back(i);
      std::vector<std::optional<GenerateOutput>> outputs(sampled.size());
      kernels::ParallelForDynamic(static_cast<int64_t>(sampled.size()), 1, [&](int64_t begin, int64_t end) {
        for (int64_t k = begin; k < end; ++k) {
          Request& r = *batch[sampled[k]];
          const std::span<const float> logits = executor_.logits(k);
          r.fault = executor_.NumericalError(plan.seqs[sampled[k]], logits);
          if (r.fault.ok()) outputs[k] = Sampled(r, logits);
        }
      });
      // Delivered once every request is sampled: a consumer woken mid-way (a stream handler) would
      // take a core from the sampling threads, and the whole region would wait for the one it took.
      for (size_t k = 0; k < sampled.size(); ++k)
        if (outputs[k].has_value()) batch[sampled[k]]->handle->Push(std::move(*outputs[k]));
    }
    if (!st.ok()) {
      Fail(absl::UnavailableError(absl::StrCat("step ", plan.step, " failed: ", st.message())));
      return st;
    }
    const double step_s = MsSince(step_start, Clock::now()) / 1e3;
    absl::MutexLock l(&mu_);
    if (state_ == EngineState::kFailed) return fail_status_;
    if (!plan.placement.empty()) {
      placement_done_ = placement_asked_;
      placement_step_ = plan.step;
      ++counters_.placement_switches;
    }
    ++step_;
    if (!plan.seqs.empty()) ++counters_.busy_steps, counters_.step_seconds += step_s;
    cache_bytes_ = executor_.cache_bytes();
    cache_sequences_ = executor_.sequences();
    for (size_t i = 0; i < scheduled.work.size(); ++i) {
      Request* r = batch[i];
      scheduler_.Done(scheduled.work[i]);
      if (!r->fault.ok()) {
        FinishLocked(*r, FinishReason::kNone, r->fault);
        continue;
      }
      if (!scheduled.work[i].last) continue;
      ++counters_.tokens_generated;
      if (r->finished != FinishReason::kNone)
        FinishLocked(*r, r->finished, absl::OkStatus());
      else
        scheduler_.Append(r->seq, r->tokens.back());
    }
  }
}

absl::Status RunFollower(Model& model, Communicator& world, const EngineOptions& options,
                         FollowerCounters* counters) {
  DSV4_ASSIGN_OR_RETURN(const EngineOptions complete, Complete(model, options));
  DSV4_ASSIGN_OR_RETURN(const KvPoolSizes sizes, PoolSizes(model.config(), complete));
  DSV4_ASSIGN_OR_RETURN(
      std::unique_ptr<KvPool> pool,
      KvPool::Create(model.backend(), model.config(), sizes.block_tokens, sizes.num_blocks, sizes.num_window_blocks));
  PlanExecutor executor(model, world, std::move(pool));
  for (int64_t step = 0;; ++step) {
    StepPlan plan;
    log::SetStep(step);
    DSV4_RETURN_IF_ERROR(BroadcastStep(world, step, plan), "step ", step);
    if (plan.stop) return absl::OkStatus();
    const Clock::time_point t0 = Clock::now();  // after the plan arrived: idle waits are not steps
    MaybeInjectFault(world.rank(), step);
    DSV4_RETURN_IF_ERROR(executor.Execute(plan));
    if (counters == nullptr) continue;
    if (!plan.seqs.empty()) {
      counters->busy_steps.fetch_add(1, std::memory_order_relaxed);
      counters->busy_nanos.fetch_add(std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - t0).count(),
                                     std::memory_order_relaxed);
    }
    counters->steps.store(step + 1, std::memory_order_relaxed);
    counters->cache_bytes.store(executor.cache_bytes(), std::memory_order_relaxed);
  }
}

}  // namespace dsv4
