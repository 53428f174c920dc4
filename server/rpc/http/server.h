// The front door's connection driver: accepts TCP connections on one or more
// addresses,
// speaks TLS 1.3 (ALPN "h2" or "http/1.1") or plaintext (h2c with prior
// knowledge, or HTTP/1.1, told apart by the HTTP/2 preface), and runs each
// connection's ConnectionSession (session.h) on a strand of a fixed pool of
// I/O threads. Threads do not grow with connections: an idle connection costs
// its socket, its TLS state and its session, no thread and no fixed buffer.
#ifndef FLEETD_SERVER_RPC_HTTP_SERVER_H_
#define FLEETD_SERVER_RPC_HTTP_SERVER_H_

#include <openssl/ssl.h>

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/rpc/http/exchange.h"
#include "server/rpc/http/session.h"

namespace fleetd::server::rpc::http {

struct ServerOptions {
  // "host:port"; port 0 picks a free one (see HttpServer::port()).
  std::string address = "127.0.0.1:0";
  // Further addresses served the same way, by the same threads, under the
  // same limits (max_connections counts all of them).
  std::vector<std::string> more_addresses;
  // I/O threads (each runs the event loop); never more are created.
  int io_threads = 2;
  // TLS: a TLS 1.3-only server context offering ALPN "h2" and "http/1.1"
  // (server/rpc/net/tls_context.h, AlpnPolicy::kH2OrHttp11). The server takes
  // a reference (SSL_CTX_up_ref). Null: plaintext (development only).
  SSL_CTX* tls = nullptr;
  // A TLS handshake (or, in plaintext, the first bytes that tell the
  // protocol) must finish within this, else the connection is closed.
  absl::Duration handshake_timeout = absl::Seconds(10);
  // A started request header block must complete within this (slow clients
  // holding a connection open with a trickle of bytes). On HTTP/2, whole
  // frames that open no request (PING, SETTINGS, WINDOW_UPDATE) between
  // requests do not start it.
  absl::Duration header_timeout = absl::Seconds(10);
  // A connection with no open exchange and no byte read for this long is
  // closed (HTTP/2: GOAWAY first). Devices hold connections for days and
  // send a batch every few seconds or minutes, so this is long.
  absl::Duration idle_timeout = absl::Minutes(10);
  // Liveness of connections that hold open exchanges (a device's StreamSync
  // may be quiet for long): an HTTP/2 connection from which nothing was read
  // for `keepalive_interval` while an exchange is open gets a PING, and is
  // closed when nothing at all arrives within `keepalive_timeout` after it;
  // its exchanges get OnCancel. (A connection without exchanges has the idle
  // timeout instead; no PING is sent while reading is paused for output.)
  // A peer gone without a FIN (a NAT that forgot it, a device without power)
  // then frees its streams instead of holding them forever. HTTP/1.1 has no
  // PING: every socket also has TCP keepalive (probes after the interval,
  // then every timeout / 3, 3 unanswered close it), which needs no thread
  // either. Zero interval: both off.
  absl::Duration keepalive_interval = absl::Minutes(2);
  absl::Duration keepalive_timeout = absl::Seconds(20);
  // A connection idle (no open exchange) this long gives back the memory its
  // session keeps for its next frames (ConnectionSession::ReleaseIdleMemory:
  // HTTP/2's 16 KiB frame buffer). Not at once: dropping the pages after
  // every exchange and faulting them in for the next cost a busy server
  // about 5 % of its CPU (madvise with TLB shootdowns, page faults).
  absl::Duration idle_memory_release = absl::Seconds(1);
  // Connections beyond this are closed as soon as they are accepted.
  size_t max_connections = 50'000;
  SessionLimits limits;
  ExchangeHandler handler;
};

// Safe for concurrent use.
class HttpServer {
 public:
  // Binds, listens and starts the I/O threads. InvalidArgument for a bad
  // address or options; Unavailable when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<HttpServer>> Start(
      ServerOptions options);
  virtual ~HttpServer() = default;

  // The port bound for `address`.
  virtual int port() const = 0;
  // Every bound port: `address`'s, then `more_addresses`' in order.
  virtual std::vector<int> ports() const = 0;
  // Open connections right now.
  virtual size_t connections() const = 0;
  // Stops accepting, asks every session to shut down gracefully (HTTP/2
  // GOAWAY), waits up to `grace` for them to finish, then aborts the rest
  // (their exchanges get OnCancel) and joins the I/O threads. Idempotent;
  // also done by the destructor with a zero grace. REQUIRES: not called from
  // an I/O thread or a handler (it joins the I/O threads).
  virtual void Shutdown(absl::Duration grace) = 0;
};

}  // namespace fleetd::server::rpc::http

#endif  // FLEETD_SERVER_RPC_HTTP_SERVER_H_
