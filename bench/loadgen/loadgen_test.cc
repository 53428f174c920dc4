// Unit tests of the load generator's pieces that need no server: the keys
// CSV, percentiles and the open-loop scheduler (on a SimulatedClock).
#include "bench/loadgen/loadgen.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "bench/loadgen/keys_csv.h"
#include "bench/loadgen/latency.h"
#include "bench/loadgen/scheduler.h"
#include "common/clock/clock.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::bench {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(KeysCsvTest, ParsesKeysCreateOutput) {
  auto keys = ParseKeysCsv(
      "device_id,org_id,key\n"
      "load-00000,bench,fk_abc\r\n"
      "\n"
      "# comment\n"
      "  load-00001 , bench , fk_def  \n");
  ASSERT_THAT(keys, IsOk());
  ASSERT_EQ(keys->size(), 2u);
  EXPECT_EQ((*keys)[0].device_id, "load-00000");
  EXPECT_EQ((*keys)[0].org_id, "bench");
  EXPECT_EQ((*keys)[0].api_key, "fk_abc");
  EXPECT_EQ((*keys)[1].device_id, "load-00001");
  EXPECT_EQ((*keys)[1].api_key, "fk_def");
}

TEST(KeysCsvTest, RejectsMalformedLineWithItsNumber) {
  EXPECT_THAT(
      ParseKeysCsv("a,b,c\nd,e\n"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 2")));
  EXPECT_THAT(
      ParseKeysCsv("a,,c\n"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("line 1")));
}

TEST(KeysCsvTest, MissingFileIsNotFound) {
  EXPECT_THAT(LoadKeysCsv("/nonexistent/keys.csv"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST(LatencyTest, NearestRankPercentiles) {
  std::vector<double> v;
  for (int i = 1; i <= 100; ++i) v.push_back(i);
  EXPECT_EQ(Percentile(v, 50), 50);
  EXPECT_EQ(Percentile(v, 95), 95);
  EXPECT_EQ(Percentile(v, 99), 99);
  EXPECT_EQ(Percentile(v, 100), 100);
  EXPECT_EQ(Percentile({7}, 99), 7);
  EXPECT_EQ(Percentile({}, 50), 0);
  EXPECT_EQ(Percentile({1, 2, 3}, 50), 2);
}

TEST(LatencyTest, SummarizeSortsAndAverages) {
  LatencySummary s = Summarize({10, 1, 4, 3, 2});
  EXPECT_EQ(s.count, 5);
  EXPECT_EQ(s.p50, 3);
  EXPECT_EQ(s.p99, 10);
  EXPECT_EQ(s.max, 10);
  EXPECT_DOUBLE_EQ(s.mean, 4);
  EXPECT_EQ(Summarize({}).count, 0);
}

TEST(TierMixTest, TwentyFortyForty) {
  int per_tier[4] = {0, 0, 0, 0};
  for (int i = 0; i < 1000; ++i) ++per_tier[TierOfDevice(i)];
  EXPECT_EQ(per_tier[1], 200);
  EXPECT_EQ(per_tier[2], 400);
  EXPECT_EQ(per_tier[3], 400);
  EXPECT_EQ(TierBatchSize(1), 1000);
  EXPECT_EQ(TierBatchSize(2), 100);
  EXPECT_EQ(TierBatchSize(3), 10);
}

TEST(SchedulerTest, IntervalForRate) {
  // 1000 + 100 + 10 samples per round at 555 samples/s: a round every 2 s.
  EXPECT_EQ(IntervalForRate({1000, 100, 10}, 555), absl::Seconds(2));
  EXPECT_EQ(IntervalForRate({10}, 0), absl::InfiniteDuration());
}

// Collects what WaitNext hands out on a thread of its own.
class Consumer {
 public:
  explicit Consumer(Scheduler* s)
      : thread_([this, s] {
          Job job;
          while (s->WaitNext(&job)) {
            absl::MutexLock lock(&mu_);
            jobs_.push_back(job);
          }
          finished_ = true;
        }) {}
  ~Consumer() { thread_.join(); }
  std::vector<Job> jobs() {
    absl::MutexLock lock(&mu_);
    return jobs_;
  }
  // Waits (real time, bounded) until `n` jobs were handed out.
  bool AwaitCount(size_t n) {
    absl::MutexLock lock(&mu_);
    auto enough = [this, n]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return jobs_.size() >= n;
    };
    return mu_.AwaitWithTimeout(absl::Condition(&enough), absl::Seconds(10));
  }
  bool finished() const { return finished_; }

 private:
  absl::Mutex mu_;
  std::vector<Job> jobs_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> finished_{false};
  std::thread thread_;
};

TEST(SchedulerTest, ReleasesJobsAtTheirIntendedTimesWithoutWaitingForAcks) {
  SimulatedClock clock;
  absl::Time start = clock.MonotonicNow();
  // Device 0 every 1 s from 0.5 s; device 1 every 1 s from 0 s; 3 s in all.
  Scheduler scheduler(&clock,
                      {{absl::Seconds(1), absl::Milliseconds(500)},
                       {absl::Seconds(1), absl::ZeroDuration()}},
                      start, start + absl::Seconds(3));
  Consumer consumer(&scheduler);
  // Device 1's first job is due at once.
  ASSERT_TRUE(consumer.AwaitCount(1));
  ASSERT_TRUE(clock.AwaitSleepers(1, absl::Seconds(10)));
  EXPECT_EQ(consumer.jobs().size(), 1u);
  // Nothing is released early, everything on time: step through 2.5 s. Job k
  // (0-based) is due at k * 0.5 s, so after step s, s + 1 are out.
  for (int step = 1; step <= 5; ++step) {
    ASSERT_TRUE(clock.AwaitSleepers(1, absl::Seconds(10)));
    clock.Advance(absl::Milliseconds(500));
    size_t expected = static_cast<size_t>(step) + 1;
    ASSERT_TRUE(consumer.AwaitCount(expected));
    EXPECT_EQ(consumer.jobs().size(), expected) << "step " << step;
  }
  // The next jobs would be due at 3 s, the end: WaitNext returns false.
  std::vector<double> intended;
  std::vector<int> devices;
  for (const Job& j : consumer.jobs()) {
    intended.push_back(absl::ToDoubleSeconds(j.intended - start));
    devices.push_back(j.device);
  }
  EXPECT_THAT(intended, ElementsAre(0, 0.5, 1, 1.5, 2, 2.5));
  EXPECT_THAT(devices, ElementsAre(1, 0, 1, 0, 1, 0));
}

TEST(SchedulerTest, LateConsumerGetsBacklogWithOriginalIntendedTimes) {
  SimulatedClock clock;
  absl::Time start = clock.MonotonicNow();
  Scheduler scheduler(&clock, {{absl::Milliseconds(100), absl::ZeroDuration()}},
                      start, start + absl::Seconds(1));
  // The sender is stalled for 1 s (a slow server): the 10 jobs keep their
  // intended times, 100 ms apart, so latency counts the stall.
  clock.Advance(absl::Seconds(1));
  Consumer consumer(&scheduler);
  ASSERT_TRUE(consumer.AwaitCount(10));
  std::vector<Job> jobs = consumer.jobs();
  ASSERT_EQ(jobs.size(), 10u);
  for (int i = 0; i < 10; ++i) {
    EXPECT_EQ(jobs[i].intended, start + absl::Milliseconds(100) * i);
  }
}

TEST(SchedulerTest, OneOffJobsAndPendingKeepItAlive) {
  SimulatedClock clock;
  absl::Time start = clock.MonotonicNow();
  Scheduler scheduler(&clock,
                      {{absl::InfiniteDuration(), absl::ZeroDuration()}}, start,
                      start + absl::Seconds(10));
  scheduler.AddPending(1);
  Consumer consumer(&scheduler);
  ASSERT_TRUE(clock.AwaitSleepers(1, absl::Seconds(10)));
  Job retry;
  retry.device = 0;
  retry.intended = start + absl::Seconds(2);
  retry.sequence = 42;
  ASSERT_TRUE(scheduler.Push(retry));
  // Past the end: dropped and counted.
  retry.intended = start + absl::Seconds(10);
  EXPECT_FALSE(scheduler.Push(retry));
  EXPECT_EQ(scheduler.dropped(), 1);
  ASSERT_TRUE(clock.AwaitSleepers(1, absl::Seconds(10)));
  clock.Advance(absl::Seconds(1));
  ASSERT_TRUE(clock.AwaitSleepers(1, absl::Seconds(10)));
  EXPECT_TRUE(consumer.jobs().empty());
  clock.Advance(absl::Seconds(1));
  ASSERT_TRUE(consumer.AwaitCount(1));
  EXPECT_EQ(consumer.jobs()[0].sequence, 42);
  EXPECT_TRUE(consumer.jobs()[0].one_off);
  // Still pending: the consumer waits; releasing it ends the schedule.
  ASSERT_TRUE(clock.AwaitSleepers(1, absl::Seconds(10)));
  EXPECT_FALSE(consumer.finished());
  scheduler.AddPending(-1);
}

TEST(SchedulerTest, StopEndsWaitNext) {
  SimulatedClock clock;
  absl::Time start = clock.MonotonicNow();
  Scheduler scheduler(&clock, {{absl::Seconds(5), absl::Seconds(1)}}, start,
                      start + absl::Hours(1));
  Consumer consumer(&scheduler);
  ASSERT_TRUE(clock.AwaitSleepers(1, absl::Seconds(10)));
  scheduler.Stop();
}

}  // namespace
}  // namespace fleetd::bench
