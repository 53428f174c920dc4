// The memory ring (tier 3): a fixed block of memory, allocated once, holding
// compactly encoded records of all kinds in append order.
//
// When an append does not fit, the oldest records are overwritten, synced or
// not; every overwritten record is counted (Info().kinds[k].dropped_unsynced
// or evicted_synced) and logged (rate-limited). Nothing survives a restart,
// pending batches included: a minimal sensor has nowhere to keep them.
//
// Set-aside batches keep their records in the ring, flagged, so they share its
// capacity: overwritten set-aside records count in set_aside_dropped, and a
// batch whose last record is overwritten is forgotten (logged).
// RetrySetAside appends the records again with fresh ids (the copies may
// overwrite the oldest records like any append). CleanOlderThan leaves
// set-aside records alone.
#ifndef FLEETD_AGENT_STORAGE_MEMORY_STORAGE_H_
#define FLEETD_AGENT_STORAGE_MEMORY_STORAGE_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "agent/storage/storage.h"
#include "common/clock/clock.h"

namespace fleetd::agent {

struct MemoryStorageOptions {
  // Size of the ring, the store's whole memory for record data (rounded down
  // to a multiple of 8). At least 4 KiB. A single record may take at most a
  // quarter of it.
  int64_t capacity_bytes = int64_t{1} << 20;
  // Timestamps for unstamped records and the clean cutoff. Not owned; must
  // outlive the store. nullptr: Clock::Real().
  Clock* clock = nullptr;
  // Warnings. Empty: StderrStorageLog().
  StorageLogFn log;
};

// Errors: InvalidArgument for a capacity below 4 KiB.
absl::StatusOr<std::unique_ptr<Storage>> NewMemoryStorage(
    const MemoryStorageOptions& options);

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_STORAGE_MEMORY_STORAGE_H_
