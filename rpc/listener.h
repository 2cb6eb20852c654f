// The inference port's accept loop, in front of gRPC's transport.
//
// gRPC 1.51 (Debian bookworm) gives up on a listening socket for good after one failed accept4()
// (EMFILE: out of descriptors): the port then stays open and never answers again, while health
// still says SERVING (grpc/grpc#16058). It also binds with SO_REUSEPORT, so a second server on the
// same port starts without error and takes a share of the connections. This class owns the
// listening socket instead and hands each accepted connection to gRPC through its external
// connection acceptor (ServerBuilder::experimental().AddExternalConnectionAcceptor), which runs
// the same handshake (TLS, local credentials) and HTTP/2 transport as gRPC's own listener:
//
//  - bind without SO_REUSEPORT: a port another process holds is an error naming it;
//  - at most `max_connections` live connections: more are accepted and closed at once, so a
//    storm of idle connections cannot use up the process's descriptors;
//  - out of descriptors anyway (EMFILE, ENFILE): the loop keeps one spare descriptor, frees it to
//    accept and close the waiting connection (so clients see a prompt close, not a hang), reports
//    `accepting = false` (health NOT_SERVING) and keeps going; the first connection it can accept
//    again reports `accepting = true`.
//
// Live connections are counted by descriptor and socket inode: gRPC closes a connection's
// descriptor when it ends, and fstat() then fails or names another file. Counting costs one
// fstat per tracked connection, done only when the count reaches the cap.
//
// Thread-safety: Start and Stop from one thread; stats() from any.
#pragma once

#include <grpcpp/server_builder.h>

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"

namespace dsv4 {

class Listener {
 public:
  // Binds `host` (an address or a name; every address it resolves to, on one port) and `port`
  // (0 = a free port) and listens. Errors name the address: in use by another process, not a
  // local address, needs privileges.
  static absl::StatusOr<std::unique_ptr<Listener>> Bind(const std::string& host, int port);
  ~Listener();

  int port() const { return port_; }

  // Starts the accept loop: each connection goes to `acceptor` (it must stay valid until Stop).
  // `on_accepting(false)` when descriptors run out, `on_accepting(true)` when they are back;
  // called from the loop's thread.
  void Start(std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor, int max_connections,
             std::function<void(bool accepting)> on_accepting);
  // Stops accepting and closes the listening sockets (connections already handed on live on).
  void Stop();

  struct Stats {
    int64_t accepted = 0;           // handed to gRPC
    int64_t refused_over_cap = 0;   // closed: max_connections were live
    int64_t refused_no_fd = 0;      // closed (or left waiting): out of descriptors
    int64_t live = 0;               // connections at the last count
    bool accepting = true;
  };
  Stats stats() const;

 private:
  Listener() = default;
  void Loop();
  // Accepts what is waiting on `fd` until it would block.
  void AcceptAll(int fd);
  // Hands `conn` (accepted on `listen_fd`) to gRPC, or closes it when max_connections are live.
  void Hand(int listen_fd, int conn);
  int64_t CountLive();

  std::vector<int> fds_;      // listening sockets
  int port_ = 0;
  int wake_[2] = {-1, -1};    // a pipe: Stop wakes the loop
  int spare_ = -1;            // the reserved descriptor (/dev/null)
  int max_connections_ = 0;
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> acceptor_;
  std::function<void(bool)> on_accepting_;
  std::thread thread_;
  // Loop thread only.
  struct Conn {
    uint64_t dev = 0, ino = 0;
  };
  std::vector<Conn> conns_;   // by descriptor number; ino 0 = none
  int64_t live_ = 0;
  bool accepting_ = true;
  int64_t last_cap_log_ns_ = 0;
  // Read by stats().
  std::atomic<int64_t> accepted_{0}, refused_over_cap_{0}, refused_no_fd_{0}, live_seen_{0};
  std::atomic<bool> accepting_seen_{true};
};

// Raises this process's open-files soft limit to its hard limit (a server's connections are
// descriptors); returns the new soft limit.
int64_t RaiseOpenFilesLimit();

}  // namespace dsv4
