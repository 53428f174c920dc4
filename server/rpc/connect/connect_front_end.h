// The Connect and gRPC-Web front end: `fleetd.v1.SyncService` over HTTP/1.1
// (cpp-httplib), a thin layer over SyncHandler, following the Connect protocol
// specification (connectrpc.com/docs/protocol).
//
// Procedures are POST /fleetd.v1.SyncService/<Method>. Per request:
//   - Connect unary: application/proto or application/json (protobuf JSON
//     mapping; lowerCamelCase out, either name form in). Connect-Protocol-
//     Version must be "1" when present (required if
//     `require_connect_protocol_version`); Connect-Timeout-Ms becomes the
//     deadline; Content-Encoding / Accept-Encoding gzip and zstd (responses of
//     at least `compress_min_bytes` are compressed when the client accepts
//     it). Errors are {"code","message"} JSON with the spec's HTTP status
//     (invalid_argument 400, unauthenticated 401, permission_denied 403,
//     not_found 404, resource_exhausted 429, unimplemented 501, unavailable
//     503, ...), plus Retry-After (whole seconds, rounded up) and
//     Trailer-Retry-After-Ms when the status carries a retry hint, and
//     Trailer-Fleetd-Verdict: rejected when it carries the batch-rejected
//     verdict (common/status/error_class.h; end-of-stream metadata and
//     gRPC-Web trailers carry it as `fleetd-verdict`).
//   - Connect GET for side-effect-free methods (GetSyncConfig):
//     ?connect=v1&encoding=proto|json&message=...[&base64=1][&compression=...].
//   - gRPC-Web: application/grpc-web[+proto|+json] and
//   application/grpc-web-text
//     (base64): length-prefixed frames, the response ending in a trailers frame
//     (flag 0x80) with grpc-status, percent-encoded grpc-message and
//     retry-after-ms; grpc-encoding gzip/zstd; grpc-timeout.
//   - StreamSync is bidirectional, which the Connect spec says needs HTTP/2;
//     over HTTP/1.1 it is answered 505 HTTP Version Not Supported with
//     Connection: close (as connect-go does), for Connect streaming and
//     gRPC-Web alike, unless `http1_bidi_half_duplex`: then a client that sends
//     all its messages in one request body (application/connect+proto|json
//     envelopes, or gRPC-Web frames) gets every response, in order, followed by
//     the end-of-stream message (Connect: flag 0x02 with {"error","metadata"}),
//     once its body is complete.
//   - Unknown procedure 404; a verb the procedure does not take 405 with Allow;
//     unknown Content-Type 415 with Accept-Post; a body or message over
//     `max_message_bytes` (also after decompression: a "zip bomb") is
//     resource_exhausted, read no further (connection then closed).
// The API key comes from the X-API-Key header.
#ifndef FLEETD_SERVER_RPC_CONNECT_CONNECT_FRONT_END_H_
#define FLEETD_SERVER_RPC_CONNECT_CONNECT_FRONT_END_H_

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

struct ConnectFrontEndOptions {
  // "host:port" or "[ipv6]:port"; port 0 picks a free port (see port()).
  std::string address = "0.0.0.0:8080";
  // PEM certificate chain and private key for TLS (1.3 only). Both are
  // required unless `insecure`.
  std::string tls_cert_file;
  std::string tls_key_file;
  // Serve plaintext HTTP/1.1; must be asked for explicitly, and then no
  // certificate may be configured.
  bool insecure = false;
  // Worker threads. Each serves one connection at a time, including the
  // time a keep-alive connection waits for its next request (idle_timeout);
  // further connections queue until a worker is free.
  int32_t threads = 16;
  // Largest request body and largest message after decompression.
  int64_t max_message_bytes = int64_t{16} << 20;
  // Responses smaller than this are sent uncompressed.
  int64_t compress_min_bytes = 1024;
  // Refuse unary POSTs without Connect-Protocol-Version: 1 (and GETs without
  // connect=v1) with 400, which the spec allows.
  bool require_connect_protocol_version = false;
  // Serve StreamSync over HTTP/1.1 half-duplex (see above) instead of 505.
  bool http1_bidi_half_duplex = false;
  // Most responses a half-duplex stream buffers; later ones are dropped
  // (logged and counted) and the session's Send returns false.
  int32_t max_stream_responses = 10000;
  absl::Duration read_timeout = absl::Seconds(10);
  absl::Duration write_timeout = absl::Seconds(10);
  // A keep-alive connection idle this long is closed.
  absl::Duration idle_timeout = absl::Seconds(5);
  absl::Duration tls_handshake_timeout = absl::Seconds(10);
  // Wall time, for turning Connect-Timeout-Ms / grpc-timeout into deadlines;
  // null means Clock::Real(). Not owned.
  Clock* clock = nullptr;
  // Where request and drop counters go; may be null. Not owned.
  metrics::Registry* metrics = nullptr;
};

// Declares the options' environment variables and flags (FLEET_CONNECT_ADDR /
// --connect-addr, FLEET_CONNECT_TLS_CERT, FLEET_CONNECT_TLS_KEY,
// FLEET_CONNECT_INSECURE, FLEET_CONNECT_THREADS,
// FLEET_CONNECT_MAX_MESSAGE_BYTES, FLEET_CONNECT_REQUIRE_PROTOCOL_VERSION,
// FLEET_CONNECT_HTTP1_BIDI_HALF_DUPLEX) on `settings`, bound to `options`,
// whose current values are the defaults.
void AddConnectFrontEndSettings(Settings& settings,
                                ConnectFrontEndOptions* options);

// A running Connect/gRPC-Web server. Safe for concurrent use.
class ConnectFrontEnd {
 public:
  // Validates `options`, binds the address and starts serving. `handler` must
  // outlive the front end. Errors: InvalidArgument for inconsistent options
  // or unreadable certificates, Unavailable when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<ConnectFrontEnd>> Start(
      const ConnectFrontEndOptions& options, SyncHandler* handler);

  ConnectFrontEnd() = default;
  ConnectFrontEnd(const ConnectFrontEnd&) = delete;
  ConnectFrontEnd& operator=(const ConnectFrontEnd&) = delete;
  // Shuts down if still running.
  virtual ~ConnectFrontEnd() = default;

  virtual int port() const = 0;

  // Stops accepting, closes idle connections, lets requests in progress
  // finish, and joins every thread. Idempotent.
  virtual void Shutdown() = 0;
};

}  // namespace fleetd::server::rpc

#endif  // FLEETD_SERVER_RPC_CONNECT_CONNECT_FRONT_END_H_
