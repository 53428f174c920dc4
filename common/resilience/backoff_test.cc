#include "common/resilience/backoff.h"

#include "common/testing/status_matchers.h"
#include "gtest/gtest.h"

namespace fleetd {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;

TEST(BackoffTest, DefaultsAreOneSecondDoublingToFiveMinutes) {
  BackoffOptions defaults;
  EXPECT_EQ(defaults.initial, absl::Seconds(1));
  EXPECT_EQ(defaults.multiplier, 2.0);
  EXPECT_EQ(defaults.max, absl::Minutes(5));
  ExponentialBackoff b(defaults, 1);
  EXPECT_EQ(b.BaseDelay(0), absl::Seconds(1));
  EXPECT_EQ(b.BaseDelay(1), absl::Seconds(2));
  EXPECT_EQ(b.BaseDelay(5), absl::Seconds(32));
  EXPECT_EQ(b.BaseDelay(8), absl::Seconds(256));
  EXPECT_EQ(b.BaseDelay(9), absl::Minutes(5));  // 512 s capped
  EXPECT_EQ(b.BaseDelay(10000), absl::Minutes(5));
}

TEST(BackoffTest, WithoutJitterDelaysAreExact) {
  ExponentialBackoff b({.initial = absl::Milliseconds(100),
                        .multiplier = 3.0,
                        .max = absl::Seconds(2),
                        .jitter = 0.0},
                       7);
  EXPECT_EQ(b.Next(), absl::Milliseconds(100));
  EXPECT_EQ(b.Next(), absl::Milliseconds(300));
  EXPECT_EQ(b.Next(), absl::Milliseconds(900));
  EXPECT_EQ(b.Next(), absl::Seconds(2));
  EXPECT_EQ(b.attempt(), 4);
  b.Reset();
  EXPECT_EQ(b.attempt(), 0);
  EXPECT_EQ(b.Next(), absl::Milliseconds(100));
}

TEST(BackoffTest, JitterStaysInBandVariesAndNeverExceedsCap) {
  BackoffOptions options;  // jitter 0.2
  ExponentialBackoff b(options, 42);
  bool varied = false;
  absl::Duration first_seen = absl::ZeroDuration();
  for (int round = 0; round < 200; ++round) {
    b.Reset();
    for (int i = 0; i < 12; ++i) {
      absl::Duration base = b.BaseDelay(i);
      absl::Duration d = b.Next();
      EXPECT_GE(d, base * 0.8) << "attempt " << i;
      EXPECT_LE(d, std::min(base * 1.2, options.max)) << "attempt " << i;
      if (i == 0) {
        if (round == 0) first_seen = d;
        if (d != first_seen) varied = true;
      }
    }
  }
  EXPECT_TRUE(varied) << "jitter never changed the first delay";
}

TEST(BackoffTest, SameSeedSameDelays) {
  ExponentialBackoff a(BackoffOptions{}, 99);
  ExponentialBackoff b(BackoffOptions{}, 99);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(a.Next(), b.Next());
}

TEST(BackoffTest, ValidatesOptions) {
  EXPECT_THAT(ValidateBackoffOptions({}), IsOk());
  EXPECT_THAT(ValidateBackoffOptions({.initial = absl::ZeroDuration()}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ValidateBackoffOptions({.multiplier = 0.5}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ValidateBackoffOptions(
                  {.initial = absl::Minutes(10), .max = absl::Minutes(1)}),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ValidateBackoffOptions({.jitter = 1.5}),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fleetd
