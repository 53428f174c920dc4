// The rows of device batches for ClickHouse: one `INSERT ... FORMAT
// JSONEachRow` body per table (the schema is in clickhouse_writer.cc). Each
// row carries the record's identity (org_id, device_id, stream,
// sequence_number, idx: its index in its batch) and timestamp_ms, then the
// columns of its table; string maps become parallel `<map>_keys` /
// `<map>_values` arrays sorted by key, so a retried batch makes identical
// rows. Strings travel as JSON strings (escaped), never as SQL text.
#ifndef FLEETD_SERVER_WRITERS_CLICKHOUSE_ROWS_H_
#define FLEETD_SERVER_WRITERS_CLICKHOUSE_ROWS_H_

#include <map>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/model/batch.h"

namespace fleetd::server {

inline constexpr absl::string_view kClickHouseEventsTable = "events";
inline constexpr absl::string_view kClickHouseMetricsTable = "metrics";
inline constexpr absl::string_view kClickHouseLogsTable = "logs";

// The body for each table that `batches` have rows for (events, metrics,
// logs: one JSON object per line, in batch and record order), keyed by the
// table names above. INVALID_ARGUMENT for a timestamp before 1970 (the
// column is unsigned) or a string that is not UTF-8 (decoding refuses those).
absl::StatusOr<std::map<absl::string_view, std::string>> EncodeClickHouseRows(
    absl::Span<const DecodedBatch* const> batches);

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_WRITERS_CLICKHOUSE_ROWS_H_
