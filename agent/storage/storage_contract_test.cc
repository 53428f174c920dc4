// The Storage contract, run against both implementations.
#include <atomic>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "agent/storage/memory_storage.h"
#include "agent/storage/sqlite_storage.h"
#include "agent/storage/storage.h"
#include "agent/storage/storage_test_util.h"
#include "common/clock/clock.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::agent {
namespace {

using ::fleetd::agent::testing::EqualsProto;
using ::fleetd::agent::testing::Ids;
using ::fleetd::agent::testing::MakeEvent;
using ::fleetd::agent::testing::MakeLog;
using ::fleetd::agent::testing::MakeMetric;
using ::fleetd::agent::testing::TempDir;
using ::fleetd::agent::testing::Ts;
using ::fleetd::testing::IsOk;
using ::fleetd::testing::IsOkAndHolds;
using ::fleetd::testing::StatusIs;
using ::testing::AllOf;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::SizeIs;

const absl::Time kStart = absl::FromUnixSeconds(1'700'000'000);

struct Backend {
  std::string name;
  std::function<absl::StatusOr<std::unique_ptr<Storage>>(const std::string& dir,
                                                         Clock* clock)>
      open;
};

class StorageContractTest : public ::testing::TestWithParam<Backend> {
 protected:
  void SetUp() override {
    absl::StatusOr<std::unique_ptr<Storage>> s =
        GetParam().open(dir_.path(), &clock_);
    ASSERT_THAT(s, IsOk());
    store_ = *std::move(s);
  }

  StorageInfo Info() {
    absl::StatusOr<StorageInfo> info = store_->Info();
    EXPECT_THAT(info, IsOk());
    return info.ok() ? *info : StorageInfo{};
  }

  std::vector<StoredMetric> ReadMetrics(ReadOptions options = {}) {
    absl::StatusOr<std::vector<StoredMetric>> r = store_->ReadMetrics(options);
    EXPECT_THAT(r, IsOk());
    return r.ok() ? *std::move(r) : std::vector<StoredMetric>{};
  }

  std::vector<v1::Metric> Metrics(int n, int first_value = 0) {
    std::vector<v1::Metric> out;
    for (int i = 0; i < n; ++i) {
      out.push_back(MakeMetric(
          "cpu_usage", first_value + i, kStart + absl::Seconds(first_value + i),
          {{"core", std::to_string(i % 4)}, {"host", "pi-17"}}));
    }
    return out;
  }

  TempDir dir_;
  SimulatedClock clock_{kStart};
  std::unique_ptr<Storage> store_;
};

TEST_P(StorageContractTest, AppendedRecordsReadBackInOrderWithTheirIds) {
  std::vector<v1::Metric> in = Metrics(5);
  EXPECT_THAT(store_->AppendMetrics(in), IsOkAndHolds(IdRange{1, 5}));
  std::vector<StoredMetric> out = ReadMetrics();
  ASSERT_THAT(out, SizeIs(5));
  for (int i = 0; i < 5; ++i) {
    EXPECT_EQ(out[i].id, i + 1);
    EXPECT_THAT(out[i].record, EqualsProto(in[i]));
  }
}

TEST_P(StorageContractTest, SingleAppendsGetIncreasingIds) {
  EXPECT_THAT(store_->AppendMetric(Metrics(1)[0]), IsOkAndHolds(1));
  EXPECT_THAT(store_->AppendMetric(Metrics(1)[0]), IsOkAndHolds(2));
  EXPECT_THAT(store_->AppendMetrics(Metrics(3)), IsOkAndHolds(IdRange{3, 5}));
  EXPECT_THAT(store_->AppendMetric(Metrics(1)[0]), IsOkAndHolds(6));
}

TEST_P(StorageContractTest, EmptyAppendChangesNothing) {
  absl::StatusOr<IdRange> r = store_->AppendMetrics({});
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(r->empty());
  EXPECT_EQ(Info().of(RecordKind::kMetric).unsynced, 0);
  EXPECT_THAT(store_->AppendMetric(Metrics(1)[0]), IsOkAndHolds(1));
}

TEST_P(StorageContractTest, KindsHaveIndependentIdsAndCounts) {
  ASSERT_THAT(store_->AppendMetrics(Metrics(3)), IsOk());
  EXPECT_THAT(store_->AppendLog(MakeLog("boot", kStart)), IsOkAndHolds(1));
  EXPECT_THAT(store_->AppendEvent(MakeEvent("door_opened", kStart)),
              IsOkAndHolds(1));
  StorageInfo info = Info();
  EXPECT_EQ(info.of(RecordKind::kMetric).unsynced, 3);
  EXPECT_EQ(info.of(RecordKind::kLog).unsynced, 1);
  EXPECT_EQ(info.of(RecordKind::kEvent).unsynced, 1);
  EXPECT_EQ(info.of(RecordKind::kMetric).next_id, 4);
}

TEST_P(StorageContractTest, LogsAndEventsRoundTrip) {
  v1::LogEntry log = MakeLog("disk almost full", kStart, "warn");
  (*log.mutable_fields())["mount"] = "/data";
  (*log.mutable_fields())["empty"] = "";
  v1::Event event = MakeEvent("door_opened", kStart + absl::Milliseconds(7));
  (*event.mutable_values())["nan"] = std::numeric_limits<double>::quiet_NaN();
  (*event.mutable_values())["inf"] = -std::numeric_limits<double>::infinity();
  ASSERT_THAT(store_->AppendLogs({log, log}), IsOk());
  ASSERT_THAT(store_->AppendEvents({event}), IsOk());

  absl::StatusOr<std::vector<StoredLog>> logs = store_->ReadLogs({});
  ASSERT_THAT(logs, IsOk());
  ASSERT_THAT(*logs, SizeIs(2));
  EXPECT_THAT((*logs)[1].record, EqualsProto(log));

  absl::StatusOr<std::vector<StoredEvent>> events = store_->ReadEvents({});
  ASSERT_THAT(events, IsOk());
  ASSERT_THAT(*events, SizeIs(1));
  const v1::Event& got = (*events)[0].record;
  EXPECT_EQ(got.name(), "door_opened");
  EXPECT_EQ(got.event_id(), "door_opened-id");
  EXPECT_EQ(got.properties().at("door"), "front");
  EXPECT_TRUE(std::isnan(got.values().at("nan")));
  EXPECT_EQ(got.values().at("inf"), -std::numeric_limits<double>::infinity());
  EXPECT_EQ(got.timestamp().nanos(), 7'000'000);
}

TEST_P(StorageContractTest, MetricValuesKeepTheirExactBits) {
  // Prometheus marks stale series with this particular NaN.
  const uint64_t stale_nan_bits = 0x7ff0000000000002ull;
  double stale;
  std::memcpy(&stale, &stale_nan_bits, sizeof(stale));
  std::vector<double> values = {
      0.0, -0.0, 1e-300, 42.5, stale, std::numeric_limits<double>::infinity()};
  std::vector<v1::Metric> in;
  for (double v : values) in.push_back(MakeMetric("m", v, kStart));
  ASSERT_THAT(store_->AppendMetrics(in), IsOk());
  std::vector<StoredMetric> out = ReadMetrics();
  ASSERT_THAT(out, SizeIs(values.size()));
  for (size_t i = 0; i < values.size(); ++i) {
    uint64_t want;
    uint64_t got;
    double v = out[i].record.value();
    std::memcpy(&want, &values[i], sizeof(want));
    std::memcpy(&got, &v, sizeof(got));
    EXPECT_EQ(got, want) << "value " << i;
  }
}

TEST_P(StorageContractTest, RecordsWithoutTimestampGetTheClockTime) {
  clock_.Advance(absl::Seconds(30));
  v1::Metric m;
  m.set_name("uptime");
  m.set_value(1);
  ASSERT_THAT(store_->AppendMetric(m), IsOk());
  std::vector<StoredMetric> out = ReadMetrics();
  ASSERT_THAT(out, SizeIs(1));
  EXPECT_THAT(out[0].record.timestamp(),
              EqualsProto(Ts(kStart + absl::Seconds(30))));
}

TEST_P(StorageContractTest, OutOfRangeTimestampRejectsTheWholeBatch) {
  std::vector<v1::Metric> in = Metrics(3);
  in[2].mutable_timestamp()->set_seconds(int64_t{1} << 40);  // year 36812
  EXPECT_THAT(store_->AppendMetrics(in),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("metric 2 of the batch")));
  EXPECT_EQ(Info().of(RecordKind::kMetric).unsynced, 0);
  EXPECT_THAT(ReadMetrics(), IsEmpty());
  EXPECT_THAT(store_->AppendMetric(Metrics(1)[0]), IsOkAndHolds(1));
}

// Proto3 strings must be UTF-8: a record that is not would make its whole
// batch unparseable for the server, so the store refuses it at the door.
TEST_P(StorageContractTest, InvalidUtf8RejectsTheWholeBatchNamingTheField) {
  const std::string bad = "ok\xff";
  struct MetricCase {
    std::function<void(v1::Metric&)> spoil;
    std::string field;
  };
  const std::vector<MetricCase> metric_cases = {
      {[&](v1::Metric& m) { m.set_name(bad); }, "name"},
      {[&](v1::Metric& m) { (*m.mutable_labels())["host"] = bad; },
       "labels[\"host\"]"},
      {[&](v1::Metric& m) { (*m.mutable_labels())[bad] = "v"; },
       "a key of labels"},
  };
  for (const MetricCase& c : metric_cases) {
    std::vector<v1::Metric> in = Metrics(3);
    c.spoil(in[1]);
    EXPECT_THAT(store_->AppendMetrics(in),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         AllOf(HasSubstr("metric 1 of the batch"),
                               HasSubstr(c.field), HasSubstr("UTF-8"))));
  }

