// The agent's connection to the Fleet server: one call per RPC of
// `fleetd.v1.SyncService`, over gRPC (HTTP/2, grpc++) or the Connect protocol
// (HTTP/1.1, libcurl).
//
// Errors are absl::Status values picked by what the caller should do
// (common/status/retryable.h):
//   - an error the server answered with keeps the server's code and message,
//     and the server's retry hint is attached with fleetd::WithRetryAfter
//     (common/status/retry_after.h; from gRPC trailing metadata
//     `retry-after-ms`, from Connect's `Trailer-Retry-After-Ms` or HTTP
//     `Retry-After`);
//   - failures to reach the server or to get a well-formed answer (connection
//     refused or reset, DNS or TLS failure, a proxy's 502/503/504, a garbled
//     response or one that is not from a Connect server) are UNAVAILABLE (for
//     other non-Connect HTTP errors see connect_error.h); no answer within the
//     call's timeout is DEADLINE_EXCEEDED. Both are retryable: the server's
//     sync ledger makes a retried batch harmless, so a lost acknowledgement is
//     never a reason to drop data.
#ifndef FLEETD_AGENT_TRANSPORT_TRANSPORT_H_
#define FLEETD_AGENT_TRANSPORT_TRANSPORT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "common/config/config.h"
#include "fleetd/v1/sync.pb.h"

namespace fleetd::agent {

// Cumulative traffic of a transport, for the agent's `bytes_sent` /
// `bytes_received` metrics. Bytes are message bodies, without HTTP headers or
// TLS overhead:
//   - Connect: the request and response bodies exactly as they crossed the
//     connection (after compression), counted for calls that got an HTTP
//     answer (a refused connection sent nothing);
//   - gRPC: each message's serialized size plus its 5-byte frame header,
//     before transport compression (grpc++ reports neither compressed sizes
//     nor whether a message left the device, so a request is counted whenever
//     it was handed to gRPC).
struct TransportStats {
  int64_t bytes_sent = 0;
  int64_t bytes_received = 0;
  // Unary calls made and stream messages written.
  int64_t calls = 0;
  // Unary calls and streams that ended with an error (each also logged as a
  // warning).
  int64_t failures = 0;
};

// One StreamSync call. Write/CloseSend may run concurrently with Read (one
// writer thread and one reader thread); Finish is called once, after which
// the stream must not be used. Destroying an unfinished stream cancels it. A
// stream may outlive the transport that opened it.
class SyncStream {
 public:
  virtual ~SyncStream() = default;

  // Sends one message, blocking while HTTP/2 flow control holds it back (a
  // dead connection is detected by keepalive). UNAVAILABLE when the stream is
  // broken (Finish gives the reason); FAILED_PRECONDITION after CloseSend.
  virtual absl::Status Write(const v1::StreamSyncRequest& request) = 0;

  // Waits up to `timeout` for the next server message.
  //   OK: the message.
  //   DEADLINE_EXCEEDED: none arrived in time; the stream is still usable.
  //   OUT_OF_RANGE: the server has ended the stream; call Finish.
  virtual absl::StatusOr<v1::StreamSyncResponse> Read(
      absl::Duration timeout) = 0;

  // Tells the server the client sends no more messages (half-close).
  // UNAVAILABLE when the stream is already broken.
  virtual absl::Status CloseSend() = 0;

  // Half-closes if not done yet, waits up to `timeout` for the server to end
  // the stream and returns its final status (with the retry hint, if any).
  // Server messages not yet Read are discarded. If the server does not end
  // the stream in time, the call is cancelled and the result is
  // DEADLINE_EXCEEDED.
  virtual absl::Status Finish(absl::Duration timeout) = 0;
};

// A connection to the Fleet server. Thread-safety is per implementation (see
// NewTransport); stats() is always safe to call from any thread.
class SyncTransport {
 public:
  SyncTransport() = default;
  SyncTransport(const SyncTransport&) = delete;
  SyncTransport& operator=(const SyncTransport&) = delete;
  virtual ~SyncTransport() = default;

