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
// Also served: the standard health service (grpc.health.v1.Health, SERVING
// until Shutdown) and gzip transport compression (`grpc-encoding: gzip`).
// Requests larger than max_receive_message_bytes fail with RESOURCE_EXHAUSTED.
//
// Transport security: TLS 1.3 only. grpc++ 1.51 cannot set a minimum TLS
// version, so TLS is terminated in this process with OpenSSL (TLS 1.3 as both
// minimum and maximum, ALPN "h2" required) and each decrypted connection is
// handed to gRPC over a socketpair (grpc::AddInsecureChannelFromFd). A TLS 1.2
// client fails the handshake. Plaintext (h2c) only when `insecure` is set.
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
  // Upper bound on the threads grpc++ runs calls on (0: grpc++'s default).
  // A StreamSync call holds one thread while it lasts.
  int32_t max_threads = 0;
  // Monotonic time for handshake and shutdown deadlines; null means
  // Clock::Real(). Not owned.
  Clock* clock = nullptr;
  // Where request and drop counters go; may be null. Not owned.
  metrics::Registry* metrics = nullptr;
};

// Declares the options' environment variables and flags (FLEET_GRPC_ADDR /
// --grpc-addr, FLEET_GRPC_TLS_CERT, FLEET_GRPC_TLS_KEY, FLEET_GRPC_INSECURE,
// FLEET_GRPC_MAX_RECV_BYTES, FLEET_GRPC_MAX_CONNECTIONS,
// FLEET_GRPC_MAX_THREADS) on `settings`, bound to `options`, whose current
// values are the defaults.
void AddGrpcFrontEndSettings(Settings& settings, GrpcFrontEndOptions* options);

// A running gRPC server. Safe for concurrent use.
class GrpcFrontEnd {
 public:
  // Validates `options`, binds the address and starts serving. `handler` must
  // outlive the front end. Errors: InvalidArgument for inconsistent options
  // or unreadable certificates, Unavailable when the address cannot be bound.
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
  // closes every connection. Idempotent; returns when all is stopped.
  virtual void Shutdown() = 0;
};

}  // namespace fleetd::server::rpc

#endif  // FLEETD_SERVER_RPC_GRPC_GRPC_FRONT_END_H_
