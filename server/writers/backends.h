// Factories for the backend writers. Each returns a Writer
// (server/writers/writer.h) that is safe for concurrent use and idempotent
// where its backend allows.
#ifndef FLEETD_SERVER_WRITERS_BACKENDS_H_
#define FLEETD_SERVER_WRITERS_BACKENDS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "common/http/http_client.h"
#include "common/metrics/metrics.h"
#include "server/store/pg_pool.h"
#include "server/writers/writer.h"

namespace fleetd::server {

// Metrics → VictoriaMetrics via Prometheus remote write: POST
// {url}{write_path} with a snappy-compressed protobuf WriteRequest
// (remote_write.h: labels __name__, the metric's labels, and device_id and
// org_id from the batch identity, sorted by name; the samples of a series in
// timestamp order, in ms).
// Any remote-write receiver works by its path: VictoriaMetrics single node
// "/api/v1/write" (the default; "/prometheus/api/v1/write" too), vminsert
// "/insert/<tenant>/prometheus/api/v1/write", Prometheus "/api/v1/write" (with
// --web.enable-remote-write-receiver), Mimir "/api/v1/push". Fails with
// INVALID_ARGUMENT at construction when `url` is empty or `write_path` does
// not start with "/". Accepts metrics batches (others are ignored). HTTP
// answers map as in HttpStatusToStatus, except VictoriaMetrics' 400
// "unsupported path requested", which is BackendMisconfigured("path").
//
// Exactly once needs VictoriaMetrics' deduplication: a retried sample has the
// same series and timestamp, and VictoriaMetrics started with
// -dedup.minScrapeInterval=1ms keeps one of them (without it, readers see
// both). Migrate() and Ping() read `GET {url}/flags` and log a warning and set
// the gauge fleetd_victoriametrics_dedup_enabled to 0 when it is off (1 on, -1
// unknown); /readyz does not fail for it.
//
// VictoriaMetrics answers a write while the rows are still in memory (about
// five seconds) and loses them on a crash. InstanceId() returns its
// process_start_time_seconds (GET {url}/metrics), so the group committer's
// replay window writes them again after a restart (group_commit.h): nothing
// acknowledged is lost as long as this server keeps running.
//
// Write returns OK only when VictoriaMetrics will keep the samples:
//   - with flush_on_write (opt-in, for a crash of VictoriaMetrics and this
//     server at once; single node only, ~95 ms per write), after the write it
//     calls `/snapshot/create` (and `/snapshot/delete`), which writes
//     VictoriaMetrics' in-memory parts to disk. A failed snapshot is
//     UNAVAILABLE (the devices retry; the rewrite is deduplicated), a failed
//     delete only a warning and
//     fleetd_victoriametrics_flush_failures_total{step="delete"}.
//   - samples VictoriaMetrics would drop while answering 204 (older than its
//     -retentionPeriod, read from /flags, 31 days when unknown; or more than 2
//     days ahead; each with 1 h of margin) are refused with INVALID_ARGUMENT
//     naming the sample, so the batch carrying them is set aside on its device
//     instead of vanishing (fleetd_victoriametrics_refused_samples_total).
//
// Ping is `GET {url}/health`; a receiver without it (404) counts as reachable.
// /flags, /metrics and the snapshots are read relative to `url` too.
struct VictoriaMetricsOptions {
  std::string url;  // e.g. http://127.0.0.1:8428
  std::string write_path = "/api/v1/write";
  absl::Duration timeout = absl::Seconds(10);
  bool flush_on_write = false;
  Clock* clock = nullptr;                // wall time; null: Clock::Real()
  metrics::Registry* metrics = nullptr;  // null: no metrics
};
absl::StatusOr<std::unique_ptr<Writer>> NewVictoriaMetricsWriter(
    const VictoriaMetricsOptions& options);

// What the writer needs from VictoriaMetrics' command line.
struct VictoriaMetricsFlags {
  absl::Duration dedup_interval;  // zero: deduplication off
  absl::Duration retention;
};
// Parses the body of `GET /flags` (lines `-name="value"`, only flags set on
// the command line); absent flags take VictoriaMetrics' defaults (no dedup,
// retention one month = 31 days). InvalidArgument for a retention it cannot
// parse.
absl::StatusOr<VictoriaMetricsFlags> ParseVictoriaMetricsFlags(
    absl::string_view body);
// A -retentionPeriod value: a number with suffix h, d, w or y, or without
// suffix in months of 31 days ("1", "100y", "2w", "0.5d").
absl::StatusOr<absl::Duration> ParseVictoriaMetricsRetention(
    absl::string_view value);

// Logs → Loki push API `POST {url}/loki/api/v1/push` (snappy-compressed
// protobuf by default, or JSON), one push per flush with entries grouped by
// stream and sorted by timestamp. Stream labels: device_id and org_id (from the
// batch identity), level, and source (left out when empty, which Loki treats as
// the same thing). Entry fields are kept as structured metadata in both
// formats (Loki >= 2.9). Accepts logs batches (others are ignored). HTTP
// answers map as in HttpStatusToStatus; Ping is `GET {url}/ready`. Idempotent:
// a retried entry is identical (labels, timestamp, line, metadata), and Loki
// drops an entry identical to one already in the stream. InstanceId() is
// Loki's process_start_time_seconds (GET {url}/metrics; UNIMPLEMENTED without
// /metrics), so entries a crashed ingester held in memory are replayed.
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
