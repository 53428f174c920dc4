// Compact encodings of stored records, shared by the SQLite store and the
// memory ring. Internal to agent/storage.
//
// Strings are a varint length followed by the bytes; a string map is a varint
// count followed by key/value strings; a double map stores each value as its 8
// IEEE-754 bytes (little-endian), so NaN payloads survive. There are no field
// tags: each record kind has one fixed layout, which is what makes this much
// smaller than the protobuf wire form for label-heavy data.
#ifndef FLEETD_AGENT_STORAGE_RECORD_CODEC_H_
#define FLEETD_AGENT_STORAGE_RECORD_CODEC_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "fleetd/v1/sync.pb.h"
#include "google/protobuf/timestamp.pb.h"

namespace fleetd::agent::storage_internal {

// Timestamps are stored as int64 Unix nanoseconds (years 1678..2262).
// InvalidArgument outside that range or for nanos outside [0, 1e9).
absl::StatusOr<int64_t> TimestampToNanos(const google::protobuf::Timestamp& ts);
void NanosToTimestamp(int64_t nanos, google::protobuf::Timestamp* ts);

// Bit pattern of a double as an int64 and back (exact, NaN payloads kept).
int64_t DoubleBits(double v);
double BitsToDouble(int64_t bits);

void PutVarint(std::string* out, uint64_t v);
void PutString(std::string* out, absl::string_view s);
void PutDouble(std::string* out, double v);

// Reads the encodings above from the front of a buffer. Every getter returns
// false (and leaves the reader unusable) on truncated or malformed input.
class Reader {
 public:
  explicit Reader(absl::string_view in) : in_(in) {}
  bool GetVarint(uint64_t* v);
  bool GetString(absl::string_view* s);
  bool GetDouble(double* v);
  bool done() const { return in_.empty(); }

 private:
  absl::string_view in_;
};

// Scratch space reused between calls so that encoding a batch does not
// allocate per record. Not thread-safe; one per store, used under its lock.
struct EncodeScratch {
  std::vector<const google::protobuf::MapPair<std::string, std::string>*> pairs;
};

// A metric's identity: its name and its labels sorted by key (so the same
// label set always encodes the same, whatever the map's iteration order).
void AppendSeriesKey(const v1::Metric& metric, EncodeScratch* scratch,
                     std::string* out);
// Sets name and labels of `metric` from a series key. DataLoss when malformed.
absl::Status DecodeSeriesKey(absl::string_view key, v1::Metric* metric);

// A whole metric except its timestamp: value, name, labels (unsorted).
void AppendMetricPayload(const v1::Metric& metric, std::string* out);
absl::Status DecodeMetricPayload(absl::string_view payload, v1::Metric* metric);

// A log entry except its timestamp: level, message, source, fields.
void AppendLogBody(const v1::LogEntry& log, std::string* out);
absl::Status DecodeLogBody(absl::string_view body, v1::LogEntry* log);

// An event except its timestamp: name, event_id, properties, values.
void AppendEventBody(const v1::Event& event, std::string* out);
absl::Status DecodeEventBody(absl::string_view body, v1::Event* event);

}  // namespace fleetd::agent::storage_internal

#endif  // FLEETD_AGENT_STORAGE_RECORD_CODEC_H_
