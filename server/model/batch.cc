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
      return metrics.metrics_size();
    case DataKind::kLogs:
      return logs.logs_size();
    case DataKind::kEvents:
      return events.events_size();
  }
  return 0;
}

size_t DecodedBatch::approx_bytes() const {
  size_t payload = 0;
  switch (kind) {
    case DataKind::kMetrics:
      payload = metrics.SpaceUsedLong();
      break;
    case DataKind::kLogs:
      payload = logs.SpaceUsedLong();
      break;
    case DataKind::kEvents:
      payload = events.SpaceUsedLong();
      break;
  }
  return payload + sizeof(*this) + device.device_id.size() +
         device.org_id.size() + stream.size();
}

}  // namespace fleetd::server
