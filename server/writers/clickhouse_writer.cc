// Events, and analytics copies of metrics and logs → ClickHouse over HTTP with
// `INSERT INTO db.table FORMAT JSONEachRow`.
//
// Schema (ClickHouse 18.16: no DateTime64, no Map). Every table starts with
//   org_id String, device_id String, stream String, sequence_number Int64,
//   idx UInt32, timestamp_ms UInt64,
//   timestamp DateTime MATERIALIZED toDateTime(intDiv(timestamp_ms, 1000))
// followed by its own columns; string maps are parallel `<map>_keys` /
// `<map>_values` arrays sorted by key:
//   events:  name, event_id, properties_keys/_values (String),
//            values_keys (String) / values_values (Float64)
//   metrics: name, value Float64, labels_keys/_values
//   logs:    level, source, message, fields_keys/_values
// `idx` is the record's index in its device batch. The tables are
// ReplacingMergeTree ordered by (org_id, device_id, stream, sequence_number,
// idx) and partitioned by month, so rows of a retried batch (same identity,
// same content, same partition) collapse into one on merge; queries that need
// exact counts use FINAL. `timestamp` is MATERIALIZED rather than DEFAULT
// because 18.16's JSONEachRow does not evaluate defaults of omitted fields.
// Timestamps before 1970 cannot be stored (UInt64) and are refused.
//
// Nothing from a batch is ever put into SQL text: rows travel as JSON (escaped
// by nlohmann) in the request body, and the only identifiers in the query are
// the table names and the database name, which is validated at construction.
#include <algorithm>
#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/strip.h"
#include "common/status/retryable.h"
#include "server/writers/backends.h"
#include "server/writers/clickhouse_rows.h"
#include "server/writers/http_pool.h"

namespace fleetd::server {
namespace {

// Columns shared by every table: the row's identity and time.
constexpr absl::string_view kKeyColumns =
    "org_id String, device_id String, stream String, sequence_number Int64, "
    "idx UInt32, timestamp_ms UInt64, "
    "timestamp DateTime MATERIALIZED toDateTime(intDiv(timestamp_ms, 1000))";

constexpr absl::string_view kEngine =
    "ENGINE = ReplacingMergeTree() PARTITION BY toYYYYMM(timestamp) "
    "ORDER BY (org_id, device_id, stream, sequence_number, idx)";

struct TableSpec {
  absl::string_view name;
  absl::string_view columns;  // After kKeyColumns.
};

constexpr TableSpec kTables[] = {
    {kClickHouseEventsTable,
     "name String, event_id String, properties_keys Array(String), "
     "properties_values Array(String), values_keys Array(String), "
     "values_values Array(Float64)"},
    {kClickHouseMetricsTable,
     "name String, value Float64, labels_keys Array(String), "
     "labels_values Array(String)"},
    {kClickHouseLogsTable,
     "level String, source String, message String, fields_keys Array(String), "
     "fields_values Array(String)"},
};

// The only kind of database name we put into SQL text. It is also quoted with
// backticks, so that keywords such as `default` work as names.
bool IsValidIdentifier(absl::string_view name) {
  if (name.empty() || name.size() > 64) return false;
  for (size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool ok =
        absl::ascii_isalpha(c) || c == '_' || (i > 0 && absl::ascii_isdigit(c));
    if (!ok) return false;
  }
  return true;
}

// Percent-encodes everything but RFC 3986 unreserved characters.
std::string UrlEncode(absl::string_view s) {
  std::string out;
  for (const char c : s) {
    if (absl::ascii_isalnum(c) || c == '-' || c == '_' || c == '.' ||
        c == '~') {
      out.push_back(c);
    } else {
      absl::StrAppendFormat(&out, "%%%02X", static_cast<unsigned char>(c));
    }
  }
  return out;
}

// The exception code at the start of a ClickHouse error body ("Code: 27,
// e.displayText() = ..."), or -1.
int ExceptionCode(absl::string_view body) {
  const size_t at = body.find("Code: ");
  if (at == absl::string_view::npos) return -1;
  absl::string_view rest = body.substr(at + 6);
  size_t digits = 0;
  while (digits < rest.size() && absl::ascii_isdigit(rest[digits])) ++digits;
  int code = -1;
  if (digits == 0 || !absl::SimpleAtoi(rest.substr(0, digits), &code)) {
    return -1;
  }
  return code;
}

class ClickHouseWriter final : public Writer {
 public:
  explicit ClickHouseWriter(const ClickHouseOptions& options)
      : base_(absl::StripSuffix(options.url, "/")),
        database_(options.database),
        user_(options.user),
        password_(options.password),
        timeout_(options.timeout) {}

