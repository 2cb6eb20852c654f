#include "rpc/listener.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "base/log.h"

namespace dsv4 {
namespace {

int64_t NowNs() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

std::string AddressText(const std::string& host, int port) {
  return host.find(':') != std::string::npos ? absl::StrCat("[", host, "]:", port) : absl::StrCat(host, ":", port);
}

absl::Status BindError(int err, const std::string& host, int port) {
  const std::string where = AddressText(host, port);
  switch (err) {
    case EADDRINUSE:
      return absl::UnavailableError(absl::StrCat(
          "cannot listen on ", where, ": the port is in use by another process (dsv4 never shares a port; stop "
          "the other server or choose another --port)"));
    case EADDRNOTAVAIL:
      return absl::InvalidArgumentError(
          absl::StrCat("cannot listen on ", where, ": ", host, " is not an address of this machine"));
    case EACCES:
    case EPERM:
      return absl::PermissionDeniedError(
          absl::StrCat("cannot listen on ", where, ": not permitted (ports below 1024 need privileges)"));
    default:
      return absl::UnavailableError(absl::StrCat("cannot listen on ", where, ": ", std::strerror(err)));
  }
}

}  // namespace

int64_t RaiseOpenFilesLimit() {
  struct rlimit lim;
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return -1;
  rlim_t want = lim.rlim_max;
  if (want == RLIM_INFINITY) {  // the kernel's per-process ceiling
    int64_t nr_open = 1 << 20;
    std::ifstream("/proc/sys/fs/nr_open") >> nr_open;
    want = static_cast<rlim_t>(nr_open);
  }
  if (lim.rlim_cur < want) {
    struct rlimit raised = lim;
    raised.rlim_cur = want;
    if (setrlimit(RLIMIT_NOFILE, &raised) == 0) lim = raised;
  }
  return static_cast<int64_t>(lim.rlim_cur);
}

absl::StatusOr<std::unique_ptr<Listener>> Listener::Bind(const std::string& host_in, int port) {
  std::string host = host_in;
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  struct addrinfo hints = {};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  struct addrinfo* res = nullptr;
  const std::string service = std::to_string(port);
  if (const int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &res); rc != 0)
    return absl::InvalidArgumentError(
        absl::StrCat("cannot listen on ", AddressText(host, port), ": cannot resolve '", host, "': ", gai_strerror(rc)));
  std::vector<std::pair<sockaddr_storage, socklen_t>> addrs;
  bool has_v4 = false;
  for (struct addrinfo* ai = res; ai != nullptr; ai = ai->ai_next) {
    if (ai->ai_family != AF_INET && ai->ai_family != AF_INET6) continue;
    sockaddr_storage ss = {};
    std::memcpy(&ss, ai->ai_addr, ai->ai_addrlen);
    const bool seen = std::any_of(addrs.begin(), addrs.end(), [&](const auto& a) {
      return a.second == ai->ai_addrlen && std::memcmp(&a.first, &ss, ai->ai_addrlen) == 0;
    });
    if (!seen) addrs.emplace_back(ss, ai->ai_addrlen);
    has_v4 |= ai->ai_family == AF_INET;
  }
  freeaddrinfo(res);
  if (addrs.empty())
    return absl::InvalidArgumentError(absl::StrCat("cannot listen on ", AddressText(host, port), ": no IP address"));

  std::unique_ptr<Listener> l(new Listener());
  l->port_ = port;
  for (auto& [ss, len] : addrs) {
    const int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return BindError(errno, host, l->port_);
    l->fds_.push_back(fd);
    const int one = 1, zero = 0;
    // SO_REUSEADDR only lets a restarted server bind over connections in TIME_WAIT; without
    // SO_REUSEPORT, a port with a live listener stays refused.
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (ss.ss_family == AF_INET6) {
      // "::" alone serves IPv4 clients too; next to an IPv4 address each family gets its socket.
      setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, has_v4 ? &one : &zero, sizeof(one));
      reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port = htons(static_cast<uint16_t>(l->port_));
    } else {
      reinterpret_cast<sockaddr_in*>(&ss)->sin_port = htons(static_cast<uint16_t>(l->port_));
    }
    if (bind(fd, reinterpret_cast<sockaddr*>(&ss), len) != 0) return BindError(errno, host, l->port_);
    if (listen(fd, SOMAXCONN) != 0) return BindError(errno, host, l->port_);
    if (l->port_ == 0) {  // the kernel's choice; the other addresses take the same port
      sockaddr_storage bound = {};
      socklen_t blen = sizeof(bound);
      getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &blen);
      l->port_ = ntohs(bound.ss_family == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port
                                                   : reinterpret_cast<sockaddr_in*>(&bound)->sin_port);
    }
  }
  if (pipe2(l->wake_, O_CLOEXEC | O_NONBLOCK) != 0)
    return absl::InternalError(absl::StrCat("cannot create a pipe: ", std::strerror(errno)));
  return l;
}

Listener::~Listener() {
  Stop();
  for (int fd : fds_) close(fd);
  for (int fd : wake_)
    if (fd >= 0) close(fd);
}

void Listener::Start(std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor, int max_connections,
                     std::function<void(bool)> on_accepting) {
  acceptor_ = std::move(acceptor);
  max_connections_ = std::max(1, max_connections);
  on_accepting_ = std::move(on_accepting);
  spare_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
  thread_ = std::thread([this] { Loop(); });
}

void Listener::Stop() {
  if (!thread_.joinable()) return;
  const char c = 0;
  (void)!write(wake_[1], &c, 1);
  thread_.join();
  for (int fd : fds_) close(fd);
  fds_.clear();
  if (spare_ >= 0) close(spare_);
  spare_ = -1;
}

