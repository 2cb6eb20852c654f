#include "kernels/cpu/scratch.h"

#include <cstdlib>
#include <new>

namespace dsv4::kernels {
namespace {
constexpr size_t kAlign = 64;
constexpr size_t kMinBlock = size_t{1} << 20;
}  // namespace

ScratchArena& ScratchArena::ForThisThread() {
  thread_local ScratchArena arena;
  return arena;
}

ScratchArena::~ScratchArena() {
  for (int i = 0; i < num_blocks_; ++i) std::free(blocks_[i].data);
}

size_t ScratchArena::capacity() const {
  size_t total = 0;
  for (int i = 0; i < num_blocks_; ++i) total += blocks_[i].size;
  return total;
}

void* ScratchArena::Push(size_t bytes) {
  bytes = (bytes + kAlign - 1) / kAlign * kAlign;
  if (num_blocks_ > 0 && offset_ + bytes <= blocks_[current_].size) {
    void* p = blocks_[current_].data + offset_;
    offset_ += bytes;
    return p;
  }
  // Move to the next block; blocks past the current one hold nothing live, so one too small is
  // replaced by a bigger one (growth is geometric, so this stops after a few steps).
  const int next = num_blocks_ == 0 ? 0 : current_ + 1;
  if (next >= kMaxBlocks) throw std::bad_alloc();
  if (next < num_blocks_ && blocks_[next].size < bytes) {
    std::free(blocks_[next].data);
    for (int i = next + 1; i < num_blocks_; ++i) std::free(blocks_[i].data);
    num_blocks_ = next;
  }
  if (next >= num_blocks_) {
    const size_t prev = num_blocks_ > 0 ? blocks_[num_blocks_ - 1].size : 0;
    const size_t size = std::max({bytes, 2 * prev, kMinBlock});
    void* p = std::aligned_alloc(kAlign, size);
    if (p == nullptr) throw std::bad_alloc();
    blocks_[next] = {static_cast<char*>(p), size};
    num_blocks_ = next + 1;
  }
  current_ = next;
  offset_ = bytes;
  return blocks_[current_].data;
}

}  // namespace dsv4::kernels
