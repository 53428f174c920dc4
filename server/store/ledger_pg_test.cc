// The ledger against a real PostgreSQL: coalesced statements, retention, and
// the in-memory cache in front of it (restarts, two servers, PostgreSQL down).
#include <fstream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/clock/clock.h"
#include "common/metrics/metrics.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/store/cached_ledger.h"
#include "server/store/ledger_compactor.h"
#include "server/store/ledger_workload.h"
#include "server/store/pg_store.h"
#include "server/store/testing/fake_ledger_store.h"
#include "tests/fixtures/postgres_fixture.h"

namespace fleetd::server {
namespace {

using ::fleetd::server::testing::AppliedIn;
using ::fleetd::server::testing::TestEntry;
using ::fleetd::testing::IsOk;
using ::fleetd::testing::IsOkAndHolds;
using ::fleetd::testing::PostgresFixture;
using ::fleetd::testing::StatusIs;
using ::fleetd::testing::WaitFor;
using ::testing::Each;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

class LedgerPgTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pg = PostgresFixture::Shared();
    ASSERT_THAT(pg, IsOk());
    pg_ = *pg;
    static int counter = 0;
    db_ = absl::StrCat("ledger_", ++counter);
    auto dsn = pg_->CreateDatabase(db_);
    ASSERT_THAT(dsn, IsOk());
    dsn_ = *dsn;
    // Every statement of this database goes to the server log, where
    // StatementsSince counts them.
    ASSERT_THAT(pg_->Query(absl::StrCat("ALTER DATABASE ", db_,
                                        " SET log_statement = 'all'")),
                IsOk());
    auto pool = PgPool::Connect({.dsn = dsn_, .size = 3});
    ASSERT_THAT(pool, IsOk());
    pool_ = *std::move(pool);
    store_ = std::make_unique<PgStore>(pool_.get(), &clock_);
    ASSERT_THAT(store_->Migrate(), IsOk());
  }

  int64_t Rows(absl::string_view where = "true") {
    auto r = pg_->QueryOn(
        db_, absl::StrCat("SELECT count(*) FROM sync_ledger WHERE ", where));
    EXPECT_THAT(r, IsOk());
    return r.ok() ? std::stoll(*r) : -1;
  }

  size_t LogSize() {
    std::ifstream in(pg_->log_path(), std::ios::ate | std::ios::binary);
    return static_cast<size_t>(in.tellg());
  }

  // Statements naming a ledger table that the server logged after `offset`.
  int StatementsSince(size_t offset) {
    std::ifstream in(pg_->log_path(), std::ios::binary);
    in.seekg(static_cast<std::streamoff>(offset));
    std::stringstream tail;
    tail << in.rdbuf();
    int n = 0;
    for (absl::string_view line : absl::StrSplit(tail.str(), '\n')) {
      if ((absl::StrContains(line, "LOG:  execute") ||
           absl::StrContains(line, "LOG:  statement:")) &&
          absl::StrContains(line, "sync_ledger")) {
        ++n;
      }
    }
    return n;
  }

