#include "agent/storage/memory_storage.h"

#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

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
using ::fleetd::agent::testing::MakeEvent;
using ::fleetd::agent::testing::MakeLog;
using ::fleetd::agent::testing::MakeMetric;
using ::fleetd::testing::IsOk;
using ::fleetd::testing::IsOkAndHolds;
using ::fleetd::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

const absl::Time kStart = absl::FromUnixSeconds(1'700'000'000);

class MemoryStorageTest : public ::testing::Test {
 protected:
  std::unique_ptr<Storage> Open(int64_t capacity) {
    MemoryStorageOptions options;
    options.capacity_bytes = capacity;
    options.clock = &clock_;
    options.log = log_.Fn();
    absl::StatusOr<std::unique_ptr<Storage>> s = NewMemoryStorage(options);
    EXPECT_THAT(s, IsOk());
    return s.ok() ? *std::move(s) : nullptr;
  }

  static StorageInfo InfoOf(Storage& store) {
    absl::StatusOr<StorageInfo> info = store.Info();
    EXPECT_THAT(info, IsOk());
    return info.ok() ? *info : StorageInfo{};
  }

  SimulatedClock clock_{kStart};
  LogCapture log_;
};

TEST_F(MemoryStorageTest, OverwritesTheOldestWhenFullAndCountsIt) {
  std::unique_ptr<Storage> store = Open(4096);
  constexpr int kTotal = 1000;
  for (int i = 0; i < kTotal; ++i) {
    ASSERT_THAT(store->AppendMetric(
                    MakeMetric("m", i, kStart, {{"i", std::to_string(i)}})),
                IsOkAndHolds(i + 1));
    ASSERT_LE(InfoOf(*store).bytes_used, 4096);
  }
  StorageInfo info = InfoOf(*store);
  const KindInfo& m = info.of(RecordKind::kMetric);
  EXPECT_GT(m.dropped_unsynced, 0);
  EXPECT_EQ(m.unsynced + m.dropped_unsynced, kTotal);
  EXPECT_EQ(info.max_bytes, 4096);
  EXPECT_GT(info.full_events, 0);
  EXPECT_GE(log_.Count(absl::LogSeverity::kWarning, "overwrote"), 1);

  // What is left is the newest records, in order, intact.
  ReadOptions all;
  all.max_records = kTotal;
  absl::StatusOr<std::vector<StoredMetric>> left = store->ReadMetrics(all);
  ASSERT_THAT(left, IsOk());
  ASSERT_EQ(static_cast<int64_t>(left->size()), m.unsynced);
  EXPECT_EQ(left->back().id, kTotal);
  EXPECT_EQ(left->front().id, m.dropped_unsynced + 1);
  for (const StoredMetric& r : *left) {
    EXPECT_THAT(r.record,
                EqualsProto(MakeMetric("m", r.id - 1, kStart,
                                       {{"i", std::to_string(r.id - 1)}})));
  }
}

TEST_F(MemoryStorageTest, OverwrittenSyncedRecordsAreCountedApart) {
  std::unique_ptr<Storage> store = Open(4096);
  std::vector<v1::Metric> first;
  for (int i = 0; i < 40; ++i) first.push_back(MakeMetric("m", i, kStart));
  ASSERT_THAT(store->AppendMetrics(first), IsOk());
  ASSERT_THAT(store->MarkSynced(RecordKind::kMetric, {1, 40}),
              IsOkAndHolds(40));
  for (int i = 0; i < 200; ++i) {
    ASSERT_THAT(store->AppendMetric(MakeMetric("m", i, kStart)), IsOk());
  }
  const KindInfo m = InfoOf(*store).of(RecordKind::kMetric);
  EXPECT_EQ(m.evicted_synced, 40);
  EXPECT_EQ(m.synced, 0);
  EXPECT_EQ(m.unsynced + m.dropped_unsynced, 200);
}

TEST_F(MemoryStorageTest, OverwrittenSetAsideRecordsAreCountedAndTheBatchGoes) {
  std::unique_ptr<Storage> store = Open(4096);
  std::vector<v1::Metric> first;
  for (int i = 0; i < 30; ++i) first.push_back(MakeMetric("m", i, kStart));
  ASSERT_THAT(store->AppendMetrics(first), IsOk());
  SetAsideBatch batch;
  batch.stream = "metrics";
  batch.sequence_number = 5;
  batch.ids = {1, 20};
  batch.reason = "rejected";
  ASSERT_THAT(store->SetAside(batch), IsOk());
  ASSERT_THAT(store->MarkSynced(RecordKind::kMetric, {21, 30}),
              IsOkAndHolds(10));
  // Overwrite about half the batch: the batch stays, with fewer records.
  int appended = 0;
  while (InfoOf(*store).of(RecordKind::kMetric).set_aside_dropped < 10) {
    ASSERT_THAT(store->AppendMetric(MakeMetric("m", appended++, kStart)),
                IsOk());
  }
  absl::StatusOr<std::vector<SetAsideBatch>> list = store->ListSetAside();
  ASSERT_THAT(list, IsOk());
  ASSERT_THAT(*list, ::testing::SizeIs(1));
  EXPECT_EQ((*list)[0].record_count, 10);
  EXPECT_EQ(InfoOf(*store).of(RecordKind::kMetric).set_aside, 10);
  // Overwrite the rest: the batch is gone, logged, and everything counted.
  for (int i = 0; i < 200; ++i) {
    ASSERT_THAT(store->AppendMetric(MakeMetric("m", i, kStart)), IsOk());
  }
  const StorageInfo info = InfoOf(*store);
  const KindInfo& m = info.of(RecordKind::kMetric);
  EXPECT_EQ(m.set_aside, 0);
  EXPECT_EQ(m.set_aside_dropped, 20);
  EXPECT_EQ(m.evicted_synced, 10);
  EXPECT_EQ(info.set_aside_batches, 0);
  EXPECT_THAT(store->ListSetAside(), IsOkAndHolds(::testing::IsEmpty()));
  EXPECT_EQ(log_.Count(absl::LogSeverity::kWarning,
                       "last record of set-aside batch 5"),
            1);
  EXPECT_EQ(m.unsynced + m.dropped_unsynced, appended + 200);
}

TEST_F(MemoryStorageTest, RetryReappendsTheRecordsAtTheTail) {
  std::unique_ptr<Storage> store = Open(8192);
  for (int i = 0; i < 10; ++i) {
    ASSERT_THAT(store->AppendMetric(MakeMetric("m", i, kStart)), IsOk());
  }
  SetAsideBatch batch;
  batch.stream = "metrics";
  batch.sequence_number = 1;
  batch.ids = {1, 10};
  ASSERT_THAT(store->SetAside(batch), IsOk());
  // With nothing else left, the ring's space comes back.
  ASSERT_THAT(store->RetrySetAside("metrics", 1), IsOkAndHolds(10));
  absl::StatusOr<std::vector<StoredMetric>> read = store->ReadMetrics({});
  ASSERT_THAT(read, IsOk());
  ASSERT_THAT(*read, ::testing::SizeIs(10));
  EXPECT_EQ((*read)[0].id, 11);
  EXPECT_THAT((*read)[9].record, EqualsProto(MakeMetric("m", 9, kStart)));
  ASSERT_THAT(store->MarkSynced(RecordKind::kMetric, {11, 20}),
              IsOkAndHolds(10));
  ASSERT_THAT(store->AppendMetric(MakeMetric("m", 99, kStart)),
              IsOkAndHolds(21));
  read = store->ReadMetrics({});
  ASSERT_THAT(read, IsOk());
  EXPECT_THAT(Ids(*read), ElementsAre(21));
}

TEST_F(MemoryStorageTest, RejectsRecordsLargerThanAQuarterOfTheRing) {
  std::unique_ptr<Storage> store = Open(4096);
  ASSERT_THAT(store->AppendMetric(MakeMetric("ok", 1, kStart)), IsOk());
  std::vector<v1::Metric> batch = {
      MakeMetric("ok", 2, kStart),
      MakeMetric("huge", 3, kStart, {{"blob", std::string(2000, 'x')}})};
  EXPECT_THAT(store->AppendMetrics(batch),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("metric 1 of the batch")));
  // The batch went in whole or not at all: not at all.
  absl::StatusOr<std::vector<StoredMetric>> left = store->ReadMetrics({});
  ASSERT_THAT(left, IsOk());
  EXPECT_THAT(Ids(*left), ElementsAre(1));
}

