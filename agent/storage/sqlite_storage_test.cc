#include "agent/storage/sqlite_storage.h"

#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/storage/sqlite_api.h"
#include "agent/storage/sqlite_schema.h"
#include "agent/storage/storage_test_util.h"
#include "common/clock/clock.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::agent {
namespace {

using ::fleetd::agent::testing::EqualsProto;
using ::fleetd::agent::testing::Ids;
using ::fleetd::agent::testing::LogCapture;
using ::fleetd::agent::testing::MakeLog;
using ::fleetd::agent::testing::MakeMetric;
using ::fleetd::agent::testing::ReadWholeFile;
using ::fleetd::agent::testing::TempDir;
using ::fleetd::agent::testing::WriteWholeFile;
using ::fleetd::testing::IsOk;
using ::fleetd::testing::IsOkAndHolds;
using ::fleetd::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

const absl::Time kStart = absl::FromUnixSeconds(1'700'000'000);

// A raw connection for looking at the file behind the store's back.
class RawDb {
 public:
  explicit RawDb(const std::string& path, const std::string& key = "") {
    EXPECT_EQ(sqlite3_open(path.c_str(), &db_), SQLITE_OK);
#ifdef FLEETD_HAVE_SQLCIPHER
    if (!key.empty()) {
      EXPECT_EQ(sqlite3_key(db_, key.data(), static_cast<int>(key.size())),
                SQLITE_OK);
    }
#endif
  }
  ~RawDb() { sqlite3_close(db_); }

  // The first column of the first row as text, or "error <code>: <message>".
  std::string Query(const std::string& sql) {
    sqlite3_stmt* stmt = nullptr;
    int rc = sqlite3_prepare_v2(db_, sql.c_str(), -1, &stmt, nullptr);
    std::string out;
    if (rc == SQLITE_OK) {
      rc = sqlite3_step(stmt);
      if (rc == SQLITE_ROW) {
        const unsigned char* t = sqlite3_column_text(stmt, 0);
        out = t != nullptr ? reinterpret_cast<const char*>(t) : "NULL";
      } else if (rc == SQLITE_DONE) {
        out = "";
      }
    }
    if (rc != SQLITE_OK && rc != SQLITE_ROW && rc != SQLITE_DONE) {
      out = absl::StrCat("error ", rc & 0xff, ": ", sqlite3_errmsg(db_));
    }
    sqlite3_finalize(stmt);
    return out;
  }
  int Exec(const std::string& sql) {
    return sqlite3_exec(db_, sql.c_str(), nullptr, nullptr, nullptr);
  }

 private:
  sqlite3* db_ = nullptr;
};

class SqliteStorageTest : public ::testing::Test {
 protected:
  SqliteStorageOptions Options() {
    SqliteStorageOptions options;
    options.data_dir = dir_.path();
    options.max_bytes = 16 << 20;
    options.clock = &clock_;
    options.log = log_.Fn();
    return options;
  }

  std::unique_ptr<Storage> Open(const SqliteStorageOptions& options) {
    absl::StatusOr<std::unique_ptr<Storage>> s = OpenSqliteStorage(options);
    EXPECT_THAT(s, IsOk());
    return s.ok() ? *std::move(s) : nullptr;
  }
  std::unique_ptr<Storage> Open() { return Open(Options()); }

  static StorageInfo InfoOf(Storage& store) {
    absl::StatusOr<StorageInfo> info = store.Info();
    EXPECT_THAT(info, IsOk());
    return info.ok() ? *info : StorageInfo{};
  }

  static std::vector<v1::Metric> Metrics(int n, int first = 0,
                                         int label_bytes = 16) {
    std::vector<v1::Metric> out;
    for (int i = 0; i < n; ++i) {
      out.push_back(MakeMetric(
          "temperature_celsius", first + i, kStart + absl::Seconds(first + i),
          {{"sensor", std::string(label_bytes, 'a' + (i % 8))},
           {"site", "north"}}));
    }
    return out;
  }

  std::string DbPath() const { return dir_.File("fleetd.db"); }

  TempDir dir_;
  SimulatedClock clock_{kStart};
  LogCapture log_;
};

TEST_F(SqliteStorageTest, DataCountersAndIdsSurviveReopen) {
  {
    std::unique_ptr<Storage> store = Open();
    ASSERT_NE(store, nullptr);
    ASSERT_THAT(store->AppendMetrics(Metrics(10)), IsOk());
    ASSERT_THAT(store->AppendLog(MakeLog("hello", kStart)), IsOk());
    ASSERT_THAT(store->MarkSynced(RecordKind::kMetric, {1, 4}), IsOk());
  }
  std::unique_ptr<Storage> store = Open();
  ASSERT_NE(store, nullptr);
  StorageInfo info = InfoOf(*store);
  EXPECT_EQ(info.of(RecordKind::kMetric).unsynced, 6);
  EXPECT_EQ(info.of(RecordKind::kMetric).synced, 4);
  EXPECT_EQ(info.of(RecordKind::kLog).unsynced, 1);
  absl::StatusOr<std::vector<StoredMetric>> read = store->ReadMetrics({});
  ASSERT_THAT(read, IsOk());
  EXPECT_THAT(Ids(*read), ElementsAre(5, 6, 7, 8, 9, 10));
  EXPECT_THAT((*read)[0].record, EqualsProto(Metrics(10)[4]));
  EXPECT_THAT(store->AppendMetric(Metrics(1)[0]), IsOkAndHolds(11));
}

SetAsideBatch Rejected(int64_t sequence, IdRange ids) {
  SetAsideBatch b;
  b.stream = "metrics";
  b.kind = RecordKind::kMetric;
  b.sequence_number = sequence;
  b.ids = ids;
  b.reason = absl::StrCat("invalid batch ", sequence);
  return b;
}

TEST_F(SqliteStorageTest, SetAsideBatchesSurviveReopen) {
  {
    std::unique_ptr<Storage> store = Open();
    ASSERT_THAT(store->AppendMetrics(Metrics(10)), IsOk());
    ASSERT_THAT(store->SetAside(Rejected(41, {2, 3})), IsOk());
    clock_.Advance(absl::Seconds(30));
    ASSERT_THAT(store->SetAside(Rejected(42, {7, 9})), IsOk());
    ASSERT_THAT(store->DropSetAside("metrics", 41), IsOkAndHolds(2));
    ASSERT_THAT(store->SetAside(Rejected(43, {1, 1})), IsOk());
  }
  // The sync manager logs each batch it sets aside; the store logs drops.
  EXPECT_EQ(log_.Count(absl::LogSeverity::kWarning, "invalid batch 42"), 0);
  EXPECT_EQ(log_.Count(absl::LogSeverity::kWarning, "invalid batch 41"), 1);
  std::unique_ptr<Storage> store = Open();
  ASSERT_NE(store, nullptr);
  StorageInfo info = InfoOf(*store);
  EXPECT_EQ(info.set_aside_batches, 2);
  EXPECT_EQ(info.of(RecordKind::kMetric).set_aside, 4);
  EXPECT_EQ(info.of(RecordKind::kMetric).set_aside_dropped, 2);
  EXPECT_EQ(info.of(RecordKind::kMetric).unsynced, 4);
  absl::StatusOr<std::vector<SetAsideBatch>> list = store->ListSetAside();
  ASSERT_THAT(list, IsOk());
  ASSERT_THAT(*list, SizeIs(2));
  SetAsideBatch b42 = Rejected(42, {7, 9});
  b42.record_count = 3;
  EXPECT_EQ((*list)[0], b42);
  EXPECT_EQ((*list)[0].set_aside_at, kStart + absl::Seconds(30));
  EXPECT_EQ((*list)[1].sequence_number, 43);
  absl::StatusOr<std::vector<StoredMetric>> read = store->ReadMetrics({});
  ASSERT_THAT(read, IsOk());
  EXPECT_THAT(Ids(*read), ElementsAre(4, 5, 6, 10));
  // Retried after a restart: fresh ids after everything ever stored.
  EXPECT_THAT(store->RetrySetAside("metrics", 42), IsOkAndHolds(3));
  read = store->ReadMetrics({});
  ASSERT_THAT(read, IsOk());
  EXPECT_THAT(Ids(*read), ElementsAre(4, 5, 6, 10, 11, 12, 13));
  EXPECT_THAT((*read)[4].record, EqualsProto(Metrics(10)[6]));
  EXPECT_THAT(store->AppendMetric(Metrics(1)[0]), IsOkAndHolds(14));
}

TEST_F(SqliteStorageTest, QuotaEvictsSetAsideBatchesAfterSyncedData) {
  SqliteStorageOptions options = Options();
  options.max_bytes = 128 << 10;
  std::unique_ptr<Storage> store = Open(options);
  for (int i = 0; i < 600; i += 100) {
    ASSERT_THAT(store->AppendMetrics(Metrics(100, i)), IsOk());
  }
  ASSERT_THAT(store->SetAside(Rejected(1, {1, 300})), IsOk());
  ASSERT_THAT(store->MarkSynced(RecordKind::kMetric, {301, 600}),
              IsOkAndHolds(300));
  int next = 600;
  for (; next < 20000; next += 100) {
    ASSERT_THAT(store->AppendMetrics(Metrics(100, next)), IsOk());
    if (InfoOf(*store).of(RecordKind::kMetric).set_aside_dropped > 0) break;
  }
  StorageInfo info = InfoOf(*store);
  const KindInfo& m = info.of(RecordKind::kMetric);
  // Every synced record went first; the batch went whole; nothing unsynced.
  EXPECT_EQ(m.evicted_synced, 300);
  EXPECT_EQ(m.set_aside_dropped, 300);
  EXPECT_EQ(m.set_aside, 0);
  EXPECT_EQ(m.dropped_unsynced, 0);
  EXPECT_EQ(info.set_aside_batches, 0);
  EXPECT_LE(info.bytes_used, options.max_bytes);
  EXPECT_THAT(store->ListSetAside(), IsOkAndHolds(IsEmpty()));
  EXPECT_EQ(log_.Count(absl::LogSeverity::kWarning,
                       "DROPPED 1 set-aside batches (metrics/1)"),
            1)
      << log_.All();
  // Set-aside records counted against the quota: they went before the
  // unsynced ones had to.
  EXPECT_EQ(m.unsynced, next + 100 - 600);
}

TEST_F(SqliteStorageTest, IdsAreNeverReusedEvenAfterEverythingIsGone) {
  {
    std::unique_ptr<Storage> store = Open();
    ASSERT_THAT(store->AppendMetrics(Metrics(5)), IsOk());
    ASSERT_THAT(store->MarkSynced(RecordKind::kMetric, {1, 5}), IsOk());
    clock_.Advance(absl::Hours(1));
    ASSERT_THAT(store->CleanOlderThan(absl::ZeroDuration(), CleanScope::kAll),
                IsOkAndHolds(5));
  }
  std::unique_ptr<Storage> store = Open();
  // A pending batch naming ids 1..5 can never be confused with new records.
  EXPECT_THAT(store->AppendMetric(Metrics(1)[0]), IsOkAndHolds(6));
}

TEST_F(SqliteStorageTest, PendingBatchSurvivesRestart) {
  PendingBatch batch{"metrics",
                     RecordKind::kMetric,
                     1'700'000'000'123'456'789,
                     IdRange{1, 3},
                     3,
                     1};
  {
    std::unique_ptr<Storage> store = Open();
    ASSERT_THAT(store->AppendMetrics(Metrics(3)), IsOk());
    ASSERT_THAT(store->SavePendingBatch(batch), IsOk());
  }
  std::unique_ptr<Storage> store = Open();
  EXPECT_THAT(store->LoadPendingBatch("metrics"),
              IsOkAndHolds(std::optional<PendingBatch>(batch)));
  ReadOptions reread;
  reread.after_id = batch.ids.first - 1;
  reread.until_id = batch.ids.last;
  absl::StatusOr<std::vector<StoredMetric>> records =
      store->ReadMetrics(reread);
  ASSERT_THAT(records, IsOk());
  EXPECT_THAT(Ids(*records), ElementsAre(1, 2, 3));
}

TEST_F(SqliteStorageTest, UsesWalWithNormalSyncByDefaultAndFullOnRequest) {
  {
    std::unique_ptr<Storage> store = Open();
    StorageInfo info = InfoOf(*store);
    EXPECT_EQ(info.backend, "sqlite");
    EXPECT_EQ(info.details["journal_mode"], "wal");
    EXPECT_EQ(info.details["synchronous"], "normal");
    EXPECT_EQ(info.details["schema_version"],
              absl::StrCat(storage_internal::kSchemaVersion));
    EXPECT_EQ(info.details["encrypted"], "false");
  }
  SqliteStorageOptions options = Options();
  options.durability = Durability::kFull;
  std::unique_ptr<Storage> store = Open(options);
  EXPECT_EQ(InfoOf(*store).details["synchronous"], "full");
}

TEST_F(SqliteStorageTest, InternsSeriesAndStoresMetricsCompactly) {
  std::unique_ptr<Storage> store = Open();
  // 4000 samples of 8 distinct series, each with ~100 bytes of labels.
  for (int i = 0; i < 4000; i += 500) {
    ASSERT_THAT(store->AppendMetrics(Metrics(500, i, 80)), IsOk());
  }
  StorageInfo info = InfoOf(*store);
  EXPECT_EQ(info.details["series"], "8");
  // Protobuf would need ~130 bytes per sample; rows with interned series
  // take a fraction of that.
  EXPECT_LT(info.bytes_used, 4000 * 50) << info.bytes_used;
}

TEST_F(SqliteStorageTest, MigratesAVersion1Database) {
  {
    RawDb raw(DbPath());
    ASSERT_EQ(raw.Exec(storage_internal::SchemaMigrations()[0].sql), SQLITE_OK);
    ASSERT_EQ(raw.Exec("PRAGMA user_version=1"), SQLITE_OK);
    ASSERT_EQ(raw.Exec("INSERT INTO logs(id, synced, ts, body) VALUES "
                       "(1, 0, 1700000000000000000, x'04696E666F02686903737263"
                       "00')"),
              SQLITE_OK);
    ASSERT_EQ(raw.Exec("UPDATE kinds SET next_id = 2, unsynced = 1 "
                       "WHERE kind = 1"),
              SQLITE_OK);
  }
  std::unique_ptr<Storage> store = Open();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(InfoOf(*store).details["schema_version"], "3");
  absl::StatusOr<std::vector<StoredLog>> logs = store->ReadLogs({});
  ASSERT_THAT(logs, IsOk());
  ASSERT_THAT(*logs, SizeIs(1));
  EXPECT_EQ((*logs)[0].record.level(), "info");
  EXPECT_EQ((*logs)[0].record.message(), "hi");
  EXPECT_EQ((*logs)[0].record.source(), "src");
  // The table version 2 added works.
  EXPECT_THAT(
      store->SavePendingBatch({"logs", RecordKind::kLog, 1, {1, 1}, 1, 0}),
      IsOk());
  EXPECT_EQ(log_.Count(absl::LogSeverity::kInfo, "schema version 2"), 1);
  // And what version 3 added: set-aside batches and their counters.
  SetAsideBatch batch;
  batch.stream = "logs";
  batch.kind = RecordKind::kLog;
  batch.sequence_number = 1;
  batch.ids = {1, 1};
  batch.reason = "bad";
  EXPECT_THAT(store->SetAside(batch), IsOk());
  EXPECT_EQ(InfoOf(*store).of(RecordKind::kLog).set_aside, 1);
  EXPECT_EQ(InfoOf(*store).of(RecordKind::kLog).unsynced, 0);
  EXPECT_THAT(store->LoadPendingBatch("logs"),
              IsOkAndHolds(std::optional<PendingBatch>()));
  EXPECT_EQ(log_.Count(absl::LogSeverity::kInfo, "schema version 3"), 1);
}

TEST_F(SqliteStorageTest, RefusesADatabaseFromANewerAgent) {
  { std::unique_ptr<Storage> store = Open(); }
  {
    RawDb raw(DbPath());
    ASSERT_EQ(raw.Exec("PRAGMA user_version=99"), SQLITE_OK);
  }
  EXPECT_THAT(OpenSqliteStorage(Options()),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("schema version 99")));
  // Not treated as corruption: the file stays where it is.
  EXPECT_TRUE(std::filesystem::exists(DbPath()));
}

TEST_F(SqliteStorageTest, QuotaEvictsOldestSyncedDataFirst) {
  SqliteStorageOptions options = Options();
  options.max_bytes = 256 << 10;
  std::unique_ptr<Storage> store = Open(options);
  // Synced history first...
  for (int i = 0; i < 2000; i += 200) {
    ASSERT_THAT(store->AppendMetrics(Metrics(200, i)), IsOk());
  }
  ASSERT_THAT(store->MarkSynced(RecordKind::kMetric, {1, 2000}),
              IsOkAndHolds(2000));
  // ... then unsynced data until the quota forces the first eviction.
  int64_t appended = 0;
  for (int round = 0; round < 1000; ++round) {
    ASSERT_THAT(store->AppendMetrics(Metrics(100, 2000 + round * 100)), IsOk());
    appended += 100;
    StorageInfo info = InfoOf(*store);
    ASSERT_LE(info.bytes_used, options.max_bytes);
    if (info.of(RecordKind::kMetric).evicted_synced > 0) break;
  }
  StorageInfo info = InfoOf(*store);
  const KindInfo& m = info.of(RecordKind::kMetric);
  ASSERT_GT(m.evicted_synced, 0);
  // Only part of the synced history had to go, and no unsynced record.
  EXPECT_GT(m.synced, 0);
  EXPECT_EQ(m.dropped_unsynced, 0);
  EXPECT_EQ(m.unsynced, appended);
  EXPECT_EQ(m.synced + m.evicted_synced, 2000);
  EXPECT_GT(info.full_events, 0);
  EXPECT_EQ(log_.Count(absl::LogSeverity::kWarning, "evicted"), 1)
      << log_.All();
  // The oldest synced records went first.
  ReadOptions everything;
  everything.include_synced = true;
  everything.max_records = 1;
  absl::StatusOr<std::vector<StoredMetric>> oldest =
      store->ReadMetrics(everything);
  ASSERT_THAT(oldest, IsOk());
  EXPECT_THAT(Ids(*oldest), ElementsAre(m.evicted_synced + 1));
  // Every unsynced record is still there.
  ReadOptions all_unsynced;
  all_unsynced.max_records = 100000;
  absl::StatusOr<std::vector<StoredMetric>> left =
      store->ReadMetrics(all_unsynced);
  ASSERT_THAT(left, IsOk());
  ASSERT_THAT(*left, SizeIs(appended));
  EXPECT_EQ(left->front().id, 2001);
}

TEST_F(SqliteStorageTest, QuotaDropsOldestUnsyncedOnlyWhenNothingSyncedIsLeft) {
  SqliteStorageOptions options = Options();
  options.max_bytes = 128 << 10;
  std::unique_ptr<Storage> store = Open(options);
  constexpr int kTotal = 12000;
  for (int i = 0; i < kTotal; i += 200) {
    ASSERT_THAT(store->AppendMetrics(Metrics(200, i)), IsOk());
  }
  StorageInfo info = InfoOf(*store);
  const KindInfo& m = info.of(RecordKind::kMetric);
  EXPECT_LE(info.bytes_used, options.max_bytes);
  EXPECT_GT(m.dropped_unsynced, 0);
  // Every record is either still there or counted as dropped.
  EXPECT_EQ(m.unsynced + m.dropped_unsynced, kTotal);
  EXPECT_GE(log_.Count(absl::LogSeverity::kWarning, "UNSYNCED"), 1);
  // What is left is the newest data, without gaps.
  ReadOptions all;
  all.max_records = kTotal;
  absl::StatusOr<std::vector<StoredMetric>> left = store->ReadMetrics(all);
  ASSERT_THAT(left, IsOk());
  ASSERT_FALSE(left->empty());
  EXPECT_EQ(left->back().id, kTotal);
  EXPECT_EQ(left->front().id, kTotal - static_cast<int64_t>(left->size()) + 1);
  EXPECT_EQ(left->front().id, m.dropped_unsynced + 1);
}

TEST_F(SqliteStorageTest, EvictionAlsoReclaimsSeriesNoLongerUsed) {
  SqliteStorageOptions options = Options();
  options.max_bytes = 128 << 10;
  std::unique_ptr<Storage> store = Open(options);
  // Every metric its own series (high-cardinality label), all synced: only
  // collecting the series table keeps the store under its quota.
  for (int round = 0; round < 30; ++round) {
    std::vector<v1::Metric> batch;
    for (int i = 0; i < 100; ++i) {
      batch.push_back(MakeMetric(
          "req", i, kStart,
          {{"request_id", absl::StrCat(round, "-", i, "-padpadpad")}}));
    }
    absl::StatusOr<IdRange> ids = store->AppendMetrics(batch);
    ASSERT_THAT(ids, IsOk());
    ASSERT_THAT(store->MarkSynced(RecordKind::kMetric, *ids), IsOk());
  }
  StorageInfo info = InfoOf(*store);
  EXPECT_LE(info.bytes_used, options.max_bytes);
  EXPECT_LT(std::stoll(info.details["series"]), 3000);
  EXPECT_EQ(info.of(RecordKind::kMetric).dropped_unsynced, 0);
  // The newest samples still resolve to their own series.
  ReadOptions all;
  all.include_synced = true;
  all.after_id = 2999;
  absl::StatusOr<std::vector<StoredMetric>> last = store->ReadMetrics(all);
  ASSERT_THAT(last, IsOk());
  ASSERT_THAT(*last, SizeIs(1));
  EXPECT_EQ(last->front().record.labels().at("request_id"), "29-99-padpadpad");
}

TEST_F(SqliteStorageTest, QuotaChangesAtRunTime) {
  SqliteStorageOptions options = Options();
  options.max_bytes = 1 << 20;
  std::unique_ptr<Storage> store = Open(options);
  ASSERT_THAT(store->AppendMetrics(Metrics(100)), IsOk());
  StorageInfo info = InfoOf(*store);
  EXPECT_EQ(info.max_bytes, 1 << 20);
  // The file limit and WAL settings follow the quota (1 MiB + 1 MiB, 16
  // pages).
  EXPECT_EQ(info.details["file_limit_bytes"], absl::StrCat(2 << 20));
  EXPECT_EQ(info.details["wal_autocheckpoint"], "16");

  ASSERT_THAT(store->SetMaxBytes(64 << 20), IsOk());
  info = InfoOf(*store);
  EXPECT_EQ(info.max_bytes, 64 << 20);
  EXPECT_EQ(info.details["file_limit_bytes"], absl::StrCat(72 << 20));
  EXPECT_EQ(info.details["wal_autocheckpoint"], "1000");
  EXPECT_EQ(log_.Count(absl::LogSeverity::kInfo, "storage quota"), 1)
      << log_.All();
  // Setting the same quota again (every config fetch does) changes nothing.
  ASSERT_THAT(store->SetMaxBytes(64 << 20), IsOk());
  EXPECT_EQ(log_.Count(absl::LogSeverity::kInfo, "storage quota"), 1);

  // Below the minimum (or absurdly large): refused, the quota stays.
  EXPECT_THAT(store->SetMaxBytes(1000),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("quota")));
  EXPECT_THAT(store->SetMaxBytes(0),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store->SetMaxBytes(-1),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(store->SetMaxBytes(std::numeric_limits<int64_t>::max()),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(InfoOf(*store).max_bytes, 64 << 20);

  // The smallest quota is accepted.
  ASSERT_THAT(store->SetMaxBytes(64 << 10), IsOk());
  EXPECT_EQ(InfoOf(*store).max_bytes, 64 << 10);
  // The quota is not persisted: a reopen uses the options again.
  store.reset();
  store = Open(options);
  EXPECT_EQ(InfoOf(*store).max_bytes, 1 << 20);
}

TEST_F(SqliteStorageTest, AnExplicitFileLimitStaysWhenTheQuotaChanges) {
  SqliteStorageOptions options = Options();
  options.max_bytes = 1 << 20;
  options.file_limit_bytes = 8 << 20;
  std::unique_ptr<Storage> store = Open(options);
  ASSERT_THAT(store->SetMaxBytes(4 << 20), IsOk());
  EXPECT_EQ(InfoOf(*store).details["file_limit_bytes"], absl::StrCat(8 << 20));
}

TEST_F(SqliteStorageTest, SmallerQuotaEvictsSyncedRecordsFirstAtTheNextAppend) {
  std::unique_ptr<Storage> store = Open();  // 16 MiB
  constexpr int kTotal = 20000;
  constexpr int kSynced = 16000;
  for (int i = 0; i < kTotal; i += 500) {
    ASSERT_THAT(store->AppendMetrics(Metrics(500, i)), IsOk());
  }
  ASSERT_THAT(store->MarkSynced(RecordKind::kMetric, {1, kSynced}),
              IsOkAndHolds(kSynced));
  const int64_t used = InfoOf(*store).bytes_used;
  // Room for the unsynced records, not for the synced history.
  const int64_t quota = std::max<int64_t>(used / 2, 64 << 10);
  ASSERT_GT(used, quota);
  ASSERT_THAT(store->SetMaxBytes(quota), IsOk());

  // Nothing happens until the next append...
  StorageInfo info = InfoOf(*store);
  EXPECT_EQ(info.max_bytes, quota);
  EXPECT_EQ(info.bytes_used, used);
  EXPECT_EQ(info.of(RecordKind::kMetric).evicted_synced, 0);
  EXPECT_EQ(info.full_events, 0);

  // ... which makes room by the full-storage policy: synced records only,
  // oldest first, counted and logged.
  ASSERT_THAT(store->AppendMetrics(Metrics(10, kTotal)),
              IsOkAndHolds(IdRange{kTotal + 1, kTotal + 10}));
  info = InfoOf(*store);
  const KindInfo& m = info.of(RecordKind::kMetric);
  EXPECT_LE(info.bytes_used, quota);
  EXPECT_GT(m.evicted_synced, 0);
  EXPECT_EQ(m.synced + m.evicted_synced, kSynced);
  EXPECT_EQ(m.dropped_unsynced, 0);
  EXPECT_EQ(m.unsynced, kTotal - kSynced + 10);
  EXPECT_GT(info.full_events, 0);
  EXPECT_EQ(log_.Count(absl::LogSeverity::kWarning, "evicted"), 1)
      << log_.All();
  ReadOptions oldest;
  oldest.include_synced = true;
  oldest.max_records = 1;
  absl::StatusOr<std::vector<StoredMetric>> first = store->ReadMetrics(oldest);
  ASSERT_THAT(first, IsOk());
  EXPECT_THAT(Ids(*first), ElementsAre(m.evicted_synced + 1));

  // A batch that fitted the old quota but not half the new one is refused.
  std::vector<v1::LogEntry> big;
  for (int64_t i = 0; i < quota / 1000 + 10; ++i) {
    big.push_back(MakeLog(std::string(1000, 'x'), kStart));
  }
  EXPECT_THAT(store->AppendLogs(big),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("smaller batches")));

  // Raising it again: appends go on without evicting.
  ASSERT_THAT(store->SetMaxBytes(16 << 20), IsOk());
  const int64_t evicted = m.evicted_synced;
  ASSERT_THAT(store->AppendLogs(big), IsOk());
  ASSERT_THAT(store->AppendMetrics(Metrics(2000, kTotal + 10)), IsOk());
  info = InfoOf(*store);
  EXPECT_EQ(info.of(RecordKind::kMetric).evicted_synced, evicted);
  EXPECT_EQ(info.of(RecordKind::kMetric).dropped_unsynced, 0);
}

TEST_F(SqliteStorageTest, FullDiskEvictsSyncedDataAndKeepsAppending) {
  SqliteStorageOptions options = Options();
  options.max_bytes = 64 << 20;          // the quota is not the limit here,
  options.file_limit_bytes = 160 << 10;  // the "disk" is.
  std::unique_ptr<Storage> store = Open(options);
  for (int i = 0; i < 200; ++i) {
    absl::StatusOr<IdRange> ids = store->AppendMetrics(Metrics(50, i * 50));
    ASSERT_THAT(ids, IsOk()) << "append " << i;
    // The sync manager acknowledges everything but the last batch.
    ASSERT_THAT(store->MarkSynced(RecordKind::kMetric, {1, ids->first - 1}),
                IsOk());
  }
  StorageInfo info = InfoOf(*store);
  EXPECT_GT(info.full_events, 0);
  EXPECT_GT(info.of(RecordKind::kMetric).evicted_synced, 0);
  EXPECT_EQ(info.of(RecordKind::kMetric).dropped_unsynced, 0);
  EXPECT_EQ(info.of(RecordKind::kMetric).unsynced, 50);
  EXPECT_LE(std::stoll(info.details["file_bytes"]), options.file_limit_bytes);
}

TEST_F(SqliteStorageTest, FullDiskWithNothingToEvictIsResourceExhausted) {
  SqliteStorageOptions options = Options();
  options.max_bytes = 64 << 20;
  options.file_limit_bytes = 64 << 10;
  std::unique_ptr<Storage> store = Open(options);
  ASSERT_THAT(store->AppendMetrics(Metrics(10)), IsOk());
  // Far more than 64 KiB of logs in one batch.
  std::vector<v1::LogEntry> big;
  for (int i = 0; i < 400; ++i) {
    big.push_back(MakeLog(std::string(500, 'x'), kStart));
  }
  EXPECT_THAT(store->AppendLogs(big),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("storage full")));
  // Nothing half-written, and the store still works.
  StorageInfo info = InfoOf(*store);
  EXPECT_EQ(info.of(RecordKind::kLog).unsynced, 0);
  EXPECT_GT(info.full_events, 0);
  EXPECT_THAT(store->AppendLog(MakeLog("small", kStart)), IsOkAndHolds(1));
  absl::StatusOr<std::vector<StoredLog>> logs = store->ReadLogs({});
  ASSERT_THAT(logs, IsOk());
  EXPECT_THAT(Ids(*logs), ElementsAre(1));
}

