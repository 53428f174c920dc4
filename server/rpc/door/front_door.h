// The front door: fleetd.v1.SyncService over gRPC, gRPC-Web and Connect on
// ONE address, HTTP/1.1 and HTTP/2, TLS 1.3 (ALPN h2 / http/1.1) or plaintext
// (h2c prior knowledge / HTTP/1.1), on a fixed set of threads: the I/O threads
// of the HTTP layer (server/rpc/http/server.h) and the workers that run
// handler calls. Neither grows with connections.
//
// Every method of fleetd.v1.SyncService (sync_service_handler.h), StreamSync
// over HTTP/2 (stream_call.h), and grpc.health.v1.Health/Check (health.h).
#ifndef FLEETD_SERVER_RPC_DOOR_FRONT_DOOR_H_
#define FLEETD_SERVER_RPC_DOOR_FRONT_DOOR_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "common/metrics/metrics.h"
#include "server/core/handler.h"

namespace fleetd::server::rpc {

struct FrontDoorOptions {
  // "host:port" or "[ipv6]:port"; port 0 picks a free one (see port()).
  std::string address = "0.0.0.0:8443";
  // Further addresses served the same way by the same threads (the older
  // gRPC and HTTP addresses kept for compatibility); max_connections counts
  // all of them.
  std::vector<std::string> more_addresses;
  // TLS 1.3 certificate chain and key (PEM files). Both empty only with
  // `insecure`.
  std::string tls_cert_file;
  std::string tls_key_file;
  // Plaintext (development only): h2c with prior knowledge or HTTP/1.1.
  bool insecure = false;
  // Event-loop threads; 0: one per CPU.
  int io_threads = 0;
  // Threads running handler calls (which block until the backends have the
  // batch), all started at once, and calls that may wait for one; more get
  // RESOURCE_EXHAUSTED with a retry hint.
  int workers = 128;
  int64_t max_queued_calls = 2048;
  int64_t max_message_bytes = int64_t{16} << 20;
  // Connection limits (server/rpc/http/server.h).
  size_t max_connections = 50'000;
  absl::Duration idle_timeout = absl::Minutes(10);
  // Browser origins allowed to call (CORS, door/cors.h): exact origins or
  // "*"; empty: no CORS headers, preflights pass to the service (405).
  std::vector<std::string> cors_allowed_origins;
  // Shutdown() lets calls in flight run this long, then cancels them.
  absl::Duration shutdown_grace = absl::Seconds(5);
  // Not owned; may be null (metrics) or null for the real clock.
  metrics::Registry* metrics = nullptr;
  Clock* clock = nullptr;
};

// Safe for concurrent use.
class FrontDoor {
 public:
  // Starts serving `handler` (not owned; must outlive the front door).
  // InvalidArgument for a bad address, missing certificate files or
  // options; Unavailable when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<FrontDoor>> Start(
      const FrontDoorOptions& options, SyncHandler* handler);
  virtual ~FrontDoor() = default;

  // The port bound for `address`.
  virtual int port() const = 0;
  // Every bound port: `address`'s, then `more_addresses`' in order.
  virtual std::vector<int> ports() const = 0;
  // Open connections.
  virtual size_t connections() const = 0;
  // Stops accepting, lets calls in flight finish within the grace, runs or
  // refuses queued calls and stops every thread. Idempotent.
  virtual void Shutdown() = 0;
};

}  // namespace fleetd::server::rpc

#endif  // FLEETD_SERVER_RPC_DOOR_FRONT_DOOR_H_
