// A few HTTP clients shared by a writer's flush threads (each client performs
// one request at a time, so a writer with N concurrent flushes wants N
// clients).
#ifndef FLEETD_SERVER_WRITERS_HTTP_POOL_H_
#define FLEETD_SERVER_WRITERS_HTTP_POOL_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/http/http_client.h"
#include "server/writers/writer.h"

namespace fleetd::server {

// Safe for concurrent use. Clients are created on demand and kept for reuse
// (keep-alive connections to the backend).
class HttpPool {
 public:
  explicit HttpPool(CurlHttpClientOptions options = {})
      : options_(std::move(options)) {}

  // Sends `request` on an idle client (creating one if none is idle). Transport
  // failures are retryable: UNAVAILABLE, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED
  // (a response over the size limit); a request the client cannot send (bad
  // URL, header) is the server's configuration, UNAVAILABLE marked
  // BackendMisconfigured.
  absl::StatusOr<HttpResponse> Send(const HttpRequest& request);

 private:
  const CurlHttpClientOptions options_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<HttpClient>> idle_ ABSL_GUARDED_BY(mu_);
};

// Maps a backend's HTTP answer to a status by what the caller should do:
//   2xx                      OK;
//   429                      RESOURCE_EXHAUSTED (overloaded: retry later);
//   408, 5xx                 UNAVAILABLE (retry later);
//   400, 422                 INVALID_ARGUMENT: the content was refused (the
//                            group committer isolates the batch responsible);
//   any other status (401, 403, 404, 405, 407, 411, 413, 414, 415, 431, 3xx,
//   ...)                     UNAVAILABLE marked BackendMisconfigured with the
//                            status as reason: the server is misconfigured or
//                            built a request the backend cannot take; devices
//                            retry while the operator is told.
// The message names `backend` and quotes the start of the response body.
absl::Status HttpStatusToStatus(absl::string_view backend,
                                const HttpResponse& response);

// The value of the sample `process_start_time_seconds` (the time the backend
// process started, which Prometheus client libraries export) in a Prometheus
// text exposition, as written there; nullopt when absent.
std::optional<std::string> ParseProcessStartTime(absl::string_view body);

// Writer::InstanceId for a backend that exports process_start_time_seconds on
// `GET {base_url}/metrics` (VictoriaMetrics, Loki): that value. UNIMPLEMENTED
// when the backend has no /metrics (404) or it lacks the metric; any other
// failure as from Send / HttpStatusToStatus (retryable: ask again later).
absl::StatusOr<std::string> ProcessStartInstanceId(HttpPool& pool,
                                                   absl::string_view backend,
                                                   absl::string_view base_url);

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_WRITERS_HTTP_POOL_H_