  PostgresFixture* pg_ = nullptr;
  std::string db_;
  std::string dsn_;
  SimulatedClock clock_{absl::FromUnixSeconds(1'700'000'000)};
  std::unique_ptr<PgPool> pool_;
  std::unique_ptr<PgStore> store_;
};

TEST_F(LedgerPgTest, MigrationAddsTheFloorTable) {
  EXPECT_THAT(store_->SchemaVersion(), IsOkAndHolds(4));
  EXPECT_THAT(pg_->QueryOn(db_, "SELECT count(*) FROM sync_ledger_floor"),
              IsOkAndHolds("0"));
}

TEST_F(LedgerPgTest, AFlushIsOneStatementAndSoIsACheck) {
  std::vector<LedgerEntry> flush;
  for (int i = 0; i < 100; ++i) {
    flush.push_back(TestEntry(absl::StrCat("dev-", i % 7), 1000 + i));
  }
  size_t before = LogSize();
  ASSERT_THAT(store_->RecordApplied(flush), IsOk());
  EXPECT_EQ(StatementsSince(before), 1);
  EXPECT_EQ(Rows(), 100);
  flush.push_back(TestEntry("dev-x", 1));
  before = LogSize();
  auto applied = store_->AreApplied(flush);
  ASSERT_THAT(applied, IsOk());
  EXPECT_EQ(StatementsSince(before), 1);
  std::vector<bool> expected(100, true);
  expected.push_back(false);
  EXPECT_EQ(*applied, expected);
}

TEST_F(LedgerPgTest, FlushesAreAllOrNothingAndCountWhatWasPresent) {
  std::vector<LedgerEntry> first = {
      TestEntry("dev-a", 1), TestEntry("dev-b", 1), TestEntry("dev-a", 1)};
  EXPECT_THAT(store_->RecordAppliedCountingPresent(first), IsOkAndHolds(1))
      << "twice in one flush";
  std::vector<LedgerEntry> second = {TestEntry("dev-b", 1),
                                     TestEntry("dev-c", 1)};
  EXPECT_THAT(store_->RecordAppliedCountingPresent(second), IsOkAndHolds(1))
      << "recorded by the flush before";
  EXPECT_EQ(Rows(), 3);
  // A row PostgreSQL refuses fails the whole flush.
  ASSERT_THAT(pg_->QueryOn(db_,
                           "ALTER TABLE sync_ledger ADD CONSTRAINT no_666 "
                           "CHECK (sequence_number <> 666)"),
              IsOk());
  std::vector<LedgerEntry> third = {TestEntry("dev-d", 1),
                                    TestEntry("dev-d", 666)};
  EXPECT_THAT(store_->RecordApplied(third),
              StatusIs(absl::StatusCode::kInternal));
  EXPECT_EQ(Rows(), 3);
  EXPECT_THAT(AppliedIn(*store_, "dev-d", 1), IsOkAndHolds(false));
  // Strings that need quoting inside an array literal survive it.
  std::vector<LedgerEntry> odd = {
      TestEntry("dev \"quoted\" \\ {x,y}", 7, "a,b")};
  ASSERT_THAT(store_->RecordApplied(odd), IsOk());
  auto found = store_->AreApplied(odd);
  ASSERT_THAT(found, IsOk());
  EXPECT_THAT(*found, ElementsAre(true));
  EXPECT_THAT(pg_->QueryOn(db_,
                           "SELECT device_id || '|' || stream FROM sync_ledger "
                           "WHERE sequence_number = 7"),
              IsOkAndHolds("dev \"quoted\" \\ {x,y}|a,b"));
}

TEST_F(LedgerPgTest, AppliedAtComesFromTheInjectedClock) {
  std::vector<LedgerEntry> flush = {TestEntry("dev-1", 1)};
  ASSERT_THAT(store_->RecordApplied(flush), IsOk());
  EXPECT_THAT(pg_->QueryOn(db_,
                           "SELECT extract(epoch FROM applied_at)::bigint "
                           "FROM sync_ledger"),
              IsOkAndHolds("1700000000"));
}

TEST_F(LedgerPgTest, CompactionForgetsOldRowsAndKeepsEveryNewerAnswer) {
  // Per device: batches 10..100 applied at day 0, 200..250 at day 8.
  std::vector<LedgerEntry> old_flush, new_flush;
  for (int d = 0; d < 3; ++d) {
    std::string device = absl::StrCat("dev-", d);
    for (int64_t seq = 10; seq <= 100; seq += 10) {
      old_flush.push_back(TestEntry(device, seq));
    }
    for (int64_t seq = 200; seq <= 250; seq += 10) {
      new_flush.push_back(TestEntry(device, seq));
    }
  }
  ASSERT_THAT(store_->RecordApplied(old_flush), IsOk());
  clock_.Advance(absl::Hours(8 * 24));
  ASSERT_THAT(store_->RecordApplied(new_flush), IsOk());
  std::vector<LedgerEntry> probes;
  for (int d = 0; d < 3; ++d) {
    for (int64_t seq = 0; seq <= 300; seq += 5) {
      probes.push_back(TestEntry(absl::StrCat("dev-", d), seq));
    }
  }
  auto before = store_->AreApplied(probes);
  ASSERT_THAT(before, IsOk());

  auto done = store_->CompactLedger(clock_.Now() - absl::Hours(7 * 24));
  ASSERT_THAT(done, IsOk());
  EXPECT_EQ(done->rows_deleted, 30);
  EXPECT_EQ(done->floors_raised, 3);
  EXPECT_EQ(Rows(), 18);
  EXPECT_THAT(
      pg_->QueryOn(db_, "SELECT DISTINCT floor_seq FROM sync_ledger_floor"),
      IsOkAndHolds("100"));
  // Above the floor every answer is the same. At or below it the compacted
  // batches are forgotten: not applied, so a retry that old is written again
  // (idempotently) instead of being acknowledged unseen.
  auto after = store_->AreApplied(probes);
  ASSERT_THAT(after, IsOk());
  int forgotten = 0;
  for (size_t i = 0; i < probes.size(); ++i) {
    int64_t seq = probes[i].sequence_number;
    if (seq > 100) {
      EXPECT_EQ((*after)[i], (*before)[i]) << seq;
    } else {
      EXPECT_FALSE((*after)[i]) << seq;
      forgotten += (*before)[i] ? 1 : 0;
    }
  }
  EXPECT_EQ(forgotten, 30);
  // A fresh cache (a restarted server) answers the same.
  auto cache =
      *CachedLedger::Create(store_.get(), {.max_keys = 100, .window = 4});
  auto cached = cache->AreApplied(probes);
  ASSERT_THAT(cached, IsOk());
  EXPECT_EQ(*cached, *after);
  // Compacting again deletes nothing and never lowers a floor; a batch at or
  // below the floor is recorded again (its backends were written again).
  auto again = store_->CompactLedger(clock_.Now() - absl::Hours(7 * 24));
  ASSERT_THAT(again, IsOk());
  EXPECT_EQ(again->rows_deleted, 0);
  std::vector<LedgerEntry> below = {TestEntry("dev-0", 50),
                                    TestEntry("dev-0", 260)};
  EXPECT_THAT(store_->RecordAppliedCountingPresent(below), IsOkAndHolds(0));
  EXPECT_EQ(Rows("sequence_number = 50"), 1);
  clock_.Advance(absl::Hours(8 * 24));
  auto all = store_->CompactLedger(clock_.Now() - absl::Hours(7 * 24));
  ASSERT_THAT(all, IsOk());
  EXPECT_EQ(all->rows_deleted, 20);
  EXPECT_EQ(Rows(), 0);
  EXPECT_THAT(pg_->QueryOn(db_,
                           "SELECT string_agg(floor_seq::text, ',' ORDER BY "
                           "device_id) FROM sync_ledger_floor"),
              IsOkAndHolds("260,250,250"));
  auto size = store_->GetLedgerSize();
  ASSERT_THAT(size, IsOk());
  EXPECT_EQ(size->rows, 0);
  EXPECT_EQ(size->floor_keys, 3);
  EXPECT_GT(size->table_bytes, 0);
}

TEST_F(LedgerPgTest, CompactorRunsOnTheInjectedClockAndReportsTheRowCount) {
  std::vector<LedgerEntry> flush = {TestEntry("dev-1", 1),
                                    TestEntry("dev-1", 2)};
  ASSERT_THAT(store_->RecordApplied(flush), IsOk());
  metrics::Registry registry;
  auto compactor = LedgerCompactor::Start(store_.get(), &clock_,
                                          {.retention = absl::Hours(168),
                                           .interval = absl::Hours(1),
                                           .metrics = &registry});
  ASSERT_THAT(compactor, IsOk());
  ASSERT_TRUE(WaitFor([&] { return (*compactor)->runs() >= 1; }));
  EXPECT_EQ(Rows(), 2) << "younger than the retention";
  EXPECT_THAT(registry.Render(), HasSubstr("fleetd_ledger_rows 2\n"));
  ASSERT_TRUE(clock_.AwaitSleepers(1, absl::Seconds(30)));
  clock_.Advance(absl::Hours(169));
  ASSERT_TRUE(WaitFor([&] { return (*compactor)->runs() >= 2; }));
  EXPECT_EQ(Rows(), 0);
  std::string rendered = registry.Render();
  EXPECT_THAT(rendered, HasSubstr("fleetd_ledger_rows 0\n"));
  EXPECT_THAT(rendered, HasSubstr("fleetd_ledger_floor_keys 1\n"));
  EXPECT_THAT(rendered, HasSubstr("fleetd_ledger_compacted_rows_total 2\n"));
  // Forgotten, not assumed applied: a retry that old is written again.
  EXPECT_THAT(AppliedIn(*store_, "dev-1", 2), IsOkAndHolds(false));
  EXPECT_THAT(AppliedIn(*store_, "dev-1", 3), IsOkAndHolds(false));
}

TEST_F(LedgerPgTest, RestartedServerSeesWhatWasApplied) {
  auto first = *CachedLedger::Create(store_.get(), {});
  ASSERT_THAT(AppliedIn(*first, "dev-1", 10), IsOkAndHolds(false));
  std::vector<LedgerEntry> flush = {TestEntry("dev-1", 10),
                                    TestEntry("dev-2", 10)};
  ASSERT_THAT(first->RecordApplied(flush), IsOk());
  first.reset();
  // A new process: new pool, store and cache over the same database.
  auto pool = PgPool::Connect({.dsn = dsn_, .size = 2});
  ASSERT_THAT(pool, IsOk());
  PgStore store(pool->get(), &clock_);
  auto second = *CachedLedger::Create(&store, {});
  EXPECT_THAT(AppliedIn(*second, "dev-1", 10), IsOkAndHolds(true));
  EXPECT_THAT(AppliedIn(*second, "dev-2", 10), IsOkAndHolds(true));
  EXPECT_THAT(AppliedIn(*second, "dev-1", 20), IsOkAndHolds(false));
}

TEST_F(LedgerPgTest, RecentKeysAreTheKeysAppliedWithinTheWindowNewestFirst) {
  // dev-old at the clock's start, dev-a then dev-b two hours later (dev-a
  // on two streams; dev-b twice).
  std::vector<LedgerEntry> old_flush = {TestEntry("dev-old", 1)};
  ASSERT_THAT(store_->RecordApplied(old_flush), IsOk());
  clock_.Advance(absl::Hours(2));
  std::vector<LedgerEntry> a = {TestEntry("dev-a", 1),
                                TestEntry("dev-a", 1, "logs")};
  ASSERT_THAT(store_->RecordApplied(a), IsOk());
  clock_.Advance(absl::Seconds(5));
  std::vector<LedgerEntry> b = {TestEntry("dev-b", 1), TestEntry("dev-b", 2)};
  ASSERT_THAT(store_->RecordApplied(b), IsOk());
  auto keys = store_->RecentKeys(absl::Hours(1), 10);
  ASSERT_THAT(keys, IsOk());
  std::vector<std::string> got;
  for (const LedgerKey& k : *keys) got.push_back(k.device_id + "/" + k.stream);
  ASSERT_EQ(got.size(), 3u);
  EXPECT_EQ(got[0], "dev-b/metrics");
  EXPECT_THAT(got, ::testing::UnorderedElementsAre(
                       "dev-b/metrics", "dev-a/metrics", "dev-a/logs"));
  auto one = store_->RecentKeys(absl::Hours(1), 1);
  ASSERT_THAT(one, IsOk());
  ASSERT_EQ(one->size(), 1u);
  EXPECT_EQ((*one)[0].device_id, "dev-b");
  auto all = store_->RecentKeys(absl::Hours(3), 10);
  ASSERT_THAT(all, IsOk());
  EXPECT_EQ(all->size(), 4u);

  // A restarted server's cache warmed from them answers without PostgreSQL.
  auto cache = *CachedLedger::Create(store_.get(), {});
  EXPECT_THAT(cache->Warm(absl::Hours(1)), IsOkAndHolds(3));
  EXPECT_THAT(AppliedIn(*cache, "dev-b", 2), IsOkAndHolds(true));
  EXPECT_THAT(AppliedIn(*cache, "dev-b", 3), IsOkAndHolds(false));
  EXPECT_EQ(cache->stats().key_misses, 0);
  EXPECT_EQ(cache->stats().hits, 2);
}

TEST_F(LedgerPgTest, TwoServersShareOnePostgres) {
  auto pool_b = PgPool::Connect({.dsn = dsn_, .size = 2});
  ASSERT_THAT(pool_b, IsOk());
  PgStore store_b(pool_b->get(), &clock_);
  auto a = *CachedLedger::Create(store_.get(), {});
  auto b = *CachedLedger::Create(&store_b, {});
  // A applies a batch of a key B has never seen: B's first sight loads it.
  ASSERT_THAT(AppliedIn(*a, "dev-1", 10), IsOkAndHolds(false));
  std::vector<LedgerEntry> flush = {TestEntry("dev-1", 10)};
  ASSERT_THAT(a->RecordApplied(flush), IsOk());
  EXPECT_THAT(AppliedIn(*b, "dev-1", 10), IsOkAndHolds(true));
  // B now holds the key; a later batch A applies is not seen by B's memory
  // (documented): were the device to retry it at B, B writes it again and
  // the ledger counts the conflict.
  std::vector<LedgerEntry> next = {TestEntry("dev-1", 20)};
  ASSERT_THAT(a->RecordApplied(next), IsOk());
  EXPECT_THAT(AppliedIn(*b, "dev-1", 20), IsOkAndHolds(false));
  ASSERT_THAT(b->RecordApplied(next), IsOk());
  EXPECT_EQ(b->stats().conflicts, 1);
  EXPECT_EQ(a->stats().conflicts, 0);
  EXPECT_EQ(Rows(), 2);
}

TEST_F(LedgerPgTest, ShortRetentionRunKeepsRecentAnswersAndForgetsOld) {
  LedgerWorkload w;
  w.devices = 200;
  w.batches_per_device = 100;
  w.flush_entries = 250;
  auto run = RunLedgerWorkload(store_.get(), &clock_, w);
  ASSERT_THAT(run, IsOk());
  EXPECT_EQ(run->batches, 20'000);
  EXPECT_EQ(run->compactions, 240);
  EXPECT_EQ(run->size.rows + run->rows_deleted, 20'000);
  // The last 7 of 10 days stay as rows (a flush spans 3 hours).
  EXPECT_GT(run->size.rows, 13'000);
  EXPECT_LT(run->size.rows, 14'600);
  EXPECT_EQ(run->size.floor_keys, 200);
  // Within the retention (the last 7 of 10 days): applied. Older batches are
  // forgotten (a retry that old is written again), and a batch never sent
  // is not applied.
  std::vector<LedgerEntry> applied, not_applied;
  for (int d = 0; d < w.devices; ++d) {
    for (int j : {50, 99}) {
      applied.push_back({LedgerWorkload::DeviceId(d), LedgerWorkload::kStream,
                         LedgerWorkload::Sequence(d, j), 100});
    }
    for (int j : {0, 20, 100}) {
      not_applied.push_back({LedgerWorkload::DeviceId(d),
                             LedgerWorkload::kStream,
                             LedgerWorkload::Sequence(d, j), 100});
    }
  }
  auto cache = *CachedLedger::Create(store_.get(), {});
  auto yes = cache->AreApplied(applied);
  ASSERT_THAT(yes, IsOk());
  EXPECT_THAT(*yes, Each(true));
  auto no = cache->AreApplied(not_applied);
  ASSERT_THAT(no, IsOk());
  EXPECT_THAT(*no, Each(false));
}

// A server of its own, to stop.
TEST(LedgerPgDownTest, CacheHitsAnswerWhilePostgresIsStopped) {
  auto pg = PostgresFixture::Start();
  ASSERT_THAT(pg, IsOk());
  auto pool = PgPool::Connect({.dsn = (*pg)->dsn(), .size = 2});
  ASSERT_THAT(pool, IsOk());
  PgStore store(pool->get());
  ASSERT_THAT(store.Migrate(), IsOk());
  auto cache = *CachedLedger::Create(&store, {});
  ASSERT_THAT(AppliedIn(*cache, "dev-1", 10), IsOkAndHolds(false));
  std::vector<LedgerEntry> flush = {TestEntry("dev-1", 10)};
  ASSERT_THAT(cache->RecordApplied(flush), IsOk());

  // The fixture commits asynchronously (synchronous_commit=off): write out
  // what committed, so the crash below loses nothing.
  ASSERT_THAT((*pg)->Query("CHECKPOINT"), IsOk());
  (*pg)->Kill();
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 10), IsOkAndHolds(true));
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 20), IsOkAndHolds(false));
  EXPECT_THAT(AppliedIn(*cache, "dev-2", 10),
              StatusIs(absl::StatusCode::kUnavailable))
      << "a miss needs PostgreSQL";
  std::vector<LedgerEntry> next = {TestEntry("dev-1", 20)};
  EXPECT_THAT(cache->RecordApplied(next),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 20),
              StatusIs(absl::StatusCode::kUnavailable))
      << "a failed write may have committed: only PostgreSQL can answer";

  ASSERT_THAT((*pg)->Restart(), IsOk());
  EXPECT_THAT(AppliedIn(*cache, "dev-1", 20), IsOkAndHolds(false));
  EXPECT_THAT(AppliedIn(*cache, "dev-2", 10), IsOkAndHolds(false));
  EXPECT_EQ(cache->stats().hits, 2);
}

}  // namespace
}  // namespace fleetd::server
