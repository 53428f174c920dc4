#include <atomic>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/metrics/metrics.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"
#include "prometheus/remote.pb.h"
#include "server/router/group_commit.h"
#include "server/writers/backends.h"
#include "snappy.h"
#include "tests/fixtures/victoria_metrics_fixture.h"

namespace fleetd::server {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::IsOkAndHolds;
using ::fleetd::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::SizeIs;

// One sample of metric vmw_crash for `device` at `t`.
DecodedBatch OneSample(const std::string& device, absl::Time t) {
  DecodedBatch b;
  b.device = {device, "org-a", "k"};
  b.kind = DataKind::kMetrics;
  b.stream = "metrics";
  b.sequence_number = 1;
  v1::Metric m;
  m.set_name("vmw_crash");
  m.set_value(1);
  m.mutable_timestamp()->set_seconds(absl::ToUnixSeconds(t));
  b.metrics.Append(m);
  return b;
}

// Samples of all batches, by the `core` label's series, as exported.
size_t ExportedSamples(const std::vector<std::string>& lines) {
  size_t samples = 0;
  for (const std::string& line : lines) {
    samples += nlohmann::json::parse(line)["values"].size();
  }
  return samples;
}

class VictoriaMetricsWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto vm = fleetd::testing::VictoriaMetricsFixture::Shared();
    ASSERT_THAT(vm, IsOk());
    vm_ = *vm;
    auto w = NewVictoriaMetricsWriter({.url = vm_->url()});
    ASSERT_THAT(w, IsOk());
    writer_ = *std::move(w);
  }

  static DecodedBatch Batch(const std::string& device, int64_t seq,
                            const std::string& metric, int n, absl::Time t0) {
    DecodedBatch b;
    b.device = {device, "org-a", "k"};
    b.kind = DataKind::kMetrics;
    b.stream = "metrics";
    b.sequence_number = seq;
    for (int i = 0; i < n; ++i) {
      v1::Metric m;
      m.set_name(metric);
      m.set_value(i);
      int64_t ms = absl::ToUnixMillis(t0) + i * 1000;
      m.mutable_timestamp()->set_seconds(ms / 1000);
      (*m.mutable_labels())["core"] = std::to_string(i % 2);
      b.metrics.Append(m);
    }
    return b;
  }

  fleetd::testing::VictoriaMetricsFixture* vm_ = nullptr;
  std::unique_ptr<Writer> writer_;
};

TEST_F(VictoriaMetricsWriterTest,
       WritesSamplesWithIdentityLabelsAndReadsThemBack) {
  absl::Time t0 = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()) - 600);
  DecodedBatch a = Batch("dev-a", 1, "vmw_cpu", 4, t0);
  DecodedBatch b = Batch("dev-b", 1, "vmw_cpu", 2, t0);
  std::vector<const DecodedBatch*> both = {&a, &b};
  ASSERT_THAT(writer_->Write(both), IsOk());
  ASSERT_THAT(vm_->ForceFlush(), IsOk());
  auto lines =
      vm_->WaitForSeries("{__name__=\"vmw_cpu\"}", 4, absl::Seconds(30));
  ASSERT_THAT(lines, IsOk());
  ASSERT_THAT(*lines, SizeIs(4));  // 2 devices x 2 cores
  size_t samples = 0;
  for (const std::string& line : *lines) {
    nlohmann::json j = nlohmann::json::parse(line);
    EXPECT_EQ(j["metric"]["org_id"], "org-a");
    std::string device = j["metric"]["device_id"];
    EXPECT_TRUE(device == "dev-a" || device == "dev-b") << device;
    samples += j["values"].size();
  }
  EXPECT_EQ(samples, 6u);
}

TEST_F(VictoriaMetricsWriterTest, HostileLabelValuesAreStoredVerbatim) {
  absl::Time t0 = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()) - 300);
  DecodedBatch b = Batch("dev-x", 1, "vmw_hostile", 1, t0);
  const std::string hostile = "\"} or vector(1) # '; DROP TABLE x;--\\n";
  const std::string multiline = "line one\nline \"two\" \\ Zürich 東京";
  v1::MetricsBatch edited = b.metrics.ToProto();
  (*edited.mutable_metrics(0)->mutable_labels())["site"] = hostile;
  (*edited.mutable_metrics(0)->mutable_labels())["city"] = multiline;
  b.metrics = MetricSamples::FromProto(edited);
  std::vector<const DecodedBatch*> one = {&b};
  ASSERT_THAT(writer_->Write(one), IsOk());
  ASSERT_THAT(vm_->ForceFlush(), IsOk());
  auto lines =
      vm_->WaitForSeries("{__name__=\"vmw_hostile\"}", 1, absl::Seconds(30));
  ASSERT_THAT(lines, IsOk());
  ASSERT_THAT(*lines, SizeIs(1));
  // The export is JSON: the values come back intact, each in its own label.
  nlohmann::json j = nlohmann::json::parse((*lines)[0]);
  EXPECT_EQ(j["metric"]["site"], hostile);
  EXPECT_EQ(j["metric"]["city"], multiline);
  // __name__, core, site, city, device_id, org_id
  EXPECT_EQ(j["metric"].size(), 6u);
}

