#include "agent/storage/sqlite_storage.h"

#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "agent/storage/record_codec.h"
#include "agent/storage/record_validation.h"
#include "agent/storage/sqlite_api.h"
#include "agent/storage/sqlite_schema.h"
#include "common/status/status_macros.h"

namespace fleetd::agent {
namespace {

using storage_internal::AppendEventBody;
using storage_internal::AppendLogBody;
using storage_internal::AppendSeriesKey;
using storage_internal::BitsToDouble;
using storage_internal::DecodeEventBody;
using storage_internal::DecodeLogBody;
using storage_internal::DecodeSeriesKey;
using storage_internal::DoubleBits;
using storage_internal::EncodeScratch;
using storage_internal::NanosToTimestamp;
using storage_internal::TimestampToNanos;

constexpr const char* kTables[kRecordKindCount] = {"metrics", "logs", "events"};
constexpr int64_t kMinQuotaBytes = 64 << 10;
constexpr int64_t kMaxQuotaBytes = int64_t{1} << 60;
// Interned series kept in memory, in each direction; the caches are cleared
// when they grow past this (the table stays the source of truth).
constexpr size_t kSeriesCacheLimit = 1 << 16;
// Approximate bytes a row takes beyond its payload (cell pointer, record
// header, rowid, synced, ts), used to estimate what an append needs.
constexpr int64_t kRowOverheadBytes = 24;
// Bytes a metric row adds on top of the overhead (series id, value bits).
constexpr int64_t kMetricRowBytes = 12;
// A full store warns at most this often (each warning carries the totals).
constexpr absl::Duration kWarnInterval = absl::Seconds(10);

absl::Status SqliteStatus(sqlite3* db, int rc, absl::string_view what) {
  std::string message = absl::StrCat(
      what, ": ", db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc),
      " (sqlite error ", rc, ")");
  switch (rc & 0xff) {
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(message);
    case SQLITE_CORRUPT:
    case SQLITE_NOTADB:
      return absl::DataLossError(message);
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
    case SQLITE_IOERR:
    case SQLITE_NOMEM:
    case SQLITE_PROTOCOL:
      return absl::UnavailableError(message);
    case SQLITE_READONLY:
    case SQLITE_CANTOPEN:
    case SQLITE_PERM:
    case SQLITE_AUTH:
      return absl::FailedPreconditionError(message);
    case SQLITE_TOOBIG:
    case SQLITE_CONSTRAINT:
      return absl::InvalidArgumentError(message);
    default:
      return absl::InternalError(message);
  }
}

absl::Status WithContext(const absl::Status& s, absl::string_view context) {
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat(context, ": ", s.message()));
}

// A quota the store can work with (the file limit derived from it must not
// overflow).
absl::Status CheckQuota(int64_t max_bytes) {
  if (max_bytes < kMinQuotaBytes || max_bytes > kMaxQuotaBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("storage quota must be from ", kMinQuotaBytes, " to ",
                     kMaxQuotaBytes, " bytes, got ", max_bytes));
  }
  return absl::OkStatus();
}

// A prepared statement. Bound blobs and texts are not copied: they must stay
// alive until the statement is reset.
class Stmt {
 public:
  Stmt() = default;
  ~Stmt() { sqlite3_finalize(stmt_); }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  absl::Status Prepare(sqlite3* db, const std::string& sql) {
    sqlite3_finalize(stmt_);
    stmt_ = nullptr;
    db_ = db;
    sql_ = sql;
    int rc = sqlite3_prepare_v2(db, sql.c_str(), static_cast<int>(sql.size()),
                                &stmt_, nullptr);
    if (rc != SQLITE_OK) {
      sqlite3_finalize(stmt_);
      stmt_ = nullptr;
      return SqliteStatus(db, rc, absl::StrCat("preparing \"", sql, "\""));
    }
    return absl::OkStatus();
  }

  Stmt& Int(int i, int64_t v) {
    sqlite3_bind_int64(stmt_, i, v);
    return *this;
  }
  Stmt& Blob(int i, absl::string_view v) {
    // A null pointer would bind NULL instead of an empty blob.
    sqlite3_bind_blob(stmt_, i, v.empty() ? "" : v.data(),
                      static_cast<int>(v.size()), SQLITE_STATIC);
    return *this;
  }
  Stmt& Text(int i, absl::string_view v) {
    sqlite3_bind_text(stmt_, i, v.empty() ? "" : v.data(),
                      static_cast<int>(v.size()), SQLITE_STATIC);
    return *this;
  }

  // Steps once: true with a row, false when done, or the error.
  absl::StatusOr<bool> Step() {
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    absl::Status s = SqliteStatus(db_, rc, absl::StrCat("\"", sql_, "\""));
    sqlite3_reset(stmt_);
    return s;
  }
  // Runs a statement that returns no rows, and resets it.
  absl::Status Run() {
    absl::StatusOr<bool> row = Step();
    sqlite3_reset(stmt_);
    return row.status();
  }
  void Reset() { sqlite3_reset(stmt_); }

  int64_t ColInt(int c) const { return sqlite3_column_int64(stmt_, c); }
  bool ColIsNull(int c) const {
    return sqlite3_column_type(stmt_, c) == SQLITE_NULL;
  }
  absl::string_view ColBlob(int c) const {
    const void* p = sqlite3_column_blob(stmt_, c);
    int n = sqlite3_column_bytes(stmt_, c);
    return p == nullptr ? absl::string_view()
                        : absl::string_view(static_cast<const char*>(p),
                                            static_cast<size_t>(n));
  }
  std::string ColText(int c) const {
    const unsigned char* p = sqlite3_column_text(stmt_, c);
    return p == nullptr ? std::string() : reinterpret_cast<const char*>(p);
  }

 private:
  sqlite3* db_ = nullptr;
  sqlite3_stmt* stmt_ = nullptr;
  std::string sql_;
};

// Resets a statement when leaving scope, so no statement keeps a read
// snapshot or bindings to freed memory.
class ResetOnExit {
 public:
  explicit ResetOnExit(Stmt& s) : s_(s) {}
  ~ResetOnExit() { s_.Reset(); }
  ResetOnExit(const ResetOnExit&) = delete;
  ResetOnExit& operator=(const ResetOnExit&) = delete;

 private:
  Stmt& s_;
};

absl::Status Exec(sqlite3* db, const std::string& sql) {
  char* err = nullptr;
  int rc = sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &err);
  if (rc == SQLITE_OK) return absl::OkStatus();
  std::string detail = err != nullptr ? err : sqlite3_errstr(rc);
  sqlite3_free(err);
  absl::Status s = SqliteStatus(db, rc, absl::StrCat("\"", sql, "\""));
  return absl::Status(s.code(), absl::StrCat("\"", sql, "\": ", detail,
                                             " (sqlite error ", rc, ")"));
}

// The first column of the first row as text ("" when there is no row).
absl::StatusOr<std::string> QueryText(sqlite3* db, const std::string& sql) {
  Stmt s;
  RETURN_IF_ERROR(s.Prepare(db, sql));
  ResetOnExit reset(s);
  ASSIGN_OR_RETURN(bool row, s.Step());
  return row ? s.ColText(0) : std::string();
}

absl::StatusOr<int64_t> QueryInt(sqlite3* db, const std::string& sql) {
  Stmt s;
  RETURN_IF_ERROR(s.Prepare(db, sql));
  ResetOnExit reset(s);
  ASSIGN_OR_RETURN(bool row, s.Step());
  return row ? s.ColInt(0) : 0;
}

std::string ErrnoText(int err) { return std::strerror(err); }

// Creates the data directory if needed and checks that the agent can create
// files in it (the database, its WAL and shared-memory files).
absl::Status PrepareDataDir(const std::string& dir) {
  std::string partial;
  for (size_t pos = 0; pos != std::string::npos;) {
    size_t next = dir.find('/', pos + 1);
    partial = dir.substr(0, next);
    pos = next;
    if (partial.empty() || partial == "/") continue;
    if (mkdir(partial.c_str(), 0700) != 0 && errno != EEXIST) {
      int err = errno;
      return absl::FailedPreconditionError(
          absl::StrCat("cannot create data directory ", dir, " (at ", partial,
                       "): ", ErrnoText(err)));
    }
  }
  struct stat st;
  if (stat(dir.c_str(), &st) != 0) {
    int err = errno;
    return absl::FailedPreconditionError(
        absl::StrCat("data directory ", dir, ": ", ErrnoText(err)));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::FailedPreconditionError(
        absl::StrCat("data directory ", dir, " is not a directory"));
  }
  if (access(dir.c_str(), W_OK | X_OK) != 0) {
    int err = errno;
    return absl::FailedPreconditionError(
        absl::StrCat("data directory ", dir, " is not writable (",
                     ErrnoText(err), "); the agent keeps its database there"));
  }
  return absl::OkStatus();
}

