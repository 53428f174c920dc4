#include "server/store/cached_ledger.h"

#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "common/metrics/metrics.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store/testing/fake_ledger_store.h"

namespace fleetd::server {
namespace {

using ::fleetd::server::testing::AppliedIn;
using ::fleetd::server::testing::FakeLedgerStore;
using ::fleetd::server::testing::TestEntry;
using ::fleetd::testing::IsOk;
using ::fleetd::testing::IsOkAndHolds;
using ::fleetd::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(CachedLedgerTest, HitsAnswerWithoutTheStore) {
  FakeLedgerStore store;
  auto cache = *CachedLedger::Create(&store, {});
  ASSERT_THAT(AppliedIn(*cache, "dev-1", 100), IsOkAndHolds(false));
  std::vector<LedgerEntry> flush = {TestEntry("dev-1", 100),
                                    TestEntry("dev-1", 200)};
  ASSERT_THAT(cache->RecordApplied(flush), IsOk());
  const int64_t reads = store.calls().reads();
  store.SetDown(true);  // any read of the store would now fail
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 100), IsOkAndHolds(true));
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 200), IsOkAndHolds(true));
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 150), IsOkAndHolds(false))
      << "a gap between applied batches";
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 300), IsOkAndHolds(false))
      << "the next batch";
  EXPECT_EQ(store.calls().reads(), reads);
  EXPECT_EQ(cache->stats().hits, 4);
  EXPECT_THAT(AppliedIn(*cache, "dev-2", 1),
              StatusIs(absl::StatusCode::kUnavailable))
      << "a key not held needs the store";
}

TEST(CachedLedgerTest, WarmLoadsRecentKeysSoTheirFirstCheckIsAHit) {
  FakeLedgerStore store;
  std::vector<LedgerEntry> applied;
  for (int d = 0; d < 12; ++d) {
    applied.push_back(TestEntry(absl::StrCat("dev-", d), 10));
    applied.push_back(TestEntry(absl::StrCat("dev-", d), 11));
  }
  ASSERT_THAT(store.RecordApplied(applied), IsOk());
  auto cache = *CachedLedger::Create(&store, {.max_keys = 100});
  // One key held already is left alone.
  ASSERT_THAT(AppliedIn(*cache, "dev-0", 11), IsOkAndHolds(true));
  const int64_t loads = store.calls().load_history;
  EXPECT_THAT(cache->Warm(absl::Minutes(10)), IsOkAndHolds(11));
  EXPECT_EQ(store.calls().load_history, loads + 1) << "one chunk";
  EXPECT_EQ(cache->stats().keys, 12);
  store.SetDown(true);  // any read of the store would now fail
  for (int d = 0; d < 12; ++d) {
    const std::string device = absl::StrCat("dev-", d);
    EXPECT_THAT(AppliedIn(*cache, device, 11), IsOkAndHolds(true)) << device;
    EXPECT_THAT(AppliedIn(*cache, device, 12), IsOkAndHolds(false)) << device;
  }
  EXPECT_EQ(cache->stats().key_misses, 1) << "only dev-0's first check";
}

