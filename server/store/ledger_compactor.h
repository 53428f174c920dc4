// Runs the ledger's retention (PgStore::CompactLedger) in the background and
// reports the ledger's size.
//
// A thread compacts once at start and then every Options::interval of the
// clock's monotonic time, each time with the cutoff clock->Now() -
// Options::retention (the same clock that stamps rows, PgStore's, so a
// simulated clock drives retention in tests). After each run it sets the
// gauges fleetd_ledger_rows, fleetd_ledger_floor_keys and
// fleetd_ledger_table_bytes. A failed run (PostgreSQL down, ...) is logged,
// counted in fleetd_ledger_compactions_total{result="error"} and tried again
// at the next interval; nothing is lost by skipping one.
#ifndef FLEETD_SERVER_STORE_LEDGER_COMPACTOR_H_
#define FLEETD_SERVER_STORE_LEDGER_COMPACTOR_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "common/metrics/metrics.h"
#include "server/store/pg_store.h"

namespace fleetd::server {

class LedgerCompactor {
 public:
  struct Options {
    // Rows applied longer ago than this are folded into their key's floor
    // (> 0). A device must not re-send, after this long, a batch numbered
    // below one of its applied ones (pg_store.h).
    absl::Duration retention = absl::Hours(168);
    // Time between runs (> 0).
    absl::Duration interval = absl::Hours(1);
    // Must outlive the compactor; nullptr: no metrics.
    metrics::Registry* metrics = nullptr;
  };

  // Starts the thread. `store` and `clock` must outlive the compactor.
  // INVALID_ARGUMENT for options out of range.
  static absl::StatusOr<std::unique_ptr<LedgerCompactor>> Start(
      PgStore* store, Clock* clock, Options options);
  // Stops the thread, waiting for a run under way.
  ~LedgerCompactor();
  LedgerCompactor(const LedgerCompactor&) = delete;
  LedgerCompactor& operator=(const LedgerCompactor&) = delete;

  // Runs finished so far, failed ones included (for tests to wait on).
  int64_t runs() const { return runs_.load(); }

 private:
  LedgerCompactor(PgStore* store, Clock* clock, Options options);
  void Loop();
  void RunOnce();

  PgStore* const store_;
  Clock* const clock_;
  const Options options_;
  Wakeup stop_;
  std::atomic<int64_t> runs_{0};
  std::thread thread_;
};

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_STORE_LEDGER_COMPACTOR_H_
