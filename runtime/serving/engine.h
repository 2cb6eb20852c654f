// The serving engine: admission, continuous batching, sampling and streaming of requests on the
// leader (world rank 0), and the loop that mirrors its steps on every other rank.
//
// A step (DESIGN.md, "How a step runs"): the leader's scheduler picks the batch, the plan is
// broadcast (runtime/step.h), and every rank runs one batched forward pass over the scheduled
// sequences of its data-parallel group — decode tokens and prompt chunks together. The leader
// then samples each sequence that reached its last token (the requests' samplers in parallel on
// the CPU pool: each owns its generator, so a request's tokens do not depend on the batch) and
// streams the result to its RequestHandle.
//
// Each rank keeps its sequences' KV caches in one pool of blocks (runtime/model/cache.h), sized from
// the cache budget (PoolSizes). The leader's scheduler decides every block id — shared prompt
// prefixes, growth, preemption (runtime/serving/kv_blocks.h) — and the plan carries the table
// changes, so every rank of a dp group holds the same tables.
//
// Every request ends exactly once: with a final output (finish reason and usage), or with an error
// status — ABORTED (Abort), UNAVAILABLE (drain grace expired, Stop, a lost rank), or the failure.
//
// Thread-safety: Submit, Abort, Stats, Drain, Stop and Fail may be called from any thread. Run
// must be called by one thread (under MPI, the main thread); it is the only one that touches the
// model, the communicator and the sequence caches.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "parallel/communicator.h"
#include "runtime/model/model.h"
#include "runtime/serving/output_text.h"
#include "runtime/serving/sampler.h"
#include "runtime/serving/scheduler.h"
#include "runtime/step.h"
#include "runtime/tokenizer/tokenizer.h"

namespace dsv4 {

struct EngineOptions {
  SchedulerOptions scheduler;                          // its `kv` pool sizes come from cache_bytes (KvPoolSizes)
  int64_t cache_bytes = int64_t{1} << 30;              // budget for the KV pool on each rank
  bool prefix_cache = true;                            // requests share the blocks of common prompt prefixes
  int64_t max_model_len = 16384;                       // prompt + completion tokens of one request
  int64_t default_max_tokens = 256;                    // when a request gives none (bounded by the context)
  absl::Duration idle_tick = absl::Milliseconds(500);  // empty steps keep idle followers in step
  // max_running is a default, not the operator's choice: where the budget cannot hold that many
  // sequences' windows (the real models' windows are ~11 MB a block), run as many as it holds, and
  // say so. The budget must still hold one.
  bool fit_max_running = false;
};

// The KV pool of each rank (runtime/model/cache.h), from the cache budget: window blocks for
// every running sequence's window and prompt chunk (max_running x (ceil((window - 1) / B) +
// ceil(prefill_chunk / B) + 1)); of the rest, three quarters compressed blocks and a quarter
// more window blocks, which keep the ends of cached prompt prefixes reusable. The leader and every
// follower compute it from the same options. INVALID_ARGUMENT when the budget cannot hold the
// running sequences' windows and one sequence of max_model_len.
struct KvPoolSizes {
  int64_t block_tokens = 0, num_blocks = 0, num_window_blocks = 0;
  int64_t block_bytes = 0, window_block_bytes = 0;
};
absl::StatusOr<KvPoolSizes> PoolSizes(const ModelConfig& config, const EngineOptions& options);
// The most running sequences whose windows fit the budget beside one sequence of max_model_len
// (0 when not even one does).
int64_t RunningThatFit(const ModelConfig& config, const EngineOptions& options);

enum class FinishReason { kNone, kStop, kLength, kAbort };
const char* FinishReasonName(FinishReason r);

// What a request asks for. Validated by Submit.
struct GenerateSpec {
  std::string request_id;  // "" = the engine picks one; must not equal an in-flight id
  std::vector<int32_t> prompt;
  SamplingParams sampling;
  bool echo = false;
  std::string cache_salt;  // requests share cached prompt blocks only with requests of the same salt
};

// One piece of a request's stream. Pieces that queue up while the consumer is busy are merged.
struct GenerateOutput {
  std::vector<int32_t> token_ids;
  std::string text;
  std::vector<TokenLogprobs> logprobs;
  std::vector<int32_t> prompt_token_ids;  // first piece, with echo
  std::string prompt_text;
  bool finished = false;  // the last piece; the fields below are set
  FinishReason finish_reason = FinishReason::kNone;
  std::string matched_stop;
  int32_t matched_stop_token_id = -1;
  int64_t prompt_tokens = 0, completion_tokens = 0;
  uint64_t seed = 0;
  double queue_ms = 0, ttft_ms = 0;

