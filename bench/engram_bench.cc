// dsv4 bench engram: decode steps of an Engram model with its tables sharded over the ranks (half
// the rows remote on 2 ranks, read with one-sided gets) against the same steps with whole tables
// on every rank, in one run and one layout; plus the raw gather rate next to a plain memcpy.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/status.h"
#include "bench/commands.h"
#include "runtime/engram/sharded_source.h"
#include "runtime/runtime.h"

namespace dsv4::bench {
namespace {

using Clock = std::chrono::steady_clock;

// Median over iterations of the slowest rank's time.
absl::StatusOr<double> MedianOfMax(Communicator& c, const std::vector<double>& times) {
  std::vector<float> mine(times.begin(), times.end()), all(times.size() * c.size());
  std::vector<int64_t> counts(c.size(), static_cast<int64_t>(times.size()));
  DSV4_RETURN_IF_ERROR(c.AllGatherV(mine.data(), counts.data(), all.data()));
  std::vector<double> worst(times.size(), 0);
  for (int r = 0; r < c.size(); ++r)
    for (size_t i = 0; i < times.size(); ++i) worst[i] = std::max<double>(worst[i], all[r * times.size() + i]);
  std::nth_element(worst.begin(), worst.begin() + worst.size() / 2, worst.end());
  return worst[worst.size() / 2];
}

// Median decode-step time (ms) of `batch` sequences with the model's current row source.
absl::StatusOr<double> DecodeSteps(const Model& m, Communicator& world, int64_t batch, int64_t prompt, int64_t steps,
                                   int64_t warmup) {
  std::vector<SequenceCache> caches;
  std::vector<float> logits(m.config().vocab_size);
  auto token = [](int64_t seq, int64_t pos) { return static_cast<int32_t>((seq * 7919 + pos * 131 + 17) % 100000); };
  for (int64_t b = 0; b < batch; ++b) {
    caches.push_back(m.NewCache());
    std::vector<int32_t> ids(prompt);
    for (int64_t i = 0; i < prompt; ++i) ids[i] = token(b, i);
    DSV4_RETURN_IF_ERROR(m.Forward(ids, caches.back(), logits.data()));
  }
  std::vector<double> times;
  for (int64_t s = 0; s < warmup + steps; ++s) {
    DSV4_RETURN_IF_ERROR(world.Barrier());
    const auto t0 = Clock::now();
    for (int64_t b = 0; b < batch; ++b) {
      const int32_t id = token(b, prompt + s);
      DSV4_RETURN_IF_ERROR(m.Forward(std::span<const int32_t>(&id, 1), caches[b], logits.data()));
    }
    if (s >= warmup) times.push_back(std::chrono::duration<double, std::milli>(Clock::now() - t0).count());
  }
  return MedianOfMax(world, times);
}

}  // namespace

void EngramFlags(Flags& flags) {
  AddRuntimeFlags(flags);
  flags.SetDefault("model", "builtin:v4-tiny-engram").SetDefault("threads", "1");
  flags.IntList("batches", "1,8,64", "decode batch sizes (sequences per step)")
      .Int("prompt", 8, "tokens prefilled per sequence before the timed steps", 1, 1 << 20)
      .Int("steps", 8, "timed decode steps per batch size (median reported)", 1, 1 << 20)
      .Int("warmup", 2, "untimed steps first", 0, 1 << 20)
      .Int("gather-rows", 200000, "rows read for the raw gather rate", 1, int64_t{1} << 30)
      .Bool("json", false, "print one JSON object");
}

absl::Status Engram(const Flags& flags) {
  const std::vector<int32_t>& batches = flags.GetIntList("batches");
  const int64_t prompt = flags.GetInt("prompt"), steps = flags.GetInt("steps"), warmup = flags.GetInt("warmup"),
                rows = flags.GetInt("gather-rows");
  for (int32_t b : batches)
    if (b < 1) return absl::InvalidArgumentError("--batches must be positive");
  DSV4_ASSIGN_OR_RETURN(const RuntimeOptions options, RuntimeOptionsFromFlags(flags));
  DSV4_ASSIGN_OR_RETURN(std::unique_ptr<Runtime> rt, Runtime::Open(options));
  Model& m = rt->model();
  Communicator& world = rt->world();
  if (!m.has_engram()) return absl::InvalidArgumentError(absl::StrCat(options.model, " has no Engram layers"));
  const int64_t hd = m.config().engram_head_dim;
  std::shared_ptr<EngramRowSource> local = std::make_shared<LocalEngramRowSource>(m.EngramTables(), hd);
  DSV4_ASSIGN_OR_RETURN(const std::shared_ptr<ShardedEngramRowSource> sharded,
                        ShardedEngramRowSource::Create(world, m.EngramTables(), hd));

  std::string rows_json;
  std::vector<std::string> lines;
  for (int32_t b : batches) {
    double ms[2];
    for (int layout = 0; layout < 2; ++layout) {
      m.SetEngramRowSource(layout == 0 ? local : std::shared_ptr<EngramRowSource>(sharded));
      DSV4_ASSIGN_OR_RETURN(ms[layout], DecodeSteps(m, world, b, prompt, steps, warmup));
    }
    const double overhead = ms[1] / ms[0] - 1;
    absl::StrAppend(&rows_json, rows_json.empty() ? "" : ", ", "{\"batch\": ", b, ", \"step_ms_sharded\": ", ms[1],
                    ", \"step_ms_local\": ", ms[0], ", \"overhead\": ", overhead, "}");
    lines.push_back(absl::StrCat("  batch ", b, ": step ", ms[1], " ms sharded, ", ms[0], " ms local, overhead ",
                                 overhead * 100, "%"));
  }

  // Raw gather rate over table 0 against memcpy of the same bytes, measured here.
  ShardedRowStore& store = sharded->store();
  std::mt19937_64 rng(world.rank() + 1);
  std::vector<int64_t> ids(rows);
  for (auto& id : ids) id = static_cast<int64_t>(rng() % store.num_rows(0));
  std::vector<uint8_t> out(rows * store.row_bytes()), src(out.size(), 1);
  DSV4_RETURN_IF_ERROR(world.Barrier());
  auto t0 = Clock::now();
  DSV4_ASSIGN_OR_RETURN(const auto gather, store.Start(0, ids, out.data()));
  DSV4_RETURN_IF_ERROR(gather->Wait());
  const double gather_s = std::chrono::duration<double>(Clock::now() - t0).count();
  t0 = Clock::now();
  std::memcpy(out.data(), src.data(), out.size());
  const double memcpy_s = std::chrono::duration<double>(Clock::now() - t0).count();
  const double bytes = static_cast<double>(out.size());
  if (world.rank() != 0) return absl::OkStatus();
  const double remote_share = 1.0 - 1.0 / world.size();
  if (flags.GetBool("json")) {
    std::printf(
        "{\"ranks\": %d, \"model\": \"%s\", \"remote_row_share\": %.3f, \"batches\": [%s], \"gather_rows_per_s\": "
        "%.0f, "
        "\"gather_gbps\": %.4f, \"memcpy_gbps\": %.4f}\n",
        world.size(), options.model.c_str(), remote_share, rows_json.c_str(), rows / gather_s, bytes / gather_s / 1e9,
        bytes / memcpy_s / 1e9);
  } else {
    std::printf("Engram decode, %d ranks (%.0f%% of rows remote when sharded), %s\n", world.size(), remote_share * 100,
                options.model.c_str());
    for (const auto& l : lines) std::printf("%s\n", l.c_str());
    std::printf("  gather: %.0f rows/s, %.3f GB/s; memcpy of the same bytes: %.3f GB/s\n", rows / gather_s,
                bytes / gather_s / 1e9, bytes / memcpy_s / 1e9);
  }
  return absl::OkStatus();
}

}  // namespace dsv4::bench
