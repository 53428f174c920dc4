// Terminates TLS 1.3 in-process and relays each connection's plaintext to a
// local socket, so a server without a usable TLS-version setting (grpc++ 1.51)
// can still require TLS 1.3.
//
// One acceptor thread; per connection one thread that does the handshake (with
// a timeout) and then relays bytes between the TLS socket and one end of an
// AF_UNIX socketpair, whose other end goes to `Handoff`. Both directions are
// buffered up to a fixed size, so a slow side applies back-pressure to the
// other instead of growing memory.
#ifndef FLEETD_SERVER_RPC_GRPC_TLS_TERMINATOR_H_
#define FLEETD_SERVER_RPC_GRPC_TLS_TERMINATOR_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <list>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "common/metrics/metrics.h"
#include "server/rpc/net/net.h"
#include "server/rpc/net/tls_context.h"

namespace fleetd::server::rpc {

class TlsTerminator {
 public:
  struct Options {
    absl::Duration handshake_timeout = absl::Seconds(10);
    // Once one side has closed, how long the other side may take to take the
    // bytes still buffered for it.
    absl::Duration drain_timeout = absl::Seconds(5);
    int max_connections = 4096;
    Clock* clock = nullptr;                // null: Clock::Real()
    metrics::Registry* metrics = nullptr;  // may be null
    std::string name = "grpc";             // label for logs and counters
  };

  // Receives the plaintext end of a connection that completed its handshake;
  // takes ownership of `fd` (non-blocking, close-on-exec AF_UNIX stream).
  using Handoff = std::function<void(int fd)>;

  // Listens on `address` and starts accepting. `ctx` decides the TLS versions
  // and ALPN. Unavailable when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<TlsTerminator>> Start(
      const HostPort& address, SslCtxPtr ctx, Options options, Handoff handoff);

  TlsTerminator(const TlsTerminator&) = delete;
  TlsTerminator& operator=(const TlsTerminator&) = delete;
  // Calls Shutdown().
  ~TlsTerminator();

  int port() const { return port_; }

  // The client address ("ip:port") of the connection whose plaintext end was
  // handed off as `fd`, while that connection lasts; empty otherwise.
  std::string PeerOf(int fd) const;

  // Closes the listening socket; established connections keep running.
  // Idempotent.
  void StopAccepting();
  // StopAccepting(), then ends every connection and joins all threads.
  // Idempotent.
  void Shutdown();

 private:
  struct Connection {
    std::thread thread;
    std::atomic<bool> done{false};
  };

  TlsTerminator(UniqueFd listener, SslCtxPtr ctx, Options options,
                Handoff handoff);
  void AcceptLoop();
  void Serve(UniqueFd tcp, Connection* connection);
  // Runs the server handshake; false on failure, timeout or shutdown.
  bool Handshake(SSL* ssl, int tcp);
  void Relay(SSL* ssl, int tcp, int local);
  // Joins connection threads that have finished.
  void ReapFinished() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const SslCtxPtr ctx_;
  const Options options_;
  Clock* const clock_;
  const Handoff handoff_;
  UniqueFd listener_;
  const int port_;
  UniqueFd stop_accepting_;  // eventfd, readable once StopAccepting()
  UniqueFd stop_;            // eventfd, readable once Shutdown()
  std::thread acceptor_;
  std::atomic<bool> acceptor_joined_{false};

  metrics::Counter* accepted_ = nullptr;
  metrics::Counter* refused_limit_ = nullptr;
  metrics::Counter* handshake_failed_ = nullptr;

  mutable absl::Mutex mu_;
  std::list<Connection> connections_ ABSL_GUARDED_BY(mu_);
  bool shut_down_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 0;
  // Plaintext fd handed off -> (connection id, client address).
  std::map<int, std::pair<uint64_t, std::string>> peers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fleetd::server::rpc

#endif  // FLEETD_SERVER_RPC_GRPC_TLS_TERMINATOR_H_