TEST(CachedLedgerTest, WarmTakesAtMostHalfTheCacheAndReportsStoreErrors) {
  FakeLedgerStore store;
  std::vector<LedgerEntry> applied;
  for (int d = 0; d < 30; ++d) {
    applied.push_back(TestEntry(absl::StrCat("dev-", d), 1));
  }
  ASSERT_THAT(store.RecordApplied(applied), IsOk());
  auto cache = *CachedLedger::Create(&store, {.max_keys = 20});
  EXPECT_THAT(cache->Warm(absl::Minutes(10)), IsOkAndHolds(10));
  EXPECT_EQ(cache->stats().keys, 10);
  EXPECT_EQ(cache->stats().evictions, 0);
  store.SetDown(true);
  EXPECT_THAT(cache->Warm(absl::Minutes(10)),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(cache->stats().keys, 10);
}

TEST(CachedLedgerTest, MissingKeysOfOneCallLoadInOneStoreCall) {
  FakeLedgerStore store;
  std::vector<LedgerEntry> applied = {TestEntry("dev-a", 5),
                                      TestEntry("dev-b", 7)};
  ASSERT_THAT(store.RecordApplied(applied), IsOk());
  auto cache = *CachedLedger::Create(&store, {});
  std::vector<LedgerEntry> asked = {
      TestEntry("dev-a", 5), TestEntry("dev-b", 7), TestEntry("dev-a", 6),
      TestEntry("dev-c", 1), TestEntry("dev-b", 7, "logs")};
  auto r = cache->AreApplied(asked);
  ASSERT_THAT(r, IsOk());
  EXPECT_THAT(*r, ElementsAre(true, true, false, false, false));
  FakeLedgerStore::Calls calls = store.calls();
  EXPECT_EQ(calls.load_history, 1);
  EXPECT_EQ(calls.keys_loaded, 4) << "dev-a/metrics asked twice, loaded once";
  EXPECT_EQ(calls.are_applied, 0);
  EXPECT_EQ(cache->stats().key_misses, 5);
  // Every key is held now.
  r = cache->AreApplied(asked);
  ASSERT_THAT(r, IsOk());
  EXPECT_THAT(*r, ElementsAre(true, true, false, false, false));
  EXPECT_EQ(store.calls().reads(), 1);
  EXPECT_EQ(cache->stats().keys, 4);
}

TEST(CachedLedgerTest, BelowTheWindowTheStoreAnswersForThoseEntriesOnly) {
  FakeLedgerStore store;
  std::vector<LedgerEntry> flush;
  for (int64_t seq = 10; seq <= 100; seq += 10) {
    flush.push_back(TestEntry("dev-1", seq));
  }
  ASSERT_THAT(store.RecordApplied(flush), IsOk());
  auto cache = *CachedLedger::Create(&store, {.max_keys = 10, .window = 4});
  // Loads the 4 highest (70..100); 60 and below are not held.
  ASSERT_THAT(AppliedIn(*cache, "dev-1", 100), IsOkAndHolds(true));
  ASSERT_EQ(store.calls().reads(), 1);
  std::vector<LedgerEntry> asked = {
      TestEntry("dev-1", 20), TestEntry("dev-1", 25), TestEntry("dev-1", 70),
      TestEntry("dev-1", 75), TestEntry("dev-1", 110)};
  auto r = cache->AreApplied(asked);
  ASSERT_THAT(r, IsOk());
  EXPECT_THAT(*r, ElementsAre(true, false, true, false, false));
  FakeLedgerStore::Calls calls = store.calls();
  EXPECT_EQ(calls.are_applied, 1);
  EXPECT_EQ(calls.entries_checked, 2) << "only 20 and 25 are below the window";
  EXPECT_EQ(cache->stats().old_misses, 2);
  // Recording beyond the window drops its oldest; what dropped is asked again.
  std::vector<LedgerEntry> more = {TestEntry("dev-1", 110),
                                   TestEntry("dev-1", 120)};
  ASSERT_THAT(cache->RecordApplied(more), IsOk());
  ASSERT_THAT(AppliedIn(*cache, "dev-1", 80), IsOkAndHolds(true));
  EXPECT_EQ(store.calls().entries_checked, 3);
  ASSERT_THAT(AppliedIn(*cache, "dev-1", 90), IsOkAndHolds(true));
  EXPECT_EQ(store.calls().entries_checked, 3) << "90 is still in the window";
}

TEST(CachedLedgerTest, CompactedBatchesAreForgottenNeverAssumedApplied) {
  FakeLedgerStore store;
  std::vector<LedgerEntry> flush = {
      TestEntry("dev-1", 10), TestEntry("dev-1", 20), TestEntry("dev-1", 30)};
  ASSERT_THAT(store.RecordApplied(flush), IsOk());
  store.Compact("dev-1", "metrics", 20);
  auto cache = *CachedLedger::Create(&store, {.max_keys = 10, .window = 4});
  // At or below the floor the cache cannot judge: the store answers, and a
  // forgotten batch (or one a reset device numbers that low) is written
  // again rather than acknowledged unseen.
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 10), IsOkAndHolds(false));
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 15), IsOkAndHolds(false));
  EXPECT_EQ(store.calls().load_history, 1);
  EXPECT_EQ(store.calls().are_applied, 2) << "both asked the store";
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 30), IsOkAndHolds(true));
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 25), IsOkAndHolds(false));
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 40), IsOkAndHolds(false));
  EXPECT_EQ(store.calls().reads(), 3) << "above the floor: from memory";
}

