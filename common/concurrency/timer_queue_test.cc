#include "common/concurrency/timer_queue.h"

#include <atomic>
#include <memory>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/clock/clock.h"
#include "common/testing/wait.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd {
namespace {

using ::fleetd::testing::WaitFor;
using ::testing::ElementsAre;

TEST(TimerQueueTest, RunsACallbackOnlyOnceItsDeadlinePassed) {
  SimulatedClock clock;
  TimerQueue timers(&clock);
  std::atomic<int> ran{0};
  const absl::Time deadline = clock.MonotonicNow() + absl::Seconds(10);
  timers.Schedule(deadline, [&] { ++ran; });
  // The queue's thread may still be asleep with no deadline when Schedule
  // wakes it: wait until it sleeps toward this one.
  ASSERT_TRUE(WaitFor([&] { return clock.NextDeadline() == deadline; }));
  clock.Advance(absl::Seconds(9));
  // The queue's thread still sleeps toward the deadline, the callback unrun.
  ASSERT_TRUE(clock.AwaitSleepers(1, absl::Seconds(30)));
  EXPECT_EQ(ran.load(), 0);
  EXPECT_EQ(timers.pending(), 1u);
  clock.Advance(absl::Seconds(1));
  ASSERT_TRUE(WaitFor([&] { return ran.load() == 1; }));
  EXPECT_EQ(timers.pending(), 0u);
}

TEST(TimerQueueTest, APassedDeadlineRunsAtOnce) {
  SimulatedClock clock;
  TimerQueue timers(&clock);
  std::atomic<int> ran{0};
  timers.Schedule(clock.MonotonicNow() - absl::Seconds(1), [&] { ++ran; });
  ASSERT_TRUE(WaitFor([&] { return ran.load() == 1; }));
}

TEST(TimerQueueTest, ACancelledCallbackNeverRuns) {
  SimulatedClock clock;
  TimerQueue timers(&clock);
  std::atomic<int> cancelled_ran{0};
  std::atomic<int> marker_ran{0};
  TimerQueue::Handle h = timers.Schedule(
      clock.MonotonicNow() + absl::Seconds(1), [&] { ++cancelled_ran; });
  // A later callback: once it ran, the earlier one had its chance.
  TimerQueue::Handle marker = timers.Schedule(
      clock.MonotonicNow() + absl::Seconds(2), [&] { ++marker_ran; });
  EXPECT_TRUE(timers.Cancel(h));
  EXPECT_FALSE(timers.Cancel(h));
  clock.Advance(absl::Seconds(2));
  ASSERT_TRUE(WaitFor([&] { return marker_ran.load() == 1; }));
  EXPECT_EQ(cancelled_ran.load(), 0);
  EXPECT_FALSE(timers.Cancel(marker));  // it ran
}

TEST(TimerQueueTest, AnEarlierDeadlineWakesTheQueueSleepingOnALaterOne) {
  SimulatedClock clock;
  TimerQueue timers(&clock);
  std::atomic<int> ran{0};
  timers.Schedule(clock.MonotonicNow() + absl::Hours(1), [] {});
  ASSERT_TRUE(clock.AwaitSleepers(1, absl::Seconds(30)));
  timers.Schedule(clock.MonotonicNow() + absl::Seconds(1), [&] { ++ran; });
  // The thread looks again and sleeps toward the earlier deadline.
  ASSERT_TRUE(WaitFor([&] {
    return clock.NextDeadline() == clock.MonotonicNow() + absl::Seconds(1);
  }));
  clock.Advance(absl::Seconds(1));
  ASSERT_TRUE(WaitFor([&] { return ran.load() == 1; }));
  EXPECT_EQ(timers.pending(), 1u);
}

TEST(TimerQueueTest, CallbacksRunInDeadlineOrder) {
  SimulatedClock clock;
  TimerQueue timers(&clock);
  absl::Mutex mu;
  std::vector<int> order;
  const absl::Time now = clock.MonotonicNow();
  for (int i : {3, 1, 2}) {
    timers.Schedule(now + absl::Seconds(i), [&, i] {
      absl::MutexLock lock(&mu);
      order.push_back(i);
    });
  }
  clock.Advance(absl::Seconds(3));
  ASSERT_TRUE(WaitFor([&] {
    absl::MutexLock lock(&mu);
    return order.size() == 3;
  }));
  absl::MutexLock lock(&mu);
  EXPECT_THAT(order, ElementsAre(1, 2, 3));
}

TEST(TimerQueueTest, DestructionDropsPendingCallbacksUncalled) {
  SimulatedClock clock;
  auto held = std::make_shared<int>(0);
  std::atomic<int> ran{0};
  {
    TimerQueue timers(&clock);
    timers.Schedule(clock.MonotonicNow() + absl::Seconds(1),
                    [&ran, held] { ++ran; });
    EXPECT_EQ(held.use_count(), 2);
  }
  EXPECT_EQ(held.use_count(), 1);  // the callback was destroyed
  EXPECT_EQ(ran.load(), 0);
}

}  // namespace
}  // namespace fleetd