TEST_F(SqliteStorageTest, BatchLargerThanTheQuotaIsRejectedUpFront) {
  SqliteStorageOptions options = Options();
  options.max_bytes = 64 << 10;
  std::unique_ptr<Storage> store = Open(options);
  ASSERT_THAT(store->AppendMetrics(Metrics(10)), IsOk());
  std::vector<v1::LogEntry> big;
  for (int i = 0; i < 100; ++i) {
    big.push_back(MakeLog(std::string(1000, 'x'), kStart));
  }
  EXPECT_THAT(store->AppendLogs(big),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("smaller batches")));
  // Nothing was evicted for it.
  EXPECT_EQ(InfoOf(*store).of(RecordKind::kMetric).unsynced, 10);
}

TEST_F(SqliteStorageTest, GarbageFileIsMovedAsideAndReplaced) {
  WriteWholeFile(DbPath(), std::string(10000, '\x5a'));
  std::unique_ptr<Storage> store = Open();
  ASSERT_NE(store, nullptr);
  StorageInfo info = InfoOf(*store);
  const std::string aside = info.details["recovered_from"];
  ASSERT_THAT(aside, HasSubstr("fleetd.db.corrupt-20231114T221320Z"));
  EXPECT_EQ(ReadWholeFile(aside), std::string(10000, '\x5a'));
  EXPECT_EQ(log_.Count(absl::LogSeverity::kError, "moved it to " + aside), 1)
      << log_.All();
  EXPECT_THAT(store->AppendMetric(Metrics(1)[0]), IsOkAndHolds(1));
}