TEST(CachedLedgerTest, AWriteFailedInDoubtIsAskedOfTheStoreNextTime) {
  FakeLedgerStore store;
  auto cache = *CachedLedger::Create(&store, {.max_keys = 10, .window = 4});
  ASSERT_THAT(AppliedIn(*cache, "dev-1", 10), IsOkAndHolds(false));
  // The commit lands but its answer is lost: the batch is applied, the
  // caller sees an error and the device retries it.
  store.SetRecordInDoubt(true);
  std::vector<LedgerEntry> flush = {TestEntry("dev-1", 10)};
  EXPECT_THAT(cache->RecordApplied(flush),
              StatusIs(absl::StatusCode::kUnavailable));
  store.SetRecordInDoubt(false);
  const int64_t asked = store.calls().are_applied;
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 10), IsOkAndHolds(true))
      << "a stale \"not applied\" from memory would write it twice";
  EXPECT_EQ(store.calls().are_applied, asked + 1);
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 11), IsOkAndHolds(false));
  EXPECT_EQ(store.calls().are_applied, asked + 1) << "newer: from memory";
}

TEST(CachedLedgerTest, RecordWritesThroughAndCachesOnlyWhatCommitted) {
  FakeLedgerStore store;
  auto cache = *CachedLedger::Create(&store, {});
  ASSERT_THAT(AppliedIn(*cache, "dev-1", 1), IsOkAndHolds(false));
  store.SetDown(true);
  std::vector<LedgerEntry> flush = {TestEntry("dev-1", 1)};
  EXPECT_THAT(cache->RecordApplied(flush),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 1),
              StatusIs(absl::StatusCode::kUnavailable))
      << "a failed write may have committed: only the store can answer";
  store.SetDown(false);
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 1), IsOkAndHolds(false))
      << "it had not";
  ASSERT_THAT(cache->RecordApplied(flush), IsOk());
  EXPECT_EQ(store.calls().entries_recorded, 1);
  store.SetDown(true);
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 1), IsOkAndHolds(true));
}

TEST(CachedLedgerTest, ConflictsAreCountedWithinAndAcrossFlushesAndServers) {
  FakeLedgerStore store;
  metrics::Registry registry_a;
  auto a = *CachedLedger::Create(&store, {.metrics = &registry_a});
  auto b = *CachedLedger::Create(&store, {});
  // b sees the key before a applies the batch: b's "not applied" goes stale.
  ASSERT_THAT(AppliedIn(*b, "dev-1", 1), IsOkAndHolds(false));
  std::vector<LedgerEntry> twice = {TestEntry("dev-1", 1),
                                    TestEntry("dev-1", 1)};
  ASSERT_THAT(a->RecordApplied(twice), IsOk());
  EXPECT_EQ(a->stats().conflicts, 1) << "twice in one flush";
  EXPECT_THAT(AppliedIn(*b, "dev-1", 1), IsOkAndHolds(false))
      << "stale, as documented";
  std::vector<LedgerEntry> again = {TestEntry("dev-1", 1),
                                    TestEntry("dev-1", 2)};
  ASSERT_THAT(b->RecordApplied(again), IsOk());
  EXPECT_EQ(b->stats().conflicts, 1) << "applied by the other server";
  EXPECT_THAT(AppliedIn(*b, "dev-1", 1), IsOkAndHolds(true));
  // A server's first sight of a key sees what the other applied.
  auto c = *CachedLedger::Create(&store, {});
  EXPECT_THAT(AppliedIn(*c, "dev-1", 2), IsOkAndHolds(true));
  EXPECT_THAT(registry_a.Render(),
              HasSubstr("fleetd_ledger_conflicts_total 1"));
}

TEST(CachedLedgerTest, KeysStayWithinTheBoundAndEvictionsAreCounted) {
  FakeLedgerStore store;
  auto cache = *CachedLedger::Create(&store, {.max_keys = 8, .window = 4});
  for (int d = 0; d < 100; ++d) {
    std::string device = absl::StrCat("dev-", d);
    ASSERT_THAT(AppliedIn(*cache, device, 1), IsOkAndHolds(false));
    std::vector<LedgerEntry> flush = {TestEntry(device, 1)};
    ASSERT_THAT(cache->RecordApplied(flush), IsOk());
    ASSERT_LE(cache->stats().keys, 8);
  }
  CachedLedger::Stats stats = cache->stats();
  EXPECT_EQ(stats.keys, 8);
  EXPECT_EQ(stats.evictions, 92);
  // An evicted key is loaded again, with what was recorded for it.
  const int64_t loads = store.calls().load_history;
  EXPECT_THAT(AppliedIn(*cache, "dev-0", 1), IsOkAndHolds(true));
  EXPECT_EQ(store.calls().load_history, loads + 1);
}