// The single-node forms of the remote-write path VictoriaMetrics serves.
TEST_F(VictoriaMetricsWriterTest, ConfigurableWritePathReachesVictoriaMetrics) {
  const absl::Time t0 =
      absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()) - 60);
  int n = 0;
  for (const std::string path : {"/api/v1/write", "/prometheus/api/v1/write"}) {
    SCOPED_TRACE(path);
    auto w = NewVictoriaMetricsWriter({.url = vm_->url(), .write_path = path});
    ASSERT_THAT(w, IsOk());
    const std::string metric = absl::StrCat("vmw_path_", n++);
    DecodedBatch b = Batch("dev-p", 1, metric, 3, t0);
    std::vector<const DecodedBatch*> one = {&b};
    ASSERT_THAT((*w)->Write(one), IsOk());
    auto lines = vm_->WaitForSeries(absl::StrCat("{__name__=\"", metric, "\"}"),
                                    2, absl::Seconds(30));
    ASSERT_THAT(lines, IsOk());
    EXPECT_EQ(ExportedSamples(*lines), 3u);
  }
}

// A path VictoriaMetrics does not serve is answered 400, which must not read
// as refused content (every batch would be set aside): it is the server's
// setup.
TEST_F(VictoriaMetricsWriterTest, UnservedWritePathIsMisconfiguration) {
  auto w = NewVictoriaMetricsWriter(
      {.url = vm_->url(), .write_path = "/api/v1/push"});
  ASSERT_THAT(w, IsOk());
  DecodedBatch b = Batch("dev-q", 1, "vmw_wrong_path", 1, absl::Now());
  std::vector<const DecodedBatch*> one = {&b};
  absl::Status s = (*w)->Write(one);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnavailable,
                          HasSubstr("FLEET_VICTORIAMETRICS_WRITE_PATH")));
  EXPECT_EQ(MisconfigurationReason(s), "path");
  EXPECT_THAT(
      NewVictoriaMetricsWriter({.url = vm_->url(), .write_path = "api/write"}),
      StatusIs(absl::StatusCode::kInvalidArgument,
               HasSubstr("FLEET_VICTORIAMETRICS_WRITE_PATH")));
}

// The server writes a batch again when the answer to the first write was lost:
// with VictoriaMetrics' deduplication on (the fixture runs it as fleetd-server
// requires), readers see each sample once.
TEST_F(VictoriaMetricsWriterTest, WritingTheSameBatchesAgainDoesNotDuplicate) {
  absl::Time t0 = absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now()) - 120);
  DecodedBatch a = Batch("dev-a", 1, "vmw_retried", 4, t0);
  DecodedBatch b = Batch("dev-b", 7, "vmw_retried", 2, t0);
  std::vector<const DecodedBatch*> first = {&a};
  std::vector<const DecodedBatch*> coalesced = {&b, &a};
  ASSERT_THAT(writer_->Write(first), IsOk());
  ASSERT_THAT(writer_->Write(first), IsOk());
  ASSERT_THAT(writer_->Write(coalesced), IsOk());
  auto lines =
      vm_->WaitForSeries("{__name__=\"vmw_retried\"}", 4, absl::Seconds(30));
  ASSERT_THAT(lines, IsOk());
  EXPECT_EQ(ExportedSamples(*lines), 6u);
}

