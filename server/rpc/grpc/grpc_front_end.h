// The gRPC front end: `fleetd.v1.SyncService` over HTTP/2 with grpc++, a thin
// layer over SyncHandler.
//
// Each RPC collects a CallContext (API key from `x-api-key` metadata, the
// client's address, the call deadline) and delegates to the handler; the
// handler's absl::Status becomes the gRPC status (same code and message), and a
// retry hint on it (common/status/retry_after.h) becomes the trailing metadata
// `retry-after-ms`, and the batch-rejected verdict
// (common/status/error_class.h) the trailing metadata `fleetd-verdict:
// rejected`. StreamSync relays every client message to a StreamSession and the
// session's responses back, in order.
//
// Threads: built on grpc++'s callback API, whose few threads only move bytes
// and must never block. The handler blocks (it waits for the backends' group
// commit), so every handler call runs on a fixed pool of `workers` threads
// (common/concurrency/worker_pool.h), all created by Start: the thread count
// does not move with load, and there is no per-call thread. A unary call takes
// a worker for the handler's call; a StreamSync call takes one only while one
// of its messages is handled (and to open and finish the session), so idle
// streams cost no thread. Calls wait for a worker in FIFO order, at most
// `max_queued_calls` of them; beyond that a call fails with RESOURCE_EXHAUSTED
// and the trailer `retry-after-ms` (`overload_retry_after`), counted and
// logged. A call whose client cancelled or timed out while it waited is
// answered CANCELLED without reaching the handler.
//
// StreamSync: the messages of one stream are handled in order, one at a time
// (the next read starts only after the session handled the previous message).
// Responses are written in order, one write at a time; up to
// `stream_send_queue` wait behind the one being written. When the client stops
// reading, StreamSink::Send blocks the sending thread (back-pressure on the
// session); if no room appears within `stream_send_timeout` the stream is
// cancelled (the client sees CANCELLED), the response dropped (counted), and
// the worker freed. The session's Finish runs exactly once, also after a
// cancelled call or a vanished client, and the call ends after it, once the
// queued responses are written.
//
// Also served: the standard health service (grpc.health.v1.Health, SERVING
// until Shutdown) and gzip transport compression (`grpc-encoding: gzip`).
// Requests larger than max_receive_message_bytes fail with RESOURCE_EXHAUSTED.
//
// Transport security: TLS 1.3 only. grpc++ 1.51 cannot set a minimum TLS
// version, so TLS is terminated in this process with OpenSSL (TLS 1.3 as both
// minimum and maximum, ALPN "h2" required) and each decrypted connection is
// handed to gRPC over a socketpair (grpc::AddInsecureChannelFromFd). A TLS 1.2
// client fails the handshake. Plaintext (h2c) only when `insecure` is set.
// The TLS relay still costs a thread per connection (tls_terminator.h).
#ifndef FLEETD_SERVER_RPC_GRPC_GRPC_FRONT_END_H_
#define FLEETD_SERVER_RPC_GRPC_GRPC_FRONT_END_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "common/config/config.h"
#include "common/metrics/metrics.h"
#include "server/core/handler.h"

