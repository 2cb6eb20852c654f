#include "absl/strings/str_cat.h"
#include "launch/commands.h"

namespace dsv4 {

absl::Status CheckTokenIds(std::span<const int32_t> ids, const Model& model, const std::string& flag) {
  if (absl::Status st = model.CheckTokens(ids); !st.ok())
    return absl::InvalidArgumentError(absl::StrCat(flag, ": ", st.message()));
  return absl::OkStatus();
}

absl::Status ServerError(const absl::Status& status, const std::string& address, const std::string& service) {
  if (status.ok()) return status;
  if (absl::IsUnimplemented(status))
    return absl::UnimplementedError(absl::StrCat("the server at ", address, " does not serve ", service,
                                                 ": is that the right port? (dsv4 serve's --info-file names its "
                                                 "inference port and its control-plane address)"));
  const std::string message(status.message().empty() ? absl::StatusCodeToString(status.code()) : status.message());
  return absl::Status(status.code(), absl::StrCat(address, ": ", message));
}

}  // namespace dsv4
