// The request formats of the local ingest endpoint (ingest_server.h).
//
// Both parsers are all-or-nothing: they return every record of the text, or
// InvalidArgument "line N: <reason>" for the first bad line (lines counted
// from 1, blank and comment lines included).
#ifndef FLEETD_AGENT_COLLECT_INGEST_FORMATS_H_
#define FLEETD_AGENT_COLLECT_INGEST_FORMATS_H_

#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "fleetd/v1/sync.pb.h"

namespace fleetd::agent {

// Prometheus text exposition lines:
//
//   # HELP / # TYPE / any other comment    ignored, as are blank lines
//   name{label="value",...} value [timestamp_ms]
//
// - name: [a-zA-Z_:][a-zA-Z0-9_:]*; label names [a-zA-Z_][a-zA-Z0-9_]*,
//   each at most once, a trailing comma and `{}` allowed, blanks (spaces,
//   tabs) allowed before `{` and around the tokens inside the braces.
// - label values in double quotes with the escapes \\ \" and \n (any other
//   escape is an error) and valid UTF-8.
// - value: a finite decimal number (123, -1.5, 1e-3, +4). NaN, +Inf and -Inf
//   are REJECTED: the samples go to VictoriaMetrics through its JSON import,
//   which cannot carry them, and a client meaning "stale" or "overflow" should
//   not be silently turned into a number.
// - timestamp: optional integer milliseconds since the Unix epoch (within the
//   protobuf Timestamp range); `default_time` when absent.
// Lines end with \n (a trailing \r is dropped). OpenMetrics exemplars and
// "# EOF" markers are not supported ("# EOF" is just a comment).
absl::StatusOr<std::vector<v1::Metric>> ParsePrometheusText(
    absl::string_view text, absl::Time default_time);

// JSON lines, one object per non-blank line:
//
//   {"message": "disk full", "level": "error", "source": "app",
//    "fields": {"k": "v"}, "timestamp": "2024-05-01T10:00:00.5Z"}
//
// - message: string, required.
// - level: string, optional (default "info"), case-insensitive; trace/debug
//   -> debug, info/notice -> info, warn/warning -> warn, error/err -> error,
//   fatal/critical/crit/panic/emerg/alert -> fatal; anything else is an error.
// - source: string, optional (default "ingest").
// - fields: object whose values are all strings, optional.
// - timestamp: RFC 3339 string ("2024-05-01T10:00:00Z", offsets and fractions
//   allowed) or a number of milliseconds since the Unix epoch; `default_time`
//   when absent.
// - any other key is an error (catches typos such as "msg").
absl::StatusOr<std::vector<v1::LogEntry>> ParseJsonLogLines(
    absl::string_view text, absl::Time default_time);

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_COLLECT_INGEST_FORMATS_H_
