#include "server/store/ledger_workload.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_format.h"
#include "common/status/status_macros.h"

namespace fleetd::server {

std::string LedgerWorkload::DeviceId(int d) {
  return absl::StrFormat("dev-%05d", d);
}

int64_t LedgerWorkload::Sequence(int d, int j) {
  // 2023-11-14 in Unix nanoseconds, a batch every ~10 s per device, apart by
  // device so that streams do not share numbers.
  return 1'700'000'000'000'000'000 + int64_t{j} * 10'000'000'000 + d * 1'000;
}

absl::StatusOr<LedgerWorkloadResult> RunLedgerWorkload(
    PgStore* store, SimulatedClock* clock, const LedgerWorkload& w) {
  if (w.devices < 1 || w.batches_per_device < 1 || w.flush_entries < 1) {
    return absl::InvalidArgumentError("empty ledger workload");
  }
  LedgerWorkloadResult result;
  const int64_t total = w.batches();
  // Simulated time per flush, so that the last flush lands at `span`.
  const absl::Duration per_flush =
      w.span * (static_cast<double>(w.flush_entries) / total);
  const bool compact = w.retention > absl::ZeroDuration();
  absl::Time next_compaction = clock->Now() + w.compact_every;
  int64_t dead = 0;  // rows deleted since the last vacuum
  std::vector<LedgerEntry> flush;
  flush.reserve(w.flush_entries);
  for (int64_t b = 0; b < total;) {
    flush.clear();
    for (; b < total && flush.size() < static_cast<size_t>(w.flush_entries);
         ++b) {
      const int d = static_cast<int>(b % w.devices);
      const int j = static_cast<int>(b / w.devices);
      flush.push_back({LedgerWorkload::DeviceId(d), LedgerWorkload::kStream,
                       LedgerWorkload::Sequence(d, j), 100});
    }
    RETURN_IF_ERROR(store->RecordApplied(flush));
    result.batches += static_cast<int64_t>(flush.size());
    ++result.flushes;
    clock->Advance(per_flush);
    while (compact && clock->Now() >= next_compaction) {
      ASSIGN_OR_RETURN(LedgerCompaction done,
                       store->CompactLedger(clock->Now() - w.retention));
      result.rows_deleted += done.rows_deleted;
      dead += done.rows_deleted;
      ++result.compactions;
      next_compaction += w.compact_every;
    }
    const int64_t live = result.batches - result.rows_deleted;
    if (w.vacuum && dead > 50 + live / 5) {
      RETURN_IF_ERROR(w.vacuum());
      ++result.vacuums;
      dead = 0;
    }
  }
  ASSIGN_OR_RETURN(result.size, store->GetLedgerSize());
  return result;
}

}  // namespace fleetd::server