absl::Status CheckFileWritable(const std::string& path) {
  if (access(path.c_str(), F_OK) == 0 && access(path.c_str(), W_OK) != 0) {
    int err = errno;
    return absl::FailedPreconditionError(absl::StrCat(
        "database file ", path, " is not writable (", ErrnoText(err), ")"));
  }
  return absl::OkStatus();
}

// Renames `path` and its WAL/shared-memory files out of the way. Returns the
// new name of the database file.
absl::StatusOr<std::string> MoveAside(const std::string& path, absl::Time now) {
  std::string base = absl::StrCat(
      path, ".corrupt-",
      absl::FormatTime("%Y%m%dT%H%M%SZ", now, absl::UTCTimeZone()));
  std::string aside = base;
  for (int n = 1; access(aside.c_str(), F_OK) == 0; ++n) {
    aside = absl::StrCat(base, "-", n);
  }
  if (rename(path.c_str(), aside.c_str()) != 0 && errno != ENOENT) {
    int err = errno;
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot move unreadable database ", path, " aside: ", ErrnoText(err)));
  }
  // A WAL left beside a new database would be replayed into it.
  for (const char* suffix : {"-wal", "-shm"}) {
    std::string from = path + suffix;
    if (rename(from.c_str(), (aside + suffix).c_str()) != 0 &&
        errno != ENOENT) {
      int err = errno;
      return absl::FailedPreconditionError(
          absl::StrCat("cannot move ", from, " aside: ", ErrnoText(err)));
    }
  }
  return aside;
}

class SqliteStorage final : public Storage {
 public:
  SqliteStorage(const SqliteStorageOptions& options, std::string path)
      : options_(options),
        path_(std::move(path)),
        clock_(options.clock),
        log_(options.log),
        max_bytes_(options.max_bytes) {}

  ~SqliteStorage() override {
    absl::MutexLock lock(&mu_);
    CloseDatabase();
  }

