#include "agent/storage/storage.h"

#include <cstdio>
#include <string>

#include "common/status/status_macros.h"

namespace fleetd::agent {

absl::string_view RecordKindName(RecordKind kind) {
  switch (kind) {
    case RecordKind::kMetric:
      return "metrics";
    case RecordKind::kLog:
      return "logs";
    case RecordKind::kEvent:
      return "events";
  }
  return "unknown";
}

StorageLogFn StderrStorageLog() {
  return [](absl::LogSeverity severity, absl::string_view message) {
    std::string line = std::string(absl::LogSeverityName(severity)) +
                       " fleetd storage: " + std::string(message) + "\n";
    std::fwrite(line.data(), 1, line.size(), stderr);
  };
}

absl::StatusOr<int64_t> Storage::AppendMetric(const v1::Metric& metric) {
  ASSIGN_OR_RETURN(IdRange ids, AppendMetrics({&metric, 1}));
  return ids.first;
}

absl::StatusOr<int64_t> Storage::AppendLog(const v1::LogEntry& log) {
  ASSIGN_OR_RETURN(IdRange ids, AppendLogs({&log, 1}));
  return ids.first;
}

absl::StatusOr<int64_t> Storage::AppendEvent(const v1::Event& event) {
  ASSIGN_OR_RETURN(IdRange ids, AppendEvents({&event, 1}));
  return ids.first;
}

}  // namespace fleetd::agent
