// A persistent pool of worker threads for the CPU kernels. ParallelFor splits [0, n) into
// contiguous chunks, one per thread; the calling thread takes the first chunk. Calls from inside
// a pool task run serially (no nested parallelism). Thread-safe: concurrent callers serialize.
#pragma once

#include <cstdint>
#include <functional>

namespace dsv4::kernels {

// Number of threads ParallelFor uses (workers + the caller).
int NumThreads();
// Resizes the pool (0 = one per available core). Not to be called concurrently with ParallelFor.
void SetNumThreads(int n);

// fn(begin, end) over chunks of [0, n); chunks are at least `grain` long.
void ParallelFor(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

}  // namespace dsv4::kernels