// What VictoriaMetrics would drop while answering 204 is refused instead, so
// the batch is set aside on its device rather than lost without a trace.
TEST_F(VictoriaMetricsWriterTest, SamplesVictoriaMetricsWouldDropAreRefused) {
  const absl::Time now = absl::Now();
  DecodedBatch ahead_3d =
      Batch("dev-w", 1, "vmw_window", 1, now + absl::Hours(72));
  DecodedBatch before_1970 =
      Batch("dev-w", 2, "vmw_window", 1, absl::FromUnixSeconds(-3600));
  for (DecodedBatch* bad : {&ahead_3d, &before_1970}) {
    std::vector<const DecodedBatch*> one = {bad};
    EXPECT_THAT(writer_->Write(one),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("would be dropped silently")));
  }
  // An hour ahead and an hour back (a device clock that steps) are stored.
  DecodedBatch ahead_1h =
      Batch("dev-w", 3, "vmw_window", 1, now + absl::Hours(1));
  DecodedBatch back_1h =
      Batch("dev-x", 4, "vmw_window", 1, now - absl::Hours(1));
  std::vector<const DecodedBatch*> fine = {&ahead_1h, &back_1h};
  ASSERT_THAT(writer_->Write(fine), IsOk());
  auto lines =
      vm_->WaitForSeries("{__name__=\"vmw_window\"}", 2, absl::Seconds(30));
  ASSERT_THAT(lines, IsOk());
  EXPECT_EQ(ExportedSamples(*lines), 2u);
}

TEST(VictoriaMetricsWriterRetentionTest, OldSamplesAreRefusedByRetention) {
  fleetd::testing::VictoriaMetricsFixture::Options o;
  o.retention_period = "2d";
  auto vm = fleetd::testing::VictoriaMetricsFixture::Start(o);
  ASSERT_THAT(vm, IsOk());
  auto w = NewVictoriaMetricsWriter({.url = (*vm)->url()});
  ASSERT_THAT(w, IsOk());
  ASSERT_THAT((*w)->Migrate(), IsOk());  // reads the retention from /flags
  const absl::Time now = absl::Now();
  DecodedBatch old = OneSample("dev-r", now - absl::Hours(72));
  std::vector<const DecodedBatch*> one = {&old};
  EXPECT_THAT((*w)->Write(one),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("would be dropped silently")));
  DecodedBatch recent = OneSample("dev-r", now - absl::Hours(24));
  one = {&recent};
  EXPECT_THAT((*w)->Write(one), IsOk());
}

// The default: the import is acknowledged from VictoriaMetrics' memory, and
// the group committer's replay window covers the crash. VictoriaMetrics is
// SIGKILLed right after the committer acknowledged the samples and restarted;
// the committer notices the new instance and writes them again.
TEST(VictoriaMetricsWriterDurabilityTest,
     AcknowledgedSamplesSurviveACrashThroughTheReplayWindow) {
  auto vm = fleetd::testing::VictoriaMetricsFixture::Start();
  ASSERT_THAT(vm, IsOk());
  metrics::Registry registry;
  auto w = NewVictoriaMetricsWriter({.url = (*vm)->url()});
  ASSERT_THAT(w, IsOk());
  // The identity is VictoriaMetrics' start time in seconds: make sure the
  // restarted process cannot share it (a test-only concern; a production
  // instance lives longer than a second).
  auto first = (*w)->InstanceId();
  ASSERT_THAT(first, IsOk());
  ASSERT_TRUE(fleetd::testing::WaitFor(
      [&] { return absl::ToUnixSeconds(absl::Now()) > std::stoll(*first) + 1; },
      absl::Seconds(10)));
  GroupCommitter gc(w->get(), Clock::Real(), &registry,
                    {.replay_poll_interval = absl::Milliseconds(50)});
  // The monitor knows the instance before the write.
  ASSERT_TRUE(
      fleetd::testing::WaitFor([&] { return gc.monitor_rounds() > 0; }));

  const absl::Time now = absl::Now();
  std::vector<std::shared_ptr<DecodedBatch>> batches;
  for (int i = 0; i < 20; ++i) {
    batches.push_back(std::make_shared<DecodedBatch>(
        OneSample(absl::StrCat("dev-replay-", i), now - absl::Seconds(30))));
  }
  std::vector<GroupCommitter::Ticket> tickets;
  for (const auto& b : batches) {
    auto t = gc.Enqueue(b);
    ASSERT_THAT(t, IsOk());
    tickets.push_back(*t);
  }
  for (const auto& t : tickets) {
    ASSERT_THAT(gc.Wait(t, absl::InfiniteFuture()), IsOk());
  }

  (*vm)->Kill();
  ASSERT_THAT((*vm)->Restart(), IsOk());

  auto lines =
      (*vm)->WaitForSeries("{__name__=\"vmw_crash\"}", 20, absl::Seconds(30));
  ASSERT_THAT(lines, IsOk())
      << "samples acknowledged before the crash are gone";
  EXPECT_EQ(ExportedSamples(*lines), 20u);
  const std::string rendered = registry.Render();
  EXPECT_THAT(rendered,
              HasSubstr("fleetd_backend_restarts_detected_total{backend="
                        "\"victoriametrics\"} 1"));
  EXPECT_THAT(rendered,
              HasSubstr("fleetd_backend_replayed_batches_total{backend="
                        "\"victoriametrics\"} 20"));
}

