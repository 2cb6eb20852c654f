#include "kernels/cuda/memory_plan.h"

#include <algorithm>
#include <iterator>

namespace dsv4::kernels::cuda {

int64_t Arena::Allocate(int64_t bytes, int64_t align) {
  if (bytes < 0 || align < 1 || (align & (align - 1)) != 0) return -1;
  const int64_t offset = (used_ + align - 1) / align * align;
  if (offset > capacity_ || bytes > capacity_ - offset) return -1;
  used_ = offset + bytes;
  high_water_ = std::max(high_water_, used_);
  return offset;
}

WeightUploadPlan PlanWeightUpload(const WeightMatrix& w) {
  WeightUploadPlan p;
  p.view = w;
  p.view.data = nullptr;
  p.view.scales = nullptr;
  auto floor_to = [](int64_t v, int64_t b) { return v / b * b; };
  auto ceil_to = [](int64_t v, int64_t b) { return (v + b - 1) / b * b; };
  switch (w.type) {
    case WeightType::kF32:
    case WeightType::kBF16: {
      const int64_t es = w.type == WeightType::kF32 ? 4 : 2;
      p.data = {w.rows(), w.cols() * es, (w.row_begin * w.ld + w.col_begin) * es, w.ld * es};
      p.view.ld = w.cols();
      p.view.row_begin = 0, p.view.row_end = w.rows();
      p.view.col_begin = 0, p.view.col_end = w.cols();
      return p;
    }
    case WeightType::kFP8: {
      // Whole scale blocks: rows [r0, r1), columns [c0, c1), clipped to the stored width (ld).
      const int64_t r0 = floor_to(w.row_begin, w.block_rows), r1 = w.row_end;
      const int64_t c0 = floor_to(w.col_begin, w.block_cols), c1 = std::min(ceil_to(w.col_end, w.block_cols), w.ld);
      const int64_t sc0 = c0 / w.block_cols, sc1 = (c1 + w.block_cols - 1) / w.block_cols;
      const int64_t sr0 = r0 / w.block_rows, sr1 = (r1 + w.block_rows - 1) / w.block_rows;
      p.data = {r1 - r0, c1 - c0, r0 * w.ld + c0, w.ld};
      p.scales = {sr1 - sr0, sc1 - sc0, sr0 * w.scale_ld + sc0, w.scale_ld};
      p.view.ld = c1 - c0;
      p.view.scale_ld = sc1 - sc0;
      p.view.row_begin = w.row_begin - r0, p.view.row_end = w.row_end - r0;
      p.view.col_begin = w.col_begin - c0, p.view.col_end = w.col_end - c0;
      return p;
    }
    case WeightType::kFP4: {
      // block_rows is 1; whole groups of block_cols (even) columns = whole bytes.
      const int64_t c0 = floor_to(w.col_begin, w.block_cols), c1 = std::min(ceil_to(w.col_end, w.block_cols), 2 * w.ld);
      const int64_t sc0 = c0 / w.block_cols, sc1 = (c1 + w.block_cols - 1) / w.block_cols;
      const int64_t b0 = c0 / 2, b1 = (c1 + 1) / 2;
      p.data = {w.rows(), b1 - b0, w.row_begin * w.ld + b0, w.ld};
      p.scales = {w.rows(), sc1 - sc0, w.row_begin * w.scale_ld + sc0, w.scale_ld};
      p.view.ld = b1 - b0;
      p.view.scale_ld = sc1 - sc0;
      p.view.row_begin = 0, p.view.row_end = w.rows();
      p.view.col_begin = w.col_begin - c0, p.view.col_end = w.col_end - c0;
      return p;
    }
  }
  return p;
}

int64_t BlockCache::SizeClass(int64_t bytes) {
  bytes = std::max<int64_t>(bytes, 1);
  if (bytes <= (int64_t{1} << 20)) return (bytes + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment;
  int64_t pow2 = int64_t{1} << 20;
  while (pow2 * 2 <= bytes) pow2 *= 2;
  const int64_t step = pow2 / 8;
  return (bytes + step - 1) / step * step;
}

void* BlockCache::Take(int64_t size_class) {
  auto it = by_size_.find(size_class);
  if (it == by_size_.end() || it->second.empty()) return nullptr;
  void* p = it->second.back();
  it->second.pop_back();
  if (it->second.empty()) by_size_.erase(it);
  for (auto e = order_.rbegin(); e != order_.rend(); ++e)
    if (e->p == p) {
      order_.erase(std::next(e).base());
      break;
    }
  cached_ -= size_class;
  return p;
}

void BlockCache::Forget(const Entry& e) {
  auto it = by_size_.find(e.size_class);
  std::vector<void*>& v = it->second;
  v.erase(std::find(v.begin(), v.end(), e.p));
  if (v.empty()) by_size_.erase(it);
  cached_ -= e.size_class;
}

std::vector<void*> BlockCache::Give(void* p, int64_t size_class) {
  std::vector<void*> out;
  if (p == nullptr) return out;
  if (size_class > capacity_) {
    out.push_back(p);
    return out;
  }
  while (cached_ + size_class > capacity_) {
    const Entry oldest = order_.front();
    order_.pop_front();
    Forget(oldest);
    out.push_back(oldest.p);
  }
  order_.push_back({p, size_class});
  by_size_[size_class].push_back(p);
  cached_ += size_class;
  return out;
}

std::vector<void*> BlockCache::Drain() {
  std::vector<void*> out;
  out.reserve(order_.size());
  for (const Entry& e : order_) out.push_back(e.p);
  order_.clear(), by_size_.clear(), cached_ = 0;
  return out;
}

void StagingRing::Claim(int64_t begin, int64_t end, std::vector<int64_t>& waits) {
  while (!in_flight_.empty() && in_flight_.front().begin < end && begin < in_flight_.front().end) {
    waits.push_back(in_flight_.front().fence);
    in_flight_.pop_front();
  }
}

StagingRing::Region StagingRing::Reserve(int64_t bytes) {
  Region r;
  const int64_t size = (std::max<int64_t>(bytes, 1) + kDeviceAlignment - 1) / kDeviceAlignment * kDeviceAlignment;
  if (size > capacity_ / 2) return r;
  int64_t start = head_;
  if (start + size > capacity_) {
    // The ring's end is skipped: what was staged there is older than anything at its start.
    Claim(start, capacity_, r.waits);
    start = 0;
  }
  Claim(start, start + size, r.waits);
  r.offset = start;
  pending_begin_ = start, pending_end_ = start + size;
  head_ = start + size;
  return r;
}

void StagingRing::Issued(int64_t fence) {
  if (pending_begin_ < 0) return;
  in_flight_.push_back({pending_begin_, pending_end_, fence});
  pending_begin_ = pending_end_ = -1;
}

std::vector<int64_t> StagingRing::InFlight() const {
  std::vector<int64_t> out;
  for (const Entry& e : in_flight_) out.push_back(e.fence);
  return out;
}

}  // namespace dsv4::kernels::cuda
