// Local store for telemetry waiting to be synced: metrics, logs and events.
//
// Records are the wire protos. The store gives every appended record an id,
// increasing per kind and never reused, and keeps it until it is acknowledged
// by the server and then, as synced history, until the full-storage policy or
// a clean removes it:
//
//   collector --Append--> [unsynced] --Read/sync/ack--MarkSynced--> [synced]
//
// The sync manager reads the oldest unsynced records in id order in bounded
// batches, sends them, and only after the server acknowledged a batch marks
// that batch's id range synced. A pending batch (stream, sequence number, id
// range) can be saved so that a batch keeps its identity across restarts.
//
// Two implementations: OpenSqliteStorage (tiers 1-2, sqlite_storage.h) and
// NewMemoryStorage (tier 3, memory_storage.h).
#ifndef FLEETD_AGENT_STORAGE_STORAGE_H_
#define FLEETD_AGENT_STORAGE_STORAGE_H_

#include <array>
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/base/log_severity.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "fleetd/v1/sync.pb.h"

namespace fleetd::agent {

enum class RecordKind : int { kMetric = 0, kLog = 1, kEvent = 2 };
inline constexpr int kRecordKindCount = 3;

// "metrics", "logs", "events".
absl::string_view RecordKindName(RecordKind kind);

// A stored record and the id the store gave it.
template <typename T>
struct StoredRecord {
  int64_t id = 0;
  T record;
};
using StoredMetric = StoredRecord<v1::Metric>;
using StoredLog = StoredRecord<v1::LogEntry>;
using StoredEvent = StoredRecord<v1::Event>;

// An inclusive range of record ids. Empty when last < first.
struct IdRange {
  int64_t first = 0;
  int64_t last = -1;

  bool empty() const { return last < first; }
  int64_t size() const { return empty() ? 0 : last - first + 1; }
  bool operator==(const IdRange& o) const {
    return first == o.first && last == o.last;
  }
};

struct ReadOptions {
  // At most this many records (> 0).
  int32_t max_records = 1000;
  // Stop once the records read reach about this many encoded bytes; 0 means no
  // byte limit. At least one record is returned when any is available.
  int64_t max_bytes = 0;
  // Only records with id > after_id ...
  int64_t after_id = 0;
  // ... and id <= until_id (0: no upper bound). Together they re-read a saved
  // pending batch.
  int64_t until_id = 0;
  // Also return records already marked synced (for debugging tools).
  bool include_synced = false;
};

// Counters of one record kind.
struct KindInfo {
  int64_t unsynced = 0;
  int64_t synced = 0;
  // Unsynced records lost to the full-storage policy (SQLite: evicted when
  // deleting synced data was not enough; ring: overwritten).
  int64_t dropped_unsynced = 0;
  // Synced records deleted to make room.
  int64_t evicted_synced = 0;
  // Records removed by CleanOlderThan.
  int64_t cleaned = 0;
  // Records in set-aside batches (see Storage::SetAside): neither unsynced nor
  // synced, still stored and counted against the quota.
  int64_t set_aside = 0;
  // Set-aside records deleted by DropSetAside or evicted to make room.
  int64_t set_aside_dropped = 0;
  // The id the next appended record gets.
  int64_t next_id = 1;
  // Timestamp of the oldest unsynced record.
  std::optional<absl::Time> oldest_unsynced_time;
};

struct StorageInfo {
  std::string backend;  // "sqlite" or "memory"
  std::array<KindInfo, kRecordKindCount> kinds;
  // Bytes the stored data occupies (SQLite: pages in use; ring: occupancy).
  int64_t bytes_used = 0;
  // The byte quota (SQLite) or ring capacity (memory).
  int64_t max_bytes = 0;
  // Timestamp of the oldest stored record (by store order), synced or not.
  std::optional<absl::Time> oldest_record_time;
  // Times an append found the store full (quota or disk) and had to evict.
  int64_t full_events = 0;
  // Set-aside batches currently kept.
  int64_t set_aside_batches = 0;
  // Backend details for `fleetd debug storage`, e.g. journal_mode, synchronous,
  // schema_version, encrypted, file_bytes.
  std::map<std::string, std::string> details;