  struct LogCase {
    std::function<void(v1::LogEntry&)> spoil;
    std::string field;
  };
  const std::vector<LogCase> log_cases = {
      {[&](v1::LogEntry& l) { l.set_level(bad); }, "level"},
      {[&](v1::LogEntry& l) { l.set_message(bad); }, "message"},
      {[&](v1::LogEntry& l) { l.set_source(bad); }, "source"},
      {[&](v1::LogEntry& l) { (*l.mutable_fields())["path"] = bad; },
       "fields[\"path\"]"},
      {[&](v1::LogEntry& l) { (*l.mutable_fields())[bad] = "v"; },
       "a key of fields"},
  };
  for (const LogCase& c : log_cases) {
    std::vector<v1::LogEntry> in = {MakeLog("a", kStart), MakeLog("b", kStart)};
    c.spoil(in[1]);
    EXPECT_THAT(store_->AppendLogs(in),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         AllOf(HasSubstr("log entry 1 of the batch"),
                               HasSubstr(c.field))));
  }

  struct EventCase {
    std::function<void(v1::Event&)> spoil;
    std::string field;
  };
  const std::vector<EventCase> event_cases = {
      {[&](v1::Event& e) { e.set_name(bad); }, "name"},
      {[&](v1::Event& e) { e.set_event_id(bad); }, "event_id"},
      {[&](v1::Event& e) { (*e.mutable_properties())["door"] = bad; },
       "properties[\"door\"]"},
      {[&](v1::Event& e) { (*e.mutable_properties())[bad] = "v"; },
       "a key of properties"},
      {[&](v1::Event& e) { (*e.mutable_values())[bad] = 1; },
       "a key of values"},
  };
  for (const EventCase& c : event_cases) {
    std::vector<v1::Event> in = {MakeEvent("a", kStart),
                                 MakeEvent("b", kStart)};
    c.spoil(in[0]);
    EXPECT_THAT(
        store_->AppendEvents(in),
        StatusIs(absl::StatusCode::kInvalidArgument,
                 AllOf(HasSubstr("event 0 of the batch"), HasSubstr(c.field))));
  }

  // Nothing of any refused batch went in, and ids were not used up.
  StorageInfo info = Info();
  for (int k = 0; k < kRecordKindCount; ++k) {
    EXPECT_EQ(info.kinds[k].unsynced, 0) << RecordKindName(RecordKind(k));
    EXPECT_EQ(info.kinds[k].next_id, 1) << RecordKindName(RecordKind(k));
  }
  EXPECT_THAT(store_->AppendMetric(Metrics(1)[0]), IsOkAndHolds(1));
  EXPECT_THAT(store_->AppendLog(MakeLog("fine", kStart)), IsOkAndHolds(1));
  EXPECT_THAT(store_->AppendEvent(MakeEvent("fine", kStart)), IsOkAndHolds(1));
}