TEST_F(SqliteStorageTest, CorruptPagesAreDetectedAtOpen) {
  {
    std::unique_ptr<Storage> store = Open();
    for (int i = 0; i < 3000; i += 500) {
      ASSERT_THAT(store->AppendMetrics(Metrics(500, i)), IsOk());
    }
  }
  std::string bytes = ReadWholeFile(DbPath());
  ASSERT_GT(bytes.size(), 8u * 4096);
  // Keep the header page intact; scribble over the b-tree pages.
  for (size_t i = 4096; i < bytes.size(); i += 7) bytes[i] = '\x7f';
  WriteWholeFile(DbPath(), bytes);

  std::unique_ptr<Storage> store = Open();
  ASSERT_NE(store, nullptr);
  StorageInfo info = InfoOf(*store);
  EXPECT_FALSE(info.details["recovered_from"].empty());
  EXPECT_EQ(info.of(RecordKind::kMetric).unsynced, 0);
  EXPECT_EQ(log_.Count(absl::LogSeverity::kError, "unreadable"), 1)
      << log_.All();
  // Opening again finds the fresh file healthy: no second move.
  store.reset();
  store = Open();
  EXPECT_EQ(InfoOf(*store).details.count("recovered_from"), 0u);
  EXPECT_EQ(log_.Count(absl::LogSeverity::kError, "unreadable"), 1);
}

