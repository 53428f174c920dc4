#include "server/writers/clickhouse_rows.h"

#include <algorithm>
#include <cstdint>
#include <exception>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "nlohmann/json.hpp"

namespace fleetd::server {
namespace {

// Parallel key/value arrays of a protobuf map, sorted by key (map iteration
// order is unspecified; sorting keeps a retried row identical).
template <typename Map>
void AddMap(const Map& map, const char* keys_column, const char* values_column,
            nlohmann::json* row) {
  std::vector<std::pair<std::string, typename Map::mapped_type>> sorted(
      map.begin(), map.end());
  std::sort(sorted.begin(), sorted.end(),
            [](const auto& a, const auto& b) { return a.first < b.first; });
  nlohmann::json keys = nlohmann::json::array();
  nlohmann::json values = nlohmann::json::array();
  for (auto& [k, v] : sorted) {
    keys.push_back(std::move(k));
    values.push_back(std::move(v));
  }
  (*row)[keys_column] = std::move(keys);
  (*row)[values_column] = std::move(values);
}

absl::StatusOr<nlohmann::json> KeyColumns(
    const DecodedBatch& b, int idx, const google::protobuf::Timestamp& t) {
  if (t.seconds() < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("record ", idx, " of batch ", b.sequence_number,
                     ": ClickHouse cannot store a timestamp before 1970"));
  }
  nlohmann::json row = nlohmann::json::object();
  row["org_id"] = b.device.org_id;
  row["device_id"] = b.device.device_id;
  row["stream"] = b.stream;
  row["sequence_number"] = b.sequence_number;
  row["idx"] = idx;
  row["timestamp_ms"] =
      static_cast<uint64_t>(t.seconds()) * 1000 + t.nanos() / 1'000'000;
  return row;
}

// One JSONEachRow body per table. Throws nlohmann::json exceptions on strings
// that are not UTF-8.
absl::StatusOr<std::map<absl::string_view, std::string>> BuildBodies(
    absl::Span<const DecodedBatch* const> batches) {
  std::map<absl::string_view, std::string> bodies;
  for (const DecodedBatch* b : batches) {
    switch (b->kind) {
      case DataKind::kEvents:
        for (int i = 0; i < b->events.events_size(); ++i) {
          const v1::Event& e = b->events.events(i);
          absl::StatusOr<nlohmann::json> row = KeyColumns(*b, i, e.timestamp());
          if (!row.ok()) return row.status();
          (*row)["name"] = e.name();
          (*row)["event_id"] = e.event_id();
          AddMap(e.properties(), "properties_keys", "properties_values", &*row);
          AddMap(e.values(), "values_keys", "values_values", &*row);
          absl::StrAppend(&bodies[kClickHouseEventsTable], row->dump(), "\n");
        }
        break;
      case DataKind::kMetrics:
        for (int i = 0; i < b->metrics.size(); ++i) {
          const MetricSamples& m = b->metrics;
          google::protobuf::Timestamp ts;
          ts.set_seconds(m.timestamp_seconds(i));
          ts.set_nanos(m.timestamp_nanos(i));
          absl::StatusOr<nlohmann::json> row = KeyColumns(*b, i, ts);
          if (!row.ok()) return row.status();
          (*row)["name"] = std::string(m.name(i));
          (*row)["value"] = m.value(i);
          // Labels come sorted by name (metric_samples.h), as AddMap sorts.
          nlohmann::json keys = nlohmann::json::array();
          nlohmann::json values = nlohmann::json::array();
          for (int j = 0; j < m.label_count(i); ++j) {
            keys.push_back(std::string(m.label(i, j).name));
            values.push_back(std::string(m.label(i, j).value));
          }
          (*row)["labels_keys"] = std::move(keys);
          (*row)["labels_values"] = std::move(values);
          absl::StrAppend(&bodies[kClickHouseMetricsTable], row->dump(), "\n");
        }
        break;
      case DataKind::kLogs:
        for (int i = 0; i < b->logs.logs_size(); ++i) {
          const v1::LogEntry& l = b->logs.logs(i);
          absl::StatusOr<nlohmann::json> row = KeyColumns(*b, i, l.timestamp());
          if (!row.ok()) return row.status();
          (*row)["level"] = l.level();
          (*row)["source"] = l.source();
          (*row)["message"] = l.message();
          AddMap(l.fields(), "fields_keys", "fields_values", &*row);
          absl::StrAppend(&bodies[kClickHouseLogsTable], row->dump(), "\n");
        }
        break;
    }
  }
  return bodies;
}

}  // namespace

absl::StatusOr<std::map<absl::string_view, std::string>> EncodeClickHouseRows(
    absl::Span<const DecodedBatch* const> batches) {
  try {
    return BuildBodies(batches);
  } catch (const std::exception& e) {
    // Invalid UTF-8 in a string; decoding should have refused it already.
    return absl::InvalidArgumentError(
        absl::StrCat("cannot encode rows for ClickHouse: ", e.what()));
  }
}

}  // namespace fleetd::server
