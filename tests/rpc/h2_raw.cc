#include "tests/rpc/h2_raw.h"

#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "tests/testutil.h"

namespace dsv4::testing {
namespace {

constexpr char kPreface[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// HPACK integer with an N-bit prefix (RFC 7541 5.1); `first` holds the bits above the prefix.
void HpackInt(std::string& out, uint64_t v, int prefix_bits, uint8_t first) {
  const uint64_t max = (1u << prefix_bits) - 1;
  if (v < max) {
    out += static_cast<char>(first | v);
    return;
  }
  out += static_cast<char>(first | max);
  v -= max;
  while (v >= 128) {
    out += static_cast<char>(0x80 | (v & 0x7f));
    v >>= 7;
  }
  out += static_cast<char>(v);
}

bool WriteAll(int fd, const std::string& data) {
  size_t at = 0;
  while (at < data.size()) {
    const ssize_t n = send(fd, data.data() + at, data.size() - at, MSG_NOSIGNAL);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      return false;
    }
    at += static_cast<size_t>(n);
  }
  return true;
}

}  // namespace

absl::StatusOr<RawH2> RawH2::Connect(int port, uint32_t initial_window) {
  const int fd = ConnectLoopback(port);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("connect to port ", port, " failed"));
  RawH2 c(fd);
  if (!WriteAll(fd, std::string(kPreface, sizeof(kPreface) - 1))) return absl::UnavailableError("preface");
  // SETTINGS_INITIAL_WINDOW_SIZE (0x4).
  std::string settings;
  settings += '\0', settings += '\x04';
  for (int shift = 24; shift >= 0; shift -= 8) settings += static_cast<char>((initial_window >> shift) & 0xff);
  if (absl::Status st = c.Send(H2Type::kSettings, 0, 0, settings); !st.ok()) return st;
  return c;
}

RawH2::~RawH2() {
  if (fd_ >= 0) close(fd_);
}

absl::Status RawH2::Send(H2Type type, uint8_t flags, uint32_t stream, const std::string& payload) {
  std::string f;
  const uint32_t len = static_cast<uint32_t>(payload.size());
  f += static_cast<char>((len >> 16) & 0xff), f += static_cast<char>((len >> 8) & 0xff),
      f += static_cast<char>(len & 0xff);
  f += static_cast<char>(type), f += static_cast<char>(flags);
  f += static_cast<char>((stream >> 24) & 0x7f);  // the reserved bit is 0
  for (int shift = 16; shift >= 0; shift -= 8) f += static_cast<char>((stream >> shift) & 0xff);
  f += payload;
  if (!WriteAll(fd_, f)) return absl::UnavailableError("the connection is closed");
  return absl::OkStatus();
}

std::string RawH2::HpackLiteral(const std::string& name, const std::string& value) {
  std::string out;
  out += '\0';  // literal without indexing, new name
  HpackInt(out, name.size(), 7, 0);
  out += name;
  HpackInt(out, value.size(), 7, 0);
  out += value;
  return out;
}

std::string RawH2::GrpcFrame(const std::string& message) {
  std::string out(5, '\0');
  const uint32_t len = static_cast<uint32_t>(message.size());
  for (int i = 0; i < 4; ++i) out[1 + i] = static_cast<char>((len >> (24 - 8 * i)) & 0xff);
  return out + message;
}

absl::Status RawH2::SendHeaders(uint32_t stream, const std::vector<std::pair<std::string, std::string>>& headers,
                                bool end_stream) {
  std::string block;
  for (const auto& [k, v] : headers) block += HpackLiteral(k, v);
  return Send(H2Type::kHeaders, 0x4 | (end_stream ? 0x1 : 0), stream, block);
}

absl::Status RawH2::SendGrpcCall(uint32_t stream, const std::string& path, const std::string& message,
                                 const std::vector<std::pair<std::string, std::string>>& extra) {
  std::vector<std::pair<std::string, std::string>> h = {{":method", "POST"},
                                                        {":scheme", "http"},
                                                        {":path", path},
                                                        {":authority", "127.0.0.1"},
                                                        {"content-type", "application/grpc"},
                                                        {"te", "trailers"}};
  h.insert(h.end(), extra.begin(), extra.end());
  if (absl::Status st = SendHeaders(stream, h, false); !st.ok()) return st;
  return Send(H2Type::kData, 0x1, stream, GrpcFrame(message));
}

absl::StatusOr<H2Frame> RawH2::Read(absl::Duration timeout) {
  const absl::Time deadline = absl::Now() + timeout;
  for (;;) {
    if (buffer_.size() >= 9) {
      const uint32_t len = (static_cast<uint8_t>(buffer_[0]) << 16) | (static_cast<uint8_t>(buffer_[1]) << 8) |
                           static_cast<uint8_t>(buffer_[2]);
      if (buffer_.size() >= 9 + len) {
        H2Frame f;
        f.type = static_cast<H2Type>(buffer_[3]);
        f.flags = static_cast<uint8_t>(buffer_[4]);
        f.stream = ((static_cast<uint8_t>(buffer_[5]) & 0x7f) << 24) | (static_cast<uint8_t>(buffer_[6]) << 16) |
                   (static_cast<uint8_t>(buffer_[7]) << 8) | static_cast<uint8_t>(buffer_[8]);
        f.payload = buffer_.substr(9, len);
        buffer_.erase(0, 9 + len);
        if (f.type == H2Type::kSettings && !(f.flags & 0x1)) (void)Send(H2Type::kSettings, 0x1, 0, "");
        return f;
      }
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) return absl::DeadlineExceededError("no frame in time");
    pollfd p{fd_, POLLIN, 0};
    const int r = poll(&p, 1, static_cast<int>(absl::ToInt64Milliseconds(left)) + 1);
    if (r <= 0) continue;
    char buf[16384];
    const ssize_t n = recv(fd_, buf, sizeof(buf), 0);
    if (n <= 0) return absl::UnavailableError("the server closed the connection");
    buffer_.append(buf, static_cast<size_t>(n));
  }
}

void RawH2::Reset() {
  if (fd_ < 0) return;
  linger l{1, 0};
  setsockopt(fd_, SOL_SOCKET, SO_LINGER, &l, sizeof(l));
  close(fd_);
  fd_ = -1;
}

}  // namespace dsv4::testing