Listener::Stats Listener::stats() const {
  Stats s;
  s.accepted = accepted_.load();
  s.refused_over_cap = refused_over_cap_.load();
  s.refused_no_fd = refused_no_fd_.load();
  s.live = live_seen_.load();
  s.accepting = accepting_seen_.load();
  return s;
}

void Listener::Loop() {
  std::vector<pollfd> pfds;
  pfds.push_back({wake_[0], POLLIN, 0});
  for (int fd : fds_) pfds.push_back({fd, POLLIN, 0});
  for (;;) {
    // Out of descriptors with no spare: wait a little instead of spinning on a full backlog.
    const bool backoff = !accepting_ && spare_ < 0;
    const int n = poll(pfds.data(), backoff ? 1 : pfds.size(), backoff ? 50 : -1);
    if (n < 0 && errno != EINTR) {
      DSV4_LOG(kError, "the accept loop of port ", port_, " cannot poll: ", std::strerror(errno));
      poll(pfds.data(), 1, 100);
    }
    if (pfds[0].revents != 0) return;  // Stop
    if (spare_ < 0) spare_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
    for (size_t i = 1; i < pfds.size(); ++i)
      if (backoff || (pfds[i].revents & POLLIN) != 0) AcceptAll(pfds[i].fd);
  }
}

void Listener::AcceptAll(int fd) {
  for (;;) {
    const int conn = accept4(fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (conn >= 0) {
      if (!accepting_) {
        accepting_ = true;
        accepting_seen_.store(true);
        DSV4_LOG(kInfo, "port ", port_, " accepts connections again (", refused_no_fd_.load(),
                 " were closed while the process had no file descriptor left)");
        if (on_accepting_) on_accepting_(true);
      }
      Hand(fd, conn);
      continue;
    }
    switch (errno) {
      case EAGAIN:
        return;
      case EMFILE:
      case ENFILE:
      case ENOBUFS:
      case ENOMEM: {
        const int err = errno;
        if (accepting_) {
          accepting_ = false;
          accepting_seen_.store(false);
          DSV4_LOG(kError, "out of file descriptors on port ", port_, " (", std::strerror(err),
                   "): new connections are closed at once and health is NOT_SERVING until one can be accepted");
          if (on_accepting_) on_accepting_(false);
        }
        if (spare_ < 0) return;  // the loop waits and tries again
        // Free the spare to take the waiting connection off the backlog, and close it: its client
        // sees the connection end now instead of waiting for a deadline.
        close(spare_);
        spare_ = -1;
        if (const int c = accept4(fd, nullptr, nullptr, SOCK_CLOEXEC); c >= 0) {
          close(c);
          refused_no_fd_.fetch_add(1);
        }
        spare_ = open("/dev/null", O_RDONLY | O_CLOEXEC);
        if (spare_ < 0) return;
        continue;
      }
      default:
        // EINTR, ECONNABORTED, EPROTO and the network errors accept(2) says to treat as EAGAIN
        // (the connection already failed): take the next one.
        if (errno == EINTR || errno == ECONNABORTED || errno == EPROTO || errno == EPERM || errno == ENETDOWN ||
            errno == ENOPROTOOPT || errno == EHOSTDOWN || errno == ENONET || errno == EHOSTUNREACH ||
            errno == EOPNOTSUPP || errno == ENETUNREACH)
          continue;
        DSV4_LOG(kError, "accept on port ", port_, " failed: ", std::strerror(errno));
        return;
    }
  }
}

int64_t Listener::CountLive() {
  int64_t live = 0;
  for (size_t fd = 0; fd < conns_.size(); ++fd) {
    Conn& c = conns_[fd];
    if (c.ino == 0) continue;
    struct stat st;
    if (fstat(static_cast<int>(fd), &st) != 0 || !S_ISSOCK(st.st_mode) || st.st_ino != c.ino || st.st_dev != c.dev) {
      c = Conn{};  // gRPC closed it (the number may have been reused since)
      continue;
    }
    ++live;
  }
  return live;
}

void Listener::Hand(int listen_fd, int conn) {
  const size_t slot = static_cast<size_t>(conn);
  if (slot >= conns_.size()) conns_.resize(slot + 1);
  if (conns_[slot].ino != 0) {  // this number was free, so the connection recorded under it is gone
    conns_[slot] = Conn{};
    --live_;
  }
  if (live_ >= max_connections_) live_ = CountLive();
  live_seen_.store(live_);
  if (live_ >= max_connections_) {
    close(conn);
    refused_over_cap_.fetch_add(1);
    const int64_t now = NowNs();
    if (now - last_cap_log_ns_ > int64_t{10} * 1000 * 1000 * 1000) {
      last_cap_log_ns_ = now;
      DSV4_LOG(kWarn, "port ", port_, " has ", live_, " connections, its limit (--max-connections): closing new ones (",
               refused_over_cap_.load(), " so far)");
    }
    return;
  }
  struct stat st;
  if (fstat(conn, &st) != 0) {
    close(conn);
    return;
  }
  conns_[slot] = Conn{static_cast<uint64_t>(st.st_dev), static_cast<uint64_t>(st.st_ino)};
  ++live_;
  live_seen_.store(live_);
  accepted_.fetch_add(1);
  grpc::experimental::ExternalConnectionAcceptor::NewConnectionParameters p;
  p.listener_fd = listen_fd;
  p.fd = conn;  // gRPC owns it from here
  acceptor_->HandleNewConnection(&p);
}

}  // namespace dsv4
