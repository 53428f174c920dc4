// A simulated fleet filling the ledger over days, for the retention test and
// benchmark: `devices` devices each send `batches_per_device` batches on one
// stream, recorded in flushes of `flush_entries` (as the group committer
// does), while a SimulatedClock advances so that the batches' applied_at
// spreads over `span`; every `compact_every` of simulated time the ledger is
// compacted with `retention`, as LedgerCompactor does.
#ifndef FLEETD_SERVER_STORE_LEDGER_WORKLOAD_H_
#define FLEETD_SERVER_STORE_LEDGER_WORKLOAD_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "server/store/pg_store.h"

namespace fleetd::server {

struct LedgerWorkload {
  int devices = 10'000;
  int batches_per_device = 100;
  int flush_entries = 500;
  absl::Duration span = absl::Hours(240);
  // Zero: never compact.
  absl::Duration retention = absl::Hours(168);
  absl::Duration compact_every = absl::Hours(1);
  // Runs VACUUM on sync_ledger (optional). Called when compaction has deleted
  // 20 % of the live rows plus 50 since the last call: when PostgreSQL's
  // autovacuum would (default thresholds), which a run that compresses days
  // into seconds does not leave it the time to do.
  std::function<absl::Status()> vacuum;

  int64_t batches() const {
    return static_cast<int64_t>(devices) * batches_per_device;
  }
  // Device `d`'s id and the sequence number of its batch `j`: increasing per
  // stream, with gaps, as our agent's (nanosecond-based) ones.
  static std::string DeviceId(int d);
  static int64_t Sequence(int d, int j);
  static constexpr const char* kStream = "metrics";
};

struct LedgerWorkloadResult {
  int64_t batches = 0;
  int64_t flushes = 0;
  int64_t compactions = 0;
  int64_t rows_deleted = 0;
  int64_t vacuums = 0;
  LedgerSize size;  // at the end
};

// Runs the workload against `store`, whose clock must be `clock`. Batch j of
// every device is recorded before batch j + 1 of any.
absl::StatusOr<LedgerWorkloadResult> RunLedgerWorkload(
    PgStore* store, SimulatedClock* clock, const LedgerWorkload& workload);

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_STORE_LEDGER_WORKLOAD_H_
