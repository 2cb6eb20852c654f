#include "kernels/cpu/thread_pool.h"

#include <immintrin.h>
#include <pthread.h>
#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <mutex>
#include <thread>
#include <vector>

#include "kernels/env.h"

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

int AvailableCores() {
  const size_t n = AllowedCpus().size();
  return n > 0 ? static_cast<int>(n) : std::max(1u, std::thread::hardware_concurrency());
}

// Spins (with pause) while `busy()` holds, for about `spin_us` microseconds, then returns whether
// it still holds.
template <typename Busy>
bool SpinWhile(Busy busy, int spin_us) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::microseconds(spin_us);
  for (int i = 0;; ++i) {
    if (!busy()) return false;
    _mm_pause();
    if ((i & 63) == 63 && std::chrono::steady_clock::now() > deadline) return true;
  }
}

class Pool {
 public:
  explicit Pool(int n) { Start(n); }
  ~Pool() { Stop(); }

  int size() const { return static_cast<int>(workers_.size()) + 1; }

  void Resize(int n) {
    Stop();
    Start(n);
  }

  // Static: chunk c of `chunks` is [n c / chunks, n (c + 1) / chunks). Dynamic (chunk > 0): chunks
  // of `chunk` from a shared counter.
  void Run(int64_t n, int chunks, int64_t dyn_chunk, RangeFn fn) {
    if (chunks <= 1 || t_in_pool_task) {
      if (dyn_chunk > 0) {
        for (int64_t b = 0; b < n; b += dyn_chunk) fn(b, std::min(n, b + dyn_chunk));
      } else {
        fn(0, n);
      }
      return;
    }
    std::lock_guard<std::mutex> serialize(call_mu_);
    fn_ = &fn;
    n_ = n;
    chunks_ = chunks;
    dyn_chunk_ = dyn_chunk;
    next_.store(0, std::memory_order_relaxed);
    // Every worker checks in for every job, participant or not, so no worker can read the fields
    // of the next job while it still acts on this one.
    pending_.store(size() - 1, std::memory_order_relaxed);
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    if (sleepers_.load(std::memory_order_seq_cst) > 0) epoch_.notify_all();
    t_in_pool_task = true;
    Work(0);
    t_in_pool_task = false;
    if (SpinWhile([&] { return pending_.load(std::memory_order_acquire) != 0; }, 100))
      while (pending_.load(std::memory_order_acquire) != 0) std::this_thread::yield();
    fn_ = nullptr;
  }

 private:
  // The share of the current job of participant `id` (0 = the caller).
  void Work(int id) {
    const RangeFn& fn = *fn_;
    if (dyn_chunk_ > 0) {
      for (;;) {
        const int64_t b = next_.fetch_add(dyn_chunk_, std::memory_order_relaxed);
        if (b >= n_) break;
        fn(b, std::min(n_, b + dyn_chunk_));
      }
    } else {
      fn(n_ * id / chunks_, n_ * (id + 1) / chunks_);
    }
  }

  void Start(int n) {
    stop_.store(false);
    const std::vector<int> cpus = AllowedCpus();
    // Workers go to cores 1.. of the allowed set; the caller keeps (and, being the only other
    // runnable thread of the pool, in practice gets) the first.
    const bool pin = PinThreadsParam() != 0 && n > 1 && n <= static_cast<int>(cpus.size());
    // A worker waits for the first epoch after this one, even if it starts running only after the
    // first job has been published.
    const uint32_t epoch = epoch_.load();
    for (int i = 1; i < n; ++i) {
      workers_.emplace_back([this, i, epoch] { Loop(i, epoch); });
      if (pin) {
        cpu_set_t set;
        CPU_ZERO(&set);
        CPU_SET(cpus[i], &set);
        pthread_setaffinity_np(workers_.back().native_handle(), sizeof(set), &set);
      }
    }
  }

  void Stop() {
    stop_.store(true);
    epoch_.fetch_add(1, std::memory_order_seq_cst);
    epoch_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  void Loop(int id, uint32_t seen) {
    t_in_pool_task = true;
    for (;;) {
      if (SpinWhile([&] { return epoch_.load(std::memory_order_acquire) == seen; }, 300)) {
        sleepers_.fetch_add(1, std::memory_order_seq_cst);
        epoch_.wait(seen, std::memory_order_seq_cst);
        sleepers_.fetch_sub(1, std::memory_order_seq_cst);
        continue;  // re-check: the wait may return spuriously
      }
      seen = epoch_.load(std::memory_order_acquire);
      if (stop_.load()) return;
      if (id < chunks_) Work(id);
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  std::vector<std::thread> workers_;
  std::mutex call_mu_;
  // The current job; written by the caller before epoch_ is bumped.
  const RangeFn* fn_ = nullptr;
  int64_t n_ = 0;
  int chunks_ = 0;
  int64_t dyn_chunk_ = 0;
  std::atomic<int64_t> next_{0};
  std::atomic<uint32_t> epoch_{0};
  std::atomic<int> pending_{0};
  std::atomic<int> sleepers_{0};
  std::atomic<bool> stop_{false};
};

Pool& GlobalPool() {
  static Pool pool([] {
    const int64_t n = NumThreadsParam();
    return n > 0 ? static_cast<int>(n) : AvailableCores();
  }());
  return pool;
}

}  // namespace

int NumThreads() { return GlobalPool().size(); }

void SetNumThreads(int n) { GlobalPool().Resize(n > 0 ? n : AvailableCores()); }

void ParallelFor(int64_t n, int64_t grain, RangeFn fn) {
  if (n <= 0) return;
  Pool& pool = GlobalPool();
  const int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
  pool.Run(n, static_cast<int>(std::min<int64_t>(pool.size(), max_chunks)), 0, fn);
}

void ParallelForDynamic(int64_t n, int64_t chunk, RangeFn fn) {
  if (n <= 0) return;
  chunk = std::max<int64_t>(1, chunk);
  Pool& pool = GlobalPool();
  const int64_t num_chunks = (n + chunk - 1) / chunk;
  pool.Run(n, static_cast<int>(std::min<int64_t>(pool.size(), num_chunks)), chunk, fn);
}

}  // namespace dsv4::kernels
