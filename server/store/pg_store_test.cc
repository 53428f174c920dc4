#include "server/store/pg_store.h"

#include <map>
#include <set>
#include <string>
#include <vector>

#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "pqxx/pqxx"
#include "server/auth/api_key.h"
#include "tests/fixtures/postgres_fixture.h"

namespace fleetd::server {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::IsOkAndHolds;
using ::fleetd::testing::StatusIs;

class PgStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto pg = fleetd::testing::PostgresFixture::Shared();
    ASSERT_THAT(pg, IsOk());
    // A fresh database per test keeps tests independent.
    static int counter = 0;
    auto dsn = (*pg)->CreateDatabase("store_" + std::to_string(++counter));
    ASSERT_THAT(dsn, IsOk());
    auto pool = PgPool::Connect({.dsn = *dsn, .size = 3});
    ASSERT_THAT(pool, IsOk());
    pool_ = *std::move(pool);
    store_ = std::make_unique<PgStore>(pool_.get());
    ASSERT_THAT(store_->Migrate(), IsOk());
  }

  std::unique_ptr<PgPool> pool_;
  std::unique_ptr<PgStore> store_;
};

TEST_F(PgStoreTest, MigrationIsIdempotentAndVersioned) {
  EXPECT_THAT(store_->SchemaVersion(), IsOkAndHolds(4));
  EXPECT_THAT(store_->Migrate(), IsOk());
  EXPECT_THAT(store_->SchemaVersion(), IsOkAndHolds(4));
}

