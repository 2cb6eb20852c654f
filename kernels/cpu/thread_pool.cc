#include "kernels/cpu/thread_pool.h"

#include <immintrin.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <system_error>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/env.h"
#include "kernels/cpu/isa.h"

namespace dsv4::kernels {
namespace {

thread_local bool t_in_pool_task = false;

std::vector<int> AllowedCpus() {
  cpu_set_t set;
  std::vector<int> cpus;
  if (sched_getaffinity(0, sizeof(set), &set) == 0)
    for (int c = 0; c < CPU_SETSIZE; ++c)
      if (CPU_ISSET(c, &set)) cpus.push_back(c);
  return cpus;
}


// Spins (with pause) while `busy()` holds, for about `spin_us` microseconds, then returns whether
// it still holds.
template <typename Busy>
bool SpinWhile(Busy busy, int spin_us) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us);
  for (int i = 0;; ++i) {
    if (!busy()) return false;
    _mm_pause();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > deadline) return true;
  }
}

// Work is handed out in chunks claimed from a shared counter, by the caller and by whichever
// workers are awake: a worker that another process keeps off its core costs the caller nothing,
// because the caller never waits for a worker that has not claimed a chunk.
//
// The counter packs the job's chunk count with the next chunk index, so a claim is valid exactly
// when index < count, whichever job the claiming thread thinks it is in. The caller writes the
// job's fields, then the counter (release), then bumps epoch_ to wake the workers; it claims chunks
// itself, then waits until every chunk is done and no worker is inside Claim (active_), and only
// then may overwrite the fields for the next job.
class Pool {
 public:
  explicit Pool(int n) { (void)Start(n); }
  ~Pool() { Stop(); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  absl::Status Resize(int n) {
    Stop();
    return Start(n);
  }

  static constexpr int64_t kMaxChunks = int64_t{1} << 23;

  // fn over [0, n) in `num_chunks` (< kMaxChunks) chunks: chunk c is [c * chunk, min(n, (c + 1) *
  // chunk)) when chunk > 0, else [n c / num_chunks, n (c + 1) / num_chunks).
  void Run(int64_t n, int64_t num_chunks, int64_t chunk, RangeFn fn) {
    EnsureFlushDenormals();  // the caller runs chunks too
    if (num_chunks <= 1 || workers_.empty() || t_in_pool_task) {
      for (int64_t c = 0; c < num_chunks; ++c) RunChunk(fn, n, num_chunks, chunk, c);
      return;
    }
    std::lock_guard<std::mutex> serialize(call_mu_);
    fn_ = &fn;
    n_ = n;
    chunk_ = chunk;
    done_.store(0, std::memory_order_relaxed);
    next_.store(static_cast<uint64_t>(num_chunks) << 24, std::memory_order_release);
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) epoch_.notify_all();
    t_in_pool_task = true;
    Claim();
    t_in_pool_task = false;
    auto busy = [&] {
      return done_.load(std::memory_order_acquire) != num_chunks || active_.load(std::memory_order_acquire) != 0;
    };
    if (SpinWhile(busy, 200))
      while (busy()) std::this_thread::yield();
  }

 private:
  static void RunChunk(const RangeFn& fn, int64_t n, int64_t num_chunks, int64_t chunk, int64_t c) {
    if (chunk > 0) {
      fn(c * chunk, std::min(n, (c + 1) * chunk));
    } else {
      fn(n * c / num_chunks, n * (c + 1) / num_chunks);
    }
  }

  // Runs chunks of the current job until none is left.
  void Claim() {
    for (;;) {
      const uint64_t v = next_.fetch_add(1, std::memory_order_acq_rel);
      const int64_t c = static_cast<int64_t>(v & 0xffffff), count = static_cast<int64_t>(v >> 24);
      if (c >= count) return;
      RunChunk(*fn_, n_, count, chunk_, c);
      done_.fetch_add(1, std::memory_order_acq_rel);
    }
  }