  const KindInfo& of(RecordKind kind) const {
    return kinds[static_cast<int>(kind)];
  }
};

// The identity of a batch that was sent (or is about to be) but not yet
// acknowledged. Retries and restarts resend it with the same sequence number.
struct PendingBatch {
  std::string stream;  // e.g. "metrics"
  RecordKind kind = RecordKind::kMetric;
  int64_t sequence_number = 0;
  IdRange ids;
  int32_t record_count = 0;
  int32_t retry_count = 0;

  bool operator==(const PendingBatch& o) const {
    return stream == o.stream && kind == o.kind &&
           sequence_number == o.sequence_number && ids == o.ids &&
           record_count == o.record_count && retry_count == o.retry_count;
  }
};

// A batch the server definitively rejected as invalid, kept in the store (so
// it stays encrypted and within the quota) until the operator retries or drops
// it with `fleetd quarantine retry|drop`.
struct SetAsideBatch {
  std::string stream;  // e.g. "metrics"
  RecordKind kind = RecordKind::kMetric;
  // The sequence number it was rejected under; identifies it in the store.
  int64_t sequence_number = 0;
  IdRange ids;
  int32_t record_count = 0;
  std::string reason;  // the server's words
  absl::Time set_aside_at = absl::UnixEpoch();

  bool operator==(const SetAsideBatch& o) const {
    return stream == o.stream && kind == o.kind &&
           sequence_number == o.sequence_number && ids == o.ids &&
           record_count == o.record_count && reason == o.reason;
  }
};

enum class CleanScope {
  kSyncedOnly,  // only records already acknowledged
  kAll,         // also unsynced ones (counted as cleaned, logged)
};

// Receives the store's warnings and errors. Must be safe to call from any
// thread; it runs with the store's lock held, so it must not call back into
// the store. StderrStorageLog() is the default.
using StorageLogFn =
    std::function<void(absl::LogSeverity severity, absl::string_view message)>;
StorageLogFn StderrStorageLog();

// The store. Implementations are safe for concurrent use: collectors append
// while the sync manager reads and marks.
class Storage {
 public:
  Storage() = default;
  virtual ~Storage() = default;
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;

  // Appends records atomically (all or none) and returns the ids they got, in
  // order. A record without a timestamp is stamped with the store clock's
  // Now(). When the store is full, the full-storage policy makes room first
  // (see the implementation). Errors: InvalidArgument for a record that cannot
  // be stored (timestamp out of range, larger than the store, a string field
  // that is not valid UTF-8: see record_validation.h; the message names the
  // record and the field), nothing appended; ResourceExhausted when no room
  // could be made (disk full); DataLoss on corruption; Unavailable/Internal on
  // I/O errors.
  virtual absl::StatusOr<IdRange> AppendMetrics(
      absl::Span<const v1::Metric> metrics) = 0;
  virtual absl::StatusOr<IdRange> AppendLogs(
      absl::Span<const v1::LogEntry> logs) = 0;
  virtual absl::StatusOr<IdRange> AppendEvents(
      absl::Span<const v1::Event> events) = 0;

  absl::StatusOr<int64_t> AppendMetric(const v1::Metric& metric);
  absl::StatusOr<int64_t> AppendLog(const v1::LogEntry& log);
  absl::StatusOr<int64_t> AppendEvent(const v1::Event& event);

