#include "base/log.h"

#include <spdlog/sinks/stdout_sinks.h>
#include <spdlog/spdlog.h>

#include <atomic>
#include <memory>
#include <string>
#include <string_view>

#include "base/env.h"

namespace dsv4::log {
namespace {

std::atomic<int> g_level{static_cast<int>(Level::kInfo)};
std::atomic<int> g_rank{-1};
thread_local int64_t t_step = -1;

spdlog::logger& Logger() {
  static const std::shared_ptr<spdlog::logger> logger = [] {
    auto l = std::make_shared<spdlog::logger>("dsv4", std::make_shared<spdlog::sinks::stderr_sink_mt>());
    l->set_pattern("%Y-%m-%d %H:%M:%S.%e %l %v");
    l->set_level(spdlog::level::trace);  // the level is ours (g_level), checked before formatting
    l->flush_on(spdlog::level::trace);   // logs interleave with other processes' output: no buffering
    return l;
  }();
  return *logger;
}

spdlog::level::level_enum ToSpd(Level level) {
  switch (level) {
    case Level::kTrace:
      return spdlog::level::trace;
    case Level::kDebug:
      return spdlog::level::debug;
    case Level::kInfo:
      return spdlog::level::info;
    case Level::kWarn:
      return spdlog::level::warn;
    case Level::kError:
      return spdlog::level::err;
    case Level::kOff:
      break;
  }
  return spdlog::level::off;
}

// The level from the environment, read once before the first line unless SetLevel ran.
std::atomic<bool> g_level_set{false};
void InitFromEnv() {
  if (g_level_set.exchange(true)) return;
  (void)SetLevel(env::Str(env::Knob::kLogLevel));
  g_level_set.store(true);
}

}  // namespace

absl::Status SetLevel(absl::string_view name) {
  static constexpr std::pair<absl::string_view, Level> kNames[] = {{"trace", Level::kTrace}, {"debug", Level::kDebug},
                                                                   {"info", Level::kInfo},   {"warn", Level::kWarn},
                                                                   {"error", Level::kError}, {"off", Level::kOff}};
  const std::string from_env = name.empty() ? env::Str(env::Knob::kLogLevel) : std::string();
  if (name.empty()) name = from_env;  // a view of a string that lives as long as this call
  for (const auto& [n, level] : kNames) {
    if (n != name) continue;
    g_level.store(static_cast<int>(level));
    g_level_set.store(true);
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError(
      absl::StrCat("log level '", name, "' is not one of trace, debug, info, warn, error, off"));
}

void SetRank(int rank) { g_rank.store(rank); }

void SetStep(int64_t step) { t_step = step; }

bool Enabled(Level level) {
  if (!g_level_set.load(std::memory_order_relaxed)) InitFromEnv();
  return level != Level::kOff && static_cast<int>(level) >= g_level.load(std::memory_order_relaxed);
}

void Write(Level level, absl::string_view message) {
  const int rank = g_rank.load(std::memory_order_relaxed);
  std::string tag;
  if (rank >= 0 && t_step >= 0) {
    tag = absl::StrCat("[rank ", rank, " step ", t_step, "] ");
  } else if (rank >= 0) {
    tag = absl::StrCat("[rank ", rank, "] ");
  } else if (t_step >= 0) {
    tag = absl::StrCat("[step ", t_step, "] ");
  }
  Logger().log(ToSpd(level), "{}{}", tag, std::string_view(message.data(), message.size()));
}

}  // namespace dsv4::log