  void MergeFrom(GenerateOutput&& next);
};

// The consumer's side of one request.
class RequestHandle {
 public:
  explicit RequestHandle(std::string id) : id_(std::move(id)) {}
  const std::string& id() const { return id_; }
  // The next output (all pieces queued so far, merged), waiting up to `timeout`. Once every piece
  // has been taken it answers how the request ended: OUT_OF_RANGE when it finished normally (the
  // last piece had `finished` set), else the error that ended it (e.g. ABORTED, UNAVAILABLE).
  // DEADLINE_EXCEEDED: nothing new within `timeout`.
  absl::StatusOr<GenerateOutput> Next(absl::Duration timeout);
  // For consumers that do not wait in Next (an asynchronous stream): `notify` runs after every
  // piece and after the close, on the engine's thread and possibly under the engine's lock, so it
  // must only hand the news on (take no lock of the engine, call nothing of it). Runs once at once
  // when something is already waiting. Null clears it; once SetNotify returns, the previous
  // function is not running and will not run again.
  void SetNotify(std::function<void()> notify);

 private:
  friend class Engine;
  void Push(GenerateOutput out);
  void Close(const absl::Status& status);  // first call wins
  void Notify();

  const std::string id_;
  absl::Mutex mu_;
  std::deque<GenerateOutput> queue_ ABSL_GUARDED_BY(mu_);
  bool closed_ ABSL_GUARDED_BY(mu_) = false;
  absl::Status end_ ABSL_GUARDED_BY(mu_);
  absl::Mutex notify_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // Push and Close release mu_ before taking it
  std::function<void()> notify_ ABSL_GUARDED_BY(notify_mu_);
};

enum class EngineState { kServing, kDraining, kStopped, kFailed };

struct EngineStats {
  EngineState state = EngineState::kServing;
  int64_t active = 0, queued = 0, max_queued = 0;
  int64_t block_tokens = 0, block_bytes = 0, window_block_bytes = 0;  // the KV pool's geometry
  int64_t blocks_total = 0, blocks_used = 0, blocks_cached = 0;        // compressed blocks, every dp group
  int64_t window_blocks_total = 0, window_blocks_used = 0;
  int64_t preemptions = 0;                                              // sequences preempted for recompute
  int64_t cache_bytes = 0, cache_sequences = 0;
  int64_t step = 0;
  int64_t busy_steps = 0;   // steps that ran sequences (idle ticks aside)
  double step_seconds = 0;  // the leader's wall time in those steps
  int64_t received = 0, completed = 0, aborted = 0, failed = 0, rejected = 0, tokens_generated = 0;
  int64_t finished_stop = 0, finished_length = 0;  // completed, by finish reason
  int64_t prompt_tokens = 0;                       // prompt tokens of the admitted requests
  int64_t prefix_queries = 0, prefix_hits = 0;     // prompt tokens looked up in / found in the prefix cache
  int64_t placement_switches = 0;                 // expert placements switched to
};

// Per-request timings, for metrics (rpc/metrics.h). Called on the engine's threads (the step loop
// and the pool threads it samples on): implementations must be thread-safe and cheap.
class EngineObserver {
 public:
  virtual ~EngineObserver() = default;
  // A request's first token: seconds it waited for its first step, and from arrival to the token.
  virtual void FirstToken(double queue_s, double ttft_s) = 0;
  // A later token: seconds since the request's previous one.
  virtual void NextToken(double itl_s) = 0;
  // A request ended normally (stop or length): seconds from arrival to its last token.
  virtual void Finished(double e2e_s) = 0;
};

// Runs a step plan on this rank (every rank runs one): drops the caches of the freed slots, then
// ONE batched forward pass (Model::ForwardBatch) over the plan's sequences of this rank's
// data-parallel group — decode tokens and prompt chunks together. With several dp groups the
// leader receives the other groups' logits over the world communicator.
class PlanExecutor {
 public:
  // `world` is the job's world communicator (the one the plan is broadcast on); `pool` is this
  // rank's KV pool (KvPool::Create with the sizes of PoolSizes).
  PlanExecutor(Model& model, Communicator& world, std::unique_ptr<KvPool> pool);
  // Switches the expert placement when the plan carries one, then runs the step. Errors: a plan that
  // disagrees with this rank's caches (ranks out of step), a placement that cannot be switched to,
  // or the model's (communication) errors.
  absl::Status Execute(const StepPlan& plan);
  // On the leader after Execute: the logits [vocab] of the k-th sequence of the plan that asked for
  // them (plan order). Valid until the next Execute.
  std::span<const float> logits(int64_t k) const;
  // The numerical watchdog's error for a sequence of the last plan (OK when finite): from its cache
  // on the rank that holds it, else from its `logits`.
  absl::Status NumericalError(const StepSeq& seq, std::span<const float> logits) const;
  // Bytes of the pool the live sequences' blocks occupy (each block counted once).
  int64_t cache_bytes() const;
  int64_t sequences() const;

