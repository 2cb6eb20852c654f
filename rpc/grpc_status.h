// absl::Status <-> grpc::Status at the rpc edge. Both use the canonical codes, so the mapping is
// the identity on codes; messages pass through.
#pragma once

#include <grpcpp/support/status.h>

#include "absl/status/status.h"

namespace dsv4 {

inline grpc::Status ToGrpcStatus(const absl::Status& st) {
  if (st.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(st.code()), std::string(st.message()));
}

inline absl::Status FromGrpcStatus(const grpc::Status& st) {
  if (st.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
}

}  // namespace dsv4
