// A backend writer: delivers decoded batches to one storage system.
#ifndef FLEETD_SERVER_WRITERS_WRITER_H_
#define FLEETD_SERVER_WRITERS_WRITER_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/model/batch.h"

namespace fleetd::server {

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
  // the backend has accepted all of them. Errors: UNAVAILABLE /
  // DEADLINE_EXCEEDED / RESOURCE_EXHAUSTED when the same call may succeed later
  // (backend down, slow or overloaded); INVALID_ARGUMENT when the backend
  // refused the content itself. Writing the same batches again must not
  // duplicate what readers of the backend see (idempotent where the backend
  // allows: deterministic series, timestamps and dedup keys).
  virtual absl::Status Write(absl::Span<const DecodedBatch* const> batches) = 0;

  // Whether the backend is reachable and healthy, for /readyz.
  virtual absl::Status Ping() = 0;
};

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_WRITERS_WRITER_H_
