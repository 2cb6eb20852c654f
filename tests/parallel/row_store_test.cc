// The sharded row store under mpirun at 1..4 ranks. Every row's bytes encode the rank that filled
// it and its own (table, row), so a reader can check both that it got the right row and that the
// row came from the rank that owns that range.
#include "parallel/row_store.h"

#include <gtest/gtest.h>
#include <mpi.h>

#include <cstring>
#include <random>
#include <vector>

#include "tests/mpi_main.h"

namespace dsv4 {
namespace {

using testing::World;

constexpr int64_t kRowBytes = 40;  // e.g. 32 FP8 codes + 1 scale, padded: any size works

struct Tagged {
  int32_t rank, table;
  int64_t row;
};

TEST(RowStore, RowsComeFromTheirOwners) {
  auto c = World();
  const int me = c->rank();
  const std::vector<int64_t> rows = {1009, 7, 50000};  // uneven, one smaller than some worlds
  auto store = ShardedRowStore::Create(*c, rows, kRowBytes, [&](int t, int64_t first, int64_t count, uint8_t* dst) {
    for (int64_t i = 0; i < count; ++i) {
      Tagged tag{me, t, first + i};
      std::memset(dst + i * kRowBytes, 0xab, kRowBytes);
      std::memcpy(dst + i * kRowBytes, &tag, sizeof(tag));
    }
  });
  ASSERT_TRUE(store.ok()) << store.status();
  std::mt19937_64 rng(11 + me);
  for (int t = 0; t < 3; ++t) {
    std::vector<int64_t> ids(257);
    for (auto& id : ids) id = static_cast<int64_t>(rng() % rows[t]);
    ids[0] = 0, ids[1] = rows[t] - 1;  // both ends
    std::vector<uint8_t> out(ids.size() * kRowBytes);
    auto g = (*store)->Start(t, ids, out.data());
    ASSERT_TRUE(g.ok()) << g.status();
    ASSERT_TRUE((*g)->Wait().ok());
    for (size_t i = 0; i < ids.size(); ++i) {
      Tagged tag;
      std::memcpy(&tag, &out[i * kRowBytes], sizeof(tag));
      ASSERT_EQ(tag.table, t);
      ASSERT_EQ(tag.row, ids[i]);
      ASSERT_EQ(tag.rank, (*store)->Owner(t, ids[i])) << "row " << ids[i] << " served by the wrong rank";
      ASSERT_EQ(out[i * kRowBytes + kRowBytes - 1], 0xab);
    }
  }
  if (c->size() > 1) {
    EXPECT_GT((*store)->counters().remote_rows, 0);
  }
  EXPECT_GT((*store)->counters().local_rows, 0);
  // Ranges tile the table.
  for (int t = 0; t < 3; ++t) {
    EXPECT_EQ((*store)->RowBegin(t, 0), 0);
    EXPECT_EQ((*store)->RowBegin(t, c->size()), rows[t]);
  }
  // Bad ids fail before anything is read.
  std::vector<int64_t> bad = {3, rows[1]};
  std::vector<uint8_t> out(2 * kRowBytes);
  auto g = (*store)->Start(1, bad, out.data());
  ASSERT_FALSE(g.ok());
  EXPECT_NE(g.status().message().find("row id 7 at position 1 is outside [0, 7)"), std::string::npos) << g.status();
  ASSERT_TRUE(c->Barrier().ok());  // keep every rank's window alive until all reads are done
}

}  // namespace
}  // namespace dsv4