TEST_F(SqliteStorageTest, DataDirectoryThatIsAFileFailsClearly) {
  WriteWholeFile(dir_.File("not-a-dir"), "x");
  SqliteStorageOptions options = Options();
  options.data_dir = dir_.File("not-a-dir");
  EXPECT_THAT(OpenSqliteStorage(options),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("not a directory")));
}

TEST_F(SqliteStorageTest, CreatesMissingDataDirectories) {
  SqliteStorageOptions options = Options();
  options.data_dir = dir_.File("a/b/c");
  std::unique_ptr<Storage> store = Open(options);
  ASSERT_NE(store, nullptr);
  EXPECT_TRUE(std::filesystem::exists(dir_.File("a/b/c/fleetd.db")));
}

TEST_F(SqliteStorageTest, ReadOnlyDataDirectoryFailsClearlyAtStart) {
  const std::string ro = dir_.File("readonly");
  ASSERT_EQ(mkdir(ro.c_str(), 0555), 0);
  ASSERT_EQ(chmod(dir_.path().c_str(), 0755), 0);
  // Root ignores permission bits, so the check runs in a child that drops to
  // an unprivileged user when the suite runs as root.
  int fds[2];
  ASSERT_EQ(pipe(fds), 0);
  pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    close(fds[0]);
    if (geteuid() == 0 && (setgid(65534) != 0 || setuid(65534) != 0)) {
      _exit(3);
    }
    SqliteStorageOptions options;
    options.data_dir = ro;
    options.log = [](absl::LogSeverity, absl::string_view) {};
    absl::StatusOr<std::unique_ptr<Storage>> s = OpenSqliteStorage(options);
    std::string text = s.status().ToString();
    if (write(fds[1], text.data(), text.size()) < 0) _exit(4);
    _exit(0);
  }
  close(fds[1]);
  std::string text;
  char buf[512];
  for (ssize_t n; (n = read(fds[0], buf, sizeof(buf))) > 0;)
    text.append(buf, n);
  close(fds[0]);
  int wstatus = 0;
  ASSERT_EQ(waitpid(pid, &wstatus, 0), pid);
  ASSERT_TRUE(WIFEXITED(wstatus));
  if (WEXITSTATUS(wstatus) == 3) GTEST_SKIP() << "cannot drop root privileges";
  ASSERT_EQ(WEXITSTATUS(wstatus), 0);
  EXPECT_THAT(text, AllOf(HasSubstr("FAILED_PRECONDITION"),
                          HasSubstr("not writable"), HasSubstr(ro)));
  EXPECT_FALSE(std::filesystem::exists(ro + "/fleetd.db"));
}