  // Opens the file, checks it, migrates the schema and loads the counters.
  // DataLoss when the file is corrupt or cannot be decrypted.
  absl::Status OpenDatabase() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    absl::Status s = OpenDatabaseLocked();
    if (!s.ok()) CloseDatabase();
    return s;
  }

  void CloseDatabaseForRetry() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    CloseDatabase();
  }

  void SetRecoveredFrom(std::string aside) ABSL_LOCKS_EXCLUDED(mu_) {
    absl::MutexLock lock(&mu_);
    recovered_from_ = std::move(aside);
  }

  absl::StatusOr<IdRange> AppendMetrics(
      absl::Span<const v1::Metric> metrics) override {
    absl::MutexLock lock(&mu_);
    ClearBatch();
    const int64_t now = NowNanos();
    for (size_t i = 0; i < metrics.size(); ++i) {
      const v1::Metric& m = metrics[i];
      RETURN_IF_ERROR(ValidateBatchRecordText(m, "metric", i));
      ASSIGN_OR_RETURN(int64_t ts, RecordTime(m.has_timestamp(), m.timestamp(),
                                              now, "metric", i));
      size_t offset = payload_.size();
      AppendSeriesKey(m, &scratch_, &payload_);
      rows_.push_back(
          {ts, DoubleBits(m.value()), offset, payload_.size() - offset});
    }
    return AppendBatch(RecordKind::kMetric);
  }

  absl::StatusOr<IdRange> AppendLogs(
      absl::Span<const v1::LogEntry> logs) override {
    absl::MutexLock lock(&mu_);
    ClearBatch();
    const int64_t now = NowNanos();
    for (size_t i = 0; i < logs.size(); ++i) {
      const v1::LogEntry& l = logs[i];
      RETURN_IF_ERROR(ValidateBatchRecordText(l, "log entry", i));
      ASSIGN_OR_RETURN(int64_t ts, RecordTime(l.has_timestamp(), l.timestamp(),
                                              now, "log entry", i));
      size_t offset = payload_.size();
      AppendLogBody(l, &payload_);
      rows_.push_back({ts, 0, offset, payload_.size() - offset});
    }
    return AppendBatch(RecordKind::kLog);
  }

  absl::StatusOr<IdRange> AppendEvents(
      absl::Span<const v1::Event> events) override {
    absl::MutexLock lock(&mu_);
    ClearBatch();
    const int64_t now = NowNanos();
    for (size_t i = 0; i < events.size(); ++i) {
      const v1::Event& e = events[i];
      RETURN_IF_ERROR(ValidateBatchRecordText(e, "event", i));
      ASSIGN_OR_RETURN(int64_t ts, RecordTime(e.has_timestamp(), e.timestamp(),
                                              now, "event", i));
      size_t offset = payload_.size();
      AppendEventBody(e, &payload_);
      rows_.push_back({ts, 0, offset, payload_.size() - offset});
    }
    return AppendBatch(RecordKind::kEvent);
  }

  absl::StatusOr<std::vector<StoredMetric>> ReadMetrics(
      const ReadOptions& options) override {
    absl::MutexLock lock(&mu_);
    std::vector<StoredMetric> out;
    RETURN_IF_ERROR(ReadRows(
        RecordKind::kMetric, options,
        [&](Stmt& s, int64_t id, int64_t ts)
            ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> absl::StatusOr<int64_t> {
              ASSIGN_OR_RETURN(const SeriesEntry* series,
                               LookupSeries(s.ColInt(2)));
              out.emplace_back();
              StoredMetric& m = out.back();
              m.id = id;
              m.record = series->proto;
              m.record.set_value(BitsToDouble(s.ColInt(3)));
              NanosToTimestamp(ts, m.record.mutable_timestamp());
              return kRowOverheadBytes + kMetricRowBytes +
                     static_cast<int64_t>(series->key_size);
            },
        [&](size_t n) { out.reserve(n); }));
    return out;
  }

  absl::StatusOr<std::vector<StoredLog>> ReadLogs(
      const ReadOptions& options) override {
    absl::MutexLock lock(&mu_);
    std::vector<StoredLog> out;
    RETURN_IF_ERROR(ReadRows(
        RecordKind::kLog, options,
        [&](Stmt& s, int64_t id, int64_t ts) -> absl::StatusOr<int64_t> {
          absl::string_view body = s.ColBlob(2);
          out.emplace_back();
          out.back().id = id;
          RETURN_IF_ERROR(WithContext(DecodeLogBody(body, &out.back().record),
                                      absl::StrCat("log ", id)));
          NanosToTimestamp(ts, out.back().record.mutable_timestamp());
          return kRowOverheadBytes + static_cast<int64_t>(body.size());
        },
        [&](size_t n) { out.reserve(n); }));
    return out;
  }

  absl::StatusOr<std::vector<StoredEvent>> ReadEvents(
      const ReadOptions& options) override {
    absl::MutexLock lock(&mu_);
    std::vector<StoredEvent> out;
    RETURN_IF_ERROR(ReadRows(
        RecordKind::kEvent, options,
        [&](Stmt& s, int64_t id, int64_t ts) -> absl::StatusOr<int64_t> {
          absl::string_view body = s.ColBlob(2);
          out.emplace_back();
          out.back().id = id;
          RETURN_IF_ERROR(WithContext(DecodeEventBody(body, &out.back().record),
                                      absl::StrCat("event ", id)));
          NanosToTimestamp(ts, out.back().record.mutable_timestamp());
          return kRowOverheadBytes + static_cast<int64_t>(body.size());
        },
        [&](size_t n) { out.reserve(n); }));
    return out;
  }

  absl::StatusOr<int64_t> MarkSynced(RecordKind kind, IdRange ids) override {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(CheckOpen());
    if (ids.empty()) return 0;
    const int k = static_cast<int>(kind);
    int64_t changed = 0;
    RETURN_IF_ERROR(Transaction([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      Stmt& s = st_->mark[k];
      RETURN_IF_ERROR(s.Int(1, ids.first).Int(2, ids.last).Run());
      changed = sqlite3_changes(db_);
      if (changed == 0) return absl::OkStatus();
      KindState& ks = kinds_[k];
      ks.unsynced -= changed;
      ks.synced += changed;
      dirty_ |= 1 << k;
      if (ids.first <= ks.first_unsynced && ks.first_unsynced <= ids.last) {
        RETURN_IF_ERROR(RecomputeFirstUnsynced(k));
      }
      return absl::OkStatus();
    }));
    return changed;
  }

  absl::StatusOr<StorageInfo> Info() override {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(CheckOpen());
    StorageInfo info;
    info.backend = "sqlite";
    for (int k = 0; k < kRecordKindCount; ++k) {
      const KindState& ks = kinds_[k];
      KindInfo& ki = info.kinds[k];
      ki.unsynced = ks.unsynced;
      ki.synced = ks.synced;
      ki.dropped_unsynced = ks.dropped_unsynced;
      ki.evicted_synced = ks.evicted_synced;
      ki.cleaned = ks.cleaned;
      ki.set_aside = ks.set_aside;
      ki.set_aside_dropped = ks.set_aside_dropped;
      ki.next_id = ks.next_id;
      if (ks.unsynced > 0) {
        Stmt& s = st_->first_unsynced[k];
        ResetOnExit reset(s);
        s.Int(1, ks.first_unsynced);
        ASSIGN_OR_RETURN(bool row, s.Step());
        if (row) ki.oldest_unsynced_time = absl::FromUnixNanos(s.ColInt(1));
      }
      Stmt& o = st_->oldest[k];
      ResetOnExit reset(o);
      ASSIGN_OR_RETURN(bool row, o.Step());
      if (row) {
        absl::Time t = absl::FromUnixNanos(o.ColInt(0));
        if (!info.oldest_record_time.has_value() ||
            t < *info.oldest_record_time) {
          info.oldest_record_time = t;
        }
      }
    }
    ASSIGN_OR_RETURN(info.bytes_used, MeasureUsedBytes());
    info.max_bytes = max_bytes_;
    info.full_events = full_events_;
    ASSIGN_OR_RETURN(info.set_aside_batches,
                     QueryInt(db_, "SELECT count(*) FROM set_aside"));

    ASSIGN_OR_RETURN(std::string journal,
                     QueryText(db_, "PRAGMA journal_mode"));
    ASSIGN_OR_RETURN(int64_t sync, QueryInt(db_, "PRAGMA synchronous"));
    ASSIGN_OR_RETURN(int64_t version, QueryInt(db_, "PRAGMA user_version"));
    ASSIGN_OR_RETURN(int64_t pages, QueryInt(db_, "PRAGMA page_count"));
    ASSIGN_OR_RETURN(int64_t series,
                     QueryInt(db_, "SELECT count(*) FROM series"));
    static constexpr const char* kSyncNames[] = {"off", "normal", "full",
                                                 "extra"};
    info.details["path"] = path_;
    info.details["journal_mode"] = journal;
    info.details["synchronous"] =
        sync >= 0 && sync < 4 ? kSyncNames[sync] : absl::StrCat(sync);
    info.details["schema_version"] = absl::StrCat(version);
    info.details["encrypted"] =
        options_.encryption_key.empty() ? "false" : "true";
    info.details["page_size"] = absl::StrCat(page_size_);
    info.details["file_bytes"] = absl::StrCat(pages * page_size_);
    info.details["file_limit_bytes"] =
        absl::StrCat(file_limit_pages_ * page_size_);
    ASSIGN_OR_RETURN(int64_t checkpoint,
                     QueryInt(db_, "PRAGMA wal_autocheckpoint"));
    info.details["wal_autocheckpoint"] = absl::StrCat(checkpoint);
    info.details["series"] = absl::StrCat(series);
    if (!recovered_from_.empty()) {
      info.details["recovered_from"] = recovered_from_;
    }
    return info;
  }

  absl::StatusOr<int64_t> CleanOlderThan(absl::Duration age,
                                         CleanScope scope) override {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(CheckOpen());
    if (age < absl::ZeroDuration()) {
      return absl::InvalidArgumentError("clean age must not be negative");
    }
    const int64_t cutoff = absl::ToUnixNanos(clock_->Now() - age);
    int64_t removed = 0;
    int64_t removed_unsynced = 0;
    bool series_gone = false;
    RETURN_IF_ERROR(Transaction([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      for (int k = 0; k < kRecordKindCount; ++k) {
        KindState& ks = kinds_[k];
        for (int synced : {1, 0}) {
          if (synced == 0 && scope != CleanScope::kAll) continue;
          RETURN_IF_ERROR(st_->clean[k].Int(1, cutoff).Int(2, synced).Run());
          int64_t n = sqlite3_changes(db_);
          if (n == 0) continue;
          (synced ? ks.synced : ks.unsynced) -= n;
          ks.cleaned += n;
          removed += n;
          if (!synced) removed_unsynced += n;
          dirty_ |= 1 << k;
          if (!synced) RETURN_IF_ERROR(RecomputeFirstUnsynced(k));
        }
      }
      ASSIGN_OR_RETURN(series_gone, CollectSeries());
      return absl::OkStatus();
    }));
    if (series_gone) ClearSeriesCaches();
    ASSIGN_OR_RETURN(approx_used_, MeasureUsedBytes());
    if (removed_unsynced > 0) {
      log_(absl::LogSeverity::kWarning,
           absl::StrCat("clean removed ", removed_unsynced,
                        " unsynced records older than ",
                        absl::FormatDuration(age), " from ", path_));
    }
    return removed;
  }

  absl::Status SavePendingBatch(const PendingBatch& batch) override {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(CheckOpen());
    if (batch.stream.empty()) {
      return absl::InvalidArgumentError("pending batch needs a stream name");
    }
    return st_->pending_save.Text(1, batch.stream)
        .Int(2, static_cast<int>(batch.kind))
        .Int(3, batch.sequence_number)
        .Int(4, batch.ids.first)
        .Int(5, batch.ids.last)
        .Int(6, batch.record_count)
        .Int(7, batch.retry_count)
        .Run();
  }

  absl::StatusOr<std::optional<PendingBatch>> LoadPendingBatch(
      absl::string_view stream) override {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(CheckOpen());
    Stmt& s = st_->pending_load;
    ResetOnExit reset(s);
    s.Text(1, stream);
    ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return std::nullopt;
    int64_t kind = s.ColInt(0);
    if (kind < 0 || kind >= kRecordKindCount) {
      return absl::DataLossError(absl::StrCat(
          "pending batch of stream ", stream, " has unknown kind ", kind));
    }
    PendingBatch b;
    b.stream = std::string(stream);
    b.kind = static_cast<RecordKind>(kind);
    b.sequence_number = s.ColInt(1);
    b.ids = {s.ColInt(2), s.ColInt(3)};
    b.record_count = static_cast<int32_t>(s.ColInt(4));
    b.retry_count = static_cast<int32_t>(s.ColInt(5));
    return b;
  }

  absl::Status ClearPendingBatch(absl::string_view stream) override {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(CheckOpen());
    return st_->pending_clear.Text(1, stream).Run();
  }

  absl::Status SetMaxBytes(int64_t max_bytes) override {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(CheckQuota(max_bytes));
    RETURN_IF_ERROR(CheckOpen());
    if (max_bytes == max_bytes_) return absl::OkStatus();
    const int64_t old = max_bytes_;
    absl::Status s = ApplyQuotaSettings(max_bytes);
    if (!s.ok()) {
      // Back to the settings of the quota still in force.
      ApplyQuotaSettings(old).IgnoreError();
      return WithContext(
          s, absl::StrCat("changing the storage quota to ", max_bytes));
    }
    max_bytes_ = max_bytes;
    // A smaller quota is enforced by the next append (EnsureRoom), through the
    // full-storage policy. Start it from a measurement, not the running
    // estimate (which only matters when far below the quota).
    absl::StatusOr<int64_t> used = MeasureUsedBytes();
    if (used.ok()) approx_used_ = *used;
    log_(absl::LogSeverity::kInfo,
         absl::StrCat("storage quota of ", path_, " changed from ", old, " to ",
                      max_bytes, " bytes (", approx_used_, " in use)"));
    return absl::OkStatus();
  }

  absl::Status SetAside(const SetAsideBatch& batch) override {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(CheckOpen());
    const int k = static_cast<int>(batch.kind);
    if (batch.stream.empty() || k < 0 || k >= kRecordKindCount) {
      return absl::InvalidArgumentError(
          "a set-aside batch needs a stream name and a record kind");
    }
    int64_t moved = 0;
    RETURN_IF_ERROR(Transaction([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      ASSIGN_OR_RETURN(std::optional<StoredBatch> existing,
                       FindBatch(batch.stream, batch.sequence_number));
      if (existing.has_value()) {
        return absl::AlreadyExistsError(
            absl::StrCat("batch ", batch.sequence_number, " of stream ",
                         batch.stream, " is already set aside"));
      }
      RETURN_IF_ERROR(st_->batch_insert.Text(1, batch.stream)
                          .Int(2, k)
                          .Int(3, batch.sequence_number)
                          .Int(4, batch.ids.first)
                          .Int(5, batch.ids.last)
                          .Int(6, 0)
                          .Text(7, batch.reason)
                          .Int(8, NowNanos())
                          .Run());
      const int64_t row = sqlite3_last_insert_rowid(db_);
      if (!batch.ids.empty()) {
        RETURN_IF_ERROR(st_->set_aside_mark[k]
                            .Int(1, batch.ids.first)
                            .Int(2, batch.ids.last)
                            .Int(3, -row)
                            .Run());
        moved = sqlite3_changes(db_);
      }
      RETURN_IF_ERROR(st_->batch_count.Int(1, row).Int(2, moved).Run());
      RETURN_IF_ERROR(st_->pending_clear.Text(1, batch.stream).Run());
      if (moved == 0) return absl::OkStatus();
      KindState& ks = kinds_[k];
      ks.unsynced -= moved;
      ks.set_aside += moved;
      dirty_ |= 1 << k;
      if (batch.ids.first <= ks.first_unsynced &&
          ks.first_unsynced <= batch.ids.last) {
        RETURN_IF_ERROR(RecomputeFirstUnsynced(k));
      }
      return absl::OkStatus();
    }));
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<SetAsideBatch>> ListSetAside() override {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(CheckOpen());
    Stmt& s = st_->batch_list;
    ResetOnExit reset(s);
    std::vector<SetAsideBatch> out;
    for (;;) {
      ASSIGN_OR_RETURN(bool row, s.Step());
      if (!row) break;
      ASSIGN_OR_RETURN(StoredBatch b, BatchFromRow(s));
      out.push_back(std::move(b.batch));
    }
    return out;
  }

  absl::StatusOr<int64_t> RetrySetAside(absl::string_view stream,
                                        int64_t sequence_number) override {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(CheckOpen());
    int64_t requeued = 0;
    IdRange new_ids;
    RETURN_IF_ERROR(Transaction([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      ASSIGN_OR_RETURN(StoredBatch b, GetBatch(stream, sequence_number));
      const int k = static_cast<int>(b.batch.kind);
      KindState& ks = kinds_[k];
      // The records move to fresh ids after every record stored so far, so no
      // batch read before the retry (in flight or saved as pending) can span
      // them and acknowledge them unsent.
      const int64_t shift = ks.next_id - b.batch.ids.first;
      if (!b.batch.ids.empty()) {
        RETURN_IF_ERROR(st_->set_aside_requeue[k]
                            .Int(1, b.batch.ids.first)
                            .Int(2, b.batch.ids.last)
                            .Int(3, -b.row)
                            .Int(4, shift)
                            .Run());
        requeued = sqlite3_changes(db_);
      }
      RETURN_IF_ERROR(st_->batch_delete.Int(1, b.row).Run());
      if (requeued == 0) return absl::OkStatus();
      new_ids = {b.batch.ids.first + shift, b.batch.ids.last + shift};
      ks.next_id = new_ids.last + 1;
      ks.set_aside -= requeued;
      ks.unsynced += requeued;
      dirty_ |= 1 << k;
      return RecomputeFirstUnsynced(k);
    }));
    log_(absl::LogSeverity::kInfo,
         absl::StrCat("requeued ", requeued, " records of set-aside batch ",
                      sequence_number, " of stream ", stream, " in ", path_,
                      " (now ids ", new_ids.first, "-", new_ids.last, ")"));
    return requeued;
  }

  absl::StatusOr<int64_t> DropSetAside(absl::string_view stream,
                                       int64_t sequence_number) override {
    absl::MutexLock lock(&mu_);
    RETURN_IF_ERROR(CheckOpen());
    int64_t deleted = 0;
    bool series_gone = false;
    SetAsideBatch dropped;
    RETURN_IF_ERROR(Transaction([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      ASSIGN_OR_RETURN(StoredBatch b, GetBatch(stream, sequence_number));
      ASSIGN_OR_RETURN(deleted, DeleteBatch(b));
      if (b.batch.kind == RecordKind::kMetric && deleted > 0) {
        ASSIGN_OR_RETURN(series_gone, CollectSeries());
      }
      dropped = std::move(b.batch);
      return absl::OkStatus();
    }));
    if (series_gone) ClearSeriesCaches();
    ASSIGN_OR_RETURN(approx_used_, MeasureUsedBytes());
    log_(absl::LogSeverity::kWarning,
         absl::StrCat("dropped set-aside batch ", sequence_number,
                      " of stream ", stream, ": deleted ", deleted, " ",
                      kTables[static_cast<int>(dropped.kind)], " from ", path_,
                      " (set aside because: ", dropped.reason, ")"));
    return deleted;
  }

 private:
  struct KindState {
    int64_t next_id = 1;
    int64_t unsynced = 0;
    int64_t synced = 0;
    int64_t dropped_unsynced = 0;
    int64_t evicted_synced = 0;
    int64_t cleaned = 0;
    int64_t set_aside = 0;
    int64_t set_aside_dropped = 0;
    // The smallest unsynced id, or next_id when nothing is unsynced. Reads
    // start here instead of scanning the synced history.
    int64_t first_unsynced = 1;
  };

  // One record of the batch being appended; its payload (series key or body)
  // is payload_[offset, offset + size).
  struct Row {
    int64_t ts;
    int64_t value_bits;
    size_t offset;
    size_t size;
  };

  struct SeriesEntry {
    v1::Metric proto;  // name and labels
    size_t key_size;
  };

  struct Statements {
    Stmt begin, commit, rollback;
    Stmt insert[kRecordKindCount];
    Stmt read[kRecordKindCount][2];  // [kind][include_synced]
    Stmt mark[kRecordKindCount];
    Stmt evict[kRecordKindCount];
    Stmt clean[kRecordKindCount];
    Stmt first_unsynced[kRecordKindCount];
    Stmt oldest[kRecordKindCount];
    Stmt update_kind;
    Stmt series_find, series_insert, series_get, series_gc;
    Stmt page_count, freelist_count;
    Stmt pending_save, pending_load, pending_clear;
    // Set-aside batches: records of kind k with ids in [?1, ?2] ...
    Stmt set_aside_mark[kRecordKindCount];     // ... unsynced -> state ?3
    Stmt set_aside_requeue[kRecordKindCount];  // ... state ?3 -> unsynced,
                                               // ids moved up by ?4
    Stmt set_aside_delete[kRecordKindCount];   // ... in state ?3 deleted
    Stmt batch_insert, batch_count, batch_find, batch_list, batch_oldest,
        batch_delete;
  };

  // A set-aside batch as stored: its row id tags its records.
  struct StoredBatch {
    int64_t row = 0;
    SetAsideBatch batch;
  };

  // The set-aside batch at the current row of a statement selecting the
  // batch columns.
  static absl::StatusOr<StoredBatch> BatchFromRow(const Stmt& s) {
    StoredBatch b;
    b.row = s.ColInt(0);
    b.batch.stream = s.ColText(1);
    const int64_t kind = s.ColInt(2);
    if (kind < 0 || kind >= kRecordKindCount) {
      return absl::DataLossError(absl::StrCat("set-aside batch of stream ",
                                              b.batch.stream,
                                              " has unknown kind ", kind));
    }
    b.batch.kind = static_cast<RecordKind>(kind);
    b.batch.sequence_number = s.ColInt(3);
    b.batch.ids = {s.ColInt(4), s.ColInt(5)};
    b.batch.record_count = static_cast<int32_t>(s.ColInt(6));
    b.batch.reason = s.ColText(7);
    b.batch.set_aside_at = absl::FromUnixNanos(s.ColInt(8));
    return b;
  }

  absl::StatusOr<std::optional<StoredBatch>> FindBatch(absl::string_view stream,
                                                       int64_t sequence_number)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Stmt& s = st_->batch_find;
    ResetOnExit reset(s);
    s.Text(1, stream).Int(2, sequence_number);
    ASSIGN_OR_RETURN(bool row, s.Step());
    if (!row) return std::nullopt;
    ASSIGN_OR_RETURN(StoredBatch b, BatchFromRow(s));
    return b;
  }

  // FindBatch, with NotFound when there is none.
  absl::StatusOr<StoredBatch> GetBatch(absl::string_view stream,
                                       int64_t sequence_number)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ASSIGN_OR_RETURN(std::optional<StoredBatch> b,
                     FindBatch(stream, sequence_number));
    if (!b.has_value()) {
      return absl::NotFoundError(absl::StrCat(
          "no set-aside batch ", sequence_number, " of stream ", stream));
    }
    return *std::move(b);
  }

  // Deletes a set-aside batch and its records inside the current transaction,
  // counting them in set_aside_dropped. Returns how many records went.
  absl::StatusOr<int64_t> DeleteBatch(const StoredBatch& b)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int k = static_cast<int>(b.batch.kind);
    int64_t deleted = 0;
    if (!b.batch.ids.empty()) {
      RETURN_IF_ERROR(st_->set_aside_delete[k]
                          .Int(1, b.batch.ids.first)
                          .Int(2, b.batch.ids.last)
                          .Int(3, -b.row)
                          .Run());
      deleted = sqlite3_changes(db_);
    }
    RETURN_IF_ERROR(st_->batch_delete.Int(1, b.row).Run());
    KindState& ks = kinds_[k];
    ks.set_aside -= deleted;
    ks.set_aside_dropped += deleted;
    dirty_ |= 1 << k;
    return deleted;
  }

  absl::Status CheckOpen() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (db_ == nullptr || st_ == nullptr) {
      return absl::FailedPreconditionError("storage is closed");
    }
    return absl::OkStatus();
  }

  int64_t NowNanos() { return absl::ToUnixNanos(clock_->Now()); }

  static absl::StatusOr<int64_t> RecordTime(
      bool has_ts, const google::protobuf::Timestamp& ts, int64_t now,
      absl::string_view what, size_t index) {
    if (!has_ts) return now;
    absl::StatusOr<int64_t> nanos = TimestampToNanos(ts);
    if (!nanos.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          what, " ", index, " of the batch: ", nanos.status().message()));
    }
    return *nanos;
  }

  void ClearBatch() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    rows_.clear();
    payload_.clear();
  }

  absl::Status OpenDatabaseLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int rc = sqlite3_open_v2(
        path_.c_str(), &db_,
        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX,
        nullptr);
    if (rc != SQLITE_OK) return SqliteStatus(db_, rc, "open");
    sqlite3_extended_result_codes(db_, 1);
