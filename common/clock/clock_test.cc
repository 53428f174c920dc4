#include "common/clock/clock.h"

#include <atomic>
#include <thread>

#include "gtest/gtest.h"

namespace fleetd {
namespace {

constexpr absl::Duration kRealTimeout = absl::Seconds(30);

TEST(SimulatedClockTest, MovesOnlyWhenAdvanced) {
  SimulatedClock clock(absl::FromUnixSeconds(100));
  absl::Time wall = clock.Now();
  absl::Time mono = clock.MonotonicNow();
  EXPECT_EQ(wall, absl::FromUnixSeconds(100));
  EXPECT_EQ(clock.Now(), wall);
  clock.Advance(absl::Milliseconds(1500));
  EXPECT_EQ(clock.Now() - wall, absl::Milliseconds(1500));
  EXPECT_EQ(clock.MonotonicNow() - mono, absl::Milliseconds(1500));
  clock.Advance(-absl::Seconds(5));  // ignored: time never goes back
  EXPECT_EQ(clock.MonotonicNow() - mono, absl::Milliseconds(1500));
}

TEST(SimulatedClockTest, SleeperWakesExactlyAtDeadline) {
  SimulatedClock clock;
  std::atomic<bool> done{false};
  std::thread sleeper([&] {
    EXPECT_FALSE(clock.SleepFor(absl::Seconds(10)));
    done = true;
  });
  ASSERT_TRUE(clock.AwaitSleepers(1, kRealTimeout));
  EXPECT_EQ(clock.NextDeadline() - clock.MonotonicNow(), absl::Seconds(10));
  clock.Advance(absl::Seconds(9));
  EXPECT_EQ(clock.Sleepers(), 1);
  EXPECT_FALSE(done.load());
  clock.Advance(absl::Seconds(1));
  sleeper.join();
  EXPECT_TRUE(done.load());
  EXPECT_EQ(clock.Sleepers(), 0);
}

TEST(SimulatedClockTest, WakeupEndsSleepEarly) {
  SimulatedClock clock;
  Wakeup wakeup;
  std::atomic<int> result{-1};
  std::thread sleeper(
      [&] { result = clock.SleepFor(absl::Hours(1), &wakeup) ? 1 : 0; });
  ASSERT_TRUE(clock.AwaitSleepers(1, kRealTimeout));
  wakeup.Notify();
  sleeper.join();
  EXPECT_EQ(result.load(), 1);
  EXPECT_TRUE(wakeup.Reset());
  EXPECT_FALSE(wakeup.Notified());
}

TEST(SimulatedClockTest, PastDeadlineReturnsAtOnce) {
  SimulatedClock clock;
  EXPECT_FALSE(clock.SleepUntil(clock.MonotonicNow(), nullptr));
  Wakeup wakeup;
  wakeup.Notify();
  EXPECT_TRUE(
      clock.SleepUntil(clock.MonotonicNow() - absl::Seconds(1), &wakeup));
}

TEST(SimulatedClockTest, ManySleepersWakeInDeadlineOrder) {
  SimulatedClock clock;
  std::atomic<int> woke{0};
  std::vector<std::thread> threads;
  for (int i = 1; i <= 4; ++i) {
    threads.emplace_back([&clock, &woke, i] {
      clock.SleepFor(absl::Seconds(i));
      ++woke;
    });
  }
  ASSERT_TRUE(clock.AwaitSleepers(4, kRealTimeout));
  clock.Advance(absl::Seconds(2));
  // The two sleepers that are due must finish; the other two must still sleep.
  threads[0].join();
  threads[1].join();
  EXPECT_EQ(woke.load(), 2);
  EXPECT_EQ(clock.Sleepers(), 2);
  clock.Advance(absl::Seconds(2));
  threads[2].join();
  threads[3].join();
  EXPECT_EQ(woke.load(), 4);
}

TEST(RealClockTest, MonotonicTimeDoesNotGoBackAndSleepHonoursWakeup) {
  Clock* clock = Clock::Real();
  absl::Time a = clock->MonotonicNow();
  absl::Time b = clock->MonotonicNow();
  EXPECT_LE(a, b);
  EXPECT_LT(absl::AbsDuration(clock->Now() - absl::Now()), absl::Seconds(5));
  Wakeup wakeup;
  wakeup.Notify();
  // Already notified: returns at once even with a distant deadline.
  EXPECT_TRUE(clock->SleepFor(absl::Hours(1), &wakeup));
  EXPECT_FALSE(clock->SleepFor(absl::ZeroDuration()));
}

}  // namespace
}  // namespace fleetd
