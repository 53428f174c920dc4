// A backend writer: delivers decoded batches to one storage system.
#ifndef FLEETD_SERVER_WRITERS_WRITER_H_
#define FLEETD_SERVER_WRITERS_WRITER_H_

#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/cord.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/model/batch.h"

namespace fleetd::server {

inline constexpr char kBackendMisconfiguredPayload[] =
    "type.fleetd.dev/backend-misconfigured";

// A retryable UNAVAILABLE saying the backend refused the server's request for
// a reason of the server's setup (credentials, tenant, URL, request size ...),
// not because of the data. `reason` is a short label for metrics (e.g. the
// HTTP status "401").
inline absl::Status BackendMisconfigured(absl::string_view reason,
                                         absl::string_view message) {
  absl::Status s = absl::UnavailableError(message);
  s.SetPayload(kBackendMisconfiguredPayload, absl::Cord(reason));
  return s;
}

// The reason label of a BackendMisconfigured status, nullopt for any other.
inline std::optional<std::string> MisconfigurationReason(
    const absl::Status& status) {
  auto reason = status.GetPayload(kBackendMisconfiguredPayload);
  if (!reason.has_value()) return std::nullopt;
  return std::string(*reason);
}

// Implementations are safe for concurrent use.
class Writer {
 public:
  virtual ~Writer() = default;

  // Short backend name for metrics and logs: "victoriametrics", "loki",
  // "clickhouse", ...
  virtual absl::string_view name() const = 0;

  // Creates what the backend needs (tables, ...). Idempotent; called at start
  // and by `fleetd-server migrate`.
  virtual absl::Status Migrate() { return absl::OkStatus(); }

  // Writes every record of `batches` in as few backend requests as it can (the
  // router coalesces many device batches into one call). Returns OK only when
  // the backend has accepted all of them. Errors are picked by what the
  // caller should do:
  //   UNAVAILABLE / DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED when the same call
  //     may succeed later: backend down, slow or overloaded (5xx, 408, 429,
  //     timeouts, connection errors), and also when the backend says the
  //     server is misconfigured or built a request it cannot take (401, 403,
  //     404, 405, 413, ...): then UNAVAILABLE carrying BackendMisconfigured's
  //     payload, so the operator is told while devices keep their data;
  //   INVALID_ARGUMENT (or OUT_OF_RANGE) only when the backend refused the
  //     content of the write (HTTP 400/422 and the like); the group committer
  //     then narrows it down to the batch responsible.
  // Writing the same batches again must not
  // duplicate what readers of the backend see (idempotent where the backend
  // allows: deterministic series, timestamps and dedup keys).
  //
  // OK means the backend accepted the write, not that it is on the backend's
  // disk: VictoriaMetrics keeps imports in memory for about five seconds, and
  // a crash of the backend loses them. The group committer covers that with
  // its replay window (group_commit.h): acknowledged data survives a backend
  // crash as long as the backend comes back with its disk, this server keeps
  // running, and the writer implements InstanceId(). A writer may offer an
  // opt-in to be durable on its own (VictoriaMetricsOptions::flush_on_write),
  // for a simultaneous crash of the backend and this server.
  virtual absl::Status Write(absl::Span<const DecodedBatch* const> batches) = 0;

  // Whether the backend is reachable and healthy, for /readyz.
  virtual absl::Status Ping() = 0;

  // The identity of the backend process this writer talks to right now (for
  // VictoriaMetrics and Loki their process_start_time_seconds), so that the
  // group committer notices a restart and re-writes what the backend may have
  // held only in memory (group_commit.h, "Replay window"). Two calls return
  // the same string exactly as long as the same backend process answers; the
  // string means nothing else. Errors:
  //   UNIMPLEMENTED when the backend does not tell (the default): the
  //     committer then keeps no replay window for this writer;
  //   anything else when it could not be asked now (backend down, timeout):
  //     the committer asks again later.
  // Safe for concurrent use with Write. Called about once a second.
  virtual absl::StatusOr<std::string> InstanceId() {
    return absl::UnimplementedError(
        absl::StrCat(name(), " does not tell its instance identity"));
  }
};

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_WRITERS_WRITER_H_
