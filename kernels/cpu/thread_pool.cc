#include "kernels/cpu/thread_pool.h"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "kernels/env.h"

namespace dsv4::kernels {
namespace {

thread_local bool t_in_pool_task = false;

int AvailableCores() {
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof(set), &set) == 0) return std::max(1, CPU_COUNT(&set));
  return std::max(1u, std::thread::hardware_concurrency());
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

  void Run(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
    const int64_t max_chunks = std::max<int64_t>(1, n / std::max<int64_t>(1, grain));
    const int chunks = static_cast<int>(std::min<int64_t>(size(), max_chunks));
    if (chunks <= 1 || t_in_pool_task) {
      fn(0, n);
      return;
    }
    std::lock_guard<std::mutex> serialize(call_mu_);
    {
      std::lock_guard<std::mutex> lk(mu_);
      fn_ = &fn;
      n_ = n;
      chunks_ = chunks;
      pending_.store(chunks - 1);
      ++generation_;
    }
    cv_.notify_all();
    t_in_pool_task = true;
    fn(0, ChunkEnd(0));
    t_in_pool_task = false;
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [&] { return pending_.load() == 0; });
    fn_ = nullptr;
  }

 private:
  int64_t ChunkEnd(int c) const { return n_ * (c + 1) / chunks_; }

  void Start(int n) {
    stop_ = false;
    for (int i = 1; i < n; ++i) workers_.emplace_back([this, i] { Work(i); });
  }

  void Stop() {
    {
      std::lock_guard<std::mutex> lk(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& t : workers_) t.join();
    workers_.clear();
  }

  void Work(int id) {
    uint64_t seen = 0;
    t_in_pool_task = true;
    for (;;) {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return stop_ || generation_ != seen; });
      if (stop_) return;
      seen = generation_;
      if (id >= chunks_) continue;
      const auto* fn = fn_;
      const int64_t begin = n_ * id / chunks_, end = ChunkEnd(id);
      lk.unlock();
      (*fn)(begin, end);
      if (pending_.fetch_sub(1) == 1) {
        std::lock_guard<std::mutex> g(mu_);
        done_cv_.notify_one();
      }
    }
  }

  std::vector<std::thread> workers_;
  std::mutex call_mu_;
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* fn_ = nullptr;
  int64_t n_ = 0;
  int chunks_ = 0;
  uint64_t generation_ = 0;
  std::atomic<int> pending_{0};
  bool stop_ = false;
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

void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (n <= 0) return;
  GlobalPool().Run(n, grain, fn);
}

}  // namespace dsv4::kernels