namespace fleetd::server::rpc {

struct GrpcFrontEndOptions {
  // "host:port" or "[ipv6]:port" to listen on; port 0 picks a free port (see
  // GrpcFrontEnd::port()).
  std::string address = "0.0.0.0:9090";
  // PEM certificate chain and private key. Both are required unless
  // `insecure`.
  std::string tls_cert_file;
  std::string tls_key_file;
  // Serve plaintext HTTP/2. For development only; must be asked for
  // explicitly, and then no certificate may be configured.
  bool insecure = false;
  // Largest request message accepted (after transport decompression); larger
  // ones fail with RESOURCE_EXHAUSTED.
  int64_t max_receive_message_bytes = int64_t{16} << 20;
  // TLS: time a new connection gets to complete its handshake.
  absl::Duration tls_handshake_timeout = absl::Seconds(10);
  // TLS: most connections served at once; further ones are closed at accept
  // (logged and counted).
  int32_t max_connections = 4096;
  // Shutdown() lets in-flight calls run this long, then cancels them.
  absl::Duration shutdown_grace = absl::Seconds(5);
  // Threads that run handler calls (FLEET_GRPC_WORKERS), all created by
  // Start. A call in flight occupies one worker for as long as the handler
  // runs it, and the handler waits there until the batch's group commit
  // reached the backends: tens of milliseconds normally, up to the call's
  // deadline when a backend is slow. So the workers bound how many calls wait
  // for commits at once, and the committer coalesces at most that many calls
  // per backend write. 128 workers at ~50 ms per commit serve ~2,500 calls/s,
  // more than 2,000 devices syncing every few seconds send, and are cheap
  // while idle (a stack each, resident only as far as touched). Raise it when
  // fleetd_worker_pool_busy{pool="grpc"} sits at the limit while the backends
  // have headroom.
  int32_t workers = 128;
  // Calls that may wait for a worker (FLEET_GRPC_QUEUE). Each holds its
  // decoded request (at most max_receive_message_bytes) while it waits. The
  // default lets 2,000 devices with one call each in flight wait rather than
  // be refused; more fail with RESOURCE_EXHAUSTED and `retry-after-ms`.
  int64_t max_queued_calls = 2048;
  // The retry hint sent with that RESOURCE_EXHAUSTED.
  absl::Duration overload_retry_after = absl::Seconds(1);
  // StreamSync: responses that may wait behind the one being written before
  // StreamSink::Send blocks.
  int32_t stream_send_queue = 64;
  // StreamSync: how long a Send waits for room (the client is not reading)
  // before the stream is cancelled and the worker freed. Measured on `clock`.
  absl::Duration stream_send_timeout = absl::Seconds(30);
  // Deprecated (FLEET_GRPC_MAX_THREADS): grpc++'s synchronous thread limit,
  // which the callback API does not use. When positive it still caps
  // `workers`, so the old bound on concurrent handler calls holds; a warning
  // is logged. Use `workers` instead.
  int32_t max_threads = 0;
  // Monotonic time for handshake and shutdown deadlines and the stream send
  // timeout; null means Clock::Real(). Not owned.
  Clock* clock = nullptr;
  // Where request and drop counters and the workers' gauges
  // (fleetd_worker_pool_*{pool="grpc"}) go; may be null. Not owned.
  metrics::Registry* metrics = nullptr;
};

// Declares the options' environment variables and flags (FLEET_GRPC_ADDR /
// --grpc-addr, FLEET_GRPC_TLS_CERT, FLEET_GRPC_TLS_KEY, FLEET_GRPC_INSECURE,
// FLEET_GRPC_MAX_RECV_BYTES, FLEET_GRPC_MAX_CONNECTIONS, FLEET_GRPC_WORKERS,
// FLEET_GRPC_QUEUE, FLEET_GRPC_STREAM_SEND_TIMEOUT and the deprecated
// FLEET_GRPC_MAX_THREADS) on `settings`, bound to `options`, whose current
// values are the defaults.
void AddGrpcFrontEndSettings(Settings& settings, GrpcFrontEndOptions* options);

// A running gRPC server. Safe for concurrent use.
class GrpcFrontEnd {
 public:
  // Validates `options`, starts the workers, binds the address and starts
  // serving. `handler` must outlive the front end. Errors: InvalidArgument for
  // inconsistent options or unreadable certificates, Unavailable when the
  // address cannot be bound, ResourceExhausted when the workers cannot be
  // created.
  static absl::StatusOr<std::unique_ptr<GrpcFrontEnd>> Start(
      const GrpcFrontEndOptions& options, SyncHandler* handler);

  GrpcFrontEnd() = default;
  GrpcFrontEnd(const GrpcFrontEnd&) = delete;
  GrpcFrontEnd& operator=(const GrpcFrontEnd&) = delete;
  // Shuts down if still running.
  virtual ~GrpcFrontEnd() = default;

  // The port the server listens on.
  virtual int port() const = 0;

  // Stops accepting connections, reports NOT_SERVING on the health service,
  // waits up to `shutdown_grace` for in-flight calls, cancels the rest and
  // closes every connection, then stops the workers. A handler call already
  // running is waited for (cancelling the call does not interrupt it).
  // Idempotent; returns when all is stopped.
  virtual void Shutdown() = 0;
};

}  // namespace fleetd::server::rpc

#endif  // FLEETD_SERVER_RPC_GRPC_GRPC_FRONT_END_H_
