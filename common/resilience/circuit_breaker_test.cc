#include "common/resilience/circuit_breaker.h"

#include "gtest/gtest.h"

namespace fleetd {
namespace {

using State = CircuitBreaker::State;

class CircuitBreakerTest : public ::testing::Test {
 protected:
  SimulatedClock clock_;
  CircuitBreaker breaker_{{.failure_threshold = 3,
                           .open_duration = absl::Seconds(30),
                           .success_threshold = 2},
                          &clock_};

  void Fail(int n) {
    for (int i = 0; i < n; ++i) {
      ASSERT_TRUE(breaker_.Allow());
      breaker_.RecordFailure();
    }
  }
};

TEST_F(CircuitBreakerTest, OpensAfterThresholdConsecutiveFailures) {
  Fail(2);
  EXPECT_EQ(breaker_.state(), State::kClosed);
  breaker_.RecordSuccess();  // resets the streak
  Fail(2);
  EXPECT_EQ(breaker_.state(), State::kClosed);
  Fail(1);
  EXPECT_EQ(breaker_.state(), State::kOpen);
  EXPECT_FALSE(breaker_.Allow());
  EXPECT_EQ(breaker_.RetryAfter(), absl::Seconds(30));
  EXPECT_EQ(breaker_.times_opened(), 1);
}

TEST_F(CircuitBreakerTest, HalfOpenAdmitsOneProbeAfterCoolDown) {
  Fail(3);
  clock_.Advance(absl::Seconds(29));
  EXPECT_FALSE(breaker_.Allow());
  EXPECT_EQ(breaker_.RetryAfter(), absl::Seconds(1));
  clock_.Advance(absl::Seconds(1));
  EXPECT_TRUE(breaker_.Allow());
  EXPECT_EQ(breaker_.state(), State::kHalfOpen);
  EXPECT_FALSE(breaker_.Allow()) << "a second concurrent probe must wait";
  breaker_.RecordSuccess();
  EXPECT_EQ(breaker_.state(), State::kHalfOpen)
      << "needs two successful probes";
  EXPECT_TRUE(breaker_.Allow());
  breaker_.RecordSuccess();
  EXPECT_EQ(breaker_.state(), State::kClosed);
  EXPECT_TRUE(breaker_.Allow());
  EXPECT_EQ(breaker_.consecutive_failures(), 0);
}

TEST_F(CircuitBreakerTest, FailedProbeReopensForAnotherFullCoolDown) {
  Fail(3);
  clock_.Advance(absl::Seconds(30));
  ASSERT_TRUE(breaker_.Allow());
  breaker_.RecordFailure();
  EXPECT_EQ(breaker_.state(), State::kOpen);
  EXPECT_EQ(breaker_.times_opened(), 2);
  clock_.Advance(absl::Seconds(29));
  EXPECT_FALSE(breaker_.Allow());
  clock_.Advance(absl::Seconds(1));
  EXPECT_TRUE(breaker_.Allow());
}

TEST_F(CircuitBreakerTest, StateNames) {
  EXPECT_EQ(CircuitStateName(State::kClosed), "closed");
  EXPECT_EQ(CircuitStateName(State::kOpen), "open");
  EXPECT_EQ(CircuitStateName(State::kHalfOpen), "half_open");
}

}  // namespace
}  // namespace fleetd
