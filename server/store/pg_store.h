// PostgreSQL implementation of the key, ledger and device stores, plus key
// administration.
#ifndef FLEETD_SERVER_STORE_PG_STORE_H_
#define FLEETD_SERVER_STORE_PG_STORE_H_

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "server/store/pg_pool.h"
#include "server/store/store.h"

namespace fleetd::server {

// A key as listed by administration commands (never the secret).
struct KeyInfo {
  std::string key_id;
  std::string device_id;
  std::string org_id;
  absl::Time created_at;
  std::optional<absl::Time> revoked_at;
};

// A newly created key: the only time its secret is visible.
struct NewKey {
  std::string key_id;
  std::string device_id;
  std::string org_id;
  std::string api_key;  // the full secret key, to hand to the device
};

// What CompactLedger did.
struct LedgerCompaction {
  int64_t rows_deleted = 0;
  int64_t floors_raised = 0;  // keys whose floor was created or raised
};

// The ledger's size in PostgreSQL.
struct LedgerSize {
  int64_t rows = 0;         // sync_ledger rows
  int64_t floor_keys = 0;   // sync_ledger_floor rows
  int64_t table_bytes = 0;  // both tables with their indexes, on disk
};

// Safe for concurrent use (all state is in PostgreSQL; connections come from
// the pool).
//
// The ledger is two tables: sync_ledger, one row per applied batch (device,
// stream, sequence number) stamped with `clock`'s wall time, and
// sync_ledger_floor, one row per (device, stream) whose old rows were
// compacted: the highest sequence number retention deleted. Each ledger call
// is one statement, whatever the number of entries.
//
// Retention (CompactLedger) forgets: a batch whose row it deleted counts as
// not applied again. A device that retries one after the retention (it held
// the batch that long, or its numbering went back after a reset) has it
// written again, which every backend writer absorbs (idempotent writes,
// writer.h); it is never acknowledged without a write. The floor is kept so
// that such batches can be recognised (numbers at or below it).
class PgStore final : public KeyLookup,
                      public LedgerStore,
                      public DeviceRegistry {
 public:
  // `pool` and `clock` must outlive the store. `clock`'s wall time stamps
  // ledger rows (applied_at), which retention compares with.
  explicit PgStore(PgPool* pool, Clock* clock = Clock::Real())
      : pool_(pool), clock_(clock) {}

  // Applies the schema migrations that are missing, under an advisory lock so
  // concurrent servers do not race. Idempotent.
  absl::Status Migrate();
  // The schema version after Migrate().
  absl::StatusOr<int> SchemaVersion();

  // Creates a key for `device_id` in `org_id`, registering the device if new.
  // FAILED_PRECONDITION if the device exists in another org.
  absl::StatusOr<NewKey> CreateKey(const std::string& device_id,
                                   const std::string& org_id);
  // Creates `count` devices named prefix-00001... in one transaction, one key
  // each.
  absl::StatusOr<std::vector<NewKey>> CreateKeys(const std::string& prefix,
                                                 const std::string& org_id,
                                                 int count);
  // Adds a new key for an existing device; older keys stay valid until revoked.
  // NOT_FOUND for an unknown device.
  absl::StatusOr<NewKey> RotateKey(const std::string& device_id);
  // Revokes one key. NOT_FOUND if there is no such unrevoked key.
  absl::Status RevokeKey(const std::string& key_id);
  // Revokes every key of a device; returns how many.
  absl::StatusOr<int> RevokeDeviceKeys(const std::string& device_id);
  // Keys of one device, or all keys when `device_id` is empty.
  absl::StatusOr<std::vector<KeyInfo>> ListKeys(const std::string& device_id);

  // KeyLookup
  absl::StatusOr<std::optional<DeviceIdentity>> LookupKeyHash(
      const std::string& sha256_hex) override;
  // One indexed statement each (api_keys_revoked for RevokedSince).
  absl::StatusOr<Revocations> RevokedSince(absl::Time since) override;
  absl::StatusOr<ValidKeySet> ValidKeys(size_t limit) override;
  // Ledger. An entry is applied if its row exists. RecordApplied inserts all
  // entries in one statement (ON CONFLICT DO NOTHING); rows already there
  // count as present.
  absl::StatusOr<std::vector<bool>> AreApplied(
      absl::Span<const LedgerEntry> entries) override;
  absl::Status RecordApplied(absl::Span<const LedgerEntry> entries) override;
  // LedgerStore
  absl::StatusOr<std::vector<LedgerHistory>> LoadHistory(
      absl::Span<const LedgerKey> keys, int limit) override;
  // The keys of the ledger rows applied within `within` before the store's
  // clock (which stamps applied_at), grouped, newest first (one scan of the
  // applied_at index over that range).
  absl::StatusOr<std::vector<LedgerKey>> RecentKeys(absl::Duration within,
                                                    size_t limit) override;
  absl::StatusOr<int64_t> RecordAppliedCountingPresent(
      absl::Span<const LedgerEntry> entries) override;

  // Retention, in one transaction: for each key, raises its floor to the
  // highest sequence number among its rows applied before `older_than` (never
  // lowers it) and deletes those rows: AreApplied forgets them (see above)
  // and answers every newer entry as before. Concurrent compactions (several
  // servers) run one after the other. Errors leave the ledger unchanged.
  absl::StatusOr<LedgerCompaction> CompactLedger(absl::Time older_than);
  // Row counts and disk size of the ledger tables (counts every row: meant
  // for a periodic gauge, not a request path).
  absl::StatusOr<LedgerSize> GetLedgerSize();
  // DeviceRegistry
  absl::Status TouchDevices(absl::Span<const std::string> device_ids,
                            absl::Time seen) override;
  absl::Status UpdateDeviceInfo(const DeviceIdentity& device,
                                const v1::DeviceInfo& info,
                                const v1::SyncDeviceCapability* capability,
                                absl::Time seen) override;
  absl::Status RecordSyncHealth(
      absl::Span<const SyncHealthReport> reports) override;
  // The health last recorded for a device (nullopt when none was, or the
  // device is unknown), and when it was reported. For operators and tests.
  absl::StatusOr<std::optional<SyncHealthReport>> GetSyncHealth(
      const std::string& device_id);

 private:
  absl::StatusOr<std::vector<NewKey>> CreateKeysInternal(
      const std::vector<std::string>& device_ids, const std::string& org_id);

  PgPool* const pool_;
  Clock* const clock_;
};

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_STORE_PG_STORE_H_