TEST_F(PgStoreTest, ReportedSyncHealthIsStoredAndNewerReportsWin) {
  ASSERT_THAT(store_->CreateKey("dev-h", "org-1"), IsOk());
  auto none = store_->GetSyncHealth("dev-h");
  ASSERT_THAT(none, IsOk());
  EXPECT_FALSE(none->has_value());
  absl::Time t0 = absl::FromUnixSeconds(1'700'000'000);
  SyncHealthReport report{"dev-h", {2, 30, 4}, t0};
  SyncHealthReport unknown{"nobody", {1, 1, 1}, t0};
  ASSERT_THAT(store_->RecordSyncHealth({report, unknown}), IsOk());
  auto got = store_->GetSyncHealth("dev-h");
  ASSERT_THAT(got, IsOk());
  ASSERT_TRUE(got->has_value());
  EXPECT_EQ((*got)->health, (SyncHealth{2, 30, 4}));
  EXPECT_EQ((*got)->reported_at, t0);
  // An older report (delayed) does not overwrite a newer one.
  SyncHealthReport older{"dev-h", {9, 9, 9}, t0 - absl::Seconds(5)};
  ASSERT_THAT(store_->RecordSyncHealth({&older, 1}), IsOk());
  EXPECT_EQ((*store_->GetSyncHealth("dev-h"))->health, (SyncHealth{2, 30, 4}));
  // Device info carries the counts too.
  v1::DeviceInfo info;
  info.set_hostname("h");
  info.set_set_aside_batches(1);
  info.set_set_aside_records(7);
  ASSERT_THAT(store_->UpdateDeviceInfo({"dev-h", "org-1", ""}, info, nullptr,
                                       t0 + absl::Seconds(1)),
              IsOk());
  EXPECT_EQ((*store_->GetSyncHealth("dev-h"))->health, (SyncHealth{1, 7, 0}));
}

TEST_F(PgStoreTest, CreatedKeyAuthenticatesAndIsStoredOnlyHashed) {
  auto key = store_->CreateKey("dev-1", "org-1");
  ASSERT_THAT(key, IsOk());
  EXPECT_TRUE(LooksLikeApiKey(key->api_key));
  auto found = store_->LookupKeyHash(HashApiKey(key->api_key));
  ASSERT_THAT(found, IsOk());
  ASSERT_TRUE(found->has_value());
  EXPECT_EQ((*found)->device_id, "dev-1");
  EXPECT_EQ((*found)->org_id, "org-1");
  EXPECT_EQ((*found)->key_id, key->key_id);
  // The secret never reaches the database.
  auto pg = fleetd::testing::PostgresFixture::Shared();
  ASSERT_THAT(pg, IsOk());
  bool leaked = false;
  absl::Status s = pool_->Run([&](pqxx::connection& c) {
    pqxx::read_transaction r(c);
    leaked = !r.exec_params(
                   "SELECT 1 FROM api_keys WHERE key_hash = $1 OR key_id = $1",
                   key->api_key)
                  .empty();
  });
  ASSERT_THAT(s, IsOk());
  EXPECT_FALSE(leaked);
}

TEST_F(PgStoreTest, RotationKeepsOldKeysValidUntilRevoked) {
  auto first = store_->CreateKey("dev-1", "org-1");
  ASSERT_THAT(first, IsOk());
  auto second = store_->RotateKey("dev-1");
  ASSERT_THAT(second, IsOk());
  EXPECT_NE(first->api_key, second->api_key);
  EXPECT_EQ(second->org_id, "org-1");
  for (const NewKey* k : {&*first, &*second}) {
    auto f = store_->LookupKeyHash(HashApiKey(k->api_key));
    ASSERT_THAT(f, IsOk());
    EXPECT_TRUE(f->has_value());
  }
  ASSERT_THAT(store_->RevokeKey(first->key_id), IsOk());
  auto gone = store_->LookupKeyHash(HashApiKey(first->api_key));
  ASSERT_THAT(gone, IsOk());
  EXPECT_FALSE(gone->has_value());
  auto kept = store_->LookupKeyHash(HashApiKey(second->api_key));
  ASSERT_THAT(kept, IsOk());
  EXPECT_TRUE(kept->has_value());
  EXPECT_THAT(store_->RevokeKey(first->key_id),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(store_->RevokeDeviceKeys("dev-1"), IsOkAndHolds(1));
  auto listed = store_->ListKeys("dev-1");
  ASSERT_THAT(listed, IsOk());
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_TRUE((*listed)[0].revoked_at.has_value());
  EXPECT_TRUE((*listed)[1].revoked_at.has_value());
  EXPECT_THAT(store_->RotateKey("nobody"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST_F(PgStoreTest, RevocationsAreListedByTimeAndValidKeysNewestFirst) {
  std::vector<NewKey> keys;
  for (const char* device : {"dev-1", "dev-2", "dev-3"}) {
    auto k = store_->CreateKey(device, "org-1");
    ASSERT_THAT(k, IsOk());
    keys.push_back(*k);
  }
  auto before = store_->RevokedSince(absl::InfiniteFuture());
  ASSERT_THAT(before, IsOk());
  EXPECT_TRUE(before->hashes.empty());
  EXPECT_GT(before->now, absl::FromUnixSeconds(1'700'000'000));

  auto all = store_->ValidKeys(10);
  ASSERT_THAT(all, IsOk());
  ASSERT_EQ(all->keys.size(), 3u);
  auto two = store_->ValidKeys(2);
  ASSERT_THAT(two, IsOk());
  ASSERT_EQ(two->keys.size(), 2u);
  EXPECT_EQ(two->keys[0].first, HashApiKey(keys[2].api_key));
  EXPECT_EQ(two->keys[0].second.device_id, "dev-3");
  EXPECT_EQ(two->keys[0].second.org_id, "org-1");
  EXPECT_EQ(two->keys[0].second.key_id, keys[2].key_id);

  ASSERT_THAT(store_->RevokeKey(keys[1].key_id), IsOk());
  auto revoked = store_->RevokedSince(before->now - absl::Minutes(1));
  ASSERT_THAT(revoked, IsOk());
  EXPECT_THAT(revoked->hashes,
              ::testing::ElementsAre(HashApiKey(keys[1].api_key)));
  EXPECT_GE(revoked->now, before->now);
  auto later = store_->RevokedSince(revoked->now + absl::Hours(1));
  ASSERT_THAT(later, IsOk());
  EXPECT_TRUE(later->hashes.empty());
  auto valid = store_->ValidKeys(10);
  ASSERT_THAT(valid, IsOk());
  ASSERT_EQ(valid->keys.size(), 2u);
  for (const auto& [hash, identity] : valid->keys) {
    EXPECT_NE(identity.device_id, "dev-2");
  }
}

TEST_F(PgStoreTest, DeviceCannotMoveToAnotherOrg) {
  ASSERT_THAT(store_->CreateKey("dev-1", "org-1"), IsOk());
  EXPECT_THAT(store_->CreateKey("dev-1", "org-2"),
              StatusIs(absl::StatusCode::kFailedPrecondition));
}

TEST_F(PgStoreTest, BulkProvisioningCreatesDistinctDevicesAndKeys) {
  auto keys = store_->CreateKeys("load", "org-b", 500);
  ASSERT_THAT(keys, IsOk());
  ASSERT_EQ(keys->size(), 500u);
  EXPECT_EQ((*keys)[0].device_id, "load-00001");
  EXPECT_EQ((*keys)[499].device_id, "load-00500");
  std::set<std::string> distinct;
  for (const NewKey& k : *keys) distinct.insert(k.api_key);
  EXPECT_EQ(distinct.size(), 500u);
  auto f = store_->LookupKeyHash(HashApiKey((*keys)[250].api_key));
  ASSERT_THAT(f, IsOk());
  ASSERT_TRUE(f->has_value());
  EXPECT_EQ((*f)->device_id, "load-00251");
}

TEST_F(PgStoreTest, LedgerRecordsEachBatchOnce) {
  std::vector<LedgerEntry> entries = {{"dev-1", "metrics", 10, 5},
                                      {"dev-1", "logs", 10, 2},
                                      {"dev-2", "metrics", 10, 1}};
  auto before = store_->AreApplied(entries);
  ASSERT_THAT(before, IsOk());
  EXPECT_THAT(*before, ::testing::ElementsAre(false, false, false));
  ASSERT_THAT(store_->RecordApplied({&entries[0], 2}), IsOk());
  ASSERT_THAT(store_->RecordApplied({&entries[0], 1}), IsOk())
      << "re-recording is fine";
  auto after = store_->AreApplied(entries);
  ASSERT_THAT(after, IsOk());
  EXPECT_THAT(*after, ::testing::ElementsAre(true, true, false));
}

TEST_F(PgStoreTest, DeviceInfoAndLastSeenAreStored) {
  ASSERT_THAT(store_->CreateKey("dev-1", "org-1"), IsOk());
  v1::DeviceInfo info;
  info.set_hostname("pi-kitchen");
  info.set_agent_version("0.1.0");
  v1::SyncDeviceCapability cap;
  cap.set_tier(2);
  absl::Time t = absl::FromUnixSeconds(1'760'000'000);
  ASSERT_THAT(store_->UpdateDeviceInfo({"dev-1", "org-1", "k"}, info, &cap, t),
              IsOk());
  std::vector<std::string> ids = {"dev-1"};
  ASSERT_THAT(store_->TouchDevices(ids, t - absl::Hours(1)), IsOk())
      << "older: ignored";
  std::string hostname;
  int tier = 0;
  int64_t last_seen = 0;
  ASSERT_THAT(pool_->Run([&](pqxx::connection& c) {
    pqxx::read_transaction r(c);
    auto row = r.exec1(
        "SELECT hostname, tier, extract(epoch from last_seen)::bigint FROM "
        "devices "
        "WHERE device_id = 'dev-1'");
    hostname = row[0].as<std::string>();
    tier = row[1].as<int>();
    last_seen = row[2].as<int64_t>();
  }),
              IsOk());
  EXPECT_EQ(hostname, "pi-kitchen");
  EXPECT_EQ(tier, 2);
  EXPECT_EQ(last_seen, 1'760'000'000);
}

// One statement touches every device of the flush: each known device gets
// the newer time, an unknown id changes nothing, and an older time never moves
// last_seen back.
TEST_F(PgStoreTest, TouchDevicesUpdatesEveryListedDevice) {
  std::vector<std::string> ids = {"dev-b", "dev-a", "dev-\"q\"", "dev-c"};
  for (const std::string& id : ids) {
    ASSERT_THAT(store_->CreateKey(id, "org-1"), IsOk());
  }
  const absl::Time t = absl::FromUnixSeconds(1'760'000'000);
  ASSERT_THAT(store_->TouchDevices({"dev-c"}, t + absl::Hours(2)), IsOk());
  std::vector<std::string> touched = ids;
  touched.push_back("dev-unknown");
  ASSERT_THAT(store_->TouchDevices(touched, t), IsOk());
  std::map<std::string, int64_t> last_seen;
  ASSERT_THAT(pool_->Run([&](pqxx::connection& c) {
    last_seen.clear();
    pqxx::read_transaction r(c);
    for (const auto& row :
         r.exec("SELECT device_id, extract(epoch from last_seen)::bigint "
                "FROM devices")) {
      last_seen[row[0].as<std::string>()] = row[1].as<int64_t>();
    }
  }),
              IsOk());
  EXPECT_THAT(last_seen, ::testing::UnorderedElementsAre(
                             ::testing::Pair("dev-a", 1'760'000'000),
                             ::testing::Pair("dev-b", 1'760'000'000),
                             ::testing::Pair("dev-\"q\"", 1'760'000'000),
                             ::testing::Pair("dev-c", 1'760'000'000 + 7200)));
}

TEST(PgPoolTest, UnreachableServerIsUnavailable) {
  auto pool =
      PgPool::Connect({.dsn = "host=127.0.0.1 port=1 connect_timeout=2"});
  EXPECT_THAT(pool, StatusIs(absl::StatusCode::kUnavailable));
}

}  // namespace
}  // namespace fleetd::server
