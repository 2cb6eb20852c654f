#include "parallel/row_store.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "base/status.h"

#if DSV4_MPI
#include <mpi.h>
#endif

namespace dsv4 {

ShardedRowStore::ShardedRowStore(int ranks, std::vector<int64_t> rows, int64_t row_bytes)
    : ranks_(ranks), rows_(std::move(rows)), row_bytes_(row_bytes) {}

int64_t ShardedRowStore::RowBegin(int table, int rank) const {
  // Even ranges: rank r holds floor(rows * r / P) .. floor(rows * (r+1) / P).
  return static_cast<int64_t>((static_cast<__int128>(rows_[table]) * rank) / ranks_);
}

int ShardedRowStore::Owner(int table, int64_t row) const {
  int r = static_cast<int>((static_cast<__int128>(row) * ranks_) / rows_[table]);
  while (r + 1 < ranks_ && RowBegin(table, r + 1) <= row) ++r;
  while (r > 0 && RowBegin(table, r) > row) --r;
  return r;
}

uint8_t* ShardedRowStore::LocalRow(int table, int64_t row) {
  return local_ + table_offset_[table] + (row - RowBegin(table, my_rank_)) * row_bytes_;
}

namespace {

class DoneGather final : public RowGather {
 public:
  absl::Status Wait() override { return absl::OkStatus(); }
};

// Copies rows this rank holds; returns the positions of the others.
absl::Status CheckIds(const ShardedRowStore& s, int table, std::span<const int64_t> ids) {
  if (table < 0) return absl::InvalidArgumentError(absl::StrCat("row store: table ", table));
  for (size_t i = 0; i < ids.size(); ++i)
    if (ids[i] < 0 || ids[i] >= s.num_rows(table))
      return absl::InvalidArgumentError(absl::StrCat("row store: table ", table, " row id ", ids[i], " at position ", i,
                                                     " is outside [0, ", s.num_rows(table), ")"));
  return absl::OkStatus();
}

// A world of one: all rows in local memory.
class LocalRowStore final : public ShardedRowStore {
 public:
  LocalRowStore(std::vector<int64_t> rows, int64_t row_bytes, const FillFn& fill)
      : ShardedRowStore(1, std::move(rows), row_bytes) {
    int64_t off = 0;
    for (size_t t = 0; t < rows_.size(); ++t) table_offset_.push_back(off), off += rows_[t] * row_bytes_;
    memory_.resize(off);
    local_ = memory_.data(), local_bytes_ = off;
    for (size_t t = 0; t < rows_.size(); ++t) fill(static_cast<int>(t), 0, rows_[t], local_ + table_offset_[t]);
  }
  absl::StatusOr<std::unique_ptr<RowGather>> Start(int table, std::span<const int64_t> ids, uint8_t* out) override {
    if (table >= static_cast<int>(rows_.size())) return absl::InvalidArgumentError("row store: no such table");
    DSV4_RETURN_IF_ERROR(CheckIds(*this, table, ids));
    for (size_t i = 0; i < ids.size(); ++i) std::memcpy(out + i * row_bytes_, LocalRow(table, ids[i]), row_bytes_);
    counters_.local_rows += static_cast<int64_t>(ids.size());
    return std::unique_ptr<RowGather>(new DoneGather());
  }

 private:
  std::vector<uint8_t> memory_;
};

#if DSV4_MPI
class MpiRowStore final : public ShardedRowStore {
 public:
  MpiRowStore(Communicator& comm, std::vector<int64_t> rows, int64_t row_bytes)
      : ShardedRowStore(comm.size(), std::move(rows), row_bytes), comm_(comm) {
    my_rank_ = comm.rank();
    mpi_comm_ = *static_cast<const MPI_Comm*>(comm.NativeHandle());
  }
  ~MpiRowStore() override {
    int finalized = 0;
    MPI_Finalized(&finalized);
    if (win_ != MPI_WIN_NULL && !finalized) {
      MPI_Win_unlock_all(win_);
      MPI_Win_free(&win_);
    }
  }

  absl::Status Init(const FillFn& fill) {
    int64_t off = 0;
    for (size_t t = 0; t < rows_.size(); ++t) {
      table_offset_.push_back(off);
      off += (RowBegin(static_cast<int>(t), my_rank_ + 1) - RowBegin(static_cast<int>(t), my_rank_)) * row_bytes_;
    }
    local_bytes_ = off;
    // Every rank's table offsets, to address remote rows without asking their owner.
    std::vector<int64_t> mine = table_offset_;
    remote_offset_.resize(static_cast<size_t>(ranks_) * rows_.size());
    if (MPI_Allgather(mine.data(), static_cast<int>(mine.size()), MPI_INT64_T, remote_offset_.data(),
                      static_cast<int>(mine.size()), MPI_INT64_T, mpi_comm_) != MPI_SUCCESS)
      return absl::InternalError("row store: MPI_Allgather of table offsets failed");
    void* base = nullptr;
    if (MPI_Win_allocate(static_cast<MPI_Aint>(std::max<int64_t>(off, 1)), 1, MPI_INFO_NULL, mpi_comm_, &base, &win_) !=
        MPI_SUCCESS)
      return absl::ResourceExhaustedError(absl::StrCat("row store: cannot allocate a window of ", off, " bytes"));
    local_ = static_cast<uint8_t*>(base);
    for (size_t t = 0; t < rows_.size(); ++t) {
      const int64_t first = RowBegin(static_cast<int>(t), my_rank_);
      const int64_t count = RowBegin(static_cast<int>(t), my_rank_ + 1) - first;
      if (count > 0) fill(static_cast<int>(t), first, count, local_ + table_offset_[t]);
    }
    // One passive-target epoch for the store's lifetime; the barrier orders fills before reads.
    MPI_Win_lock_all(MPI_MODE_NOCHECK, win_);
    MPI_Win_sync(win_);
    MPI_Barrier(mpi_comm_);
    return absl::OkStatus();
  }

