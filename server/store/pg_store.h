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

// Safe for concurrent use (all state is in PostgreSQL; connections come from
// the pool).
class PgStore final : public KeyLookup, public Ledger, public DeviceRegistry {
 public:
  // `pool` must outlive the store.
  explicit PgStore(PgPool* pool) : pool_(pool) {}

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
  // Ledger
  absl::StatusOr<std::vector<bool>> AreApplied(
      absl::Span<const LedgerEntry> entries) override;
  absl::Status RecordApplied(absl::Span<const LedgerEntry> entries) override;
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
};

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_STORE_PG_STORE_H_