TEST_F(MemoryStorageTest, HasAFixedSize) {
  std::unique_ptr<Storage> store = Open(8192);
  EXPECT_THAT(store->SetMaxBytes(1 << 20),
              StatusIs(absl::StatusCode::kUnimplemented));
  EXPECT_EQ(InfoOf(*store).max_bytes, 8192);
}

TEST_F(MemoryStorageTest, RejectsATinyRing) {
  MemoryStorageOptions options;
  options.capacity_bytes = 100;
  EXPECT_THAT(NewMemoryStorage(options),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(MemoryStorageTest, CleaningTheOldestGivesTheirSpaceBack) {
  std::unique_ptr<Storage> store = Open(8192);
  for (int i = 0; i < 20; ++i) {
    ASSERT_THAT(store->AppendMetric(MakeMetric("m", i, kStart)), IsOk());
  }
  ASSERT_THAT(store->MarkSynced(RecordKind::kMetric, {1, 20}), IsOk());
  ASSERT_GT(InfoOf(*store).bytes_used, 0);
  clock_.Advance(absl::Hours(2));
  EXPECT_THAT(store->CleanOlderThan(absl::Hours(1), CleanScope::kSyncedOnly),
              IsOkAndHolds(20));
  StorageInfo info = InfoOf(*store);
  EXPECT_EQ(info.bytes_used, 0);
  EXPECT_EQ(info.of(RecordKind::kMetric).cleaned, 20);
  EXPECT_FALSE(info.oldest_record_time.has_value());
}

// Random appends of all kinds and sizes, reads and acknowledgements against a
// small ring that wraps many times. After every step: the counters add up,
// the surviving records are exactly the newest ones (in global append order),
// and each reads back exactly as it was appended.
TEST_F(MemoryStorageTest, RandomOperationsKeepTheRingConsistent) {
  const uint32_t seed = 20240611;
  SCOPED_TRACE(::testing::Message() << "seed " << seed);
  std::mt19937 rng(seed);
  std::unique_ptr<Storage> store = Open(8192);

  struct Appended {
    RecordKind kind;
    int64_t id;
  };
  std::vector<Appended> order;
  std::map<int64_t, v1::Metric> metrics;
  std::map<int64_t, v1::LogEntry> logs;
  std::map<int64_t, v1::Event> events;

  auto rand_string = [&](int max_len) {
    return std::string(rng() % (max_len + 1), 'a' + rng() % 26);
  };

  for (int step = 0; step < 1500; ++step) {
    SCOPED_TRACE(::testing::Message() << "step " << step);
    const int op = static_cast<int>(rng() % 10);
    if (op < 5) {
      std::vector<v1::Metric> batch;
      const int n = 1 + static_cast<int>(rng() % 6);
      for (int i = 0; i < n; ++i) {
        batch.push_back(MakeMetric(rand_string(20), rng() % 1000, kStart,
                                   {{"a", rand_string(200)}}));
      }
      absl::StatusOr<IdRange> ids = store->AppendMetrics(batch);
      ASSERT_THAT(ids, IsOk());
      for (int i = 0; i < n; ++i) {
        metrics[ids->first + i] = batch[i];
        order.push_back({RecordKind::kMetric, ids->first + i});
      }
    } else if (op < 7) {
      v1::LogEntry l = MakeLog(rand_string(300), kStart);
      absl::StatusOr<int64_t> id = store->AppendLog(l);
      ASSERT_THAT(id, IsOk());
      logs[*id] = l;
      order.push_back({RecordKind::kLog, *id});
    } else if (op < 8) {
      v1::Event e = MakeEvent(rand_string(50), kStart);
      absl::StatusOr<int64_t> id = store->AppendEvent(e);
      ASSERT_THAT(id, IsOk());
      events[*id] = e;
      order.push_back({RecordKind::kEvent, *id});
    } else {
      ReadOptions options;
      options.max_records = 1 + static_cast<int>(rng() % 8);
      absl::StatusOr<std::vector<StoredMetric>> batch =
          store->ReadMetrics(options);
      ASSERT_THAT(batch, IsOk());
      if (!batch->empty()) {
        ASSERT_THAT(store->MarkSynced(RecordKind::kMetric,
                                      {batch->front().id, batch->back().id}),
                    IsOkAndHolds(static_cast<int64_t>(batch->size())));
      }
    }

    // Check the invariants.
    StorageInfo info = InfoOf(*store);
    ASSERT_LE(info.bytes_used, info.max_bytes);
    ReadOptions all;
    all.include_synced = true;
    all.max_records = 100000;
    absl::StatusOr<std::vector<StoredMetric>> m = store->ReadMetrics(all);
    absl::StatusOr<std::vector<StoredLog>> l = store->ReadLogs(all);
    absl::StatusOr<std::vector<StoredEvent>> e = store->ReadEvents(all);
    ASSERT_THAT(m, IsOk());
    ASSERT_THAT(l, IsOk());
    ASSERT_THAT(e, IsOk());
    std::map<std::pair<int, int64_t>, bool> alive;
    auto check = [&](const auto& got, const auto& want, RecordKind kind) {
      const KindInfo& ki = info.of(kind);
      ASSERT_EQ(
          ki.unsynced + ki.synced + ki.dropped_unsynced + ki.evicted_synced,
          static_cast<int64_t>(want.size()));
      ASSERT_EQ(static_cast<int64_t>(got.size()), ki.unsynced + ki.synced);
      int64_t prev = 0;
      for (const auto& r : got) {
        ASSERT_GT(r.id, prev);
        prev = r.id;
        ASSERT_THAT(r.record, EqualsProto(want.at(r.id)));
        alive[{static_cast<int>(kind), r.id}] = true;
      }
    };
    check(*m, metrics, RecordKind::kMetric);
    check(*l, logs, RecordKind::kLog);
    check(*e, events, RecordKind::kEvent);
    // Survivors form a suffix of the global append order.
    bool seen_alive = false;
    for (const Appended& a : order) {
      const bool is_alive = alive.count({static_cast<int>(a.kind), a.id}) > 0;
      if (seen_alive) {
        ASSERT_TRUE(is_alive) << "gap at " << a.id;
      }
      seen_alive = seen_alive || is_alive;
    }
  }
  // The ring wrapped many times.
  EXPECT_GT(InfoOf(*store).of(RecordKind::kMetric).dropped_unsynced +
                InfoOf(*store).of(RecordKind::kMetric).evicted_synced,
            1000);
}

}  // namespace
}  // namespace fleetd::agent