// With flush_on_write, acknowledged means on disk: VictoriaMetrics SIGKILLed
// right after the write returned still has every sample after its restart,
// without any help from the server.
TEST(VictoriaMetricsWriterDurabilityTest,
     FlushOnWriteSamplesSurviveACrashOnTheirOwn) {
  auto vm = fleetd::testing::VictoriaMetricsFixture::Start();
  ASSERT_THAT(vm, IsOk());
  auto w =
      NewVictoriaMetricsWriter({.url = (*vm)->url(), .flush_on_write = true});
  ASSERT_THAT(w, IsOk());
  const absl::Time now = absl::Now();
  std::vector<DecodedBatch> batches;
  for (int i = 0; i < 20; ++i) {
    batches.push_back(
        OneSample(absl::StrCat("dev-crash-", i), now - absl::Seconds(30)));
  }
  std::vector<const DecodedBatch*> all;
  for (const DecodedBatch& b : batches) all.push_back(&b);
  ASSERT_THAT((*w)->Write(all), IsOk());

  (*vm)->Kill();
  ASSERT_THAT((*vm)->Restart(), IsOk());

  auto lines =
      (*vm)->WaitForSeries("{__name__=\"vmw_crash\"}", 20, absl::Seconds(30));
  ASSERT_THAT(lines, IsOk())
      << "samples acknowledged before the crash are gone";
  EXPECT_EQ(ExportedSamples(*lines), 20u);
}

// A VictoriaMetrics that refuses snapshots (-snapshotAuthKey, which the server
// does not send) cannot make writes durable: retryable, and marked as the
// server's misconfiguration rather than the devices' data.
TEST(VictoriaMetricsWriterDurabilityTest, RefusedSnapshotIsMisconfiguration) {
  fleetd::testing::VictoriaMetricsFixture::Options o;
  o.extra_flags = {"-snapshotAuthKey=fleetd-test-secret"};
  auto vm = fleetd::testing::VictoriaMetricsFixture::Start(o);
  ASSERT_THAT(vm, IsOk());
  auto w =
      NewVictoriaMetricsWriter({.url = (*vm)->url(), .flush_on_write = true});
  ASSERT_THAT(w, IsOk());
  DecodedBatch b = OneSample("dev-snap", absl::Now());
  std::vector<const DecodedBatch*> one = {&b};
  absl::Status s = (*w)->Write(one);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnavailable,
                          HasSubstr("not made durable")));
  EXPECT_EQ(MisconfigurationReason(s), "snapshot");
}

TEST(VictoriaMetricsWriterFlagsTest, ReportsWhetherDeduplicationIsOn) {
  for (const std::string dedup : {"", "1ms"}) {
    SCOPED_TRACE(dedup);
    fleetd::testing::VictoriaMetricsFixture::Options o;
    o.dedup_min_scrape_interval = dedup;
    auto vm = fleetd::testing::VictoriaMetricsFixture::Start(o);
    ASSERT_THAT(vm, IsOk());
    metrics::Registry registry;
    auto w =
        NewVictoriaMetricsWriter({.url = (*vm)->url(), .metrics = &registry});
    ASSERT_THAT(w, IsOk());
    metrics::Gauge& gauge =
        registry.GetGauge("fleetd_victoriametrics_dedup_enabled", "");
    EXPECT_EQ(gauge.Value(), -1);
    ASSERT_THAT((*w)->Ping(), IsOk());  // a warning, never a failed /readyz
    EXPECT_EQ(gauge.Value(), dedup.empty() ? 0 : 1);
  }
}

