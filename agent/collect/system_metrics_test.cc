#include "agent/collect/system_metrics.h"

#include <map>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/collect/collect_test_util.h"
#include "common/clock/clock.h"
#include "common/metrics/metrics.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::agent {
namespace {

using collect_testing::Find;
using collect_testing::TempDir;
using ::testing::DoubleEq;
using ::testing::Optional;

constexpr char kStat1[] =
    "cpu  200 0 100 1600 100 0 0 0 0 0\n"
    "cpu0 100 0 50 800 50 0 0 0 0 0\n"
    "cpu1 100 0 50 800 50 0 0 0 0 0\n"
    "intr 12345 0 0\n"
    "ctxt 999\n"
    "btime 1700000000\n";
// Deltas: cpu  total 1000, idle+iowait 550 -> 45 % busy;
//         cpu0 total 400, idle+iowait 100 -> 75 %; guest (40) is already
//         part of user and must not be counted twice;
//         cpu1 total 600, idle+iowait 450 -> 25 %.
constexpr char kStat2[] =
    "cpu  550 0 200 2050 200 0 0 0 40 0\n"
    "cpu0 350 0 100 850 100 0 0 0 40 0\n"
    "cpu1 200 0 100 1200 100 0 0 0 0 0\n"
    "intr 22345 0 0\n";

class SystemMetricsTest : public ::testing::Test {
 protected:
  std::unique_ptr<MetricsSource> NewSource(
      std::function<void(SystemMetricsOptions&)> tweak = nullptr) {
    SystemMetricsOptions options;
    options.root = dir_.path();
    options.mount_points = {"/", "/data"};
    options.clock = &clock_;
    options.registry = &registry_;
    options.stat_filesystem =
        [this](const std::string& path) -> absl::StatusOr<FilesystemUsage> {
      statted_.push_back(path);
      auto it = filesystems_.find(path);
      if (it == filesystems_.end()) return absl::NotFoundError(path);
      return it->second;
    };
    if (tweak) tweak(options);
    auto source = NewSystemMetricsSource(options);
    EXPECT_THAT(source, testing::IsOk());
    return source.ok() ? *std::move(source) : nullptr;
  }

  double Errors(const std::string& input) {
    return registry_
        .CounterFamily("fleetd_collect_input_errors_total", "",
                       {"collector", "input"})
        .WithLabels({"system", input})
        .Value();
  }