  // Unary calls. `timeout` bounds the whole call (connect, send, wait,
  // receive) and is passed to the server as the call's deadline;
  // absl::InfiniteDuration() means no bound. See the file comment for errors.
  virtual absl::StatusOr<v1::SyncMetricsResponse> SyncMetrics(
      const v1::SyncMetricsRequest& request, absl::Duration timeout) = 0;
  virtual absl::StatusOr<v1::SyncLogsResponse> SyncLogs(
      const v1::SyncLogsRequest& request, absl::Duration timeout) = 0;
  virtual absl::StatusOr<v1::SyncEventsResponse> SyncEvents(
      const v1::SyncEventsRequest& request, absl::Duration timeout) = 0;
  virtual absl::StatusOr<v1::GetSyncConfigResponse> GetSyncConfig(
      const v1::GetSyncConfigRequest& request, absl::Duration timeout) = 0;
  virtual absl::StatusOr<v1::UpdateDeviceInfoResponse> UpdateDeviceInfo(
      const v1::UpdateDeviceInfoRequest& request, absl::Duration timeout) = 0;

  // Starts a StreamSync call. Opening does not wait for the server: a server
  // that cannot be reached shows as Write failing and Finish returning
  // UNAVAILABLE. UNIMPLEMENTED on the Connect transport (a bidirectional
  // stream needs HTTP/2).
  virtual absl::StatusOr<std::unique_ptr<SyncStream>> OpenStream() = 0;

  virtual TransportStats stats() const = 0;
};

struct TransportOptions {
  // "grpc" (default; also when empty) or "connect". FLEET_TRANSPORT.
  std::string kind = "grpc";
  // "https://host[:port]" (TLS) or "http://host[:port]" (plaintext); the
  // port defaults to 443 / 80. IPv6 hosts in brackets. Connect URLs may carry
  // a path prefix (a reverse proxy's mount point). FLEET_SERVER_URL.
  std::string server_url;
  // Sent as `x-api-key` on every call; empty sends none. FLEET_API_KEY.
  std::string api_key;
  // PEM bundle of CAs trusted for https://; empty means the system roots.
  // Only with https://. FLEET_CA_FILE.
  std::string ca_file;
  // Transport compression of requests: "none" or "gzip" (gRPC
  // `grpc-encoding`, Connect `Content-Encoding`). Responses may come back
  // gzip (both) or zstd (Connect) whatever this says.
  // FLEET_TRANSPORT_COMPRESSION.
  std::string compression = "none";
  // Bound on establishing a connection (TCP + TLS); a call's own timeout
  // still applies when shorter. Connect only: gRPC connects in the
  // background with its own reconnect backoff.
  absl::Duration connect_timeout = absl::Seconds(10);
  // Largest response message accepted, after decompression; larger ones fail
  // with RESOURCE_EXHAUSTED.
  int64_t max_response_bytes = int64_t{16} << 20;
  // gRPC HTTP/2 keepalive: a ping after this long without traffic while a
  // call is active, the connection dropped if unanswered within
  // `keepalive_timeout`. gRPC servers by default refuse pings more often than
  // every 5 minutes (answering GOAWAY), so a shorter time needs the server's
  // `grpc.http2.min_ping_interval_without_data_ms` lowered to match. (The
  // Connect transport relies on libcurl's TCP keepalive instead.)
  absl::Duration keepalive_time = absl::Minutes(5);
  absl::Duration keepalive_timeout = absl::Seconds(20);
  // Sent as User-Agent (Connect) or the gRPC primary user agent.
  std::string user_agent = "fleetd-agent/0.1";
  // Wall time, for HTTP-date forms of Retry-After; null means Clock::Real().
  // Not owned.
  Clock* clock = nullptr;
};

// Declares FLEET_TRANSPORT (--transport), FLEET_SERVER_URL (--server-url),
// FLEET_API_KEY (--api-key), FLEET_CA_FILE (--ca-file) and
// FLEET_TRANSPORT_COMPRESSION (--transport-compression) on `settings`, bound
// to `options`, whose current values are the defaults.
void AddTransportSettings(Settings& settings, TransportOptions* options);

// Creates the transport `options.kind` names. Validates everything up front
// and fails with INVALID_ARGUMENT naming the setting at fault:
// FLEET_TRANSPORT (unknown kind), FLEET_SERVER_URL (scheme not http/https,
// missing host, bad port, query/fragment/credentials, a path with gRPC),
// FLEET_CA_FILE (unreadable, not PEM, or given with http://), FLEET_API_KEY
// (characters not allowed in a header), FLEET_TRANSPORT_COMPRESSION. Does not
// contact the server.
//
// Thread-safety: the gRPC transport is safe for concurrent use (calls run in
// parallel). The Connect transport is safe for concurrent use but performs
// one call at a time (it keeps one keep-alive connection behind a mutex); the
// sync manager calls from one thread, so this costs nothing there.
absl::StatusOr<std::unique_ptr<SyncTransport>> NewTransport(
    const TransportOptions& options);

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_TRANSPORT_TRANSPORT_H_
