#include "server/model/batch.h"

namespace fleetd::server {

absl::string_view DataKindName(DataKind kind) {
  switch (kind) {
    case DataKind::kMetrics:
      return "metrics";
    case DataKind::kLogs:
      return "logs";
    case DataKind::kEvents:
      return "events";
  }
  return "unknown";
}

int DecodedBatch::record_count() const {
  switch (kind) {
    case DataKind::kMetrics:
      return metrics.size();
    case DataKind::kLogs:
      return logs.logs_size();
    case DataKind::kEvents:
      return events.events_size();
  }
  return 0;
}

size_t DecodedBatch::approx_bytes() const {
  size_t payload = payload_bytes;
  size_t per_record = 0;
  switch (kind) {
    case DataKind::kMetrics:
      // Flat samples: exactly what they hold.
      return metrics.MemoryBytes() + sizeof(*this) + device.device_id.size() +
             device.org_id.size() + stream.size();
    case DataKind::kLogs:
      if (payload == 0) payload = logs.ByteSizeLong();
      per_record = sizeof(v1::LogEntry);
      break;
    case DataKind::kEvents:
      if (payload == 0) payload = events.ByteSizeLong();
      per_record = sizeof(v1::Event);
      break;
  }
  // Parsed records take more room than their encoding: each has its message
  // object, and strings and map entries their own allocations (about one
  // pointer-sized header each, folded into the doubled payload).
  return 2 * payload + per_record * static_cast<size_t>(record_count()) +
         sizeof(*this) + device.device_id.size() + device.org_id.size() +
         stream.size();
}

}  // namespace fleetd::server
