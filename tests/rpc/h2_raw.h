// A raw HTTP/2 connection for transport tests: it writes frames exactly as a test wants them (a
// tiny flow-control window never updated, a flood of pings, oversized or malformed headers) and
// reads the server's frames without interpreting them beyond their header. Header blocks are
// HPACK literals without indexing (no Huffman coding), which every HPACK decoder must accept.
// Not a client library: no stream state, no flow control of its own, SETTINGS acknowledged only.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace dsv4::testing {

enum class H2Type : uint8_t {
  kData = 0,
  kHeaders = 1,
  kRstStream = 3,
  kSettings = 4,
  kPing = 6,
  kGoAway = 7,
  kWindowUpdate = 8,
};

struct H2Frame {
  H2Type type;
  uint8_t flags = 0;
  uint32_t stream = 0;
  std::string payload;
};

class RawH2 {
 public:
  // Connects to 127.0.0.1:port and sends the preface and a SETTINGS frame announcing
  // `initial_window` bytes of stream window (the connection window stays at 65535).
  static absl::StatusOr<RawH2> Connect(int port, uint32_t initial_window = 65535);
  RawH2(RawH2&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  RawH2& operator=(RawH2&&) = delete;
  ~RawH2();

  absl::Status Send(H2Type type, uint8_t flags, uint32_t stream, const std::string& payload);
  // A HEADERS frame with END_HEADERS (and END_STREAM when asked).
  absl::Status SendHeaders(uint32_t stream, const std::vector<std::pair<std::string, std::string>>& headers,
                           bool end_stream);
  // The headers of a gRPC call of `path` to this connection's server.
  absl::Status SendGrpcCall(uint32_t stream, const std::string& path, const std::string& message,
                            const std::vector<std::pair<std::string, std::string>>& extra = {});
  // The next frame; the server's SETTINGS are acknowledged on the way (and returned).
  // DEADLINE_EXCEEDED after `timeout`; UNAVAILABLE when the server closed the connection.
  absl::StatusOr<H2Frame> Read(absl::Duration timeout);
  // Closes the connection with a TCP reset, as the kernel of a killed client does.
  void Reset();

  // HPACK literal header field without indexing, new name.
  static std::string HpackLiteral(const std::string& name, const std::string& value);
  // A gRPC length-prefixed message (uncompressed).
  static std::string GrpcFrame(const std::string& message);

 private:
  explicit RawH2(int fd) : fd_(fd) {}
  int fd_ = -1;
  std::string buffer_;
};

}  // namespace dsv4::testing
