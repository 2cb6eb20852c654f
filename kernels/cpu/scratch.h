// Temporaries without allocation: a per-thread stack of memory blocks that grows on first use
// and is reused ever after, so a decode step allocates nothing once the first has run.
//
//   Scratch<float> q(n * H * hd);      // zero-filled, 64-byte aligned, freed at end of scope
//   Scratch<int32_t> idx(n * k, -1);   // filled with -1
//
// Scratch objects of one thread must be destroyed in reverse order of construction (automatic
// variables are); they are neither copyable nor movable. Only for trivially copyable T.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace dsv4::kernels {

// The thread's arena. Push returns `bytes` of 64-byte aligned memory; Pop(mark) releases
// everything pushed since Mark() returned `mark`.
class ScratchArena {
 public:
  struct Mark {
    int block;
    size_t offset;
  };
  static ScratchArena& ForThisThread();
  ~ScratchArena();

  Mark GetMark() const { return {current_, offset_}; }
  void* Push(size_t bytes);
  void Pop(Mark m) { current_ = m.block, offset_ = m.offset; }
  // Bytes reserved by this thread's arena (grows, never shrinks).
  size_t capacity() const;

 private:
  struct Block {
    char* data;
    size_t size;
  };
  static constexpr int kMaxBlocks = 48;
  Block blocks_[kMaxBlocks] = {};
  int num_blocks_ = 0;
  int current_ = 0;
  size_t offset_ = 0;
};

// Tag: leave the memory uninitialized (for large buffers that are written before they are read).
struct NoInit {};

template <typename T>
class Scratch {
  static_assert(std::is_trivially_copyable_v<T>, "Scratch holds plain data only");

 public:
  explicit Scratch(int64_t n, T fill = T()) : arena_(ScratchArena::ForThisThread()), mark_(arena_.GetMark()), n_(n) {
    data_ = static_cast<T*>(arena_.Push(static_cast<size_t>(std::max<int64_t>(n, 0)) * sizeof(T)));
    std::fill(data_, data_ + n_, fill);
  }
  Scratch(int64_t n, NoInit) : arena_(ScratchArena::ForThisThread()), mark_(arena_.GetMark()), n_(n) {
    data_ = static_cast<T*>(arena_.Push(static_cast<size_t>(std::max<int64_t>(n, 0)) * sizeof(T)));
  }
  ~Scratch() { arena_.Pop(mark_); }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  T* data() { return data_; }
  const T* data() const { return data_; }
  int64_t size() const { return n_; }
  T& operator[](int64_t i) { return data_[i]; }
  const T& operator[](int64_t i) const { return data_[i]; }
  T* begin() { return data_; }
  T* end() { return data_ + n_; }
  const T* begin() const { return data_; }
  const T* end() const { return data_ + n_; }

 private:
  ScratchArena& arena_;
  ScratchArena::Mark mark_;
  T* data_;
  int64_t n_;
};

}  // namespace dsv4::kernels
