// A persistent pool of worker threads for the CPU kernels, one per core, pinned (DSV4_PIN_THREADS).
//
// ParallelFor splits [0, n) into contiguous chunks, one per thread; the calling thread takes the
// first chunk. ParallelForDynamic hands out fixed-size chunks from a shared counter, so a thread
// slowed by another process does not hold the others up. Workers spin briefly between calls before
// they sleep, so back-to-back calls in a decode step cost about a microsecond each, and a call
// allocates nothing. Calls from inside a pool task run serially (no nested parallelism). Every
// thread that runs chunks, the caller included, computes with FTZ and DAZ set (isa.h).
// Thread-safe: concurrent callers serialize.
#pragma once

#include <cstdint>
#include <type_traits>
#include <utility>

#include "absl/status/status.h"

namespace dsv4::kernels {

// A non-owning reference to a callable `void(int64_t begin, int64_t end)`. Binding a lambda
// allocates nothing; the callable must outlive the call it is passed to.
class RangeFn {
 public:
  template <typename F, typename = std::enable_if_t<!std::is_same_v<std::decay_t<F>, RangeFn>>>
  RangeFn(F&& f)  // NOLINT(google-explicit-constructor): a lambda converts implicitly
      : obj_(const_cast<void*>(static_cast<const void*>(&f))),
        call_([](void* obj, int64_t b, int64_t e) { (*static_cast<std::remove_reference_t<F>*>(obj))(b, e); }) {}
  void operator()(int64_t begin, int64_t end) const { call_(obj_, begin, end); }

 private:
  void* obj_;
  void (*call_)(void*, int64_t, int64_t);
};

// Number of threads ParallelFor uses (workers + the caller).
int NumThreads();
// Resizes the pool (0 = DSV4_NUM_THREADS, else one per available core). Not to be called
// concurrently with ParallelFor. When the system refuses a thread (a process or memory limit),
// the pool keeps the workers it could start and the error says how many that was.
absl::Status SetNumThreads(int n);
// Cores this process may run on (its affinity mask).
int AvailableCores();

// fn(begin, end) over contiguous chunks of [0, n), one per thread; chunks are at least `grain` long.
void ParallelFor(int64_t n, int64_t grain, RangeFn fn);

// fn(begin, end) over the chunks [i, min(i + chunk, n)), taken in increasing order by whichever
// thread is free.
void ParallelForDynamic(int64_t n, int64_t chunk, RangeFn fn);

}  // namespace dsv4::kernels