TEST(VictoriaMetricsFlagsTest, ParsesDedupAndRetention) {
  auto flags = ParseVictoriaMetricsFlags(
      "-dedup.minScrapeInterval=\"1ms\"\n-httpListenAddr=\"127.0.0.1:1\"\n"
      "-retentionPeriod=\"100y\"\n");
  ASSERT_THAT(flags, IsOk());
  EXPECT_EQ(flags->dedup_interval, absl::Milliseconds(1));
  EXPECT_EQ(flags->retention, absl::Hours(24 * 365 * 100));
  flags = ParseVictoriaMetricsFlags("-storageDataPath=\"/x\"\n");
  ASSERT_THAT(flags, IsOk());
  EXPECT_EQ(flags->dedup_interval, absl::ZeroDuration());  // default: off
  EXPECT_EQ(flags->retention, absl::Hours(24 * 31));       // default: 1 month
  flags = ParseVictoriaMetricsFlags("-dedup.minScrapeInterval=\"0s\"\n");
  ASSERT_THAT(flags, IsOk());
  EXPECT_EQ(flags->dedup_interval, absl::ZeroDuration());
  EXPECT_THAT(ParseVictoriaMetricsFlags("-retentionPeriod=\"soon\"\n"),
              StatusIs(absl::StatusCode::kInvalidArgument));

  EXPECT_THAT(ParseVictoriaMetricsRetention("1"),
              IsOkAndHolds(absl::Hours(24 * 31)));
  EXPECT_THAT(ParseVictoriaMetricsRetention("12h"),
              IsOkAndHolds(absl::Hours(12)));
  EXPECT_THAT(ParseVictoriaMetricsRetention("2w"),
              IsOkAndHolds(absl::Hours(24 * 14)));
  EXPECT_THAT(ParseVictoriaMetricsRetention("0.5d"),
              IsOkAndHolds(absl::Hours(12)));
  EXPECT_THAT(ParseVictoriaMetricsRetention("0"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST_F(VictoriaMetricsWriterTest, UnreachableBackendIsUnavailable) {
  auto w = NewVictoriaMetricsWriter(
      {.url = "http://127.0.0.1:1", .timeout = absl::Seconds(5)});
  ASSERT_THAT(w, IsOk());
  DecodedBatch b = Batch("dev-y", 1, "vmw_down", 1, absl::Now());
  std::vector<const DecodedBatch*> one = {&b};
  EXPECT_THAT((*w)->Write(one), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT((*w)->Ping(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(writer_->Ping(), IsOk());
}

// Another receiver's layout (Mimir's /api/v1/push, no /health): what goes on
// the wire is remote write with its three headers, the body decodes as a
// prometheus.WriteRequest, and Ping counts the 404 on /health as reachable.
class RemoteWriteReceiver {
 public:
  RemoteWriteReceiver() {
    server_.Post("/api/v1/push", [this](const httplib::Request& req,
                                        httplib::Response& res) {
      absl::MutexLock lock(&mu_);
      encoding_ = req.get_header_value("Content-Encoding");
      type_ = req.get_header_value("Content-Type");
      version_ = req.get_header_value("X-Prometheus-Remote-Write-Version");
      body_ = req.body;
      res.status = 204;
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    EXPECT_TRUE(
        fleetd::testing::WaitFor([this] { return server_.is_running(); }));
  }
  ~RemoteWriteReceiver() {
    server_.stop();
    thread_.join();
  }
  std::string url() const { return absl::StrCat("http://127.0.0.1:", port_); }

  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  absl::Mutex mu_;
  std::string encoding_ ABSL_GUARDED_BY(mu_);
  std::string type_ ABSL_GUARDED_BY(mu_);
  std::string version_ ABSL_GUARDED_BY(mu_);
  std::string body_ ABSL_GUARDED_BY(mu_);
};

TEST(VictoriaMetricsWriterReceiverTest, SendsRemoteWriteToAnyReceiverPath) {
  RemoteWriteReceiver receiver;
  auto w = NewVictoriaMetricsWriter(
      {.url = receiver.url(), .write_path = "/api/v1/push"});
  ASSERT_THAT(w, IsOk());
  EXPECT_THAT((*w)->Ping(), IsOk());
  DecodedBatch b = OneSample(
      "dev-m", absl::FromUnixSeconds(absl::ToUnixSeconds(absl::Now())));
  std::vector<const DecodedBatch*> one = {&b};
  ASSERT_THAT((*w)->Write(one), IsOk());
  absl::MutexLock lock(&receiver.mu_);
  EXPECT_EQ(receiver.encoding_, "snappy");
  EXPECT_EQ(receiver.type_, "application/x-protobuf");
  EXPECT_EQ(receiver.version_, "0.1.0");
  std::string raw;
  ASSERT_TRUE(
      snappy::Uncompress(receiver.body_.data(), receiver.body_.size(), &raw));
  prometheus::WriteRequest request;
  ASSERT_TRUE(request.ParseFromString(raw));
  ASSERT_EQ(request.timeseries_size(), 1);
  ASSERT_EQ(request.timeseries(0).labels_size(), 3);
  EXPECT_EQ(request.timeseries(0).labels(0).value(), "vmw_crash");
  EXPECT_EQ(request.timeseries(0).labels(1).value(), "dev-m");
  EXPECT_EQ(request.timeseries(0).labels(2).value(), "org-a");
  ASSERT_EQ(request.timeseries(0).samples_size(), 1);
  EXPECT_EQ(request.timeseries(0).samples(0).timestamp(),
            b.metrics.timestamp_seconds(0) * 1000);
}

}  // namespace
}  // namespace fleetd::server