  // Starts n - 1 workers; when the system refuses one, keeps those already running.
  absl::Status Start(int n) {
    stop_.store(false);
    const std::vector<int> cpus = AllowedCpus();
    // Workers go to cores 1.. of the allowed set; the caller keeps (and, being the only other
    // runnable thread of the pool, in practice gets) the first.
    const bool pin = env::Int(env::Knob::kPinThreads) != 0 && n > 1 && n <= static_cast<int>(cpus.size());
    // A worker waits for the first epoch after this one, even if it starts running only after the
    // first job has been published.
    const uint32_t epoch = epoch_.load();
    for (int i = 1; i < n; ++i) {
      try {
        workers_.emplace_back([this, epoch] { Loop(epoch); });
      } catch (const std::system_error& e) {
        return absl::ResourceExhaustedError(
            absl::StrCat("cannot start ", n, " CPU threads (the system refused thread ", i + 1, ": ", e.what(),
                         "); running with ", i, ". Lower --threads / DSV4_NUM_THREADS, or raise the process or "
                         "memory limits (ulimit -u, -v)"));
      }
      if (pin) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpus[i], &set);
        pthread_setaffinity_np(workers_.back().native_handle(), sizeof(set), &set);
      }
    }
    return absl::OkStatus();
  }

  void Stop() {
    stop_.store(true);
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    epoch_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  void Loop(uint32_t seen) {
    SetFlushDenormals();  // whatever mode the thread that resized the pool had
    t_in_pool_task = true;
    for (;;) {
      if (SpinWhile([&] { return epoch_.load(std::memory_order_acquire) == seen; }, 300)) {
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        epoch_.wait(seen, std::memory_order_seq_cst);
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        continue;  // re-check: the wait may return spuriously
      }
      if (stop_.load()) return;
      seen = epoch_.load(std::memory_order_acquire);
      active_.fetch_add(1, std::memory_order_seq_cst);
      Claim();
      active_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  std::vector<std::thread> workers_;
  std::mutex call_mu_;
  // The current job; written by the caller before next_, read only after a valid claim.
  const RangeFn* fn_ = nullptr;
  int64_t n_ = 0, chunk_ = 0;
  std::atomic<uint64_t> next_{0};  // chunk count << 24 | next chunk index
  std::atomic<int64_t> done_{0};
  std::atomic<uint32_t> epoch_{0};
  std::atomic<int> active_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
};

int DefaultThreads() {
  const int64_t n = env::Int(env::Knob::kNumThreads);
  return n > 0 ? static_cast<int>(n) : AvailableCores();
}

// Started on first use with the default size; a shortfall then leaves a smaller pool (callers that
// must know, the runtime, size it with SetNumThreads first).
Pool& GlobalPool() {
  static Pool pool(DefaultThreads());
  return pool;
}

}  // namespace

int AvailableCores() {
  const size_t n = AllowedCpus().size();
  return n > 0 ? static_cast<int>(n) : std::max(1u, std::thread::hardware_concurrency());
}

int NumThreads() { return GlobalPool().size(); }

absl::Status SetNumThreads(int n) { return GlobalPool().Resize(n > 0 ? n : DefaultThreads()); }

void ParallelFor(int64_t n, int64_t grain, RangeFn fn) {
  if (n <= 0) return;
  Pool& pool = GlobalPool();
  const int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
  pool.Run(n, std::min<int64_t>(pool.size(), max_chunks), 0, fn);
}

void ParallelForDynamic(int64_t n, int64_t chunk, RangeFn fn) {
  if (n <= 0) return;
  chunk = std::max<int64_t>({1, chunk, (n + Pool::kMaxChunks - 1) / Pool::kMaxChunks});
  GlobalPool().Run(n, (n + chunk - 1) / chunk, chunk, fn);
}

}  // namespace dsv4::kernels
