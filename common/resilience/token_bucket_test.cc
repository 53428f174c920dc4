#include "common/resilience/token_bucket.h"

#include "gtest/gtest.h"

namespace fleetd {
namespace {

TEST(TokenBucketTest, StartsFullAndRefillsAtRate) {
  SimulatedClock clock;
  TokenBucket bucket(10, 5, &clock);  // 10 tokens/s, burst 5
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(bucket.TryConsume()) << i;
  EXPECT_FALSE(bucket.TryConsume());
  EXPECT_EQ(bucket.TimeUntilAvailable(1), absl::Milliseconds(100));
  clock.Advance(absl::Milliseconds(99));
  EXPECT_FALSE(bucket.TryConsume());
  clock.Advance(absl::Milliseconds(1));
  EXPECT_TRUE(bucket.TryConsume());
  EXPECT_FALSE(bucket.TryConsume());
}

TEST(TokenBucketTest, NeverHoldsMoreThanBurst) {
  SimulatedClock clock;
  TokenBucket bucket(100, 3, &clock);
  clock.Advance(absl::Hours(1));
  EXPECT_DOUBLE_EQ(bucket.Available(), 3);
  EXPECT_FALSE(bucket.TryConsume(4));
  EXPECT_EQ(bucket.TimeUntilAvailable(4), absl::InfiniteDuration());
  EXPECT_TRUE(bucket.TryConsume(3));
}

TEST(TokenBucketTest, LongRunRateMatchesConfiguredRate) {
  SimulatedClock clock;
  TokenBucket bucket(1000, 100, &clock);
  int granted = 0;
  for (int ms = 0; ms < 10000; ++ms) {  // ten simulated seconds
    while (bucket.TryConsume()) ++granted;
    clock.Advance(absl::Milliseconds(1));
  }
  // burst + rate * time, within rounding of one token.
  EXPECT_NEAR(granted, 100 + 1000 * 10, 1);
}

TEST(TokenBucketTest, BatchConsumeIsAllOrNothing) {
  SimulatedClock clock;
  TokenBucket bucket(1, 10, &clock);
  EXPECT_TRUE(bucket.TryConsume(7));
  EXPECT_FALSE(bucket.TryConsume(4));
  EXPECT_DOUBLE_EQ(bucket.Available(), 3);
  EXPECT_EQ(bucket.TimeUntilAvailable(4), absl::Seconds(1));
}

TEST(TokenBucketTest, SetRateKeepsEarnedTokensCappedAtNewBurst) {
  SimulatedClock clock;
  TokenBucket bucket(1, 10, &clock);
  bucket.SetRate(100, 4);
  EXPECT_DOUBLE_EQ(bucket.Available(), 4);
  EXPECT_TRUE(bucket.TryConsume(4));
  clock.Advance(absl::Milliseconds(20));
  EXPECT_NEAR(bucket.Available(), 2, 1e-9);
}

}  // namespace
}  // namespace fleetd
