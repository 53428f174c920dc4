// An in-memory LedgerStore for tests: applied entries and floors in maps,
// every call counted, and a switch that makes every call fail UNAVAILABLE (a
// store that is down), so a test can prove an answer came from a cache above
// it. Safe for concurrent use. Plus helpers every ledger test shares.
#ifndef FLEETD_SERVER_STORE_TESTING_FAKE_LEDGER_STORE_H_
#define FLEETD_SERVER_STORE_TESTING_FAKE_LEDGER_STORE_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "server/store/store.h"

namespace fleetd::server::testing {

class FakeLedgerStore final : public LedgerStore {
 public:
  // Calls so far, and how many entries or keys they carried.
  struct Calls {
    int64_t are_applied = 0;
    int64_t entries_checked = 0;
    int64_t load_history = 0;
    int64_t keys_loaded = 0;
    int64_t record = 0;
    int64_t entries_recorded = 0;

    int64_t reads() const { return are_applied + load_history; }
  };

  absl::StatusOr<std::vector<bool>> AreApplied(
      absl::Span<const LedgerEntry> entries) override;
  absl::Status RecordApplied(absl::Span<const LedgerEntry> entries) override;
  absl::StatusOr<std::vector<LedgerHistory>> LoadHistory(
      absl::Span<const LedgerKey> keys, int limit) override;
  absl::StatusOr<int64_t> RecordAppliedCountingPresent(
      absl::Span<const LedgerEntry> entries) override;
  // Every key with an applied entry, in key order (the fake keeps no times:
  // `within` is ignored), at most `limit`.
  absl::StatusOr<std::vector<LedgerKey>> RecentKeys(absl::Duration within,
                                                    size_t limit) override;

  // As PgStore::CompactLedger for one key: raises its floor to `floor` (never
  // lowers it) and forgets the entries at or below it (they count as not
  // applied again).
  void Compact(const std::string& device_id, const std::string& stream,
               int64_t floor);
  // While down, every call fails UNAVAILABLE and changes nothing.
  void SetDown(bool down);
  // While set, RecordApplied commits and then fails UNAVAILABLE anyway, as a
  // connection lost during COMMIT does.
  void SetRecordInDoubt(bool in_doubt);
  Calls calls() const;

 private:
  struct Stream {
    int64_t floor = INT64_MIN;
    std::set<int64_t> applied;
  };
  using Key = std::pair<std::string, std::string>;

  bool IsApplied(const LedgerEntry& e) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  mutable absl::Mutex mu_;
  bool down_ ABSL_GUARDED_BY(mu_) = false;
  bool in_doubt_ ABSL_GUARDED_BY(mu_) = false;
  Calls calls_ ABSL_GUARDED_BY(mu_);
  std::map<Key, Stream> streams_ ABSL_GUARDED_BY(mu_);
};

// A batch of `device` on `stream` (record count 1), for ledger tests.
LedgerEntry TestEntry(const std::string& device, int64_t seq,
                      const std::string& stream = "metrics");
// Whether `ledger` reports TestEntry(device, seq) applied.
absl::StatusOr<bool> AppliedIn(Ledger& ledger, const std::string& device,
                               int64_t seq);

}  // namespace fleetd::server::testing

#endif  // FLEETD_SERVER_STORE_TESTING_FAKE_LEDGER_STORE_H_