TEST_F(SqliteStorageTest, RejectsBadOptions) {
  SqliteStorageOptions options = Options();
  options.data_dir = "";
  EXPECT_THAT(OpenSqliteStorage(options),
              StatusIs(absl::StatusCode::kInvalidArgument));
  options = Options();
  options.max_bytes = 1000;
  EXPECT_THAT(OpenSqliteStorage(options),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("quota")));
  options = Options();
  options.file_name = "../escape.db";
  EXPECT_THAT(OpenSqliteStorage(options),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(SqliteStorageTest, RefusesSomeoneElsesDatabase) {
  {
    RawDb raw(DbPath());
    ASSERT_EQ(raw.Exec("CREATE TABLE photos(id INTEGER)"), SQLITE_OK);
  }
  EXPECT_THAT(OpenSqliteStorage(Options()),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("something else")));
}

// ---- encryption ------------------------------------------------------------

constexpr char kMarker[] = "very_recognisable_metric_name";

TEST_F(SqliteStorageTest, UnencryptedFileShowsItsContents) {
  // The counterpart of the encryption test: the marker is findable in a plain
  // file, so its absence below means something.
  {
    std::unique_ptr<Storage> store = Open();
    ASSERT_THAT(store->AppendMetric(MakeMetric(kMarker, 1, kStart)), IsOk());
  }
  EXPECT_THAT(ReadWholeFile(DbPath()), HasSubstr(kMarker));
  EXPECT_EQ(ReadWholeFile(DbPath()).substr(0, 15), "SQLite format 3");
}