TEST(CachedLedgerTest, KeysInUseSurviveEviction) {
  FakeLedgerStore store;
  auto cache = *CachedLedger::Create(&store, {.max_keys = 4, .window = 4});
  ASSERT_THAT(AppliedIn(*cache, "hot", 1), IsOkAndHolds(false));
  for (int d = 0; d < 50; ++d) {
    ASSERT_THAT(AppliedIn(*cache, absl::StrCat("cold-", d), 1),
                IsOkAndHolds(false));
    ASSERT_THAT(AppliedIn(*cache, "hot", 1), IsOkAndHolds(false));
  }
  EXPECT_EQ(store.calls().keys_loaded, 51) << "the hot key loaded once";
}

// A store whose LoadHistory stops after reading, until released: a batch
// recorded while a key loads.
class PausingStore final : public LedgerStore {
 public:
  explicit PausingStore(LedgerStore* inner) : inner_(inner) {}
  absl::StatusOr<std::vector<bool>> AreApplied(
      absl::Span<const LedgerEntry> entries) override {
    return inner_->AreApplied(entries);
  }
  absl::Status RecordApplied(absl::Span<const LedgerEntry> entries) override {
    return inner_->RecordApplied(entries);
  }
  absl::StatusOr<int64_t> RecordAppliedCountingPresent(
      absl::Span<const LedgerEntry> entries) override {
    return inner_->RecordAppliedCountingPresent(entries);
  }
  absl::StatusOr<std::vector<LedgerHistory>> LoadHistory(
      absl::Span<const LedgerKey> keys, int limit) override {
    auto loaded = inner_->LoadHistory(keys, limit);
    read_.Notify();
    release_.WaitForNotification();
    return loaded;
  }
  absl::Notification read_;
  absl::Notification release_;

 private:
  LedgerStore* const inner_;
};

TEST(CachedLedgerTest, BatchRecordedWhileItsKeyLoadsIsNotLost) {
  FakeLedgerStore store;
  PausingStore pausing(&store);
  auto cache = *CachedLedger::Create(&pausing, {});
  std::thread asker([&] {
    // Either answer is right for a batch recorded during the call.
    EXPECT_THAT(AppliedIn(*cache, "dev-1", 5), IsOk());
  });
  pausing.read_.WaitForNotification();  // the load read the store before 5
  std::vector<LedgerEntry> flush = {TestEntry("dev-1", 5)};
  ASSERT_THAT(cache->RecordApplied(flush), IsOk());
  pausing.release_.Notify();
  asker.join();
  store.SetDown(true);
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 5), IsOkAndHolds(true));
}

TEST(CachedLedgerTest, ConcurrentDevicesEachSeeTheirOwnBatchesOnce) {
  FakeLedgerStore store;
  auto cache = *CachedLedger::Create(&store, {.max_keys = 16, .window = 4});
  constexpr int kThreads = 4;
  constexpr int kDevices = 10;  // per thread: 40 keys over 16 slots
  constexpr int kBatches = 50;
  std::vector<std::thread> threads;
  std::atomic<int> wrong{0};
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int j = 1; j <= kBatches; ++j) {
        for (int d = 0; d < kDevices; ++d) {
          std::string device = absl::StrCat("dev-", t, "-", d);
          int64_t seq = j * 1000 + d;
          LedgerEntry e = TestEntry(device, seq);
          auto before = cache->AreApplied({&e, 1});
          if (!before.ok() || (*before)[0]) ++wrong;
          if (!cache->RecordApplied({&e, 1}).ok()) ++wrong;
          auto after = cache->AreApplied({&e, 1});
          if (!after.ok() || !(*after)[0]) ++wrong;
          LedgerEntry first = TestEntry(device, 1000 + d);
          auto old = cache->AreApplied({&first, 1});
          if (!old.ok() || !(*old)[0]) ++wrong;
        }
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(wrong.load(), 0);
  EXPECT_LE(cache->stats().keys, 16);
  EXPECT_EQ(cache->stats().conflicts, 0);
}

TEST(CachedLedgerTest, OptionsOutOfRangeAreRefused) {
  FakeLedgerStore store;
  EXPECT_THAT(CachedLedger::Create(&store, {.max_keys = 0}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(CachedLedger::Create(&store, {.window = 0}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(CachedLedger::Create(nullptr, {}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fleetd::server
