// Factories for the backend writers. Each returns a Writer
// (server/writers/writer.h) that is safe for concurrent use and idempotent
// where its backend allows.
#ifndef FLEETD_SERVER_WRITERS_BACKENDS_H_
#define FLEETD_SERVER_WRITERS_BACKENDS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/http/http_client.h"
#include "server/store/pg_pool.h"
#include "server/writers/writer.h"

namespace fleetd::server {

// Metrics → VictoriaMetrics via `POST {url}/api/v1/import` (JSON lines). Every
// sample gets the labels device_id and org_id from the batch identity; label
// values are JSON-escaped. Accepts metrics batches (others are ignored).
// Idempotent with VictoriaMetrics' deduplication (-dedup.minScrapeInterval),
// since a retried sample has the same series and timestamp.
struct VictoriaMetricsOptions {
  std::string url;  // e.g. http://127.0.0.1:8428
  absl::Duration timeout = absl::Seconds(10);
};
absl::StatusOr<std::unique_ptr<Writer>> NewVictoriaMetricsWriter(
    const VictoriaMetricsOptions& options);

// Logs → Loki push API `POST {url}/loki/api/v1/push` (snappy-compressed
// protobuf by default, or JSON), one push per flush with entries grouped by
// stream and sorted by timestamp. Stream labels: device_id and org_id (from the
// batch identity), level, and source (left out when empty, which Loki treats as
// the same thing). Entry fields are kept as structured metadata in both
// formats (Loki >= 2.9). Accepts logs batches (others are ignored). HTTP
// answers map as in HttpStatusToStatus; Ping is `GET {url}/ready`. Idempotent:
// a retried entry is identical (labels, timestamp, line, metadata), and Loki
// drops an entry identical to one already in the stream.
struct LokiOptions {
  std::string url;                  // e.g. http://127.0.0.1:3100
  std::string format = "protobuf";  // "protobuf" or "json"
  std::string tenant_id;            // X-Scope-OrgID when non-empty
  absl::Duration timeout = absl::Seconds(10);
};
absl::StatusOr<std::unique_ptr<Writer>> NewLokiWriter(
    const LokiOptions& options);

// Events (and, for analytics, copies of metrics and logs) → ClickHouse over
// HTTP with `INSERT ... FORMAT JSONEachRow`, one INSERT per table (`events`,
// `metrics`, `logs`) present in the flush. Migrate() creates the database and
// tables (ReplacingMergeTree keyed by org, device, stream, sequence and record
// index, so a retried batch collapses: count with FINAL; works with ClickHouse
// 18.16: `timestamp_ms UInt64` plus a materialized `timestamp DateTime`). The
// schema and the mapping of ClickHouse errors to status codes are described in
// clickhouse_writer.cc. Fails with INVALID_ARGUMENT at construction when
// `database` is not an identifier; `user`/`password` are sent as
// X-ClickHouse-User/X-ClickHouse-Key when `user` is set.
struct ClickHouseOptions {
  std::string url;  // e.g. http://127.0.0.1:8123
  std::string database = "fleetd";
  std::string user;
  std::string password;
  absl::Duration timeout = absl::Seconds(10);
};
absl::StatusOr<std::unique_ptr<Writer>> NewClickHouseWriter(
    const ClickHouseOptions& options);

// Maps a ClickHouse HTTP answer to a status by its exception code (data errors
// INVALID_ARGUMENT, overload RESOURCE_EXHAUSTED, the server's own setup
// BackendMisconfigured, ...; the table is in clickhouse_writer.cc). `what`
// names the request in the message ("insert into events", "ping").
absl::Status ClickHouseAnswerToStatus(absl::string_view what,
                                      const HttpResponse& response);

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_WRITERS_BACKENDS_H_
