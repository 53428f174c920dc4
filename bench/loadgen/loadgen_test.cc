// Unit tests of the load generator's pieces: the keys CSV, percentiles, the
// open-loop scheduler (on a SimulatedClock), the baselines' exports, and a
// backlog run against the front door over a fake SyncHandler on loopback.
#include "bench/loadgen/loadgen.h"

#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "bench/loadgen/keys_csv.h"
#include "bench/loadgen/latency.h"
#include "bench/loadgen/scheduler.h"
#include "common/clock/clock.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "prometheus/remote.pb.h"
#include "server/rpc/door/front_door.h"
#include "server/rpc/testing/fake_sync_handler.h"
#include "snappy.h"

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

// A directory under the system's temporary directory, removed with its
// content when the test ends.
class TempDir {
 public:
  TempDir() {
    std::string tmpl =
        (std::filesystem::temp_directory_path() / "loadgen-test-XXXXXX")
            .string();
    char* dir = mkdtemp(tmpl.data());
    EXPECT_NE(dir, nullptr);
    path_ = tmpl;
  }
  ~TempDir() {
    std::error_code ignored;
    std::filesystem::remove_all(path_, ignored);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream content;
  content << in.rdbuf();
  return content.str();
}

// "name=value,..." with the labels sorted by name, "@" and the timestamp (ms):
// one sample's identity, to compare exports.
std::string SampleKey(const std::map<std::string, std::string>& labels,
                      int64_t ms) {
  std::string key;
  for (const auto& [name, value] : labels) {
    key += name + "=" + value + ",";
  }
  return key + "@" + std::to_string(ms);
}

TEST(ExportTest, RemoteWriteHoldsTheJsonLinesSamplesOneRequestPerBatch) {
  constexpr int kDevices = 10;  // every tier of the mix
  constexpr int kRounds = 2;
  LoadgenOptions options;
  options.devices = kDevices;
  for (int i = 0; i < kDevices; ++i) {
    options.keys.push_back({absl::StrCat("dev-", i),
                            absl::StrCat("org-", i % 3),
                            absl::StrCat("fk_", i)});
  }
  SimulatedClock clock;
  TempDir tmp;
  std::string jsonl = tmp.path() + "/samples.jsonl";
  std::string dir = tmp.path() + "/rw";
  absl::StatusOr<int64_t> jsonl_samples =
      ExportVmJsonl(options, kRounds, jsonl, &clock);
  ASSERT_THAT(jsonl_samples, IsOk());
  absl::StatusOr<int64_t> rw_samples =
      ExportRemoteWrite(options, kRounds, dir, &clock);
  ASSERT_THAT(rw_samples, IsOk());
  int64_t want = 0;
  for (int i = 0; i < kDevices; ++i) want += TierBatchSize(TierOfDevice(i));
  want *= kRounds;
  EXPECT_EQ(*jsonl_samples, want);
  EXPECT_EQ(*rw_samples, want);

  // Sample identity -> values, from the JSON lines.
  std::map<std::string, std::vector<double>> from_jsonl;
  std::ifstream lines(jsonl);
  std::string line;
  while (std::getline(lines, line)) {
    nlohmann::json j = nlohmann::json::parse(line);
    std::map<std::string, std::string> labels =
        j["metric"].get<std::map<std::string, std::string>>();
    for (size_t k = 0; k < j["values"].size(); ++k) {
      from_jsonl[SampleKey(labels, j["timestamps"][k].get<int64_t>())]
          .push_back(j["values"][k].get<double>());
    }
  }

  // One file per device batch, named so that they sort round by round.
  std::vector<std::string> files;
  for (const auto& entry : std::filesystem::directory_iterator(dir)) {
    files.push_back(entry.path().filename().string());
  }
  std::sort(files.begin(), files.end());
  ASSERT_EQ(files.size(), size_t{kDevices * kRounds});
  EXPECT_EQ(files.front(), "r000000-d0000000.rw");
  EXPECT_EQ(files[1], "r000000-d0000001.rw");
  EXPECT_EQ(files.back(), "r000001-d0000009.rw");

  std::map<std::string, std::vector<double>> from_rw;
  for (size_t f = 0; f < files.size(); ++f) {
    int device = static_cast<int>(f % kDevices);
    SCOPED_TRACE(files[f]);
    std::string body = ReadAll(dir + "/" + files[f]);
    std::string raw;
    ASSERT_TRUE(snappy::Uncompress(body.data(), body.size(), &raw));
    prometheus::WriteRequest request;
    ASSERT_TRUE(request.ParseFromString(raw));
    int samples = 0;
    for (const prometheus::TimeSeries& ts : request.timeseries()) {
      std::map<std::string, std::string> labels;
      for (const prometheus::Label& l : ts.labels())
        labels[l.name()] = l.value();
      EXPECT_EQ(labels["device_id"], options.keys[device].device_id);
      EXPECT_EQ(labels["org_id"], options.keys[device].org_id);
      for (const prometheus::Sample& s : ts.samples()) {
        from_rw[SampleKey(labels, s.timestamp())].push_back(s.value());
        ++samples;
      }
    }
    EXPECT_EQ(samples, TierBatchSize(TierOfDevice(device)));
  }
  EXPECT_EQ(from_rw.size(), from_jsonl.size());
  EXPECT_TRUE(from_rw == from_jsonl);
}

// Backlog mode sends every prepared batch once, each device's in order and
// one after another, with the device's metadata and a valid checksum.
TEST(BacklogRunTest, DrainsEveryDevicesBatchesInOrderOnce) {
  server::testing::FakeSyncHandler handler;
  server::rpc::FrontDoorOptions door_options;
  door_options.address = "127.0.0.1:0";
  door_options.insecure = true;
  door_options.workers = 4;
  door_options.io_threads = 1;
  auto door = server::rpc::FrontDoor::Start(door_options, &handler);
  ASSERT_THAT(door, IsOk());
  LoadgenOptions o;
  o.server_url = absl::StrCat("http://127.0.0.1:", (*door)->port());
  o.transport = "grpc";
  o.devices = 5;  // every tier, and each codec
  for (int i = 0; i < o.devices; ++i) {
    o.keys.push_back({absl::StrCat("dev-", i), "org-1", absl::StrCat("k", i)});
  }
  o.backlog_batches = 3;
  o.logs_ratio = 0;
  o.concurrency = 4;
  o.duration = absl::Seconds(60);
  absl::StatusOr<LoadgenReport> r = RunLoadgen(o, Clock::Real());
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(r->drained);
  EXPECT_TRUE(r->errors.empty());
  int64_t samples = 0;
  for (int i = 0; i < o.devices; ++i)
    samples += 3 * TierBatchSize(TierOfDevice(i));
  EXPECT_EQ(r->samples_acked, samples);

  std::map<std::string, std::vector<int64_t>> sequences;
  std::map<std::string, int64_t> last_first_ms;
  for (const server::testing::RecordedCall& call : handler.calls()) {
    ASSERT_EQ(call.method, "SyncMetrics");
    const auto& request =
        static_cast<const v1::SyncMetricsRequest&>(*call.request);
    const std::string& device = request.metadata().device_id();
    EXPECT_EQ(call.context.api_key,
              absl::StrCat("k", device.substr(device.find('-') + 1)));
    EXPECT_FALSE(request.metadata().checksum().empty());
    sequences[device].push_back(request.metadata().sequence_number());
  }
  ASSERT_EQ(sequences.size(), 5u);
  for (const auto& [device, seq] : sequences) {
    ASSERT_EQ(seq.size(), 3u) << device;
    EXPECT_EQ(seq[1], seq[0] + 1) << device;
    EXPECT_EQ(seq[2], seq[1] + 1) << device;
  }
  (*door)->Shutdown();
}

}  // namespace
}  // namespace fleetd::bench
