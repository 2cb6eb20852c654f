#include "runtime/engram/row_source.h"

#include <cstring>

#include "absl/strings/str_cat.h"
#include "base/status.h"

namespace dsv4 {
namespace {

// A gather that completed (or failed) inside Start.
class DoneFetch : public EngramFetch {
 public:
  explicit DoneFetch(absl::Status status) : status_(std::move(status)) {}
  absl::Status Wait() override { return status_; }

 private:
  absl::Status status_;
};

}  // namespace

LocalEngramRowSource::LocalEngramRowSource(std::vector<EngramTableView> tables, int64_t head_dim)
    : tables_(std::move(tables)), head_dim_(head_dim) {
  DSV4_CHECK(head_dim_ > 0 && head_dim_ % 32 == 0, "Engram head_dim ", head_dim_);
}

absl::StatusOr<std::unique_ptr<EngramFetch>> LocalEngramRowSource::Start(int64_t engram_index,
                                                                         std::span<const int64_t> row_ids,
                                                                         uint8_t* codes_out, uint8_t* scales_out) {
  if (engram_index < 0 || engram_index >= static_cast<int64_t>(tables_.size()))
    return absl::InvalidArgumentError(absl::StrCat("Engram layer index ", engram_index, " is outside [0, ",
                                                   tables_.size(), ")"));
  const EngramTableView& t = tables_[engram_index];
  const int64_t groups = head_dim_ / 32;
  for (size_t i = 0; i < row_ids.size(); ++i) {
    const int64_t r = row_ids[i];
    if (r < 0 || r >= t.num_rows)
      return absl::OutOfRangeError(absl::StrCat("Engram layer index ", engram_index, ": row id ", r, " at index ", i,
                                                " is outside the table's [0, ", t.num_rows, ")"));
    const uint8_t* s = t.scales + r * groups;
    for (int64_t g = 0; g < groups; ++g)
      if (s[g] == 0xff)
        return absl::DataLossError(absl::StrCat("Engram layer index ", engram_index, ": row ", r, " has scale ", g,
                                                " = 0xFF (E8M0 NaN)"));
    std::memcpy(codes_out + i * head_dim_, t.codes + r * head_dim_, head_dim_);
    std::memcpy(scales_out + i * groups, s, groups);
  }
  return std::make_unique<DoneFetch>(absl::OkStatus());
}

}  // namespace dsv4
