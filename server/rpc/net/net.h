// Small POSIX socket helpers shared by the RPC front ends.
#ifndef FLEETD_SERVER_RPC_NET_NET_H_
#define FLEETD_SERVER_RPC_NET_NET_H_

#include <signal.h>

#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fleetd::server::rpc {

// An owned file descriptor, closed on destruction. Movable, not copyable.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(other.release()) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  // Gives up ownership without closing.
  int release() { return std::exchange(fd_, -1); }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

struct HostPort {
  std::string host;  // literal address or name; IPv6 without brackets
  int port = 0;      // 0 = any free port
};

// Parses "host:port" or "[ipv6]:port". The port must be 0..65535; an empty
// host means all interfaces ("0.0.0.0"). InvalidArgument otherwise.
absl::StatusOr<HostPort> ParseHostPort(absl::string_view address);

// Opens a non-blocking, close-on-exec TCP socket listening on `address`.
// Unavailable when the address cannot be resolved or bound.
absl::StatusOr<UniqueFd> ListenTcp(const HostPort& address, int backlog = 256);

// Blocks SIGPIPE on the calling thread while alive (restoring the previous
// mask after), so threads started meanwhile inherit the block. OpenSSL writes
// to sockets with write(2), which raises SIGPIPE when the peer has gone; with
// the signal blocked the write fails with EPIPE instead, without changing the
// process-wide disposition. A SIGPIPE raised on this thread meanwhile is
// consumed on destruction; one raised on a thread started meanwhile dies with
// that thread.
class ScopedSigpipeBlock {
 public:
  ScopedSigpipeBlock();
  ~ScopedSigpipeBlock();
  ScopedSigpipeBlock(const ScopedSigpipeBlock&) = delete;
  ScopedSigpipeBlock& operator=(const ScopedSigpipeBlock&) = delete;

 private:
  sigset_t saved_;
};

// The local port `fd` is bound to, or -1.
int LocalPort(int fd);

// The remote address of a connected socket as "ip:port" ("[ip]:port" for
// IPv6), or "unknown".
std::string PeerAddress(int fd);

// Formats an address as "ip:port" or "[ip]:port" when `ip` contains ':'.
std::string FormatHostPort(absl::string_view ip, int port);

}  // namespace fleetd::server::rpc

#endif  // FLEETD_SERVER_RPC_NET_NET_H_
