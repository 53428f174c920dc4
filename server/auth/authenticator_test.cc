#include "server/auth/authenticator.h"

#include <map>

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
  std::map<std::string, DeviceIdentity> keys;
  absl::Status fail;
  int calls = 0;
};

class AuthenticatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto k = GenerateApiKey();
    ASSERT_THAT(k, IsOk());
    key_ = k->api_key;
    lookup_.keys[HashApiKey(key_)] = {"dev-1", "org-1", k->key_id};
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

TEST_F(AuthenticatorTest, RevocationTakesEffectWithinTtl) {
  ASSERT_THAT(auth_.Authenticate(key_), IsOk());
  lookup_.keys.clear();  // revoked in the store
  clock_.Advance(absl::Seconds(9));
  EXPECT_THAT(auth_.Authenticate(key_), IsOk()) << "still cached";
  clock_.Advance(absl::Seconds(1));
  EXPECT_THAT(auth_.Authenticate(key_),
              StatusIs(absl::StatusCode::kUnauthenticated));
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
    auto k = GenerateApiKey();
    ASSERT_THAT(k, IsOk());
    lookup_.keys[HashApiKey(k->api_key)] = {"d" + std::to_string(i), "o",
                                            k->key_id};
    keys.push_back(k->api_key);
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
