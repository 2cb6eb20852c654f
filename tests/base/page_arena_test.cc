// PageArena: aligned, disjoint, writable buffers from fresh zero pages; large requests mapped on
// their own; sizes the system cannot map refused with an error that names them.
#include "base/page_arena.h"

#include <gtest/gtest.h>
#include <sys/resource.h>
#include <sys/sysinfo.h>
#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <random>
#include <utility>
#include <vector>

namespace dsv4 {
namespace {

TEST(PageArena, BuffersAreAlignedDisjointAndZeroUntilWritten) {
  PageArena arena;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int64_t> size(0, 300000);
  std::vector<std::pair<uint8_t*, int64_t>> got;
  for (int i = 0; i < 600; ++i) {  // about 90 MB: more than one chunk
    const int64_t n = i % 100 == 0 ? 0 : size(rng);
    absl::StatusOr<uint8_t*> p = arena.Allocate(n);
    ASSERT_TRUE(p.ok()) << p.status();
    ASSERT_EQ(reinterpret_cast<uintptr_t>(*p) % PageArena::kAlign, 0u) << "buffer " << i;
    // Fresh pages read as zero; then each buffer is filled with its own number.
    ASSERT_TRUE(std::all_of(*p, *p + n, [](uint8_t b) { return b == 0; })) << "buffer " << i;
    std::memset(*p, i & 0xff, n);
    got.push_back({*p, n});
  }
  EXPECT_GT(arena.mapped_bytes(), PageArena::kChunkBytes);
  for (size_t i = 0; i < got.size(); ++i) {
    const auto [p, n] = got[i];
    ASSERT_TRUE(std::all_of(p, p + n, [&](uint8_t b) { return b == (i & 0xff); })) << "buffer " << i << " overwritten";
  }
  std::vector<std::pair<uint8_t*, int64_t>> sorted = got;
  std::sort(sorted.begin(), sorted.end());
  for (size_t i = 1; i < sorted.size(); ++i)
    ASSERT_LE(sorted[i - 1].first + sorted[i - 1].second, sorted[i].first) << "buffers overlap";
}

TEST(PageArena, LargeRequestsTakeAMappingOfTheirOwn) {
  PageArena arena;
  absl::StatusOr<uint8_t*> small = arena.Allocate(1000);
  ASSERT_TRUE(small.ok());
  const int64_t before = arena.mapped_bytes();
  const int64_t big = PageArena::kChunkBytes / 2 + 12345;
  absl::StatusOr<uint8_t*> large = arena.Allocate(big);
  ASSERT_TRUE(large.ok()) << large.status();
  EXPECT_EQ(reinterpret_cast<uintptr_t>(*large) % 4096, 0u) << "a mapping starts on a page";
  EXPECT_EQ(arena.mapped_bytes() - before, (big + 4095) / 4096 * 4096);
  (*large)[big - 1] = 7;
  // The chunk the small buffer came from still serves small requests.
  absl::StatusOr<uint8_t*> next = arena.Allocate(1000);
  ASSERT_TRUE(next.ok());
  EXPECT_EQ(*next, *small + 1024);
  const int64_t mapped = arena.mapped_bytes();
  PageArena moved = std::move(arena);
  EXPECT_EQ(moved.mapped_bytes(), mapped);
  EXPECT_EQ(arena.mapped_bytes(), 0);  // NOLINT(bugprone-use-after-move): a moved-from arena is empty
  EXPECT_EQ((*large)[big - 1], 7);
}

// The system's refusal reaches the caller as an error: under an address-space limit 1 GiB above
// what the process maps, a 2 GiB request fails (in a child process, which the limit is set in).
TEST(PageArena, ReportsTheSystemsRefusal) {
#if defined(__SANITIZE_ADDRESS__)
  GTEST_SKIP() << "AddressSanitizer's shadow memory does not fit under an address-space limit";
#endif
  ::testing::GTEST_FLAG(death_test_style) = "threadsafe";
  EXPECT_EXIT(
      {
        rlimit limit{};
        getrlimit(RLIMIT_AS, &limit);
        std::FILE* f = std::fopen("/proc/self/statm", "r");
        long pages = 0;
        if (f == nullptr || std::fscanf(f, "%ld", &pages) != 1) std::exit(2);
        limit.rlim_cur = static_cast<rlim_t>(pages) * sysconf(_SC_PAGESIZE) + (rlim_t{1} << 30);
        if (setrlimit(RLIMIT_AS, &limit) != 0) std::exit(3);
        PageArena arena;
        const absl::StatusOr<uint8_t*> p = arena.Allocate(int64_t{2} << 30);
        const bool named = !p.ok() && p.status().code() == absl::StatusCode::kResourceExhausted &&
                           p.status().message().find("cannot map 2048 MiB") != absl::string_view::npos;
        std::fprintf(stderr, "%s\n", p.status().ToString().c_str());
        std::exit(named ? 0 : 1);
      },
      ::testing::ExitedWithCode(0), "cannot map 2048 MiB of host memory");
}

TEST(PageArena, RefusesWhatCannotBeMapped) {
  PageArena arena;
  for (int64_t n : {(int64_t{1} << 47) + 1, int64_t{1} << 62, std::numeric_limits<int64_t>::max()}) {
    const absl::StatusOr<uint8_t*> p = arena.Allocate(n);
    ASSERT_FALSE(p.ok());
    EXPECT_EQ(p.status().code(), absl::StatusCode::kResourceExhausted);
    EXPECT_NE(p.status().message().find("cannot map"), absl::string_view::npos) << p.status();
  }
  const absl::StatusOr<uint8_t*> negative = arena.Allocate(-1);
  ASSERT_FALSE(negative.ok());
  EXPECT_EQ(negative.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(arena.mapped_bytes(), 0);
}

// What the system can give: more than nothing, no more than it has (sysinfo's total RAM).
TEST(AvailableHostMemory, IsWithinThePhysicalMemory) {
  const int64_t available = AvailableHostMemoryBytes();
  struct sysinfo si {};
  ASSERT_EQ(sysinfo(&si), 0);
  ASSERT_GT(available, 0) << "/proc/meminfo has no MemAvailable";
  EXPECT_LE(available, static_cast<int64_t>(si.totalram) * si.mem_unit);
}

}  // namespace
}  // namespace dsv4
