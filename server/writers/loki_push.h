// The body of a Loki push (`POST /loki/api/v1/push`) for the log entries of
// device batches: snappy-compressed protobuf (logproto.PushRequest) or JSON.
//
// Stream labels are device_id, org_id (both from the batch identity, i.e. the
// API key), level and source. An empty source is left out rather than replaced
// by a made-up value: in Loki (as in Prometheus) a label with an empty value is
// the same as no label, so `{source=""}` still selects those entries, and a
// placeholder such as "unknown" could collide with a real source of that name.
// Entry fields become structured metadata (Loki >= 2.9 with
// allow_structured_metadata; older Loki ignores the protobuf field and rejects
// the third JSON element, so entries without fields never send it).
//
// Idempotency: the body is a pure function of the batches. Streams are ordered
// by their label text, entries of a stream are sorted by timestamp (stable, so
// equal timestamps keep their order in the flush), and structured metadata is
// sorted by name (protobuf map iteration order is unspecified). A retried batch
// therefore yields entries identical in labels, timestamp, line and metadata,
// which Loki drops as duplicates. Sorting also keeps Loki versions before 2.4
// (no unordered_writes) from rejecting a push whose entries are out of order.
#ifndef FLEETD_SERVER_WRITERS_LOKI_PUSH_H_
#define FLEETD_SERVER_WRITERS_LOKI_PUSH_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/types/span.h"
#include "server/model/batch.h"

namespace fleetd::server {

enum class LokiFormat { kProtobuf, kJson };

// The Content-Type of a push body in `format`.
absl::string_view LokiContentType(LokiFormat format);

// The push body for every entry of the kLogs batches among `batches` (others
// are skipped), or an empty string when there is none (Loki answers 422 to a
// push without streams: send nothing then). INVALID_ARGUMENT for a timestamp
// outside what Loki stores (years 1677..2262), and in JSON for a string that
// is not UTF-8 (decoding refuses both before a batch gets here).
absl::StatusOr<std::string> EncodeLokiPush(
    absl::Span<const DecodedBatch* const> batches, LokiFormat format);

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_WRITERS_LOKI_PUSH_H_
