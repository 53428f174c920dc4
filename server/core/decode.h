// Turns wire batches into validated DecodedBatches, or explains why not.
//
// Everything a device sends passes through here before any backend sees it, so
// a batch is either valid as a whole or rejected as a whole: nothing partial is
// ever written.
#ifndef FLEETD_SERVER_CORE_DECODE_H_
#define FLEETD_SERVER_CORE_DECODE_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "fleetd/v1/sync.pb.h"
#include "server/model/batch.h"

namespace fleetd::server {

struct DecodeLimits {
  // Largest decompressed batch accepted (declared or actual).
  size_t max_decompressed_bytes = 16 << 20;
  int max_records = 50'000;
  int max_labels = 64;
  size_t max_name_bytes = 256;
  size_t max_label_value_bytes = 4096;
  size_t max_log_message_bytes = 256 << 10;
  // Log sources become a Loki stream label; Loki refuses label values over 2048
  // bytes.
  size_t max_source_bytes = 1024;
};

// Label and metric name rules (Prometheus data model).
bool IsValidMetricName(absl::string_view name);
bool IsValidLabelName(absl::string_view name);

// Decodes the batch in `request` for `device` (the identity from the API key).
// In-message compression is undone with bounded decompression; the checksum,
// when present, must be the SHA-256 of the uncompressed serialized batch.
// Labels `device_id` and `org_id` sent by the device must agree with the key
// (PERMISSION_DENIED otherwise) and are dropped (writers add the key's values).
// Records without a timestamp get `now`. Errors: PERMISSION_DENIED as above
// (not a verdict on the batch); otherwise the batch itself is invalid and the
// error is INVALID_ARGUMENT (malformed content, and size limits: too many
// records, oversized or expanding compressed_data) marked as the batch's
// rejection (MarkBatchRejected, common/status/error_class.h), so the device
// sets it aside instead of retrying it forever.
absl::StatusOr<DecodedBatch> DecodeMetrics(
    const v1::SyncMetricsRequest& request, const DeviceIdentity& device,
    const DecodeLimits& limits, absl::Time now);
// DecodeMetrics for a request as received: `request` is a serialized
// fleetd.v1.SyncMetricsRequest. The samples are read straight from the bytes
// (MetricsRequestWire, MetricSamples::Parse), compressed or not, so no
// message object is made per sample. Same statuses, verdicts and batch as
// parsing `request` into the message and calling DecodeMetrics, except that
// the error messages differ for bytes that are not a SyncMetricsRequest (all
// INVALID_ARGUMENT, the batch's rejection, as the front end answers a
// request that does not parse), and that an uncompressed sample with more
// than limits.max_labels label entries on the wire is refused even if
// repeated keys would leave fewer (as for a compressed batch).
absl::StatusOr<DecodedBatch> DecodeMetricsWire(absl::string_view request,
                                               const DeviceIdentity& device,
                                               const DecodeLimits& limits,
                                               absl::Time now);
absl::StatusOr<DecodedBatch> DecodeLogs(const v1::SyncLogsRequest& request,
                                        const DeviceIdentity& device,
                                        const DecodeLimits& limits,
                                        absl::Time now);
absl::StatusOr<DecodedBatch> DecodeEvents(const v1::SyncEventsRequest& request,
                                          const DeviceIdentity& device,
                                          const DecodeLimits& limits,
                                          absl::Time now);

// The verdict form of a decoding error (see above): PERMISSION_DENIED,
// UNAUTHENTICATED and faults of ours (INTERNAL, UNKNOWN, ...) stay as they are;
// RESOURCE_EXHAUSTED (a size limit of the batch) becomes INVALID_ARGUMENT;
// every content error is marked as the batch's rejection.
absl::Status BatchVerdict(absl::Status status);

// Checks that the metadata names no other device or org than `device`
// (PERMISSION_DENIED). Empty ids in the metadata mean "the key's".
absl::Status CheckMetadataIdentity(const v1::SyncMetadata& metadata,
                                   const DeviceIdentity& device);

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_CORE_DECODE_H_
