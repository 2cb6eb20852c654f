#include "absl/strings/str_cat.h"
#include "launch/commands.h"

namespace dsv4 {

absl::Status CheckTokenIds(std::span<const int32_t> ids, const Model& model, const std::string& flag) {
  if (absl::Status st = model.CheckTokens(ids); !st.ok())
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", st.message()));
  return absl::OkStatus();
}

}  // namespace dsv4