#ifdef FLEETD_HAVE_SQLCIPHER
    if (!options_.encryption_key.empty()) {
      rc = sqlite3_key(db_, options_.encryption_key.data(),
                       static_cast<int>(options_.encryption_key.size()));
      if (rc != SQLITE_OK) return SqliteStatus(db_, rc, "setting the key");
    }
#endif
    sqlite3_busy_timeout(db_, 5000);

    // The first statement that reads the file: a corrupt file or a wrong key
    // fails here with DataLoss (SQLITE_NOTADB).
    ASSIGN_OR_RETURN(std::string mode,
                     QueryText(db_, "PRAGMA journal_mode=WAL"));
    if (absl::AsciiStrToLower(mode) != "wal") {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot switch ", path_,
                       " to WAL mode (journal_mode is ", mode, ")"));
    }
    RETURN_IF_ERROR(Exec(db_, options_.durability == Durability::kFull
                                  ? "PRAGMA synchronous=FULL"
                                  : "PRAGMA synchronous=NORMAL"));
    RETURN_IF_ERROR(Exec(db_, "PRAGMA temp_store=MEMORY"));
    // Deleted rows need not be zeroed: the file is encrypted when that
    // matters, and zeroing doubles the cost of eviction.
    RETURN_IF_ERROR(Exec(db_, "PRAGMA secure_delete=OFF"));
    if (options_.verify_on_open) {
      ASSIGN_OR_RETURN(std::string check, QueryText(db_, "PRAGMA quick_check"));
      if (check != "ok") {
        return absl::DataLossError(
            absl::StrCat("integrity check failed: ", check));
      }
    }
    RETURN_IF_ERROR(Migrate());

    ASSIGN_OR_RETURN(page_size_, QueryInt(db_, "PRAGMA page_size"));
    if (page_size_ <= 0) page_size_ = 4096;
    RETURN_IF_ERROR(ApplyQuotaSettings(max_bytes_));

    st_ = std::make_unique<Statements>();
    RETURN_IF_ERROR(PrepareStatements());
    return LoadState();
  }

  // The settings Open derives from the quota: the file limit (when
  // file_limit_bytes is 0) and the WAL's checkpoint interval and size limit.
  // SQLite never sets max_page_count below the pages the file has, so after a
  // smaller quota the file limit stays at the file's size; the file does not
  // shrink, its freed pages are reused.
  absl::Status ApplyQuotaSettings(int64_t quota)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int64_t limit_bytes = options_.file_limit_bytes;
    if (limit_bytes == 0) {
      limit_bytes = quota + std::max<int64_t>(quota / 8, 1 << 20);
    }
    ASSIGN_OR_RETURN(
        file_limit_pages_,
        QueryInt(db_,
                 absl::StrCat("PRAGMA max_page_count=",
                              std::max<int64_t>(limit_bytes / page_size_, 8))));
    // Keep the WAL small relative to the quota: a 5 MB store must not carry a
    // 4 MB WAL beside it.
    const int64_t quota_pages = quota / page_size_;
    const int64_t checkpoint_pages =
        std::clamp<int64_t>(quota_pages / 16, 16, 1000);
    RETURN_IF_ERROR(Exec(
        db_, absl::StrCat("PRAGMA wal_autocheckpoint=", checkpoint_pages)));
    return Exec(db_, absl::StrCat("PRAGMA journal_size_limit=",
                                  2 * checkpoint_pages * page_size_));
  }

  void CloseDatabase() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    st_.reset();  // statements must be finalized before the close
    if (db_ != nullptr) {
      sqlite3_close(db_);
      db_ = nullptr;
    }
    ClearSeriesCaches();
  }

  absl::Status Migrate() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ASSIGN_OR_RETURN(int64_t version, QueryInt(db_, "PRAGMA user_version"));
    if (version > storage_internal::kSchemaVersion) {
      return absl::FailedPreconditionError(
          absl::StrCat(path_, " has schema version ", version,
                       ", newer than the ", storage_internal::kSchemaVersion,
                       " this agent understands; upgrade the agent"));
    }
    if (version == 0) {
      ASSIGN_OR_RETURN(int64_t tables,
                       QueryInt(db_, "SELECT count(*) FROM sqlite_master"));
      if (tables != 0) {
        return absl::FailedPreconditionError(
            absl::StrCat(path_, " is an SQLite database of something else"));
      }
    }
    for (const storage_internal::Migration& m :
         storage_internal::SchemaMigrations()) {
      if (m.version <= version) continue;
      RETURN_IF_ERROR(Exec(db_, "BEGIN IMMEDIATE"));
      absl::Status s = Exec(db_, m.sql);
      if (s.ok()) {
        s = Exec(db_, absl::StrCat("PRAGMA user_version=", m.version));
      }
      if (s.ok()) s = Exec(db_, "COMMIT");
      if (!s.ok()) {
        if (!sqlite3_get_autocommit(db_)) Exec(db_, "ROLLBACK").IgnoreError();
        return WithContext(
            s, absl::StrCat("migrating to schema version ", m.version));
      }
      if (version > 0) {
        log_(
            absl::LogSeverity::kInfo,
            absl::StrCat("migrated ", path_, " to schema version ", m.version));
      }
    }
    return absl::OkStatus();
  }

  absl::Status PrepareStatements() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Statements& s = *st_;
    RETURN_IF_ERROR(s.begin.Prepare(db_, "BEGIN IMMEDIATE"));
    RETURN_IF_ERROR(s.commit.Prepare(db_, "COMMIT"));
    RETURN_IF_ERROR(s.rollback.Prepare(db_, "ROLLBACK"));
    for (int k = 0; k < kRecordKindCount; ++k) {
      const std::string t = kTables[k];
      const bool metric = k == static_cast<int>(RecordKind::kMetric);
      RETURN_IF_ERROR(s.insert[k].Prepare(
          db_, metric ? "INSERT INTO metrics(id, synced, ts, series, "
                        "value_bits) VALUES (?1, 0, ?2, ?3, ?4)"
                      : absl::StrCat("INSERT INTO ", t,
                                     "(id, synced, ts, body) "
                                     "VALUES (?1, 0, ?2, ?3)")));
      const std::string columns =
          metric ? "id, ts, series, value_bits" : "id, ts, body";
      for (int all = 0; all < 2; ++all) {
        RETURN_IF_ERROR(s.read[k][all].Prepare(
            db_, absl::StrCat("SELECT ", columns, " FROM ", t,
                              " WHERE id > ?1 AND id <= ?2",
                              all ? " AND synced >= 0" : " AND synced = 0",
                              " ORDER BY id LIMIT ?3")));
      }
      RETURN_IF_ERROR(s.mark[k].Prepare(
          db_, absl::StrCat("UPDATE ", t,
                            " SET synced = 1 WHERE id >= ?1 AND id <= ?2 "
                            "AND synced = 0")));
      // The oldest ?3 rows with synced = ?2 from id ?1 on: find the last of
      // them, then delete the id range (no temporary table of ids).
      RETURN_IF_ERROR(s.evict[k].Prepare(
          db_, absl::StrCat("DELETE FROM ", t,
                            " WHERE id >= ?1 AND synced = ?2 AND id <= "
                            "coalesce((SELECT id FROM ",
                            t,
                            " WHERE id >= ?1 AND synced = ?2 ORDER BY id "
                            "LIMIT 1 OFFSET ?3 - 1), (SELECT max(id) FROM ",
                            t, "))")));
      RETURN_IF_ERROR(s.clean[k].Prepare(
          db_,
          absl::StrCat("DELETE FROM ", t, " WHERE ts < ?1 AND synced = ?2")));
      RETURN_IF_ERROR(s.first_unsynced[k].Prepare(
          db_, absl::StrCat("SELECT id, ts FROM ", t,
                            " WHERE id >= ?1 AND synced = 0 ORDER BY id "
                            "LIMIT 1")));
      RETURN_IF_ERROR(s.oldest[k].Prepare(
          db_, absl::StrCat("SELECT ts FROM ", t, " ORDER BY id LIMIT 1")));
      RETURN_IF_ERROR(s.set_aside_mark[k].Prepare(
          db_, absl::StrCat("UPDATE ", t,
                            " SET synced = ?3 WHERE id >= ?1 AND id <= ?2 "
                            "AND synced = 0")));
      RETURN_IF_ERROR(s.set_aside_requeue[k].Prepare(
          db_, absl::StrCat("UPDATE ", t,
                            " SET synced = 0, id = id + ?4 WHERE id >= ?1 AND "
                            "id <= ?2 AND synced = ?3")));
      RETURN_IF_ERROR(s.set_aside_delete[k].Prepare(
          db_, absl::StrCat("DELETE FROM ", t,
                            " WHERE id >= ?1 AND id <= ?2 AND synced = ?3")));
    }
    constexpr char kBatchColumns[] =
        "id, stream, kind, sequence, first_id, last_id, record_count, reason, "
        "set_aside_at";
    RETURN_IF_ERROR(s.batch_insert.Prepare(
        db_,
        "INSERT INTO set_aside(stream, kind, sequence, first_id, last_id, "
        "record_count, reason, set_aside_at) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"));
    RETURN_IF_ERROR(s.batch_count.Prepare(
        db_, "UPDATE set_aside SET record_count = ?2 WHERE id = ?1"));
    RETURN_IF_ERROR(s.batch_find.Prepare(
        db_, absl::StrCat("SELECT ", kBatchColumns,
                          " FROM set_aside WHERE stream = ?1 AND sequence = "
                          "?2")));
    RETURN_IF_ERROR(s.batch_list.Prepare(
        db_,
        absl::StrCat("SELECT ", kBatchColumns, " FROM set_aside ORDER BY id")));
    RETURN_IF_ERROR(s.batch_oldest.Prepare(
        db_, absl::StrCat("SELECT ", kBatchColumns,
                          " FROM set_aside ORDER BY id LIMIT 1")));
    RETURN_IF_ERROR(
        s.batch_delete.Prepare(db_, "DELETE FROM set_aside WHERE id = ?1"));
    RETURN_IF_ERROR(s.update_kind.Prepare(
        db_,
        "UPDATE kinds SET next_id = ?2, unsynced = ?3, synced = ?4, "
        "dropped_unsynced = ?5, evicted_synced = ?6, cleaned = ?7, "
        "set_aside = ?8, set_aside_dropped = ?9 WHERE kind = ?1"));
    RETURN_IF_ERROR(
        s.series_find.Prepare(db_, "SELECT id FROM series WHERE key = ?1"));
    RETURN_IF_ERROR(
        s.series_insert.Prepare(db_, "INSERT INTO series(key) VALUES (?1)"));
    RETURN_IF_ERROR(
        s.series_get.Prepare(db_, "SELECT key FROM series WHERE id = ?1"));
    RETURN_IF_ERROR(s.series_gc.Prepare(
        db_,
        "DELETE FROM series WHERE id NOT IN (SELECT series FROM metrics)"));
    RETURN_IF_ERROR(s.page_count.Prepare(db_, "PRAGMA page_count"));
    RETURN_IF_ERROR(s.freelist_count.Prepare(db_, "PRAGMA freelist_count"));
    RETURN_IF_ERROR(s.pending_save.Prepare(
        db_,
        "INSERT OR REPLACE INTO pending_batches(stream, kind, sequence, "
        "first_id, last_id, record_count, retry_count) "
        "VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)"));
    RETURN_IF_ERROR(s.pending_load.Prepare(
        db_,
        "SELECT kind, sequence, first_id, last_id, record_count, retry_count "
        "FROM pending_batches WHERE stream = ?1"));
    RETURN_IF_ERROR(s.pending_clear.Prepare(
        db_, "DELETE FROM pending_batches WHERE stream = ?1"));
    return absl::OkStatus();
  }

  absl::Status LoadState() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Stmt load;
    RETURN_IF_ERROR(load.Prepare(
        db_,
        "SELECT next_id, unsynced, synced, dropped_unsynced, evicted_synced, "
        "cleaned, set_aside, set_aside_dropped FROM kinds WHERE kind = ?1"));
    for (int k = 0; k < kRecordKindCount; ++k) {
      ResetOnExit reset(load);
      load.Int(1, k);
      ASSIGN_OR_RETURN(bool row, load.Step());
      if (!row) {
        return absl::DataLossError(
            absl::StrCat("counters of ", kTables[k], " are missing"));
      }
      KindState& ks = kinds_[k];
      ks.next_id = load.ColInt(0);
      ks.unsynced = load.ColInt(1);
      ks.synced = load.ColInt(2);
      ks.dropped_unsynced = load.ColInt(3);
      ks.evicted_synced = load.ColInt(4);
      ks.cleaned = load.ColInt(5);
      ks.set_aside = load.ColInt(6);
      ks.set_aside_dropped = load.ColInt(7);
      ASSIGN_OR_RETURN(
          int64_t max_id,
          QueryInt(db_, absl::StrCat("SELECT max(id) FROM ", kTables[k])));
      ks.next_id = std::max(ks.next_id, max_id + 1);
      ks.first_unsynced = 0;
      RETURN_IF_ERROR(RecomputeFirstUnsynced(k));
    }
    ASSIGN_OR_RETURN(approx_used_, MeasureUsedBytes());
    return absl::OkStatus();
  }

  absl::Status RecomputeFirstUnsynced(int k)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    KindState& ks = kinds_[k];
    Stmt& s = st_->first_unsynced[k];
    ResetOnExit reset(s);
    s.Int(1, ks.first_unsynced);
    ASSIGN_OR_RETURN(bool row, s.Step());
    ks.first_unsynced = row ? s.ColInt(0) : ks.next_id;
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> MeasureUsedBytes()
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int64_t pages = 0;
    int64_t free_pages = 0;
    {
      ResetOnExit reset(st_->page_count);
      ASSIGN_OR_RETURN(bool row, st_->page_count.Step());
      if (row) pages = st_->page_count.ColInt(0);
    }
    {
      ResetOnExit reset(st_->freelist_count);
      ASSIGN_OR_RETURN(bool row, st_->freelist_count.Step());
      if (row) free_pages = st_->freelist_count.ColInt(0);
    }
    return (pages - free_pages) * page_size_;
  }

  // Runs `body` in one write transaction. On any failure the transaction is
  // rolled back and the in-memory state restored, so memory and file agree.
  template <typename F>
  absl::Status Transaction(F&& body) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const std::array<KindState, kRecordKindCount> saved = kinds_;
    dirty_ = 0;
    new_series_.clear();
    RETURN_IF_ERROR(st_->begin.Run());
    absl::Status s = body();
    if (s.ok()) s = FlushKinds();
    if (s.ok()) s = st_->commit.Run();
    if (!s.ok()) {
      if (!sqlite3_get_autocommit(db_)) st_->rollback.Run().IgnoreError();
      kinds_ = saved;
      // Ids of series inserted by the rolled-back transaction will be reused.
      for (const auto& [key, id] : new_series_) {
        series_ids_.erase(key);
        series_protos_.erase(id);
      }
    }
    new_series_.clear();
    return s;
  }

  absl::Status FlushKinds() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    for (int k = 0; k < kRecordKindCount; ++k) {
      if ((dirty_ & (1 << k)) == 0) continue;
      const KindState& ks = kinds_[k];
      RETURN_IF_ERROR(st_->update_kind.Int(1, k)
                          .Int(2, ks.next_id)
                          .Int(3, ks.unsynced)
                          .Int(4, ks.synced)
                          .Int(5, ks.dropped_unsynced)
                          .Int(6, ks.evicted_synced)
                          .Int(7, ks.cleaned)
                          .Int(8, ks.set_aside)
                          .Int(9, ks.set_aside_dropped)
                          .Run());
    }
    dirty_ = 0;
    return absl::OkStatus();
  }

  // Bytes the batch in rows_/payload_ will roughly add to the file.
  int64_t EstimateBatchBytes(RecordKind kind) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    if (kind != RecordKind::kMetric) {
      return static_cast<int64_t>(rows_.size()) * kRowOverheadBytes +
             static_cast<int64_t>(payload_.size());
    }
    int64_t bytes = 0;
    for (const Row& r : rows_) {
      bytes += kRowOverheadBytes + kMetricRowBytes;
      absl::string_view key(payload_.data() + r.offset, r.size);
      if (!series_ids_.contains(key)) {
        bytes += kRowOverheadBytes + static_cast<int64_t>(r.size);
      }
    }
    return bytes;
  }

  absl::StatusOr<IdRange> AppendBatch(RecordKind kind)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    RETURN_IF_ERROR(CheckOpen());
    const int k = static_cast<int>(kind);
    if (rows_.empty()) return IdRange{kinds_[k].next_id, kinds_[k].next_id - 1};
    const int64_t estimate = EstimateBatchBytes(kind);
    if (estimate > max_bytes_ / 2) {
      return absl::InvalidArgumentError(
          absl::StrCat("a batch of about ", estimate, " bytes of ", kTables[k],
                       " does not fit the store's quota of ", max_bytes_,
                       " bytes; append it in smaller batches"));
    }
    IdRange range;
    absl::Status s;
    for (int attempt = 0; attempt < 2; ++attempt) {
      s = Transaction([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        RETURN_IF_ERROR(EnsureRoom(estimate));
        return InsertRows(k, &range);
      });
      if (s.ok()) {
        approx_used_ += estimate;
        return range;
      }
      if (!absl::IsResourceExhausted(s) || attempt == 1) break;
      // The disk (or the file limit) is full before the quota is: make room
      // by the full-storage policy and try once more.
      ++full_events_;
      ASSIGN_OR_RETURN(int64_t used, MeasureUsedBytes());
      const int64_t need = estimate + std::max(used / 16, 4 * page_size_);
      RETURN_IF_ERROR(Transaction([&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
        return Evict(need, absl::StrCat("the disk or file limit is full (",
                                        s.message(), ")"));
      }));
    }
    if (absl::IsResourceExhausted(s)) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "storage full: cannot append ", rows_.size(), " ", kTables[k], " to ",
          path_, " even after evicting: ", s.message()));
    }
    return s;
  }

  absl::Status InsertRows(int k, IdRange* range)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    KindState& ks = kinds_[k];
    Stmt& insert = st_->insert[k];
    const bool metric = k == static_cast<int>(RecordKind::kMetric);
    int64_t id = ks.next_id;
    for (const Row& r : rows_) {
      absl::string_view payload(payload_.data() + r.offset, r.size);
      insert.Int(1, id).Int(2, r.ts);
      if (metric) {
        ASSIGN_OR_RETURN(int64_t series, InternSeries(payload));
        insert.Int(3, series).Int(4, r.value_bits);
      } else {
        insert.Blob(3, payload);
      }
      RETURN_IF_ERROR(insert.Run());
      ++id;
    }
    *range = IdRange{ks.next_id, id - 1};
    // first_unsynced already equals the old next_id when nothing was unsynced.
    ks.next_id = id;
    ks.unsynced += range->size();
    dirty_ |= 1 << k;
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> InternSeries(absl::string_view key)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = series_ids_.find(key);
    if (it != series_ids_.end()) return it->second;
    int64_t id;
    {
      Stmt& find = st_->series_find;
      ResetOnExit reset(find);
      find.Blob(1, key);
      ASSIGN_OR_RETURN(bool row, find.Step());
      id = row ? find.ColInt(0) : 0;
    }
    if (id == 0) {
      RETURN_IF_ERROR(st_->series_insert.Blob(1, key).Run());
      id = sqlite3_last_insert_rowid(db_);
      new_series_.emplace_back(std::string(key), id);
    }
    if (series_ids_.size() >= kSeriesCacheLimit) series_ids_.clear();
    series_ids_.emplace(std::string(key), id);
    return id;
  }

  absl::StatusOr<const SeriesEntry*> LookupSeries(int64_t id)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = series_protos_.find(id);
    if (it != series_protos_.end()) return it->second.get();
    Stmt& get = st_->series_get;
    ResetOnExit reset(get);
    get.Int(1, id);
    ASSIGN_OR_RETURN(bool row, get.Step());
    if (!row) {
      return absl::DataLossError(
          absl::StrCat("metric refers to missing series ", id));
    }
    auto entry = std::make_unique<SeriesEntry>();
    absl::string_view key = get.ColBlob(0);
    entry->key_size = key.size();
    RETURN_IF_ERROR(WithContext(DecodeSeriesKey(key, &entry->proto),
                                absl::StrCat("series ", id)));
    if (series_protos_.size() >= kSeriesCacheLimit) series_protos_.clear();
    const SeriesEntry* result = entry.get();
    series_protos_.emplace(id, std::move(entry));
    return result;
  }

  void ClearSeriesCaches() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    series_ids_.clear();
    series_protos_.clear();
  }

  // Deletes series no metric refers to. Returns whether any went.
  absl::StatusOr<bool> CollectSeries() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    RETURN_IF_ERROR(st_->series_gc.Run());
    return sqlite3_changes(db_) > 0;
  }

  // Reads rows of kind `k` per `options`. `row_fn(stmt, id, ts)` converts the
  // current row and returns its approximate size.
  template <typename RowFn, typename ReserveFn>
  absl::Status ReadRows(RecordKind kind, const ReadOptions& options,
                        RowFn&& row_fn, ReserveFn&& reserve)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    RETURN_IF_ERROR(CheckOpen());
    if (options.max_records <= 0) {
      return absl::InvalidArgumentError("max_records must be positive");
    }
    const int k = static_cast<int>(kind);
    int64_t lo = options.after_id;
    if (!options.include_synced) {
      lo = std::max(lo, kinds_[k].first_unsynced - 1);
    }
    const int64_t hi = options.until_id > 0
                           ? options.until_id
                           : std::numeric_limits<int64_t>::max();
    Stmt& s = st_->read[k][options.include_synced ? 1 : 0];
    ResetOnExit reset(s);
    s.Int(1, lo).Int(2, hi).Int(3, options.max_records);
    reserve(static_cast<size_t>(
        std::min<int64_t>(options.max_records, kinds_[k].unsynced + 1)));
    int64_t bytes = 0;
    for (;;) {
      ASSIGN_OR_RETURN(bool row, s.Step());
      if (!row) break;
      absl::StatusOr<int64_t> size = row_fn(s, s.ColInt(0), s.ColInt(1));
      if (!size.ok()) {
        log_(absl::LogSeverity::kError,
             absl::StrCat("reading ", kTables[k], " from ", path_, ": ",
                          size.status().message()));
        return size.status();
      }
      bytes += *size;
      if (options.max_bytes > 0 && bytes >= options.max_bytes) break;
    }
    return absl::OkStatus();
  }

  // Quota check before an append of `incoming` bytes, inside its transaction.
  absl::Status EnsureRoom(int64_t incoming) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const int64_t quota = max_bytes_;
    // Measuring costs two page-count queries; far below the quota the running
    // estimate is enough.
    if (approx_used_ + incoming <= quota - quota / 8) return absl::OkStatus();
    ASSIGN_OR_RETURN(int64_t used, MeasureUsedBytes());
    approx_used_ = used;
    if (used + incoming <= quota) return absl::OkStatus();
    ++full_events_;
    // Free a little more than needed so eviction runs in chunks, not on every
    // append.
    const int64_t headroom = std::max(quota / 32, 2 * page_size_);
    return Evict(used + incoming - quota + headroom,
                 absl::StrCat("the quota of ", quota, " bytes is reached"));
  }

  // Frees about `need` bytes inside the current transaction: the oldest synced
  // records first (every kind in proportion to its synced count), then unused
  // series, then the oldest set-aside batches (whole batches: the server
  // refused them, so they are worth less than data it has not seen yet), and
  // only then the oldest unsynced records.
  absl::Status Evict(int64_t need, absl::string_view reason)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ASSIGN_OR_RETURN(const int64_t before, MeasureUsedBytes());
    int64_t freed = 0;
    std::array<int64_t, kRecordKindCount> evicted{};
    std::array<int64_t, kRecordKindCount> dropped{};
    std::array<int64_t, kRecordKindCount> dropped_set_aside{};
    std::vector<std::string> dropped_batches;
    bool series_gone = false;
    for (int phase = 0; phase < 2 && freed < need; ++phase) {
      const bool synced = phase == 0;
      for (int round = 0; round < 64 && freed < need; ++round) {
        int64_t in_scope = 0;
        int64_t rows = 0;
        for (const KindState& ks : kinds_) {
          in_scope += synced ? ks.synced : ks.unsynced;
          rows += ks.synced + ks.unsynced + ks.set_aside;
        }
        if (in_scope == 0) break;
        const int64_t avg_row = std::max<int64_t>(8, (before - freed) / rows);
        const double want = static_cast<double>(need - freed) / avg_row + 1;
        for (int k = 0; k < kRecordKindCount; ++k) {
          KindState& ks = kinds_[k];
          int64_t& count = synced ? ks.synced : ks.unsynced;
          if (count == 0) continue;
          const auto share = static_cast<int64_t>(
              std::ceil(want * static_cast<double>(count) / in_scope));
          const int64_t limit = std::clamp<int64_t>(share, 1, count);
          RETURN_IF_ERROR(st_->evict[k]
                              .Int(1, synced ? 0 : ks.first_unsynced)
                              .Int(2, synced ? 1 : 0)
                              .Int(3, limit)
                              .Run());
          const int64_t n = sqlite3_changes(db_);
          count -= n;
          if (synced) {
            ks.evicted_synced += n;
            evicted[k] += n;
          } else {
            ks.dropped_unsynced += n;
            dropped[k] += n;
            RETURN_IF_ERROR(RecomputeFirstUnsynced(k));
          }
          dirty_ |= 1 << k;
        }
        ASSIGN_OR_RETURN(int64_t now_used, MeasureUsedBytes());
        freed = before - now_used;
      }
      if (synced && freed < need) {
        // Series of deleted metrics may hold the space still missing.
        ASSIGN_OR_RETURN(bool gone, CollectSeries());
        series_gone = series_gone || gone;
        ASSIGN_OR_RETURN(int64_t now_used, MeasureUsedBytes());
        freed = before - now_used;
      }
      if (synced && freed < need) {
        bool metrics_dropped = false;
        while (freed < need) {
          std::optional<StoredBatch> oldest;
          {
            Stmt& o = st_->batch_oldest;
            ResetOnExit reset(o);
            ASSIGN_OR_RETURN(bool row, o.Step());
            if (!row) break;
            ASSIGN_OR_RETURN(oldest, BatchFromRow(o));
          }
          ASSIGN_OR_RETURN(int64_t n, DeleteBatch(*oldest));
          const int k = static_cast<int>(oldest->batch.kind);
          dropped_set_aside[k] += n;
          metrics_dropped |= k == static_cast<int>(RecordKind::kMetric);
          dropped_batches.push_back(absl::StrCat(
              oldest->batch.stream, "/", oldest->batch.sequence_number));
          ASSIGN_OR_RETURN(int64_t now_used, MeasureUsedBytes());
          freed = before - now_used;
        }
        if (metrics_dropped && freed < need) {
          ASSIGN_OR_RETURN(bool gone, CollectSeries());
          series_gone = series_gone || gone;
          ASSIGN_OR_RETURN(int64_t now_used, MeasureUsedBytes());
          freed = before - now_used;
        }
      }
    }
    if (series_gone) ClearSeriesCaches();
    approx_used_ = before - freed;

    int64_t total_evicted = 0;
    int64_t total_dropped = 0;
    int64_t total_set_aside = 0;
    for (int k = 0; k < kRecordKindCount; ++k) {
      total_evicted += evicted[k];
      total_dropped += dropped[k];
      total_set_aside += dropped_set_aside[k];
    }
    std::string message = absl::StrCat(
        "storage ", path_, " full (", reason, "): evicted ", total_evicted,
        " synced records, freed ", freed, " of ", need, " bytes wanted");
    if (!dropped_batches.empty()) {
      // Logged on its own, never rate-limited: each batch is gone for good.
      log_(absl::LogSeverity::kWarning,
           absl::StrCat("storage ", path_, " full (", reason, "): DROPPED ",
                        dropped_batches.size(), " set-aside batches (",
                        absl::StrJoin(dropped_batches, ", "), ") with ",
                        total_set_aside, " records (metrics ",
                        dropped_set_aside[0], ", logs ", dropped_set_aside[1],
                        ", events ", dropped_set_aside[2], ")"));
    }
    if (total_dropped > 0) {
      absl::StrAppend(&message, "; DROPPED ", total_dropped,
                      " UNSYNCED records (metrics ", dropped[0], ", logs ",
                      dropped[1], ", events ", dropped[2], ")");
    }
    Warn(message);
    return absl::OkStatus();
  }

  // Logs a warning at most every kWarnInterval; the rest are counted.
  void Warn(const std::string& message) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    const absl::Time now = clock_->MonotonicNow();
    if (warned_ && now - last_warning_ < kWarnInterval) {
      ++suppressed_warnings_;
      return;
    }
    std::string line = message;
    if (suppressed_warnings_ > 0) {
      absl::StrAppend(&line, " (", suppressed_warnings_,
                      " similar warnings suppressed)");
    }
    log_(absl::LogSeverity::kWarning, line);
    warned_ = true;
    last_warning_ = now;
    suppressed_warnings_ = 0;
  }

  // options_.max_bytes is the quota at open only; max_bytes_ is the one in
  // force.
  const SqliteStorageOptions options_;
  const std::string path_;
  Clock* const clock_;
  const StorageLogFn log_;

  absl::Mutex mu_;
  // The byte quota (SetMaxBytes changes it).
  int64_t max_bytes_ ABSL_GUARDED_BY(mu_);
  sqlite3* db_ ABSL_GUARDED_BY(mu_) = nullptr;
  std::unique_ptr<Statements> st_ ABSL_GUARDED_BY(mu_);
  std::array<KindState, kRecordKindCount> kinds_ ABSL_GUARDED_BY(mu_);
  unsigned dirty_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t page_size_ ABSL_GUARDED_BY(mu_) = 4096;
  int64_t file_limit_pages_ ABSL_GUARDED_BY(mu_) = 0;
  // Pages in use as last measured plus estimates of appends since.
  int64_t approx_used_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t full_events_ ABSL_GUARDED_BY(mu_) = 0;
  std::string recovered_from_ ABSL_GUARDED_BY(mu_);

  absl::flat_hash_map<std::string, int64_t> series_ids_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<int64_t, std::unique_ptr<SeriesEntry>> series_protos_
      ABSL_GUARDED_BY(mu_);
  std::vector<std::pair<std::string, int64_t>> new_series_ ABSL_GUARDED_BY(mu_);

  std::vector<Row> rows_ ABSL_GUARDED_BY(mu_);
  std::string payload_ ABSL_GUARDED_BY(mu_);
  EncodeScratch scratch_ ABSL_GUARDED_BY(mu_);

  bool warned_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time last_warning_ ABSL_GUARDED_BY(mu_);
  int64_t suppressed_warnings_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace

