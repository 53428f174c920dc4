// Helpers shared by the collectors and the ingest endpoint. Internal to
// agent/collect; not part of its interface.
#ifndef FLEETD_AGENT_COLLECT_COLLECT_UTIL_H_
#define FLEETD_AGENT_COLLECT_COLLECT_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "google/protobuf/timestamp.pb.h"

namespace fleetd::agent::collect_internal {

// The whole content of a (small) file such as /proc/stat, which reports size 0
// and must be read to EOF. NotFound when it does not exist; OutOfRange when it
// is larger than `max_bytes`; Unavailable for other I/O errors.
absl::StatusOr<std::string> ReadSmallFile(const std::string& path,
                                          size_t max_bytes = size_t{4} << 20);

// `t` as a protobuf Timestamp (nanos always in [0, 1e9)).
google::protobuf::Timestamp ToProtoTimestamp(absl::Time t);

// Whether `t` fits google.protobuf.Timestamp (years 0001 to 9999).
bool InProtoTimestampRange(absl::Time t);

// Splits "host:port" (IPv6 hosts in brackets, port 0..65535).
// InvalidArgument naming `setting` otherwise.
absl::Status SplitHostPort(absl::string_view address, absl::string_view setting,
                           std::string* host, int* port);

// `root` + `path` ("/proc/stat"), without doubling the slash; "" and "/" are
// the real root.
std::string UnderRoot(absl::string_view root, absl::string_view path);

}  // namespace fleetd::agent::collect_internal

#endif  // FLEETD_AGENT_COLLECT_COLLECT_UTIL_H_