  TempDir dir_;
  SimulatedClock clock_{absl::FromUnixSeconds(1'700'000'000)};
  metrics::Registry registry_;
  std::map<std::string, FilesystemUsage> filesystems_;
  std::vector<std::string> statted_;
};

TEST_F(SystemMetricsTest, CpuUsageComesFromTwoSamples) {
  dir_.Write("proc/stat", kStat1);
  auto source = NewSource();
  std::vector<v1::Metric> first = source->Collect();
  EXPECT_EQ(Find(first, "system_cpu_usage_percent", {{"cpu", "all"}}),
            std::nullopt);
  EXPECT_EQ(Errors("cpu"), 0);

  dir_.Write("proc/stat", kStat2);
  clock_.Advance(absl::Seconds(10));
  std::vector<v1::Metric> second = source->Collect();
  EXPECT_THAT(Find(second, "system_cpu_usage_percent", {{"cpu", "all"}}),
              Optional(DoubleEq(45.0)));
  EXPECT_THAT(Find(second, "system_cpu_usage_percent", {{"cpu", "cpu0"}}),
              Optional(DoubleEq(75.0)));
  EXPECT_THAT(Find(second, "system_cpu_usage_percent", {{"cpu", "cpu1"}}),
              Optional(DoubleEq(25.0)));

  // Every sample carries the clock's time.
  for (const v1::Metric& m : second) {
    EXPECT_EQ(m.timestamp().seconds(), 1'700'000'010) << m.name();
    EXPECT_EQ(m.timestamp().nanos(), 0);
  }
}

TEST_F(SystemMetricsTest, CpuCountersGoingBackwardsAreSkipped) {
  dir_.Write("proc/stat", kStat2);
  auto source = NewSource();
  source->Collect();
  dir_.Write("proc/stat", kStat1);  // e.g. a cpu plugged out and back in
  std::vector<v1::Metric> m = source->Collect();
  EXPECT_EQ(Find(m, "system_cpu_usage_percent", {{"cpu", "all"}}),
            std::nullopt);
  EXPECT_EQ(Errors("cpu"), 0);
}

TEST_F(SystemMetricsTest, Memory) {
  dir_.Write("proc/meminfo",
             "MemTotal:        1000 kB\n"
             "MemFree:          100 kB\n"
             "MemAvailable:     250 kB\n"
             "Buffers:           20 kB\n"
             "Cached:            80 kB\n"
             "SwapCached:         0 kB\n"
             "SwapTotal:        400 kB\n"
             "SwapFree:         300 kB\n"
             "HugePages_Total:    0\n");
  std::vector<v1::Metric> m = NewSource()->Collect();
  EXPECT_THAT(Find(m, "system_memory_total_bytes"), Optional(1000.0 * 1024));
  EXPECT_THAT(Find(m, "system_memory_available_bytes"), Optional(250.0 * 1024));
  EXPECT_THAT(Find(m, "system_memory_free_bytes"), Optional(100.0 * 1024));
  EXPECT_THAT(Find(m, "system_memory_buffers_bytes"), Optional(20.0 * 1024));
  EXPECT_THAT(Find(m, "system_memory_cached_bytes"), Optional(80.0 * 1024));
  EXPECT_THAT(Find(m, "system_memory_used_bytes"), Optional(750.0 * 1024));
  EXPECT_THAT(Find(m, "system_memory_usage_percent"), Optional(DoubleEq(75)));
  EXPECT_THAT(Find(m, "system_memory_swap_total_bytes"),
              Optional(400.0 * 1024));
  EXPECT_THAT(Find(m, "system_memory_swap_free_bytes"), Optional(300.0 * 1024));
  EXPECT_THAT(Find(m, "system_memory_swap_used_bytes"), Optional(100.0 * 1024));
  EXPECT_EQ(Errors("memory"), 0);
}

TEST_F(SystemMetricsTest, MemoryWithoutMemAvailableAddsFreeBuffersCached) {
  dir_.Write("proc/meminfo",
             "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\n"
             "Cached: 80 kB\n");
  std::vector<v1::Metric> m = NewSource()->Collect();
  EXPECT_THAT(Find(m, "system_memory_available_bytes"), Optional(200.0 * 1024));
  EXPECT_THAT(Find(m, "system_memory_usage_percent"), Optional(DoubleEq(80)));
}

TEST_F(SystemMetricsTest, DiskUsageThroughTheStatvfsSeam) {
  FilesystemUsage root;
  root.total_bytes = 1000;
  root.free_bytes = 300;
  root.available_bytes = 200;
  filesystems_[dir_.path() + "/"] = root;
  FilesystemUsage data;
  data.total_bytes = 4000;
  data.free_bytes = 4000;
  data.available_bytes = 4000;
  filesystems_[dir_.path() + "/data"] = data;
  std::vector<v1::Metric> m = NewSource()->Collect();
  EXPECT_THAT(statted_,
              ::testing::ElementsAre(dir_.path() + "/", dir_.path() + "/data"));
  const std::pair<std::string, std::string> root_label = {"mountpoint", "/"};
  EXPECT_THAT(Find(m, "system_disk_total_bytes", {root_label}),
              Optional(1000.0));
  EXPECT_THAT(Find(m, "system_disk_free_bytes", {root_label}), Optional(300.0));
  EXPECT_THAT(Find(m, "system_disk_available_bytes", {root_label}),
              Optional(200.0));
  EXPECT_THAT(Find(m, "system_disk_used_bytes", {root_label}), Optional(700.0));
  // As df computes it: used / (used + available) = 700 / 900.
  EXPECT_THAT(Find(m, "system_disk_usage_percent", {root_label}),
              Optional(DoubleEq(700.0 * 100 / 900)));
  EXPECT_THAT(Find(m, "system_disk_usage_percent", {{"mountpoint", "/data"}}),
              Optional(DoubleEq(0)));
  EXPECT_EQ(Errors("disk_usage"), 0);
}

TEST_F(SystemMetricsTest, DiskIoFromDiskstats) {
  dir_.Write(
      "proc/diskstats",
      "   7       0 loop0 5 0 10 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
      "   8       0 sda 100 5 2000 300 50 7 4000 600 0 1500 900 0 0 0 0 0 0\n"
      "   8       1 sda1 90 5 1800 280 45 7 3900 590 0 1400 870\n");
  std::vector<v1::Metric> m = NewSource()->Collect();
  EXPECT_THAT(Find(m, "system_disk_read_bytes_total", {{"device", "sda"}}),
              Optional(2000.0 * 512));
  EXPECT_THAT(Find(m, "system_disk_written_bytes_total", {{"device", "sda"}}),
              Optional(4000.0 * 512));
  EXPECT_THAT(Find(m, "system_disk_reads_completed_total", {{"device", "sda"}}),
              Optional(100.0));
  EXPECT_THAT(
      Find(m, "system_disk_writes_completed_total", {{"device", "sda"}}),
      Optional(50.0));
  EXPECT_THAT(Find(m, "system_disk_io_time_seconds_total", {{"device", "sda"}}),
              Optional(DoubleEq(1.5)));
  EXPECT_THAT(Find(m, "system_disk_read_bytes_total", {{"device", "sda1"}}),
              Optional(1800.0 * 512));
  EXPECT_EQ(Find(m, "system_disk_read_bytes_total", {{"device", "loop0"}}),
            std::nullopt);
  EXPECT_EQ(Errors("disk_io"), 0);
}

constexpr char kNetDev[] =
    "Inter-|   Receive                                                |  "
    "Transmit\n"
    " face |bytes    packets errs drop fifo frame compressed multicast|bytes  "
    "  packets errs drop fifo colls carrier compressed\n"
    "    lo:   5000      50    0    0    0     0          0         0     "
    "5000      50    0    0    0     0       0          0\n"
    "  eth0: 123456789 1000 3 4 0 0 0 7 987654 900 1 2 0 0 0 0\n"
    " wlan0:0 0 0 0 0 0 0 0 10 1 0 0 0 0 0 0\n";

TEST_F(SystemMetricsTest, NetworkPerInterfaceWithoutLoopback) {
  dir_.Write("proc/net/dev", kNetDev);
  std::vector<v1::Metric> m = NewSource()->Collect();
  const std::pair<std::string, std::string> eth0 = {"interface", "eth0"};
  EXPECT_THAT(Find(m, "system_network_receive_bytes_total", {eth0}),
              Optional(123456789.0));
  EXPECT_THAT(Find(m, "system_network_receive_packets_total", {eth0}),
              Optional(1000.0));
  EXPECT_THAT(Find(m, "system_network_receive_errors_total", {eth0}),
              Optional(3.0));
  EXPECT_THAT(Find(m, "system_network_receive_drops_total", {eth0}),
              Optional(4.0));
  EXPECT_THAT(Find(m, "system_network_transmit_bytes_total", {eth0}),
              Optional(987654.0));
  EXPECT_THAT(Find(m, "system_network_transmit_packets_total", {eth0}),
              Optional(900.0));
  EXPECT_THAT(Find(m, "system_network_transmit_errors_total", {eth0}),
              Optional(1.0));
  EXPECT_THAT(Find(m, "system_network_transmit_drops_total", {eth0}),
              Optional(2.0));
  EXPECT_THAT(
      Find(m, "system_network_transmit_bytes_total", {{"interface", "wlan0"}}),
      Optional(10.0));
  EXPECT_EQ(
      Find(m, "system_network_receive_bytes_total", {{"interface", "lo"}}),
      std::nullopt);
  EXPECT_EQ(Errors("network"), 0);
}

TEST_F(SystemMetricsTest, LoopbackWhenAskedFor) {
  dir_.Write("proc/net/dev", kNetDev);
  auto source =
      NewSource([](SystemMetricsOptions& o) { o.skip_loopback = false; });
  EXPECT_THAT(Find(source->Collect(), "system_network_receive_bytes_total",
                   {{"interface", "lo"}}),
              Optional(5000.0));
}

TEST_F(SystemMetricsTest, LoadUptimeAndTemperatures) {
  dir_.Write("proc/loadavg", "0.52 1.25 2.00 1/467 12345\n");
  dir_.Write("proc/uptime", "12345.67 23456.78\n");
  dir_.Write("sys/class/thermal/thermal_zone0/type", "cpu-thermal\n");
  dir_.Write("sys/class/thermal/thermal_zone0/temp", "48312\n");
  dir_.Write("sys/class/thermal/thermal_zone1/temp", "-5000\n");  // no type
  dir_.Write("sys/class/thermal/thermal_zone2/type", "cpu-thermal\n");
  dir_.Write("sys/class/thermal/thermal_zone2/temp", "51000\n");
  dir_.Write("sys/class/thermal/cooling_device0/type", "fan\n");
  std::vector<v1::Metric> m = NewSource()->Collect();
  EXPECT_THAT(Find(m, "system_load1"), Optional(DoubleEq(0.52)));
  EXPECT_THAT(Find(m, "system_load5"), Optional(DoubleEq(1.25)));
  EXPECT_THAT(Find(m, "system_load15"), Optional(DoubleEq(2.0)));
  EXPECT_THAT(Find(m, "system_uptime_seconds"), Optional(DoubleEq(12345.67)));
  EXPECT_THAT(Find(m, "system_temperature_celsius", {{"zone", "cpu-thermal"}}),
              Optional(DoubleEq(48.312)));
  EXPECT_THAT(
      Find(m, "system_temperature_celsius", {{"zone", "thermal_zone1"}}),
      Optional(DoubleEq(-5.0)));
  // A second zone of the same type is told apart by its directory.
  EXPECT_THAT(
      Find(m, "system_temperature_celsius", {{"zone", "thermal_zone2"}}),
      Optional(DoubleEq(51.0)));
  EXPECT_EQ(Errors("thermal"), 0);
  EXPECT_EQ(Errors("load"), 0);
  EXPECT_EQ(Errors("uptime"), 0);
}

TEST_F(SystemMetricsTest, UnreadableZoneIsCountedOthersStillReported) {
  dir_.Write("sys/class/thermal/thermal_zone0/type", "soc\n");
  dir_.Write("sys/class/thermal/thermal_zone0/temp", "40000\n");
  dir_.Write("sys/class/thermal/thermal_zone1/type", "broken\n");
  dir_.Write("sys/class/thermal/thermal_zone1/temp", "n/a\n");
  std::vector<v1::Metric> m = NewSource()->Collect();
  EXPECT_THAT(Find(m, "system_temperature_celsius", {{"zone", "soc"}}),
              Optional(DoubleEq(40.0)));
  EXPECT_EQ(Find(m, "system_temperature_celsius", {{"zone", "broken"}}),
            std::nullopt);
  EXPECT_EQ(Errors("thermal"), 1);
}

TEST_F(SystemMetricsTest, MissingInputsAreCountedNotFatal) {
  // An empty tree: only the (fake) filesystems answer; no thermal zones is
  // not an error.
  FilesystemUsage usage;
  usage.total_bytes = 10;
  filesystems_[dir_.path() + "/"] = usage;
  auto source =
      NewSource([](SystemMetricsOptions& o) { o.mount_points = {"/"}; });
  std::vector<v1::Metric> m = source->Collect();
  EXPECT_THAT(Find(m, "system_disk_total_bytes", {{"mountpoint", "/"}}),
              Optional(10.0));
  for (const char* input :
       {"cpu", "memory", "disk_io", "network", "load", "uptime"}) {
    EXPECT_EQ(Errors(input), 1) << input;
  }
  EXPECT_EQ(Errors("thermal"), 0);
  EXPECT_EQ(Errors("disk_usage"), 0);
  source->Collect();
  EXPECT_EQ(Errors("cpu"), 2);
}

TEST_F(SystemMetricsTest, MalformedFilesAreErrors) {
  dir_.Write("proc/stat", "cpu 1 2\n");
  dir_.Write("proc/loadavg", "high\n");
  dir_.Write("proc/meminfo", "MemFree: 1 kB\n");
  auto source = NewSource();
  std::vector<v1::Metric> m = source->Collect();
  EXPECT_EQ(Errors("cpu"), 1);
  EXPECT_EQ(Errors("load"), 1);
  EXPECT_EQ(Errors("memory"), 1);
  EXPECT_EQ(Find(m, "system_memory_free_bytes"), std::nullopt);
}

TEST_F(SystemMetricsTest, RejectsEmptyRoot) {
  SystemMetricsOptions options;
  options.root = "";
  EXPECT_THAT(NewSystemMetricsSource(options),
              testing::StatusIs(absl::StatusCode::kInvalidArgument));
}

}  // namespace
}  // namespace fleetd::agent