bool SqliteEncryptionAvailable() {
#ifdef FLEETD_HAVE_SQLCIPHER
  return true;
#else
  return false;
#endif
}

absl::StatusOr<std::unique_ptr<Storage>> OpenSqliteStorage(
    const SqliteStorageOptions& in) {
  SqliteStorageOptions options = in;
  if (options.clock == nullptr) options.clock = Clock::Real();
  if (!options.log) options.log = StderrStorageLog();
  if (options.data_dir.empty()) {
    return absl::InvalidArgumentError("storage needs a data directory");
  }
  if (options.file_name.empty() ||
      options.file_name.find('/') != std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid database file name \"", options.file_name, "\""));
  }
  RETURN_IF_ERROR(CheckQuota(options.max_bytes));
  if (options.file_limit_bytes < 0) {
    return absl::InvalidArgumentError("file_limit_bytes must not be negative");
  }
  if (!options.encryption_key.empty() && !SqliteEncryptionAvailable()) {
    return absl::FailedPreconditionError(
        "a storage key is set but this build has no SQLCipher "
        "(FLEETD_WITH_SQLCIPHER=OFF); cannot encrypt at rest");
  }
  RETURN_IF_ERROR(PrepareDataDir(options.data_dir));
  std::string path = options.data_dir;
  if (path.back() != '/') path += '/';
  path += options.file_name;
  RETURN_IF_ERROR(CheckFileWritable(path));

  auto store = std::make_unique<SqliteStorage>(options, path);
  absl::Status s = store->OpenDatabase();
  if (absl::IsDataLoss(s)) {
    // Exactly one recovery attempt: a fresh file either opens or the error is
    // returned, so a bad file can never make the agent crash-loop.
    store->CloseDatabaseForRetry();
    ASSIGN_OR_RETURN(std::string aside, MoveAside(path, options.clock->Now()));
    options.log(absl::LogSeverity::kError,
                absl::StrCat("database ", path, " is unreadable (", s.message(),
                             "): corrupt, or encrypted with another key; "
                             "moved it to ",
                             aside, " and starting with an empty store"));
    s = store->OpenDatabase();
    if (s.ok()) store->SetRecoveredFrom(aside);
  }
  if (!s.ok()) return WithContext(s, absl::StrCat("opening storage ", path));
  return store;
}