TEST_P(StorageContractTest, MultibyteUtf8IsStoredUnchanged) {
  v1::Metric m = MakeMetric(
      "temp\xC2\xB0"
      "C",
      21.5, kStart,
      {{"room",
        "K\xC3\xBC"
        "che \xF0\x9F\x8D\xB3"}});
  ASSERT_THAT(store_->AppendMetric(m), IsOkAndHolds(1));
  std::vector<StoredMetric> out = ReadMetrics();
  ASSERT_THAT(out, SizeIs(1));
  EXPECT_THAT(out[0].record, EqualsProto(m));
  v1::LogEntry l = MakeLog("\xE2\x9A\xA0 disk \xE2\x80\x94 90 %", kStart);
  ASSERT_THAT(store_->AppendLog(l), IsOkAndHolds(1));
  absl::StatusOr<std::vector<StoredLog>> logs = store_->ReadLogs({});
  ASSERT_THAT(logs, IsOk());
  ASSERT_THAT(*logs, SizeIs(1));
  EXPECT_THAT((*logs)[0].record, EqualsProto(l));
}

TEST_P(StorageContractTest, ReadsAreBoundedByRecordsAndBytes) {
  ASSERT_THAT(store_->AppendMetrics(Metrics(50)), IsOk());
  ReadOptions options;
  options.max_records = 7;
  EXPECT_THAT(Ids(ReadMetrics(options)), ElementsAre(1, 2, 3, 4, 5, 6, 7));

  options.max_records = 1000;
  options.max_bytes = 1;  // still returns one record
  EXPECT_THAT(Ids(ReadMetrics(options)), ElementsAre(1));

  options.max_bytes = 400;
  std::vector<StoredMetric> some = ReadMetrics(options);
  EXPECT_GT(some.size(), 1u);
  EXPECT_LT(some.size(), 50u);

  options.max_records = 0;
  EXPECT_THAT(store_->ReadMetrics(options),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_P(StorageContractTest, ReadingDoesNotConsume) {
  ASSERT_THAT(store_->AppendMetrics(Metrics(3)), IsOk());
  EXPECT_THAT(Ids(ReadMetrics()), ElementsAre(1, 2, 3));
  EXPECT_THAT(Ids(ReadMetrics()), ElementsAre(1, 2, 3));
  EXPECT_EQ(Info().of(RecordKind::kMetric).unsynced, 3);
}

TEST_P(StorageContractTest, MarkSyncedMovesExactlyTheAcknowledgedBatch) {
  ASSERT_THAT(store_->AppendMetrics(Metrics(10)), IsOk());
  ReadOptions options;
  options.max_records = 4;
  std::vector<StoredMetric> batch = ReadMetrics(options);
  ASSERT_THAT(Ids(batch), ElementsAre(1, 2, 3, 4));

  EXPECT_THAT(store_->MarkSynced(RecordKind::kMetric,
                                 {batch.front().id, batch.back().id}),
              IsOkAndHolds(4));
  EXPECT_THAT(Ids(ReadMetrics(options)), ElementsAre(5, 6, 7, 8));
  StorageInfo info = Info();
  EXPECT_EQ(info.of(RecordKind::kMetric).unsynced, 6);
  EXPECT_EQ(info.of(RecordKind::kMetric).synced, 4);

  // Acknowledging the same batch again changes nothing.
  EXPECT_THAT(store_->MarkSynced(RecordKind::kMetric, {1, 4}), IsOkAndHolds(0));
  // Marks are per kind.
  EXPECT_THAT(store_->MarkSynced(RecordKind::kLog, {1, 100}), IsOkAndHolds(0));
  EXPECT_EQ(Info().of(RecordKind::kMetric).synced, 4);
}

TEST_P(StorageContractTest, OutOfOrderAcknowledgementsAreHandled) {
  ASSERT_THAT(store_->AppendMetrics(Metrics(9)), IsOk());
  EXPECT_THAT(store_->MarkSynced(RecordKind::kMetric, {4, 6}), IsOkAndHolds(3));
  EXPECT_THAT(Ids(ReadMetrics()), ElementsAre(1, 2, 3, 7, 8, 9));
  EXPECT_THAT(store_->MarkSynced(RecordKind::kMetric, {1, 3}), IsOkAndHolds(3));
  EXPECT_THAT(Ids(ReadMetrics()), ElementsAre(7, 8, 9));
  ReadOptions all;
  all.include_synced = true;
  EXPECT_THAT(Ids(ReadMetrics(all)), ElementsAre(1, 2, 3, 4, 5, 6, 7, 8, 9));
}

TEST_P(StorageContractTest, AfterAndUntilIdsRereadAPendingBatch) {
  ASSERT_THAT(store_->AppendMetrics(Metrics(10)), IsOk());
  ReadOptions options;
  options.after_id = 3;
  options.until_id = 6;
  EXPECT_THAT(Ids(ReadMetrics(options)), ElementsAre(4, 5, 6));
  // Reading ahead of an unacknowledged batch.
  options.until_id = 0;
  options.max_records = 2;
  EXPECT_THAT(Ids(ReadMetrics(options)), ElementsAre(4, 5));
}

TEST_P(StorageContractTest, ReadsBigBacklogsInBoundedBatches) {
  constexpr int kTotal = 5000;
  for (int i = 0; i < kTotal; i += 500) {
    ASSERT_THAT(store_->AppendMetrics(Metrics(500, i)), IsOk());
  }
  ReadOptions options;
  options.max_records = 256;
  int64_t expected_id = 1;
  int batches = 0;
  for (;;) {
    std::vector<StoredMetric> batch = ReadMetrics(options);
    if (batch.empty()) break;
    ASSERT_LE(batch.size(), 256u);
    for (const StoredMetric& m : batch) {
      ASSERT_EQ(m.id, expected_id);
      ASSERT_EQ(m.record.value(), static_cast<double>(expected_id - 1));
      ++expected_id;
    }
    ASSERT_THAT(store_->MarkSynced(RecordKind::kMetric,
                                   {batch.front().id, batch.back().id}),
                IsOkAndHolds(static_cast<int64_t>(batch.size())));
    ++batches;
  }
  EXPECT_EQ(expected_id, kTotal + 1);
  EXPECT_EQ(batches, (kTotal + 255) / 256);
  EXPECT_EQ(Info().of(RecordKind::kMetric).synced, kTotal);
}

TEST_P(StorageContractTest, CleanRemovesOldSyncedRecordsOnlyUnlessAskedForAll) {
  // Records at t=0..9 s; then time moves to t=100 s.
  ASSERT_THAT(store_->AppendMetrics(Metrics(10)), IsOk());
  ASSERT_THAT(store_->MarkSynced(RecordKind::kMetric, {1, 6}), IsOk());
  clock_.Advance(absl::Seconds(100));

  // Older than 95 s: t < 5 s, i.e. ids 1..5; all of them synced.
  EXPECT_THAT(
      store_->CleanOlderThan(absl::Seconds(95), CleanScope::kSyncedOnly),
      IsOkAndHolds(5));
  StorageInfo info = Info();
  EXPECT_EQ(info.of(RecordKind::kMetric).synced, 1);
  EXPECT_EQ(info.of(RecordKind::kMetric).unsynced, 4);
  EXPECT_EQ(info.of(RecordKind::kMetric).cleaned, 5);

  // Older than 92 s: t < 8 s: id 6 (synced) goes; 7 and 8 (unsynced) stay
  // unless all records are cleaned.
  EXPECT_THAT(
      store_->CleanOlderThan(absl::Seconds(92), CleanScope::kSyncedOnly),
      IsOkAndHolds(1));
  EXPECT_THAT(Ids(ReadMetrics()), ElementsAre(7, 8, 9, 10));
  EXPECT_THAT(store_->CleanOlderThan(absl::Seconds(92), CleanScope::kAll),
              IsOkAndHolds(2));
  EXPECT_THAT(Ids(ReadMetrics()), ElementsAre(9, 10));
  info = Info();
  EXPECT_EQ(info.of(RecordKind::kMetric).cleaned, 8);
  EXPECT_EQ(info.of(RecordKind::kMetric).unsynced, 2);
  EXPECT_EQ(info.of(RecordKind::kMetric).synced, 0);
  EXPECT_THAT(store_->CleanOlderThan(-absl::Seconds(1), CleanScope::kAll),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_P(StorageContractTest, InfoReportsOldestTimes) {
  StorageInfo empty = Info();
  EXPECT_FALSE(empty.oldest_record_time.has_value());
  EXPECT_FALSE(empty.of(RecordKind::kMetric).oldest_unsynced_time.has_value());

  ASSERT_THAT(store_->AppendMetrics(Metrics(4)), IsOk());
  ASSERT_THAT(store_->MarkSynced(RecordKind::kMetric, {1, 2}), IsOk());
  StorageInfo info = Info();
  EXPECT_EQ(info.oldest_record_time, kStart);
  EXPECT_EQ(info.of(RecordKind::kMetric).oldest_unsynced_time,
            kStart + absl::Seconds(2));
  EXPECT_GT(info.bytes_used, 0);
  EXPECT_GT(info.max_bytes, 0);
}

TEST_P(StorageContractTest, PendingBatchesAreKeptPerStream) {
  EXPECT_THAT(store_->LoadPendingBatch("metrics"),
              IsOkAndHolds(std::optional<PendingBatch>()));
  PendingBatch metrics{"metrics",
                       RecordKind::kMetric,
                       1'700'000'000'000'000'001,
                       IdRange{1, 100},
                       100,
                       0};
  PendingBatch logs{"logs", RecordKind::kLog, 7, IdRange{5, 9}, 5, 2};
  ASSERT_THAT(store_->SavePendingBatch(metrics), IsOk());
  ASSERT_THAT(store_->SavePendingBatch(logs), IsOk());
  EXPECT_THAT(store_->LoadPendingBatch("metrics"),
              IsOkAndHolds(std::optional<PendingBatch>(metrics)));
  EXPECT_THAT(store_->LoadPendingBatch("logs"),
              IsOkAndHolds(std::optional<PendingBatch>(logs)));

  // A retry updates it in place.
  metrics.retry_count = 3;
  ASSERT_THAT(store_->SavePendingBatch(metrics), IsOk());
  EXPECT_THAT(store_->LoadPendingBatch("metrics"),
              IsOkAndHolds(std::optional<PendingBatch>(metrics)));

  ASSERT_THAT(store_->ClearPendingBatch("metrics"), IsOk());
  EXPECT_THAT(store_->LoadPendingBatch("metrics"),
              IsOkAndHolds(std::optional<PendingBatch>()));
  EXPECT_THAT(store_->LoadPendingBatch("logs"),
              IsOkAndHolds(std::optional<PendingBatch>(logs)));
  EXPECT_THAT(store_->ClearPendingBatch("nothing"), IsOk());
  EXPECT_THAT(store_->SavePendingBatch(PendingBatch{}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_P(StorageContractTest, ConcurrentAppendersAndOneSyncerLoseNothing) {
  constexpr int kThreads = 4;
  constexpr int kPerThread = 400;
  std::atomic<int> appenders_done{0};
  std::vector<std::thread> appenders;
  for (int t = 0; t < kThreads; ++t) {
    appenders.emplace_back([&, t] {
      for (int i = 0; i < kPerThread; i += 8) {
        std::vector<v1::Metric> batch;
        for (int j = 0; j < 8; ++j) {
          batch.push_back(MakeMetric("m", t * kPerThread + i + j, kStart));
        }
        ASSERT_THAT(store_->AppendMetrics(batch), IsOk());
      }
      appenders_done.fetch_add(1);
    });
  }
  std::vector<bool> seen(kThreads * kPerThread, false);
  int synced = 0;
  std::thread syncer([&] {
    ReadOptions options;
    options.max_records = 50;
    // Drains while the appenders run, and stops once they are all done and
    // nothing is left (so a failed appender cannot hang the test).
    for (;;) {
      const bool all_appended = appenders_done.load() == kThreads;
      absl::StatusOr<std::vector<StoredMetric>> batch =
          store_->ReadMetrics(options);
      ASSERT_THAT(batch, IsOk());
      if (batch->empty()) {
        if (all_appended) break;
        std::this_thread::yield();
        continue;
      }
      for (const StoredMetric& m : *batch) {
        auto v = static_cast<size_t>(m.record.value());
        ASSERT_FALSE(seen[v]) << "record " << v << " delivered twice";
        seen[v] = true;
      }
      absl::StatusOr<int64_t> n = store_->MarkSynced(
          RecordKind::kMetric, {batch->front().id, batch->back().id});
      ASSERT_THAT(n, IsOkAndHolds(static_cast<int64_t>(batch->size())));
      synced += static_cast<int>(*n);
    }
  });
  for (std::thread& t : appenders) t.join();
  syncer.join();
  EXPECT_EQ(synced, kThreads * kPerThread);
  StorageInfo info = Info();
  EXPECT_EQ(info.of(RecordKind::kMetric).synced, kThreads * kPerThread);
  EXPECT_EQ(info.of(RecordKind::kMetric).unsynced, 0);
  for (size_t i = 0; i < seen.size(); ++i) EXPECT_TRUE(seen[i]) << i;
}

// ---- set-aside batches
// -------------------------------------------------------

SetAsideBatch Rejected(int64_t sequence, IdRange ids,
                       RecordKind kind = RecordKind::kMetric,
                       std::string stream = "metrics") {
  SetAsideBatch b;
  b.stream = std::move(stream);
  b.kind = kind;
  b.sequence_number = sequence;
  b.ids = ids;
  b.reason = "invalid: metric name is empty";
  return b;
}

TEST_P(StorageContractTest, SetAsideTakesABatchOutOfTheSyncQueue) {
  ASSERT_THAT(store_->AppendMetrics(Metrics(10)), IsOk());
  ASSERT_THAT(store_->SavePendingBatch(
                  {"metrics", RecordKind::kMetric, 7, IdRange{4, 6}, 3, 2}),
              IsOk());
  clock_.Advance(absl::Minutes(5));
  ASSERT_THAT(store_->SetAside(Rejected(7, {4, 6})), IsOk());

  // Reads skip it, with and without synced history.
  EXPECT_THAT(Ids(ReadMetrics()), ElementsAre(1, 2, 3, 7, 8, 9, 10));
  ReadOptions all;
  all.include_synced = true;
  EXPECT_THAT(Ids(ReadMetrics(all)), ElementsAre(1, 2, 3, 7, 8, 9, 10));
  // Its pending batch is gone with it.
  EXPECT_THAT(store_->LoadPendingBatch("metrics"),
              IsOkAndHolds(std::optional<PendingBatch>()));

  StorageInfo info = Info();
  EXPECT_EQ(info.of(RecordKind::kMetric).unsynced, 7);
  EXPECT_EQ(info.of(RecordKind::kMetric).set_aside, 3);
  EXPECT_EQ(info.set_aside_batches, 1);

  // A batch read around it and acknowledged does not touch it.
  EXPECT_THAT(store_->MarkSynced(RecordKind::kMetric, {1, 10}),
              IsOkAndHolds(7));
  info = Info();
  EXPECT_EQ(info.of(RecordKind::kMetric).unsynced, 0);
  EXPECT_EQ(info.of(RecordKind::kMetric).synced, 7);
  EXPECT_EQ(info.of(RecordKind::kMetric).set_aside, 3);
  EXPECT_THAT(ReadMetrics(), IsEmpty());

  absl::StatusOr<std::vector<SetAsideBatch>> list = store_->ListSetAside();
  ASSERT_THAT(list, IsOk());
  ASSERT_THAT(*list, SizeIs(1));
  SetAsideBatch expected = Rejected(7, {4, 6});
  expected.record_count = 3;
  EXPECT_EQ((*list)[0], expected);
  EXPECT_EQ((*list)[0].set_aside_at, kStart + absl::Minutes(5));
}

TEST_P(StorageContractTest, SetAsideRefusesADuplicateAndUnknownBatchesFail) {
  ASSERT_THAT(store_->AppendMetrics(Metrics(4)), IsOk());
  ASSERT_THAT(store_->SetAside(Rejected(1, {1, 2})), IsOk());
  EXPECT_THAT(store_->SetAside(Rejected(1, {3, 4})),
              StatusIs(absl::StatusCode::kAlreadyExists));
  EXPECT_EQ(Info().of(RecordKind::kMetric).unsynced, 2);
  // The same sequence number on another stream is another batch.
  EXPECT_THAT(store_->SetAside(Rejected(1, {}, RecordKind::kLog, "logs")),
              IsOk());
  EXPECT_THAT(store_->RetrySetAside("metrics", 2),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store_->DropSetAside("events", 1),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store_->SetAside(Rejected(2, {3, 4}, RecordKind::kMetric, "")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(Info().set_aside_batches, 2);
}

TEST_P(StorageContractTest, RetryRequeuesTheRecordsUnderNewIds) {
  std::vector<v1::Metric> in = Metrics(10);
  ASSERT_THAT(store_->AppendMetrics(in), IsOk());
  ASSERT_THAT(store_->SetAside(Rejected(7, {4, 6})), IsOk());
  ASSERT_THAT(store_->MarkSynced(RecordKind::kMetric, {1, 10}),
              IsOkAndHolds(7));

  EXPECT_THAT(store_->RetrySetAside("metrics", 7), IsOkAndHolds(3));
  std::vector<StoredMetric> again = ReadMetrics();
  ASSERT_THAT(again, SizeIs(3));
  // After everything stored before the retry, so no earlier batch spans them.
  EXPECT_GT(again[0].id, 10);
  for (int i = 0; i < 3; ++i) {
    EXPECT_THAT(again[i].record, EqualsProto(in[3 + i]));
    if (i > 0) {
      EXPECT_GT(again[i].id, again[i - 1].id);
    }
  }
  StorageInfo info = Info();
  EXPECT_EQ(info.of(RecordKind::kMetric).unsynced, 3);
  EXPECT_EQ(info.of(RecordKind::kMetric).set_aside, 0);
  EXPECT_EQ(info.set_aside_batches, 0);
  EXPECT_THAT(store_->ListSetAside(), IsOkAndHolds(IsEmpty()));
  EXPECT_THAT(store_->RetrySetAside("metrics", 7),
              StatusIs(absl::StatusCode::kNotFound));
  // New appends keep getting increasing ids.
  absl::StatusOr<int64_t> next = store_->AppendMetric(in[0]);
  ASSERT_THAT(next, IsOk());
  EXPECT_GT(*next, again.back().id);
  EXPECT_THAT(store_->MarkSynced(RecordKind::kMetric,
                                 {again.front().id, again.back().id}),
              IsOkAndHolds(3));
}

TEST_P(StorageContractTest, RetriedLogsAndEventsComeBackIntact) {
  std::vector<v1::LogEntry> logs = {MakeLog("a", kStart),
                                    MakeLog("b", kStart, "error")};
  ASSERT_THAT(store_->AppendLogs(logs), IsOk());
  ASSERT_THAT(store_->AppendEvent(MakeEvent("door", kStart)), IsOk());
  ASSERT_THAT(store_->SetAside(Rejected(3, {1, 2}, RecordKind::kLog, "logs")),
              IsOk());
  ASSERT_THAT(
      store_->SetAside(Rejected(3, {1, 1}, RecordKind::kEvent, "events")),
      IsOk());
  EXPECT_THAT(store_->ReadLogs({}), IsOkAndHolds(IsEmpty()));
  EXPECT_EQ(Info().of(RecordKind::kMetric).set_aside, 0);
  EXPECT_EQ(Info().of(RecordKind::kLog).set_aside, 2);

  EXPECT_THAT(store_->RetrySetAside("logs", 3), IsOkAndHolds(2));
  absl::StatusOr<std::vector<StoredLog>> back = store_->ReadLogs({});
  ASSERT_THAT(back, IsOk());
  ASSERT_THAT(*back, SizeIs(2));
  EXPECT_THAT((*back)[0].record, EqualsProto(logs[0]));
  EXPECT_THAT((*back)[1].record, EqualsProto(logs[1]));
  EXPECT_THAT(store_->RetrySetAside("events", 3), IsOkAndHolds(1));
  absl::StatusOr<std::vector<StoredEvent>> events = store_->ReadEvents({});
  ASSERT_THAT(events, IsOk());
  ASSERT_THAT(*events, SizeIs(1));
  EXPECT_THAT((*events)[0].record, EqualsProto(MakeEvent("door", kStart)));
}

TEST_P(StorageContractTest, DropDeletesTheBatchAndCountsIt) {
  ASSERT_THAT(store_->AppendMetrics(Metrics(10)), IsOk());
  ASSERT_THAT(store_->SetAside(Rejected(7, {4, 6})), IsOk());
  EXPECT_THAT(store_->DropSetAside("metrics", 7), IsOkAndHolds(3));
  StorageInfo info = Info();
  EXPECT_EQ(info.of(RecordKind::kMetric).set_aside, 0);
  EXPECT_EQ(info.of(RecordKind::kMetric).set_aside_dropped, 3);
  EXPECT_EQ(info.of(RecordKind::kMetric).unsynced, 7);
  EXPECT_EQ(info.set_aside_batches, 0);
  EXPECT_THAT(Ids(ReadMetrics()), ElementsAre(1, 2, 3, 7, 8, 9, 10));
  ReadOptions all;
  all.include_synced = true;
  EXPECT_THAT(Ids(ReadMetrics(all)), ElementsAre(1, 2, 3, 7, 8, 9, 10));
  EXPECT_THAT(store_->DropSetAside("metrics", 7),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_P(StorageContractTest, BatchesSpanningEarlierSetAsideOnesStayApart) {
  ASSERT_THAT(store_->AppendMetrics(Metrics(10)), IsOk());
  ASSERT_THAT(store_->SetAside(Rejected(1, {4, 6})), IsOk());
  // The next batch read skips 4-6, so its id range spans them.
  ReadOptions five;
  five.max_records = 5;
  EXPECT_THAT(Ids(ReadMetrics(five)), ElementsAre(1, 2, 3, 7, 8));
  ASSERT_THAT(store_->SetAside(Rejected(2, {1, 8})), IsOk());
  absl::StatusOr<std::vector<SetAsideBatch>> list = store_->ListSetAside();
  ASSERT_THAT(list, IsOk());
  ASSERT_THAT(*list, SizeIs(2));
  EXPECT_EQ((*list)[0].sequence_number, 1);
  EXPECT_EQ((*list)[0].record_count, 3);
  EXPECT_EQ((*list)[1].sequence_number, 2);
  EXPECT_EQ((*list)[1].record_count, 5);
  EXPECT_EQ(Info().of(RecordKind::kMetric).set_aside, 8);

  // Retrying the later batch brings back its own records only.
  EXPECT_THAT(store_->RetrySetAside("metrics", 2), IsOkAndHolds(5));
  std::vector<StoredMetric> back = ReadMetrics();
  ASSERT_THAT(back, SizeIs(7));  // 9, 10, then the five requeued
  std::vector<double> values;
  for (const StoredMetric& m : back) values.push_back(m.record.value());
  EXPECT_THAT(values, ElementsAre(8, 9, 0, 1, 2, 6, 7));
  EXPECT_EQ(Info().of(RecordKind::kMetric).set_aside, 3);
  EXPECT_THAT(store_->DropSetAside("metrics", 1), IsOkAndHolds(3));
}

TEST_P(StorageContractTest, CleanLeavesSetAsideBatchesAlone) {
  ASSERT_THAT(store_->AppendMetrics(Metrics(4)), IsOk());
  ASSERT_THAT(store_->SetAside(Rejected(1, {1, 2})), IsOk());
  clock_.Advance(absl::Hours(48));
  EXPECT_THAT(store_->CleanOlderThan(absl::Hours(1), CleanScope::kAll),
              IsOkAndHolds(2));
  StorageInfo info = Info();
  EXPECT_EQ(info.of(RecordKind::kMetric).set_aside, 2);
  EXPECT_EQ(info.of(RecordKind::kMetric).unsynced, 0);
  EXPECT_THAT(store_->RetrySetAside("metrics", 1), IsOkAndHolds(2));
  EXPECT_THAT(ReadMetrics(), SizeIs(2));
}

INSTANTIATE_TEST_SUITE_P(
    Backends, StorageContractTest,
    ::testing::Values(Backend{"sqlite",
                              [](const std::string& dir, Clock* clock) {
                                SqliteStorageOptions options;
                                options.data_dir = dir;
                                options.max_bytes = 64 << 20;
                                options.clock = clock;
                                return OpenSqliteStorage(options);
                              }},
                      Backend{"memory",
                              [](const std::string& dir, Clock* clock) {
                                MemoryStorageOptions options;
                                options.capacity_bytes = 4 << 20;
                                options.clock = clock;
                                return NewMemoryStorage(options);
                              }}),
    [](const ::testing::TestParamInfo<Backend>& info) {
      return info.param.name;
    });

}  // namespace
}  // namespace fleetd::agent
