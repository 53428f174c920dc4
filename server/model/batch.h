// The server's unit of delivery: one device batch, decoded and validated.
#ifndef FLEETD_SERVER_MODEL_BATCH_H_
#define FLEETD_SERVER_MODEL_BATCH_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/strings/string_view.h"
#include "fleetd/v1/sync.pb.h"
#include "server/model/metric_samples.h"

namespace fleetd::server {

// Who a request writes as. Always derived from the API key, never from the
// request body.
struct DeviceIdentity {
  std::string device_id;
  std::string org_id;
  // The id of the key that authenticated the call (for audit logs; never the
  // secret).
  std::string key_id;
};

enum class DataKind { kMetrics, kLogs, kEvents };

absl::string_view DataKindName(DataKind kind);  // "metrics", "logs", "events"

// A batch after decompression and validation. Exactly the payload matching
// `kind` is set, never in compressed form: metric samples in flat form
// (metric_samples.h: the bulk of the traffic, read without message objects),
// log entries and events as messages (`logs.logs()`, `events.events()`).
struct DecodedBatch {
  DeviceIdentity device;
  DataKind kind = DataKind::kMetrics;
  // Sequence numbers are unique per (device, stream).
  std::string stream;
  int64_t sequence_number = 0;
  MetricSamples metrics;
  v1::LogsBatch logs;
  v1::EventsBatch events;
  // Serialized size of the payload, when the decoder knows it (it read that
  // many bytes); 0 if unknown.
  size_t payload_bytes = 0;

  int record_count() const;
  // Approximate in-memory size, for queue byte limits: the payload's
  // serialized size plus a fixed overhead per record, no reflection. Cheap
  // when `payload_bytes` is set; otherwise the payload is measured
  // (ByteSizeLong, a walk over the records).
  size_t approx_bytes() const;
};

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_MODEL_BATCH_H_
