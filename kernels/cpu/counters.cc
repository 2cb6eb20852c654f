// The kernels' work counters (kernels.h): relaxed atomics, touched only while enabled.
#include <atomic>

#include "kernels/cpu/kernels.h"

namespace dsv4::kernels {
namespace {
std::atomic<bool> g_enabled{false};
std::atomic<int64_t> g_weight_bytes{0}, g_cache_bytes{0}, g_flops{0}, g_bf16_flops{0}, g_amx_flops{0};
}  // namespace

void EnableWorkCounters(bool on) { g_enabled.store(on, std::memory_order_relaxed); }

WorkCounts ReadWorkCounters() {
  return {g_weight_bytes.load(std::memory_order_relaxed), g_cache_bytes.load(std::memory_order_relaxed),
          g_flops.load(std::memory_order_relaxed), g_bf16_flops.load(std::memory_order_relaxed),
          g_amx_flops.load(std::memory_order_relaxed)};
}

void ResetWorkCounters() {
  g_weight_bytes.store(0, std::memory_order_relaxed);
  g_cache_bytes.store(0, std::memory_order_relaxed);
  g_flops.store(0, std::memory_order_relaxed);
  g_bf16_flops.store(0, std::memory_order_relaxed);
  g_amx_flops.store(0, std::memory_order_relaxed);
}

void CountWork(int64_t weight_bytes, int64_t cache_bytes, int64_t flops, FlopKind kind) {
  if (!g_enabled.load(std::memory_order_relaxed)) return;
  if (weight_bytes) g_weight_bytes.fetch_add(weight_bytes, std::memory_order_relaxed);
  if (cache_bytes) g_cache_bytes.fetch_add(cache_bytes, std::memory_order_relaxed);
  if (flops) g_flops.fetch_add(flops, std::memory_order_relaxed);
  if (flops && kind == FlopKind::kBf16) g_bf16_flops.fetch_add(flops, std::memory_order_relaxed);
  if (flops && kind == FlopKind::kAmxBf16) g_amx_flops.fetch_add(flops, std::memory_order_relaxed);
}

}  // namespace dsv4::kernels