absl::StatusOr<std::string> ResolveStorageKey(const EnvLookup& env) {
  std::optional<std::string> key = env("FLEET_STORAGE_KEY");
  std::optional<std::string> file = env("FLEET_STORAGE_KEY_FILE");
  if (key.has_value() && file.has_value()) {
    return absl::InvalidArgumentError(
        "FLEET_STORAGE_KEY and FLEET_STORAGE_KEY_FILE are both set; set one");
  }
  if (key.has_value()) {
    if (key->empty()) {
      return absl::InvalidArgumentError("FLEET_STORAGE_KEY: the key is empty");
    }
    return *key;
  }
  if (!file.has_value()) return std::string();
  std::FILE* f = std::fopen(file->c_str(), "rb");
  if (f == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("FLEET_STORAGE_KEY_FILE: cannot read \"", *file,
                     "\": ", ErrnoText(errno)));
  }
  std::string contents;
  char buf[4096];
  for (size_t n; (n = std::fread(buf, 1, sizeof(buf), f)) > 0;) {
    contents.append(buf, n);
    if (contents.size() > (1 << 16)) {
      std::fclose(f);
      return absl::InvalidArgumentError(absl::StrCat(
          "FLEET_STORAGE_KEY_FILE: \"", *file, "\" is too large for a key"));
    }
  }
  std::fclose(f);
  std::string trimmed(absl::StripAsciiWhitespace(contents));
  if (trimmed.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "FLEET_STORAGE_KEY_FILE: \"", *file, "\" holds an empty key"));
  }
  return trimmed;
}

}  // namespace fleetd::agent
