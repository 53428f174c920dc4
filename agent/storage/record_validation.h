// Checks a record must pass before a store accepts it, shared by the SQLite
// store and the memory ring (every Storage::Append* runs them).
//
// Proto3 `string` fields must hold valid UTF-8. A record that breaks this
// serializes, but the server's RPC stack cannot parse the batch carrying it and
// answers with its own error rather than our server's verdict on the batch, so
// the batch would be retried forever and block its stream. The check therefore
// sits at the store's door, where every producer (collectors, the ingest
// endpoint, the embeddable API) passes.
#ifndef FLEETD_AGENT_STORAGE_RECORD_VALIDATION_H_
#define FLEETD_AGENT_STORAGE_RECORD_VALIDATION_H_

#include <cstddef>

#include "absl/base/optimization.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "fleetd/v1/sync.pb.h"

namespace fleetd::agent {

// OK when every string field of the record (map keys included) is valid
// UTF-8. Otherwise InvalidArgument naming the first bad field found, e.g.
// `labels["host"] is not valid UTF-8 (byte 0xff at offset 3)`; the bytes of a
// bad string appear in the message only C-escaped, so the message itself is
// always valid UTF-8.
//   Metric: name, labels (keys and values).
//   LogEntry: level, message, source, fields (keys and values).
//   Event: name, event_id, properties (keys and values), values (keys).
absl::Status ValidateRecordText(const v1::Metric& metric);
absl::Status ValidateRecordText(const v1::LogEntry& log);
absl::Status ValidateRecordText(const v1::Event& event);

// ValidateRecordText for record `index` of a batch being appended; the message
// starts with "<what> <index> of the batch: ", e.g. "log entry 2 of the batch".
template <typename Record>
absl::Status ValidateBatchRecordText(const Record& record,
                                     absl::string_view what, size_t index) {
  absl::Status s = ValidateRecordText(record);
  if (ABSL_PREDICT_TRUE(s.ok())) return s;
  return absl::InvalidArgumentError(
      absl::StrCat(what, " ", index, " of the batch: ", s.message()));
}

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_STORAGE_RECORD_VALIDATION_H_
