// The agent's local ingest endpoint: applications on the device push metrics
// and logs over HTTP on loopback, and they are stored like collected data.
//
//   POST /v1/metrics   Prometheus text exposition (ParsePrometheusText)
//   POST /v1/logs      JSON lines (ParseJsonLogLines)
//
// Answers:
//   204  every record of the request is in the store (one batch append, so a
//        request is stored entirely or not at all)
//   400  a bad line; the text/plain body names it ("line 3: invalid value
//        \"abc\""), and NOTHING of the request is stored; also when the store
//        refuses the records as invalid
//   413  body (after any Content-Encoding is undone) over max_body_bytes
//   415  multipart bodies
//   404  other paths; 405 (Allow: POST) other methods on the two paths
//   503  the store failed with a retryable error (Retry-After: 1); retry
//   500  any other store error
// Records without a timestamp get the time the request was received.
//
// There is no authentication: bind it to loopback (the default). Counters:
//   fleetd_ingest_requests_total{kind,code}
//   fleetd_ingest_records_accepted_total{kind}
//   fleetd_ingest_requests_rejected_total{kind,reason}   reason = bad_request,
//       too_large, unsupported, store_unavailable, store_error
#ifndef FLEETD_AGENT_COLLECT_INGEST_SERVER_H_
#define FLEETD_AGENT_COLLECT_INGEST_SERVER_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "agent/storage/storage.h"
#include "common/clock/clock.h"
#include "common/config/config.h"
#include "common/metrics/metrics.h"

namespace fleetd::agent {

struct IngestServerOptions {
  // "host:port" (IPv6 in brackets); port 0 picks a free port (see port()).
  std::string address = "127.0.0.1:9200";
  // Largest request body accepted, decoded (> 0).
  int64_t max_body_bytes = int64_t{1} << 20;
  // Threads serving requests (>= 1). An idle keep-alive connection holds one
  // for up to 5 s.
  int32_t threads = 4;
};

// Declares FLEET_INGEST_ADDR (--ingest-addr) and FLEET_INGEST_MAX_BODY_BYTES
// (--ingest-max-body-bytes) on `settings`, bound to `options`.
void AddIngestSettings(Settings& settings, IngestServerOptions* options);

class IngestServer {
 public:
  // Binds `options.address` and serves in background threads until Stop().
  // `storage` and `clock` (record timestamps) must outlive the server;
  // `registry` may be null (a private one is used).
  // Errors: InvalidArgument naming FLEET_INGEST_ADDR for a malformed address
  // or bad limits; Unavailable when the address cannot be bound.
  static absl::StatusOr<std::unique_ptr<IngestServer>> Start(
      const IngestServerOptions& options, Storage* storage, Clock* clock,
      metrics::Registry* registry);
  ~IngestServer();  // Stop()s.
  IngestServer(const IngestServer&) = delete;
  IngestServer& operator=(const IngestServer&) = delete;

  // The bound port.
  int port() const;
  // Stops accepting, lets requests in progress finish. Idempotent.
  void Stop();

 private:
  struct Impl;
  explicit IngestServer(std::unique_ptr<Impl> impl);

  std::unique_ptr<Impl> impl_;
};

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_COLLECT_INGEST_SERVER_H_