  absl::StatusOr<std::unique_ptr<RowGather>> Start(int table, std::span<const int64_t> ids, uint8_t* out) override;

 private:
  friend class MpiRowGather;
  Communicator& comm_;
  MPI_Comm mpi_comm_;
  MPI_Win win_ = MPI_WIN_NULL;
  std::vector<int64_t> remote_offset_;  // [rank][table]
};

class MpiRowGather final : public RowGather {
 public:
  MpiRowGather(MpiRowStore* store, std::vector<MPI_Request> reqs, std::vector<int> owners)
      : store_(store), reqs_(std::move(reqs)), owners_(std::move(owners)) {}
  ~MpiRowGather() override {
    if (!reqs_.empty()) (void)Wait();  // the gets write into the caller's buffer: finish them
  }
  absl::Status Wait() override {
    const auto deadline = std::chrono::steady_clock::now() + store_->comm_.timeout();
    for (;;) {
      int done = 0;
      MPI_Testall(static_cast<int>(reqs_.size()), reqs_.data(), &done, MPI_STATUSES_IGNORE);
      if (done) {
        reqs_.clear();
        return absl::OkStatus();
      }
      if (std::chrono::steady_clock::now() > deadline) {
        std::vector<int> missing;
        for (size_t i = 0; i < reqs_.size(); ++i)
          if (reqs_[i] != MPI_REQUEST_NULL) missing.push_back(owners_[i]);
        std::sort(missing.begin(), missing.end());
        missing.erase(std::unique(missing.begin(), missing.end()), missing.end());
        reqs_.clear();  // cannot cancel RMA requests: the caller must not reuse the buffer
        return absl::DeadlineExceededError(absl::StrCat("Engram row gather on ", store_->comm_.name(),
                                                        ": reads from rank(s) ", absl::StrJoin(missing, ", "),
                                                        " did not complete within the timeout"));
      }
      std::this_thread::yield();
    }
  }

 private:
  MpiRowStore* store_;
  std::vector<MPI_Request> reqs_;
  std::vector<int> owners_;
};

absl::StatusOr<std::unique_ptr<RowGather>> MpiRowStore::Start(int table, std::span<const int64_t> ids, uint8_t* out) {
  if (table >= static_cast<int>(rows_.size())) return absl::InvalidArgumentError("row store: no such table");
  DSV4_RETURN_IF_ERROR(CheckIds(*this, table, ids));
  std::vector<MPI_Request> reqs;
  std::vector<int> owners;
  for (size_t i = 0; i < ids.size(); ++i) {
    const int owner = Owner(table, ids[i]);
    uint8_t* dst = out + i * row_bytes_;
    if (owner == my_rank_) {
      std::memcpy(dst, LocalRow(table, ids[i]), row_bytes_);
      ++counters_.local_rows;
      continue;
    }
    const MPI_Aint disp = remote_offset_[static_cast<size_t>(owner) * rows_.size() + table] +
                          (ids[i] - RowBegin(table, owner)) * row_bytes_;
    MPI_Request r;
    if (MPI_Rget(dst, static_cast<int>(row_bytes_), MPI_BYTE, owner, disp, static_cast<int>(row_bytes_), MPI_BYTE, win_,
                 &r) != MPI_SUCCESS)
      return absl::UnavailableError(absl::StrCat("row store: MPI_Rget from rank ", owner, " failed"));
    reqs.push_back(r);
    owners.push_back(owner);
    ++counters_.remote_rows;
  }
  if (reqs.empty()) return std::unique_ptr<RowGather>(new DoneGather());
  return std::unique_ptr<RowGather>(new MpiRowGather(this, std::move(reqs), std::move(owners)));
}
#endif

}  // namespace

absl::StatusOr<std::unique_ptr<ShardedRowStore>> ShardedRowStore::Create(Communicator& comm, std::vector<int64_t> rows,
                                                                         int64_t row_bytes, const FillFn& fill) {
  if (row_bytes <= 0 || row_bytes > (1 << 30)) return absl::InvalidArgumentError("row store: bad row size");
  for (size_t t = 0; t < rows.size(); ++t)
    if (rows[t] <= 0) return absl::InvalidArgumentError(absl::StrCat("row store: table ", t, " has no rows"));
  if (comm.size() == 1) return std::unique_ptr<ShardedRowStore>(new LocalRowStore(std::move(rows), row_bytes, fill));
#if DSV4_MPI
  if (comm.NativeHandle() == nullptr) return absl::FailedPreconditionError("row store: needs an MPI communicator");
  auto store = std::make_unique<MpiRowStore>(comm, std::move(rows), row_bytes);
  DSV4_RETURN_IF_ERROR(store->Init(fill));
  return std::unique_ptr<ShardedRowStore>(std::move(store));
#else
  return absl::UnavailableError("row store: a sharded store needs MPI (built without it)");
#endif
}

}  // namespace dsv4