  absl::string_view name() const override { return "clickhouse"; }

  absl::Status Migrate() override {
    absl::Status s = Execute(
        absl::StrCat("CREATE DATABASE IF NOT EXISTS `", database_, "`"));
    if (!s.ok()) return s;
    for (const TableSpec& t : kTables) {
      s = Execute(absl::StrCat("CREATE TABLE IF NOT EXISTS `", database_, "`.`",
                               t.name, "` (", kKeyColumns, ", ", t.columns,
                               ") ", kEngine));
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

  // One INSERT per table present in the flush (events, metrics, logs, in that
  // order). If a later insert fails after an earlier one succeeded, the retry
  // inserts the earlier rows again and they collapse with the first copy.
  absl::Status Write(absl::Span<const DecodedBatch* const> batches) override {
    absl::StatusOr<std::map<absl::string_view, std::string>> bodies =
        EncodeClickHouseRows(batches);
    if (!bodies.ok()) return bodies.status();
    for (absl::string_view table :
         {kClickHouseEventsTable, kClickHouseMetricsTable,
          kClickHouseLogsTable}) {
      auto it = bodies->find(table);
      if (it == bodies->end()) continue;
      const std::string query = absl::StrCat("INSERT INTO `", database_, "`.`",
                                             table, "` FORMAT JSONEachRow");
      HttpRequest request = Request(query);
      request.method = "POST";
      request.body = std::move(it->second);
      request.headers.emplace_back("Content-Type", "application/json");
      absl::StatusOr<HttpResponse> response = pool_.Send(request);
      if (!response.ok()) return response.status();
      absl::Status s = ClickHouseAnswerToStatus(
          absl::StrCat("insert into ", table), *response);
      if (!s.ok()) return s;
    }
    return absl::OkStatus();
  }

  absl::Status Ping() override {
    HttpRequest request;
    request.url = absl::StrCat(base_, "/ping");
    request.timeout = std::min(timeout_, absl::Seconds(2));
    absl::StatusOr<HttpResponse> response = pool_.Send(request);
    if (!response.ok()) return response.status();
    absl::Status s = ClickHouseAnswerToStatus("ping", *response);
    if (!s.ok()) return s;
    if (absl::StripAsciiWhitespace(response->body) != "Ok.") {
      return absl::UnavailableError(absl::StrCat("clickhouse /ping answered \"",
                                                 response->body.substr(0, 100),
                                                 "\", not \"Ok.\""));
    }
    return absl::OkStatus();
  }

 private:
  // A request for `query` (in the URL), with credentials.
  HttpRequest Request(absl::string_view query) const {
    HttpRequest request;
    request.url = absl::StrCat(base_, "/?query=", UrlEncode(query));
    request.timeout = timeout_;
    if (!user_.empty()) {
      request.headers.emplace_back("X-ClickHouse-User", user_);
      request.headers.emplace_back("X-ClickHouse-Key", password_);
    }
    return request;
  }

  // Runs a statement that returns nothing (DDL).
  absl::Status Execute(const std::string& sql) {
    HttpRequest request = Request(sql);
    request.method = "POST";
    absl::StatusOr<HttpResponse> response = pool_.Send(request);
    if (!response.ok()) return response.status();
    return ClickHouseAnswerToStatus("migration", *response);
  }

  const std::string base_;
  const std::string database_;
  const std::string user_;
  const std::string password_;
  const absl::Duration timeout_;
  HttpPool pool_;
};

}  // namespace

// ClickHouse 18.16 answers 500 for many errors, 400/404/401 for some; the
// exception code says what happened, so it decides:
//   INVALID_ARGUMENT (the rows were refused; the group committer isolates the
//     batch responsible):  6 CANNOT_PARSE_TEXT, 26 CANNOT_PARSE_QUOTED_STRING,
//     27 CANNOT_PARSE_INPUT_ASSERTION_FAILED, 38 CANNOT_PARSE_DATE,
//     41 CANNOT_PARSE_DATETIME, 53 TYPE_MISMATCH, 70 CANNOT_CONVERT_TYPE,
//     72 CANNOT_PARSE_NUMBER, 117 INCORRECT_DATA, 131 TOO_LARGE_STRING_SIZE,
//     321 VALUE_IS_OUT_OF_RANGE_OF_DATA_TYPE.
//   RESOURCE_EXHAUSTED (overloaded): 202 TOO_MANY_SIMULTANEOUS_QUERIES,
//     241 MEMORY_LIMIT_EXCEEDED, 252 TOO_MANY_PARTS.
//   DEADLINE_EXCEEDED: 159 TIMEOUT_EXCEEDED.
//   UNAVAILABLE (transient): 209 SOCKET_TIMEOUT, 210 NETWORK_ERROR,
//     242 TABLE_IS_READ_ONLY.
//   UNAVAILABLE marked BackendMisconfigured (the server's own setup is wrong
//     and must be fixed by the operator; devices keep their data meanwhile):
//     60 UNKNOWN_TABLE and 81 UNKNOWN_DATABASE (migration not run),
//     192 UNKNOWN_USER, 193 WRONG_PASSWORD, 194 REQUIRED_PASSWORD,
//     516 AUTHENTICATION_FAILED, 497 ACCESS_DENIED.
// Any other error: 5xx (and 408) UNAVAILABLE, 429 RESOURCE_EXHAUSTED, and every
// other status BackendMisconfigured, including 400 and 422: our server builds
// the query, so a refusal that names no data error (a syntax error, an unknown
// column) is ours, not the device's.
absl::Status ClickHouseAnswerToStatus(absl::string_view what,
                                      const HttpResponse& response) {
  if (response.status_code >= 200 && response.status_code < 300) {
    return absl::OkStatus();
  }
  const std::string message =
      absl::StrCat("clickhouse ", what, " answered HTTP ", response.status_code,
                   ": ", response.body.substr(0, 300));
  int code = ExceptionCode(response.body);
  switch (code) {
    case 6:
    case 26:
    case 27:
    case 38:
    case 41:
    case 53:
    case 70:
    case 72:
    case 117:
    case 131:
    case 321:
      return absl::InvalidArgumentError(message);
    case 202:
    case 241:
    case 252:
      return absl::ResourceExhaustedError(message);
    case 159:
      return absl::DeadlineExceededError(message);
    case 209:
    case 210:
    case 242:
      return absl::UnavailableError(message);
    case 60:
    case 81:
    case 192:
    case 193:
    case 194:
    case 497:
    case 516:
      return BackendMisconfigured(absl::StrCat(response.status_code), message);
    default: {
      absl::Status s =
          HttpStatusToStatus(absl::StrCat("clickhouse ", what), response);
      if (IsRetryable(s.code()) || MisconfigurationReason(s).has_value()) {
        return s;
      }
      return BackendMisconfigured(absl::StrCat(response.status_code), message);
    }
  }
}

absl::StatusOr<std::unique_ptr<Writer>> NewClickHouseWriter(
    const ClickHouseOptions& options) {
  if (options.url.empty()) {
    return absl::InvalidArgumentError("FLEET_CLICKHOUSE_URL is not set");
  }
  if (!IsValidIdentifier(options.database)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ClickHouse database name \"", absl::CEscape(options.database),
        "\" is not an identifier ([A-Za-z_][A-Za-z0-9_]*, at most 64 bytes)"));
  }
  if (options.timeout <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("ClickHouse timeout must be positive");
  }
  return std::unique_ptr<Writer>(new ClickHouseWriter(options));
}

}  // namespace fleetd::server
