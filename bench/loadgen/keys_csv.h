// Device keys for the load generator, as `fleetd-server keys create --count N
// --prefix P --org O --csv` prints them: one `device_id,org_id,key` line per
// device.
#ifndef FLEETD_BENCH_LOADGEN_KEYS_CSV_H_
#define FLEETD_BENCH_LOADGEN_KEYS_CSV_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fleetd::bench {

struct DeviceKey {
  std::string device_id;
  std::string org_id;
  std::string api_key;
};

// Parses CSV text. Blank lines, `#` comments and a `device_id,org_id,key`
// header are skipped; surrounding whitespace (and a CR before the newline) is
// trimmed. A line without exactly three non-empty fields is INVALID_ARGUMENT
// naming its line number.
absl::StatusOr<std::vector<DeviceKey>> ParseKeysCsv(absl::string_view text);

// Reads and parses `path` (NOT_FOUND if it cannot be read).
absl::StatusOr<std::vector<DeviceKey>> LoadKeysCsv(const std::string& path);

}  // namespace fleetd::bench

#endif  // FLEETD_BENCH_LOADGEN_KEYS_CSV_H_