TEST_F(SqliteStorageTest, EncryptedDatabaseNeedsTheKey) {
  if (!SqliteEncryptionAvailable()) {
    SqliteStorageOptions options = Options();
    options.encryption_key = "secret";
    EXPECT_THAT(OpenSqliteStorage(options),
                StatusIs(absl::StatusCode::kFailedPrecondition,
                         HasSubstr("SQLCipher")));
    GTEST_SKIP() << "built without SQLCipher";
  }
  SqliteStorageOptions options = Options();
  options.encryption_key = "correct horse battery staple";
  {
    std::unique_ptr<Storage> store = Open(options);
    ASSERT_NE(store, nullptr);
    ASSERT_THAT(
        store->AppendMetrics({MakeMetric(kMarker, 42, kStart, {{"k", "v"}})}),
        IsOk());
    EXPECT_EQ(InfoOf(*store).details["encrypted"], "true");
    EXPECT_EQ(InfoOf(*store).details["journal_mode"], "wal");
  }
  const std::string bytes = ReadWholeFile(DbPath());
  ASSERT_FALSE(bytes.empty());
  EXPECT_THAT(bytes, ::testing::Not(HasSubstr(kMarker)));
  EXPECT_NE(bytes.substr(0, 15), "SQLite format 3");

  // Without the key the file is not a database.
  {
    RawDb raw(DbPath());
    EXPECT_THAT(raw.Query("SELECT count(*) FROM metrics"),
                HasSubstr("error 26"));  // SQLITE_NOTADB
  }
  {
    RawDb raw(DbPath(), "wrong key");
    EXPECT_THAT(raw.Query("SELECT count(*) FROM metrics"),
                HasSubstr("error 26"));
  }
  // With it, everything is there.
  {
    RawDb raw(DbPath(), options.encryption_key);
    EXPECT_EQ(raw.Query("SELECT count(*) FROM metrics"), "1");
  }
  std::unique_ptr<Storage> store = Open(options);
  ASSERT_NE(store, nullptr);
  absl::StatusOr<std::vector<StoredMetric>> read = store->ReadMetrics({});
  ASSERT_THAT(read, IsOk());
  ASSERT_THAT(*read, SizeIs(1));
  EXPECT_EQ((*read)[0].record.name(), kMarker);
  EXPECT_EQ((*read)[0].record.labels().at("k"), "v");
}

