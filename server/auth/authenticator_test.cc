#include "server/auth/authenticator.h"

#include <map>
#include <string>
#include <vector>

#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/auth/api_key.h"

namespace fleetd::server {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;

class FakeKeyLookup : public KeyLookup {
 public:
  absl::StatusOr<std::optional<DeviceIdentity>> LookupKeyHash(
      const std::string& hash) override {
    ++calls;
    if (!fail.ok()) return fail;
    auto it = keys.find(hash);
    if (it == keys.end()) return std::optional<DeviceIdentity>();
    return std::optional<DeviceIdentity>(it->second);
  }
  absl::StatusOr<Revocations> RevokedSince(absl::Time since) override {
    ++revocation_checks;
    if (!revocations_supported) return KeyLookup::RevokedSince(since);
    if (!fail.ok()) return fail;
    Revocations out;
    out.now = store_now;
    for (const auto& [hash, at] : revoked) {
      if (at >= since) out.hashes.push_back(hash);
    }
    return out;
  }
  absl::StatusOr<ValidKeySet> ValidKeys(size_t limit) override {
    ++listings;
    if (!fail.ok()) return fail;
    ValidKeySet out;
    out.now = store_now;
    for (const auto& [hash, identity] : keys) {
      if (out.keys.size() == limit) break;
      out.keys.emplace_back(hash, identity);
    }
    return out;
  }
  // Revokes in the store: the key is gone and listed as revoked at
  // `store_now`.
  void Revoke(const std::string& hash) {
    keys.erase(hash);
    revoked[hash] = store_now;
  }
  std::map<std::string, DeviceIdentity> keys;
  std::map<std::string, absl::Time> revoked;
  absl::Time store_now = absl::FromUnixSeconds(1'800'000'000);
  bool revocations_supported = true;
  absl::Status fail;
  int calls = 0;
  int revocation_checks = 0;
  int listings = 0;
};

class AuthenticatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto k = GenerateApiKey();
    ASSERT_THAT(k, IsOk());
    key_ = k->api_key;
    lookup_.keys[HashApiKey(key_)] = {"dev-1", "org-1", k->key_id};
  }
  // A new key of `device`, valid in the store.
  std::string AddKey(const std::string& device) {
    auto k = GenerateApiKey();
    EXPECT_THAT(k, IsOk());
    lookup_.keys[HashApiKey(k->api_key)] = {device, "o", k->key_id};
    return k->api_key;
  }

  FakeKeyLookup lookup_;
  SimulatedClock clock_;
  CachingAuthenticator auth_{
      &lookup_,
      &clock_,
      {.ttl = absl::Seconds(10), .negative_ttl = absl::Seconds(2)}};
  std::string key_;
};

TEST(ApiKeyTest, GeneratedKeysHaveTheFormatAndDiffer) {
  auto a = GenerateApiKey();
  auto b = GenerateApiKey();
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_TRUE(LooksLikeApiKey(a->api_key)) << a->api_key;
  EXPECT_NE(a->api_key, b->api_key);
  EXPECT_NE(HashApiKey(a->api_key), HashApiKey(b->api_key));
  EXPECT_EQ(HashApiKey(a->api_key).size(), 64u);
  EXPECT_FALSE(LooksLikeApiKey("fdk_short"));
  EXPECT_FALSE(LooksLikeApiKey(a->api_key + "x"));
  std::string upper = a->api_key;
  upper[5] = 'G';
  EXPECT_FALSE(LooksLikeApiKey(upper));
}

TEST_F(AuthenticatorTest, ValidKeyYieldsItsDeviceAndIsCached) {
  auto id = auth_.Authenticate(key_);
  ASSERT_THAT(id, IsOk());
  EXPECT_EQ(id->device_id, "dev-1");
  EXPECT_EQ(id->org_id, "org-1");
  ASSERT_THAT(auth_.Authenticate(key_), IsOk());
  EXPECT_EQ(lookup_.calls, 1);
  EXPECT_EQ(auth_.hits(), 1);
}