 private:
  Model& model_;
  Communicator& world_;
  int dp_ = 1, tp_ = 1, group_ = 0;
  bool want_logits_;  // this rank computes logits (the leader, a split vocab head, or dp > 1)
  std::unique_ptr<KvPool> pool_;
  std::vector<std::optional<SequenceCache>> caches_;  // by slot
  std::vector<bool> started_;                         // by slot: its sequence has run a step
  std::vector<int32_t> step_tokens_;
  std::vector<SequenceChunk> chunks_;
  std::vector<float> logits_;    // [this group's logit rows, vocab]
  std::vector<float> gathered_;  // dp > 1: [every group's logit rows, vocab], groups in order
  std::vector<int64_t> row_of_;  // plan logit index -> row of logits_ (dp 1) or gathered_ (dp > 1)
};

class Engine {
 public:
  // `model`, `tokenizer` (may be null: no text, no stop strings) and `world` must outlive the
  // engine. Every other rank of `world` runs RunFollower.
  static absl::StatusOr<std::unique_ptr<Engine>> Create(Model& model, const Tokenizer* tokenizer, Communicator& world,
                                                        EngineOptions options);
  ~Engine();

  // Admits a request. INVALID_ARGUMENT (a bad field, named), RESOURCE_EXHAUSTED (queue full),
  // UNAVAILABLE (draining, stopped or failed).
  absl::StatusOr<std::shared_ptr<RequestHandle>> Submit(GenerateSpec spec);
  // Ends an in-flight request: its stream gets a final piece (finish reason abort) and then
  // ABORTED. Its cache is dropped at the start of the next step. False when no such request.
  bool Abort(std::string_view request_id);

  // Leader loop: runs steps until drained, stopped or failed; then tells the followers to stop
  // (unless failed). Returns the failure, or OK.
  absl::Status Run();
  // Stops admitting; in-flight requests finish, and those still running after `grace` end with
  // UNAVAILABLE. Run returns once none is left.
  void Drain(absl::Duration grace);
  // Ends every request with UNAVAILABLE; Run returns after the current step.
  void Stop();
  // The job is failing (e.g. a rank was lost): every request ends with `status` now, from the
  // calling thread (even while a step is blocked); Submit answers UNAVAILABLE; Run returns it.
  void Fail(const absl::Status& status);
  // Moves the routed experts to `placement` on every rank: it travels in the next step's plan (an
  // empty step when nothing else runs), so all ranks switch at that step, between two steps of the
  // requests in flight. Waits until that step has run here: its number. INVALID_ARGUMENT when the
  // placement does not fit the model, FAILED_PRECONDITION when the engine is not serving or another
  // switch is pending, DEADLINE_EXCEEDED after `timeout` (the switch may still happen), the step's
  // error when it failed (the job then fails).
  absl::StatusOr<int64_t> SwitchPlacement(const ModelPlacement& placement, absl::Duration timeout);

