// Server metadata in PostgreSQL: devices, API keys, and the sync ledger.
#ifndef FLEETD_SERVER_STORE_STORE_H_
#define FLEETD_SERVER_STORE_STORE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "fleetd/v1/sync.pb.h"
#include "server/model/batch.h"

namespace fleetd::server {

// Looks up API keys by the SHA-256 of the whole key (keys are never stored in
// clear).
class KeyLookup {
 public:
  virtual ~KeyLookup() = default;
  // The identity of a valid (existing, not revoked) key with this hash, nullopt
  // when there is none. Errors only when the store cannot answer (UNAVAILABLE
  // etc.).
  virtual absl::StatusOr<std::optional<DeviceIdentity>> LookupKeyHash(
      const std::string& sha256_hex) = 0;

  // Hashes of the keys revoked at or after `since` on the store's clock (the
  // store itself may hold revocations stamped a little before they became
  // visible: callers ask again from a margin before the last `now`), and the
  // store's time when it answered. UNIMPLEMENTED when the store cannot list
  // revocations; callers then re-check each key by itself.
  struct Revocations {
    std::vector<std::string> hashes;
    absl::Time now;
  };
  virtual absl::StatusOr<Revocations> RevokedSince(absl::Time since) {
    return absl::UnimplementedError("this key store cannot list revocations");
  }

  // Up to `limit` valid keys, newest first, by hash, and the store's time when
  // it answered (to start asking RevokedSince from). For warming a cache;
  // UNIMPLEMENTED when the store cannot list keys.
  struct ValidKeySet {
    std::vector<std::pair<std::string, DeviceIdentity>> keys;
    absl::Time now;
  };
  virtual absl::StatusOr<ValidKeySet> ValidKeys(size_t limit) {
    return absl::UnimplementedError("this key store cannot list keys");
  }
};

// One applied batch.
struct LedgerEntry {
  std::string device_id;
  std::string stream;
  int64_t sequence_number = 0;
  int32_t record_count = 0;
};

// Records which batches were applied, so a retried batch is acknowledged
// without being written twice.
class Ledger {
 public:
  virtual ~Ledger() = default;
  // Of `entries`, which were applied before (same device, stream, sequence
  // number)? Returns one bool per entry, in order.
  virtual absl::StatusOr<std::vector<bool>> AreApplied(
      absl::Span<const LedgerEntry> entries) = 0;
  // Marks entries applied; entries already present are left as they are. All or
  // nothing.
  virtual absl::Status RecordApplied(absl::Span<const LedgerEntry> entries) = 0;
};

// One stream of one device: the unit of the ledger's sequence numbers.
struct LedgerKey {
  std::string device_id;
  std::string stream;
};

// What a ledger store knows about one key, for a cache to answer from.
struct LedgerHistory {
  // The highest sequence number whose row retention deleted (INT64_MIN when
  // the key was never compacted). Numbers at or below it without a row are
  // forgotten, not applied: a batch that old is written again (backends are
  // idempotent) rather than acknowledged unseen.
  int64_t floor = INT64_MIN;
  // The key's highest applied sequence numbers, ascending, at most the
  // requested limit.
  std::vector<int64_t> recent;
  // The highest sequence number the reader cannot judge from `recent`: the
  // highest applied one `recent` leaves out, or `floor` if higher. Numbers at
  // or below it that are not in `recent` must be asked of the store.
  int64_t older = INT64_MIN;
};

// A ledger that can hand out whole histories and tell new entries from ones
// already present: what CachedLedger (cached_ledger.h) needs underneath.
class LedgerStore : public Ledger {
 public:
  // For each key, in order: its floor and its `limit` (>= 1) highest applied
  // sequence numbers above the floor. One round trip for all keys.
  virtual absl::StatusOr<std::vector<LedgerHistory>> LoadHistory(
      absl::Span<const LedgerKey> keys, int limit) = 0;
  // RecordApplied that returns how many of `entries` were present already
  // (recorded before, by this or another server sharing the store, or twice
  // in `entries`). All or nothing.
  virtual absl::StatusOr<int64_t> RecordAppliedCountingPresent(
      absl::Span<const LedgerEntry> entries) = 0;
  // Up to `limit` keys with a batch applied within `within` before the
  // store's clock, the most recently applied first: the devices a restarted
  // server will hear from first. UNIMPLEMENTED when the store cannot tell.
  virtual absl::StatusOr<std::vector<LedgerKey>> RecentKeys(
      absl::Duration within, size_t limit) {
    return absl::UnimplementedError("this ledger store cannot list keys");
  }
};

// Delivery health a device reports in heartbeats and device info: batches the
// server refused that it keeps set aside, and records its store evicted to
// stay within its quota.
struct SyncHealth {
  int64_t set_aside_batches = 0;
  int64_t set_aside_records = 0;
  int64_t evicted_records = 0;

  friend bool operator==(const SyncHealth& a, const SyncHealth& b) {
    return a.set_aside_batches == b.set_aside_batches &&
           a.set_aside_records == b.set_aside_records &&
           a.evicted_records == b.evicted_records;
  }
  friend bool operator!=(const SyncHealth& a, const SyncHealth& b) {
    return !(a == b);
  }
};

// One device's latest SyncHealth report.
struct SyncHealthReport {
  std::string device_id;
  SyncHealth health;
  absl::Time reported_at;
};

// Device metadata.
class DeviceRegistry {
 public:
  virtual ~DeviceRegistry() = default;
  // Updates last-seen times (coalesced by the caller). Unknown devices are
  // ignored.
  virtual absl::Status TouchDevices(absl::Span<const std::string> device_ids,
                                    absl::Time seen) = 0;
  // Stores the device's self-reported info and capability, and the delivery
  // health the info carries (DeviceInfo set_aside_*, evicted_records); the
  // latest report wins.
  virtual absl::Status UpdateDeviceInfo(
      const DeviceIdentity& device, const v1::DeviceInfo& info,
      const v1::SyncDeviceCapability* capability, absl::Time seen) = 0;
  // Stores the latest delivery health of each device (from heartbeats,
  // coalesced by the caller). Unknown devices are ignored. All or nothing.
  virtual absl::Status RecordSyncHealth(
      absl::Span<const SyncHealthReport> reports) = 0;
};

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_STORE_STORE_H_