TEST_F(SqliteStorageTest, WrongKeyKeepsTheOldFileAndStartsEmpty) {
  if (!SqliteEncryptionAvailable()) GTEST_SKIP() << "built without SQLCipher";
  SqliteStorageOptions options = Options();
  options.encryption_key = "first key";
  {
    std::unique_ptr<Storage> store = Open(options);
    ASSERT_THAT(store->AppendMetrics(Metrics(3)), IsOk());
  }
  options.encryption_key = "second key";
  std::unique_ptr<Storage> store = Open(options);
  ASSERT_NE(store, nullptr);
  StorageInfo info = InfoOf(*store);
  EXPECT_EQ(info.of(RecordKind::kMetric).unsynced, 0);
  const std::string aside = info.details["recovered_from"];
  ASSERT_FALSE(aside.empty());
  EXPECT_GE(log_.Count(absl::LogSeverity::kError, "another key"), 1);
  // The data is still in the moved file, readable with the first key.
  RawDb raw(aside, "first key");
  EXPECT_EQ(raw.Query("SELECT count(*) FROM metrics"), "3");
}

TEST(StorageKeyTest, ComesFromTheEnvironmentOrAFile) {
  TempDir dir;
  EXPECT_THAT(ResolveStorageKey(MapEnv({})), IsOkAndHolds(""));
  EXPECT_THAT(ResolveStorageKey(MapEnv({{"FLEET_STORAGE_KEY", "s3cret"}})),
              IsOkAndHolds("s3cret"));
  WriteWholeFile(dir.File("key"), "  from-file\n");
  EXPECT_THAT(
      ResolveStorageKey(MapEnv({{"FLEET_STORAGE_KEY_FILE", dir.File("key")}})),
      IsOkAndHolds("from-file"));
  EXPECT_THAT(ResolveStorageKey(MapEnv({{"FLEET_STORAGE_KEY", ""}})),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("FLEET_STORAGE_KEY")));
  EXPECT_THAT(ResolveStorageKey(
                  MapEnv({{"FLEET_STORAGE_KEY_FILE", dir.File("missing")}})),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("FLEET_STORAGE_KEY_FILE")));
  WriteWholeFile(dir.File("empty"), "\n");
  EXPECT_THAT(ResolveStorageKey(
                  MapEnv({{"FLEET_STORAGE_KEY_FILE", dir.File("empty")}})),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("empty")));
  EXPECT_THAT(ResolveStorageKey(MapEnv({{"FLEET_STORAGE_KEY", "a"},
                                        {"FLEET_STORAGE_KEY_FILE", "b"}})),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fleetd::agent