TEST_F(AuthenticatorTest, MissingMalformedAndUnknownKeysAreUnauthenticated) {
  EXPECT_THAT(auth_.Authenticate(""),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(auth_.Authenticate("' OR 1=1 --"),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_EQ(lookup_.calls, 0) << "malformed keys never reach the store";
  auto other = GenerateApiKey();
  ASSERT_THAT(other, IsOk());
  EXPECT_THAT(auth_.Authenticate(other->api_key),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(auth_.Authenticate(other->api_key),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_EQ(lookup_.calls, 1) << "unknown keys are cached briefly";
}

TEST_F(AuthenticatorTest, RevocationTakesEffectWithinTtlWhenNotListed) {
  lookup_.revocations_supported = false;
  ASSERT_THAT(auth_.Authenticate(key_), IsOk());
  lookup_.keys.clear();  // revoked in the store, which cannot list it
  clock_.Advance(absl::Seconds(9));
  EXPECT_THAT(auth_.Authenticate(key_), IsOk()) << "still cached";
  clock_.Advance(absl::Seconds(1));
  EXPECT_THAT(auth_.Authenticate(key_),
              StatusIs(absl::StatusCode::kUnauthenticated));
}

// A device that syncs less often than the ttl costs no lookup per call: the
// store is asked what was revoked every ttl/2 instead.
TEST_F(AuthenticatorTest, CheckedKeysStayCachedWhileRevocationChecksSucceed) {
  for (int i = 0; i < 12; ++i) {
    ASSERT_THAT(auth_.Authenticate(key_), IsOk()) << i;
    clock_.Advance(absl::Seconds(30));
    lookup_.store_now += absl::Seconds(30);
  }
  EXPECT_EQ(lookup_.calls, 1);
  EXPECT_EQ(lookup_.revocation_checks, 12);
}

TEST_F(AuthenticatorTest, RevocationListedByTheStoreTakesEffectWithinTtl) {
  ASSERT_THAT(auth_.Authenticate(key_), IsOk());
  clock_.Advance(absl::Seconds(6));  // a check is due: the key is confirmed
  ASSERT_THAT(auth_.Authenticate(key_), IsOk());
  lookup_.store_now += absl::Seconds(6);
  // Revoked, with a time stamp before the store's last answer (the revoking
  // transaction committed late): the margin still finds it.
  lookup_.store_now -= absl::Seconds(1);
  lookup_.Revoke(HashApiKey(key_));
  lookup_.store_now += absl::Seconds(2);
  clock_.Advance(absl::Seconds(4));  // not yet due
  EXPECT_THAT(auth_.Authenticate(key_), IsOk()) << "trusted until the check";
  clock_.Advance(absl::Seconds(1));  // due: the check drops the key
  EXPECT_THAT(auth_.Authenticate(key_),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_EQ(lookup_.calls, 2);
}

TEST_F(AuthenticatorTest, FailingRevocationChecksLeaveStalenessBoundedByTtl) {
  ASSERT_THAT(auth_.Authenticate(key_), IsOk());
  clock_.Advance(absl::Seconds(6));
  ASSERT_THAT(auth_.Authenticate(key_), IsOk());  // checked at 6 s
  lookup_.fail = absl::UnavailableError("db down");
  clock_.Advance(absl::Seconds(9));  // 15 s: within ttl of the last check
  EXPECT_THAT(auth_.Authenticate(key_), IsOk());
  clock_.Advance(absl::Seconds(1));  // 16 s: ttl since the last confirmation
  EXPECT_THAT(auth_.Authenticate(key_),
              StatusIs(absl::StatusCode::kUnavailable));
  lookup_.fail = absl::OkStatus();
  lookup_.Revoke(HashApiKey(key_));
  EXPECT_THAT(auth_.Authenticate(key_),
              StatusIs(absl::StatusCode::kUnauthenticated));
}

TEST_F(AuthenticatorTest, KeyLookedUpWhileACheckRunsIsNotConfirmedByIt) {
  // The lookup starts, the key is revoked, a check is applied (the key is
  // not cached yet, so nothing is dropped), then the lookup's answer lands.
  // That check must not extend the key's trust.
  class RacingLookup : public FakeKeyLookup {
   public:
    CachingAuthenticator* auth = nullptr;
    SimulatedClock* clock = nullptr;
    std::string other_key;
    absl::StatusOr<std::optional<DeviceIdentity>> LookupKeyHash(
        const std::string& hash) override {
      auto found = FakeKeyLookup::LookupKeyHash(hash);
      if (auth != nullptr) {
        CachingAuthenticator* a = auth;
        auth = nullptr;
        Revoke(hash);
        clock->Advance(absl::Seconds(6));
        // Another call runs the due check meanwhile.
        EXPECT_THAT(a->Authenticate(other_key),
                    StatusIs(absl::StatusCode::kUnauthenticated));
      }
      return found;
    }
  };
  RacingLookup lookup;
  lookup.keys = lookup_.keys;
  CachingAuthenticator auth(&lookup, &clock_, {.ttl = absl::Seconds(10)});
  lookup.auth = &auth;
  lookup.clock = &clock_;
  lookup.other_key = GenerateApiKey()->api_key;
  ASSERT_THAT(auth.Authenticate(key_), IsOk());  // the store said valid
  EXPECT_GE(lookup.revocation_checks, 2);
  clock_.Advance(absl::Seconds(4));  // 10 s after the lookup started
  EXPECT_THAT(auth.Authenticate(key_),
              StatusIs(absl::StatusCode::kUnauthenticated));
}

TEST_F(AuthenticatorTest, StoreThatCannotListRevocationsIsAskedPerKeyPerTtl) {
  lookup_.revocations_supported = false;
  ASSERT_THAT(auth_.Authenticate(key_), IsOk());
  clock_.Advance(absl::Seconds(9));
  ASSERT_THAT(auth_.Authenticate(key_), IsOk());
  EXPECT_EQ(lookup_.calls, 1);
  clock_.Advance(absl::Seconds(1));
  ASSERT_THAT(auth_.Authenticate(key_), IsOk());
  EXPECT_EQ(lookup_.calls, 2);
  EXPECT_EQ(lookup_.revocation_checks, 1) << "asked once, then not again";
}

TEST_F(AuthenticatorTest, WarmedKeysNeedNoLookup) {
  std::vector<std::string> keys = {key_};
  for (int i = 0; i < 3; ++i) keys.push_back(AddKey("d" + std::to_string(i)));
  ASSERT_THAT(auth_.Warm(), IsOk());
  EXPECT_EQ(lookup_.listings, 1);
  for (const std::string& k : keys) EXPECT_THAT(auth_.Authenticate(k), IsOk());
  EXPECT_EQ(lookup_.calls, 0);
  // A key revoked after the listing is found by the next check.
  lookup_.store_now += absl::Seconds(1);
  lookup_.Revoke(HashApiKey(keys[1]));
  clock_.Advance(absl::Seconds(5));
  EXPECT_THAT(auth_.Authenticate(keys[1]),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(auth_.Authenticate(keys[2]), IsOk());
}

TEST_F(AuthenticatorTest, StoreOutageIsUnavailableNotUnauthenticated) {
  lookup_.fail = absl::UnavailableError("db down");
  EXPECT_THAT(auth_.Authenticate(key_),
              StatusIs(absl::StatusCode::kUnavailable));
  lookup_.fail = absl::OkStatus();
  EXPECT_THAT(auth_.Authenticate(key_), IsOk()) << "failures are not cached";
}

TEST_F(AuthenticatorTest, CacheIsBoundedByEntries) {
  CachingAuthenticator small(&lookup_, &clock_, {.max_entries = 2});
  std::vector<std::string> keys;
  for (int i = 0; i < 3; ++i) {
    keys.push_back(AddKey("d" + std::to_string(i)));
    ASSERT_THAT(small.Authenticate(keys.back()), IsOk());
  }
  int before = lookup_.calls;
  ASSERT_THAT(small.Authenticate(keys[0]), IsOk());  // evicted: looked up again
  EXPECT_EQ(lookup_.calls, before + 1);
  ASSERT_THAT(small.Authenticate(keys[2]), IsOk());  // still cached
  EXPECT_EQ(lookup_.calls, before + 1);
}

}  // namespace
}  // namespace fleetd::server
