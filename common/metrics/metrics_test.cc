#include "common/metrics/metrics.h"

#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::metrics {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

TEST(MetricsTest, CountersAndGaugesRenderWithLabels) {
  Registry r;
  auto& writes = r.CounterFamily("fleetd_backend_writes_total",
                                 "Backend writes.", {"backend", "result"});
  writes.WithLabels({"victoriametrics", "ok"}).Increment(3);
  writes.WithLabels({"loki", "error"}).Increment();
  r.GetGauge("fleetd_queue_depth", "Queued batches.").Set(7);
  std::string text = r.Render();
  EXPECT_THAT(text, HasSubstr("# TYPE fleetd_backend_writes_total counter\n"));
  EXPECT_THAT(
      text, HasSubstr("fleetd_backend_writes_total{backend=\"victoriametrics\","
                      "result=\"ok\"} 3\n"));
  EXPECT_THAT(text, HasSubstr("fleetd_backend_writes_total{backend=\"loki\","
                              "result=\"error\"} 1\n"));
  EXPECT_THAT(
      text,
      HasSubstr("# TYPE fleetd_queue_depth gauge\nfleetd_queue_depth 7\n"));
  // Families come out sorted by name.
  EXPECT_LT(text.find("fleetd_backend_writes_total"),
            text.find("fleetd_queue_depth"));
}

TEST(MetricsTest, CountersIgnoreNegativeIncrements) {
  Registry r;
  Counter& c = r.GetCounter("c_total", "c");
  c.Increment(2);
  c.Increment(-5);
  EXPECT_EQ(c.Value(), 2);
}

TEST(MetricsTest, HistogramBucketsAreCumulative) {
  Registry r;
  auto& h = r.HistogramFamily("lat_seconds", "Latency.", {"rpc"}, {0.1, 1, 10})
                .WithLabels({"SyncMetrics"});
  for (double v : {0.05, 0.1, 0.5, 2.0, 20.0}) h.Observe(v);
  std::string text = r.Render();
  EXPECT_THAT(
      text,
      HasSubstr("lat_seconds_bucket{rpc=\"SyncMetrics\",le=\"0.1\"} 2\n"));
  EXPECT_THAT(
      text, HasSubstr("lat_seconds_bucket{rpc=\"SyncMetrics\",le=\"1\"} 3\n"));
  EXPECT_THAT(
      text, HasSubstr("lat_seconds_bucket{rpc=\"SyncMetrics\",le=\"10\"} 4\n"));
  EXPECT_THAT(
      text,
      HasSubstr("lat_seconds_bucket{rpc=\"SyncMetrics\",le=\"+Inf\"} 5\n"));
  EXPECT_THAT(text, HasSubstr("lat_seconds_count{rpc=\"SyncMetrics\"} 5\n"));
  EXPECT_DOUBLE_EQ(h.Sum(), 22.65);
}

TEST(MetricsTest, LabelValuesAreEscaped) {
  Registry r;
  r.CounterFamily("x_total", "x", {"v"}).WithLabels({"a\"b\\c\nd"}).Increment();
  EXPECT_THAT(r.Render(), HasSubstr("x_total{v=\"a\\\"b\\\\c\\nd\"} 1\n"));
  EXPECT_THAT(r.Render(), Not(HasSubstr("a\"b")));
}

TEST(MetricsTest, ConcurrentIncrementsAreNotLost) {
  Registry r;
  Counter& c = r.GetCounter("n_total", "n");
  Histogram& h = r.HistogramFamily("h", "h", {}, {1}).Get();
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < 10000; ++i) {
        c.Increment();
        h.Observe(0.5);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(c.Value(), 40000);
  EXPECT_EQ(h.Count(), 40000u);
  EXPECT_EQ(h.CumulativeCount(0), 40000u);
}

}  // namespace
}  // namespace fleetd::metrics
