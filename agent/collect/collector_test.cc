#include "agent/collect/collector.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "agent/collect/collect_test_util.h"
#include "common/clock/clock.h"
#include "common/metrics/metrics.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::agent {
namespace {

using collect_testing::AllMetrics;
using collect_testing::FlakyStorage;
using collect_testing::NewTestStorage;
using ::testing::ElementsAre;
using ::testing::Property;

// Returns two samples per Collect(): "m" with the call number as value, and
// "n".
class CountingSource final : public MetricsSource {
 public:
  absl::string_view name() const override { return "test"; }
  std::vector<v1::Metric> Collect() override {
    absl::MutexLock lock(&mu_);
    ++calls_;
    std::vector<v1::Metric> out(2);
    out[0].set_name("m");
    out[0].set_value(calls_);
    out[1].set_name("n");
    out[1].set_value(calls_);
    return out;
  }
  int calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }

 private:
  absl::Mutex mu_;
  int calls_ = 0;
};

class CollectorTest : public ::testing::Test {
 protected:
  double Count(const std::string& name) {
    return registry_.CounterFamily(name, "", {"collector"})
        .WithLabels({"test"})
        .Value();
  }

  SimulatedClock clock_;
  std::unique_ptr<Storage> memory_ = NewTestStorage(&clock_);
  FlakyStorage storage_{memory_.get()};
  metrics::Registry registry_;
  CountingSource source_;
};

TEST_F(CollectorTest, CollectOnceAppendsTheSample) {
  CollectorOptions options;
  Collector collector(&source_, &storage_, &clock_, &registry_, options);
  EXPECT_THAT(collector.CollectOnce(), testing::IsOk());
  EXPECT_THAT(AllMetrics(*memory_),
              ElementsAre(Property(&v1::Metric::name, "m"),
                          Property(&v1::Metric::name, "n")));
  EXPECT_EQ(storage_.appends(), 1);  // one batch
  EXPECT_EQ(Count("fleetd_collect_records_total"), 2);
}

TEST_F(CollectorTest, RetryableFailureCarriesTheSampleOver) {
  CollectorOptions options;
  options.max_carry_over_records = 3;
  Collector collector(&source_, &storage_, &clock_, &registry_, options);
  storage_.FailAppends(absl::UnavailableError("busy"));
  EXPECT_THAT(collector.CollectOnce(),
              testing::StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(Count("fleetd_collect_dropped_records_total"), 0);
  // Second failure: 4 records, 3 kept; the oldest one is dropped.
  EXPECT_THAT(collector.CollectOnce(),
              testing::StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(Count("fleetd_collect_dropped_records_total"), 1);
  EXPECT_EQ(Count("fleetd_collect_append_errors_total"), 2);

  storage_.FailAppends(absl::OkStatus());
  EXPECT_THAT(collector.CollectOnce(), testing::IsOk());
  std::vector<v1::Metric> stored = AllMetrics(*memory_);
  std::vector<std::pair<std::string, double>> got;
  for (const auto& m : stored) got.emplace_back(m.name(), m.value());
  EXPECT_THAT(got, ElementsAre(std::pair<std::string, double>("n", 1),
                               std::pair<std::string, double>("m", 2),
                               std::pair<std::string, double>("n", 2),
                               std::pair<std::string, double>("m", 3),
                               std::pair<std::string, double>("n", 3)));
  EXPECT_EQ(Count("fleetd_collect_records_total"), 5);
}

TEST_F(CollectorTest, PermanentFailureDropsTheSample) {
  Collector collector(&source_, &storage_, &clock_, &registry_, {});
  storage_.FailAppends(absl::InvalidArgumentError("no"));
  EXPECT_THAT(collector.CollectOnce(),
              testing::StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(Count("fleetd_collect_dropped_records_total"), 2);
  storage_.FailAppends(absl::OkStatus());
  EXPECT_THAT(collector.CollectOnce(), testing::IsOk());
  EXPECT_EQ(AllMetrics(*memory_).size(), 2u);
}

TEST_F(CollectorTest, RunsEveryIntervalOnTheClock) {
  CollectorOptions options;
  options.interval = absl::Seconds(10);
  Collector collector(&source_, &storage_, &clock_, &registry_, options);
  collector.Start();
  // The first sample is taken right away.
  ASSERT_TRUE(
      testing::WaitFor([&] { return AllMetrics(*memory_).size() == 2; }));
  ASSERT_TRUE(clock_.AwaitSleepers(1, absl::Seconds(30)));
  EXPECT_EQ(source_.calls(), 1);
  clock_.Advance(absl::Seconds(9));
  EXPECT_EQ(source_.calls(), 1);
  clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(
      testing::WaitFor([&] { return AllMetrics(*memory_).size() == 4; }));
  // Errors never stop the loop.
  ASSERT_TRUE(clock_.AwaitSleepers(1, absl::Seconds(30)));
  storage_.FailAppends(absl::InvalidArgumentError("no"));
  clock_.Advance(absl::Seconds(10));
  ASSERT_TRUE(testing::WaitFor([&] { return source_.calls() == 3; }));
  ASSERT_TRUE(clock_.AwaitSleepers(1, absl::Seconds(30)));
  storage_.FailAppends(absl::OkStatus());
  clock_.Advance(absl::Seconds(10));
  ASSERT_TRUE(
      testing::WaitFor([&] { return AllMetrics(*memory_).size() == 6; }));
  collector.Stop();
  collector.Stop();  // idempotent
}

TEST_F(CollectorTest, StopWithoutStartAndStopWhileSleeping) {
  {
    Collector idle(&source_, &storage_, &clock_, &registry_, {});
    idle.Stop();
  }
  Collector collector(&source_, &storage_, &clock_, &registry_, {});
  collector.Start();
  ASSERT_TRUE(clock_.AwaitSleepers(1, absl::Seconds(30)));
  collector.Stop();  // wakes the sleeping loop; must not hang
  EXPECT_EQ(source_.calls(), 1);
}

}  // namespace
}  // namespace fleetd::agent