  EngineStats Stats() const;
  // Receives the timings of every request from now on (null: none). Must outlive the engine or be
  // replaced first.
  void SetObserver(EngineObserver* observer) { observer_.store(observer); }
  // Counts a request that was rejected before it reached Submit (e.g. it did not parse).
  void CountRejected();
  EngineState state() const;
  const EngineOptions& options() const { return opt_; }

 private:
  struct Request;
  Engine(Model& model, const Tokenizer* tokenizer, Communicator& world, EngineOptions options,
         const KvPoolSizes& sizes, std::unique_ptr<KvPool> pool);

  // Ends `r` (removing it from the scheduler; its slot is freed in the next plan).
  void FinishLocked(Request& r, FinishReason reason, const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void EndAllLocked(const absl::Status& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Samples after a sequence's last token and returns the piece to stream; marks the request
  // finished when it is complete. Called by the engine thread or a CPU pool thread it runs, one
  // thread per request at a time (it touches only `r` and immutable engine state).
  GenerateOutput Sampled(Request& r, std::span<const float> logits);

  Model& model_;
  const Tokenizer* tokenizer_;
  Communicator& world_;
  const EngineOptions opt_;
  const int32_t eos_id_;
  const KvPoolSizes pool_;
  PlanExecutor executor_;       // engine thread only
  std::atomic<EngineObserver*> observer_{nullptr};

  mutable absl::Mutex mu_;
  absl::CondVar wake_;
  Scheduler scheduler_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<int64_t, std::unique_ptr<Request>> requests_ ABSL_GUARDED_BY(mu_);  // by seq
  absl::flat_hash_map<std::string, int64_t> by_id_ ABSL_GUARDED_BY(mu_);
  std::vector<int32_t> pending_frees_ ABSL_GUARDED_BY(mu_);
  EngineState state_ ABSL_GUARDED_BY(mu_) = EngineState::kServing;
  absl::Status fail_status_ ABSL_GUARDED_BY(mu_);
  bool stop_requested_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time drain_deadline_ ABSL_GUARDED_BY(mu_);
  int64_t next_seq_ ABSL_GUARDED_BY(mu_) = 1;
  EngineStats counters_ ABSL_GUARDED_BY(mu_);
  int64_t cache_bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t cache_sequences_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t step_ ABSL_GUARDED_BY(mu_) = 0;
  // Placement switches: the encoded placement waiting for the next plan, and how many switches
  // were asked for / have run (with the step of the last one).
  std::vector<int32_t> pending_placement_ ABSL_GUARDED_BY(mu_);
  int64_t placement_asked_ ABSL_GUARDED_BY(mu_) = 0, placement_done_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t placement_step_ ABSL_GUARDED_BY(mu_) = -1;
};

// What a follower's loop reports (heartbeats), updated after every step.
struct FollowerCounters {
  std::atomic<int64_t> steps{0};        // every step, idle ticks included
  std::atomic<int64_t> cache_bytes{0};  // held by this rank's sequence caches
  std::atomic<int64_t> busy_steps{0};   // steps that ran sequences
  std::atomic<int64_t> busy_nanos{0};   // their wall time
};

// Every rank but the leader: runs the leader's plans until the stop plan (OK) or an error (a
// desync, a lost peer). `options` must be the leader's (they size the KV pool); `counters` (may
// be null) follow its progress.
absl::Status RunFollower(Model& model, Communicator& world, const EngineOptions& options,
                         FollowerCounters* counters = nullptr);

}  // namespace dsv4