  // The oldest unsynced records (or, with include_synced, all records) in id
  // order, bounded by `options`. Never loads more than the batch into memory.
  // An empty vector when there is nothing to read.
  virtual absl::StatusOr<std::vector<StoredMetric>> ReadMetrics(
      const ReadOptions& options) = 0;
  virtual absl::StatusOr<std::vector<StoredLog>> ReadLogs(
      const ReadOptions& options) = 0;
  virtual absl::StatusOr<std::vector<StoredEvent>> ReadEvents(
      const ReadOptions& options) = 0;

  // Marks every unsynced record of `kind` with an id in `ids` synced. Call it
  // only after the server acknowledged the batch, with the ids of its first
  // and last record (reads return contiguous runs of unsynced records, so the
  // range holds exactly the batch). Records already synced or gone are
  // skipped. Returns how many records changed state.
  virtual absl::StatusOr<int64_t> MarkSynced(RecordKind kind, IdRange ids) = 0;

  virtual absl::StatusOr<StorageInfo> Info() = 0;

  // Removes records whose timestamp is older than clock Now() - `age`.
  // Returns how many were removed.
  virtual absl::StatusOr<int64_t> CleanOlderThan(absl::Duration age,
                                                 CleanScope scope) = 0;

  // Saves (replacing any earlier one) the pending batch of `batch.stream`.
  virtual absl::Status SavePendingBatch(const PendingBatch& batch) = 0;
  // The pending batch of `stream`, or nullopt when there is none.
  virtual absl::StatusOr<std::optional<PendingBatch>> LoadPendingBatch(
      absl::string_view stream) = 0;
  // Forgets the pending batch of `stream` (no error when there is none).
  virtual absl::Status ClearPendingBatch(absl::string_view stream) = 0;

  // Changes the byte quota (SQLite) or ring capacity (memory) at run time, e.g.
  // from the server's configuration; Info().max_bytes reports it at once. The
  // full-storage policy applies it at the next append: a smaller quota evicts
  // nothing by itself, the next append makes room as usual (synced data first,
  // every eviction counted). InvalidArgument for a size the store cannot work
  // with (the SQLite store: below its 64 KiB minimum); Unimplemented for a
  // store of fixed size (the memory ring).
  virtual absl::Status SetMaxBytes(int64_t max_bytes) {
    (void)max_bytes;
    return absl::UnimplementedError("this store has a fixed size");
  }

  // Set-aside batches. All of them keep the records inside the store: they
  // count against the quota, are encrypted with the store, and survive
  // restarts. Under quota pressure they are evicted after synced records and
  // together with the oldest unsynced ones (counted in set_aside_dropped).

  // Atomically: moves the unsynced records of `batch.kind` with ids in
  // `batch.ids` out of the sync queue (Read* no longer returns them, MarkSynced
  // skips them), records `batch` (reason, time: set_aside_at is stamped with
  // the store clock's Now()), and clears the pending batch of `batch.stream`.
  // `batch.record_count` is set to the number of records moved. AlreadyExists
  // if a batch with the same stream and sequence number is already set aside.
  virtual absl::Status SetAside(const SetAsideBatch& batch) = 0;
  // Every set-aside batch, oldest first.
  virtual absl::StatusOr<std::vector<SetAsideBatch>> ListSetAside() = 0;
  // Puts the records of a set-aside batch back into the sync queue as unsynced
  // (they go out again in a new batch under a new sequence number, as the
  // server never applied the rejected one) and forgets the entry. The requeued
  // records get fresh ids after every record already stored (next_id moves
  // past them), so no batch range read or saved as pending before the retry,
  // in flight or not, can cover them. Returns the number of records requeued;
  // NotFound if there is no such batch.
  virtual absl::StatusOr<int64_t> RetrySetAside(absl::string_view stream,
                                                int64_t sequence_number) = 0;
  // Deletes a set-aside batch and its records (counted in set_aside_dropped,
  // logged). Returns the number of records deleted; NotFound if none.
  virtual absl::StatusOr<int64_t> DropSetAside(absl::string_view stream,
                                               int64_t sequence_number) = 0;
};

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_STORAGE_STORAGE_H_
