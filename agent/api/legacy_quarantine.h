// Upgrade path for set-aside batches of agents before the set-aside store.
//
// Earlier agents wrote every batch they gave up on to
// `<data_dir>/quarantine/<stream>-<sequence>.pb` (the serialized MetricsBatch,
// LogsBatch or EventsBatch, unencrypted, outside the quota) and marked its
// records synced; many of those batches were valid data refused by a proxy,
// not by the server. This moves each file's records back into the store as a
// set-aside batch (so `fleetd quarantine retry --all` can deliver them) and
// deletes the plaintext file once the store holds them.
#ifndef FLEETD_AGENT_API_LEGACY_QUARANTINE_H_
#define FLEETD_AGENT_API_LEGACY_QUARANTINE_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "agent/storage/storage.h"

namespace fleetd::agent {

struct LegacyImport {
  int64_t batches = 0;  // files imported and removed
  int64_t records = 0;
  int64_t skipped = 0;  // files left in place (unreadable, unknown, refused)
};

// Imports every `<stream>-<sequence>.pb` file of `dir` into `storage` as a
// set-aside batch under its old sequence number, then removes the file. A
// file that cannot be parsed or stored stays where it is and is logged and
// counted in `skipped`. OK with nothing imported when `dir` does not exist.
// Not safe to run concurrently with itself on the same directory.
absl::StatusOr<LegacyImport> ImportLegacyQuarantine(const std::string& dir,
                                                    Storage* storage);

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_API_LEGACY_QUARANTINE_H_
