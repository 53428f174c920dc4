#include "agent/sync/sync_manager.h"

#include <deque>
#include <set>
#include <thread>

#include "agent/storage/memory_storage.h"
#include "agent/storage/storage_wrapper.h"
#include "common/codec/codec.h"
#include "common/status/error_class.h"
#include "common/status/retry_after.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::agent {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;

constexpr absl::Duration kRealTimeout = absl::Seconds(30);

// A scripted server: answers each call with the next scripted status (OK when
// the script is empty) and remembers every request, decoded.
class FakeTransport : public SyncTransport {
 public:
  struct Call {
    std::string stream;
    int64_t sequence_number;
    int32_t retry_count;
    std::string compression;
    std::vector<std::string>
        names;  // metric names / log messages / event names
  };

  absl::StatusOr<v1::SyncMetricsResponse> SyncMetrics(
      const v1::SyncMetricsRequest& r, absl::Duration) override {
    v1::MetricsBatch b = Unpack(r.batch());
    Call c{"metrics",
           r.metadata().sequence_number(),
           r.metadata().retry_count(),
           r.batch().compression(),
           {}};
    for (const auto& m : b.metrics()) c.names.push_back(m.name());
    absl::Status s = Record(c);
    if (!s.ok()) return s;
    v1::SyncMetricsResponse resp;
    resp.set_success(true);
    resp.set_last_sequence_ack(r.metadata().sequence_number());
    absl::MutexLock lock(&mu_);
    if (config_update_.has_value())
      *resp.mutable_config_update() = *config_update_;
    resp.set_duplicate(duplicate_);
    return resp;
  }
  absl::StatusOr<v1::SyncLogsResponse> SyncLogs(const v1::SyncLogsRequest& r,
                                                absl::Duration) override {
    v1::LogsBatch b = Unpack(r.batch());
    Call c{"logs",
           r.metadata().sequence_number(),
           r.metadata().retry_count(),
           r.batch().compression(),
           {}};
    for (const auto& l : b.logs()) c.names.push_back(l.message());
    absl::Status s = Record(c);
    if (!s.ok()) return s;
    v1::SyncLogsResponse resp;
    resp.set_success(true);
    return resp;
  }
  absl::StatusOr<v1::SyncEventsResponse> SyncEvents(
      const v1::SyncEventsRequest& r, absl::Duration) override {
    v1::EventsBatch b = Unpack(r.batch());
    Call c{"events",
           r.metadata().sequence_number(),
           r.metadata().retry_count(),
           r.batch().compression(),
           {}};
    for (const auto& e : b.events()) c.names.push_back(e.name());
    absl::Status s = Record(c);
    if (!s.ok()) return s;
    v1::SyncEventsResponse resp;
    resp.set_success(true);
    return resp;
  }
  absl::StatusOr<v1::GetSyncConfigResponse> GetSyncConfig(
      const v1::GetSyncConfigRequest&, absl::Duration) override {
    v1::GetSyncConfigResponse r;
    r.mutable_config()->set_batch_size(7);
    r.mutable_config()->set_sync_interval_seconds(42);
    r.mutable_config()->set_compression_enabled(true);
    r.mutable_config()->set_compression_type("zstd");
    return r;
  }
  absl::StatusOr<v1::UpdateDeviceInfoResponse> UpdateDeviceInfo(
      const v1::UpdateDeviceInfoRequest&, absl::Duration) override {
    return v1::UpdateDeviceInfoResponse();
  }
  absl::StatusOr<std::unique_ptr<SyncStream>> OpenStream() override {
    return absl::UnimplementedError("no streams here");
  }
  TransportStats stats() const override { return {}; }

  void Script(std::vector<absl::Status> statuses) {
    absl::MutexLock lock(&mu_);
    for (auto& s : statuses) script_.push_back(std::move(s));
  }
  std::vector<Call> calls() {
    absl::MutexLock lock(&mu_);
    return calls_;
  }
  void set_config_update(v1::SyncConfig c) {
    absl::MutexLock lock(&mu_);
    config_update_ = c;
  }

 private:
  template <typename Batch>
  static Batch Unpack(const Batch& wire) {
    if (wire.compressed_data().empty()) return wire;
    auto codec = ParseCompression(wire.compression());
    auto raw = Decompress(*codec, wire.compressed_data(), 1 << 24);
    Batch b;
    EXPECT_TRUE(raw.ok() && b.ParseFromString(*raw));
    EXPECT_EQ(raw->size(), static_cast<size_t>(wire.original_size()));
    return b;
  }
  absl::Status Record(Call c) {
    absl::MutexLock lock(&mu_);
    calls_.push_back(std::move(c));
    if (script_.empty()) return absl::OkStatus();
    absl::Status s = script_.front();
    script_.pop_front();
    return s;
  }

  absl::Mutex mu_;
  std::deque<absl::Status> script_;
  std::vector<Call> calls_;
  std::optional<v1::SyncConfig> config_update_;
  bool duplicate_ = false;
};

// A StreamSync peer: acks each batch (or refuses it, per script) and queues
// scripted commands to answer the next heartbeat.
class FakeStream : public SyncStream {
 public:
  struct Shared {
    absl::Mutex mu;
    std::deque<v1::StreamSyncResponse> outbox;
    std::vector<v1::StreamSyncRequest> received;
    std::deque<v1::StreamSyncResponse> on_heartbeat;
    bool refuse_next_batch = false;
    bool refusal_retryable = false;
  };
  explicit FakeStream(std::shared_ptr<Shared> shared)
      : shared_(std::move(shared)) {}

  absl::Status Write(const v1::StreamSyncRequest& request) override {
    absl::MutexLock lock(&shared_->mu);
    shared_->received.push_back(request);
    if (request.has_heartbeat()) {
      for (auto& r : shared_->on_heartbeat) shared_->outbox.push_back(r);
      shared_->on_heartbeat.clear();
      return absl::OkStatus();
    }
    v1::StreamSyncResponse ack;
    ack.mutable_ack()->set_sequence_number(
        request.metadata().sequence_number());
    ack.mutable_ack()->set_success(!shared_->refuse_next_batch);
    if (shared_->refuse_next_batch) {
      ack.mutable_ack()->set_error_message("bad batch");
      ack.mutable_ack()->set_retryable(shared_->refusal_retryable);
    }
    shared_->refuse_next_batch = false;
    shared_->outbox.push_back(ack);
    return absl::OkStatus();
  }
  absl::StatusOr<v1::StreamSyncResponse> Read(absl::Duration) override {
    absl::MutexLock lock(&shared_->mu);
    if (shared_->outbox.empty())
      return absl::DeadlineExceededError("nothing yet");
    v1::StreamSyncResponse r = shared_->outbox.front();
    shared_->outbox.pop_front();
    return r;
  }
  absl::Status CloseSend() override { return absl::OkStatus(); }
  absl::Status Finish(absl::Duration) override { return absl::OkStatus(); }

 private:
  std::shared_ptr<Shared> shared_;
};

class StreamingTransport : public FakeTransport {
 public:
  absl::StatusOr<std::unique_ptr<SyncStream>> OpenStream() override {
    return std::unique_ptr<SyncStream>(new FakeStream(shared));
  }
  std::shared_ptr<FakeStream::Shared> shared =
      std::make_shared<FakeStream::Shared>();
};

class SyncManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    MemoryStorageOptions options;
    options.capacity_bytes = 1 << 20;
    options.clock = &clock_;
    auto s = NewMemoryStorage(options);
    ASSERT_THAT(s, IsOk());
    storage_ = *std::move(s);
  }

  SyncOptions Options() {
    SyncOptions o;
    o.device_id = "dev-1";
    o.org_id = "org-1";
    o.batch_size = 10;
    o.compression = Compression::kNone;
    o.backoff = {.initial = absl::Seconds(1),
                 .multiplier = 2.0,
                 .max = absl::Minutes(5),
                 .jitter = 0.0};
    o.max_retries = 3;
    o.seed = 1;
    return o;
  }

  void StoreMetrics(int n, const std::string& prefix = "m") {
    for (int i = 0; i < n; ++i) {
      v1::Metric m;
      m.set_name(prefix + std::to_string(i));
      m.set_value(i);
      ASSERT_THAT(storage_->AppendMetric(m), IsOk());
    }
  }

  int64_t Unsynced(RecordKind kind = RecordKind::kMetric) {
    auto info = storage_->Info();
    EXPECT_THAT(info, IsOk());
    return info->of(kind).unsynced;
  }

  // Runs SyncNow on another thread, advancing simulated time whenever the
  // manager sleeps; returns the delays it slept.
  std::vector<absl::Duration> SyncDrivingClock(SyncManager& manager,
                                               absl::Status* result) {
    std::atomic<bool> done{false};
    std::thread t([&] {
      *result = manager.SyncNow();
      done = true;
    });
    std::vector<absl::Duration> slept;
    while (!done) {
      if (clock_.AwaitSleepers(1, absl::Milliseconds(5))) {
        absl::Duration d = clock_.NextDeadline() - clock_.MonotonicNow();
        slept.push_back(d);
        clock_.Advance(d);
        // Wait for that sleeper to leave (any sleeper now has a later
        // deadline).
        EXPECT_TRUE(fleetd::testing::WaitFor(
            [&] {
              return done || clock_.NextDeadline() > clock_.MonotonicNow();
            },
            kRealTimeout));
      }
    }
    t.join();
    return slept;
  }

  SimulatedClock clock_;
  std::unique_ptr<Storage> storage_;
  FakeTransport transport_;
};

TEST_F(SyncManagerTest,
       DrainsTheStoreInBatchesAndMarksOnlyAcknowledgedRecords) {
  StoreMetrics(25);
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, Options());
  ASSERT_THAT(manager.SyncNow(), IsOk());
  auto calls = transport_.calls();
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[0].names.size(), 10u);
  EXPECT_EQ(calls[2].names.size(), 5u);
  EXPECT_LT(calls[0].sequence_number, calls[1].sequence_number);
  EXPECT_LT(calls[1].sequence_number, calls[2].sequence_number);
  EXPECT_EQ(Unsynced(), 0);
  SyncMetricsSnapshot m = manager.GetMetrics();
  EXPECT_EQ(m.metrics_synced, 25);
  EXPECT_EQ(m.successful_syncs, 3);
  EXPECT_GT(m.bytes_sent, 0);
  EXPECT_EQ(m.state, "idle");
  // The simulated clock did not move during the exchanges.
  EXPECT_EQ(m.latency_p99, absl::ZeroDuration());
}

TEST_F(SyncManagerTest, SequenceNumbersStartAtUnixNanosAndNeverGoBack) {
  StoreMetrics(10);
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, Options());
  ASSERT_THAT(manager.SyncNow(), IsOk());
  int64_t first = transport_.calls()[0].sequence_number;
  EXPECT_EQ(first, absl::ToUnixNanos(clock_.Now()));
  // Even with the clock unchanged (or set back), the next number is larger.
  StoreMetrics(10);
  ASSERT_THAT(manager.SyncNow(), IsOk());
  EXPECT_EQ(transport_.calls()[1].sequence_number, first + 1);
}

TEST_F(SyncManagerTest, CompressesWhenWorthItAndSkipsWhenNot) {
  // Repetitive names compress well.
  for (int i = 0; i < 10; ++i) {
    v1::Metric m;
    m.set_name("system_cpu_usage_percent_with_a_long_repeated_name");
    (*m.mutable_labels())["host"] = "raspberrypi-kitchen";
    ASSERT_THAT(storage_->AppendMetric(m), IsOk());
  }
  SyncOptions o = Options();
  o.compression = Compression::kZstd;
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, o);
  ASSERT_THAT(manager.SyncNow(), IsOk());
  ASSERT_EQ(transport_.calls().size(), 1u);
  EXPECT_EQ(transport_.calls()[0].compression, "zstd");
  EXPECT_EQ(transport_.calls()[0].names.size(), 10u);
  EXPECT_GT(manager.GetMetrics().compression_ratio, 1.5);
  // A single tiny record gains nothing from compression: sent as is.
  StoreMetrics(1, "x");
  ASSERT_THAT(manager.SyncNow(), IsOk());
  EXPECT_EQ(transport_.calls()[1].compression, "");
}

TEST_F(SyncManagerTest, RetriesWithBackoffUnderTheSameSequenceNumber) {
  StoreMetrics(5);
  transport_.Script(
      {absl::UnavailableError("down"), absl::UnavailableError("down")});
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, Options());
  absl::Status result;
  std::vector<absl::Duration> slept = SyncDrivingClock(manager, &result);
  ASSERT_THAT(result, IsOk());
  EXPECT_THAT(slept,
              ::testing::ElementsAre(absl::Seconds(1), absl::Seconds(2)));
  auto calls = transport_.calls();
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[0].sequence_number, calls[2].sequence_number);
  EXPECT_EQ(calls[0].retry_count, 0);
  EXPECT_EQ(calls[2].retry_count, 2);
  EXPECT_EQ(Unsynced(), 0);
  EXPECT_EQ(manager.GetMetrics().failed_syncs, 2);
  EXPECT_EQ(manager.GetMetrics().consecutive_failures, 0);
}

TEST_F(SyncManagerTest, ServerRetryHintIsHonoured) {
  StoreMetrics(1);
  transport_.Script(
      {WithRetryAfter(absl::ResourceExhaustedError("busy"), absl::Seconds(7))});
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, Options());
  absl::Status result;
  std::vector<absl::Duration> slept = SyncDrivingClock(manager, &result);
  ASSERT_THAT(result, IsOk());
  EXPECT_THAT(slept, ::testing::ElementsAre(absl::Seconds(7)));
}

TEST_F(SyncManagerTest, UnacknowledgedBatchKeepsItsNumberAcrossRestart) {
  StoreMetrics(4);
  SyncOptions o = Options();
  o.max_retries = 1;
  transport_.Script({absl::UnavailableError("offline")});
  int64_t seq;
  {
    SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, o);
    EXPECT_THAT(manager.SyncNow(), StatusIs(absl::StatusCode::kUnavailable));
    seq = transport_.calls()[0].sequence_number;
    EXPECT_EQ(Unsynced(), 4) << "nothing is marked before an ack";
  }
  StoreMetrics(3, "later");  // new data meanwhile
  clock_.Advance(absl::Hours(1));
  SyncManager restarted(storage_.get(), &transport_, &clock_, nullptr, o);
  ASSERT_THAT(restarted.SyncNow(), IsOk());
  auto calls = transport_.calls();
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[1].sequence_number, seq)
      << "the retried batch keeps its number";
  EXPECT_EQ(calls[1].names, calls[0].names) << "and its records";
  EXPECT_GT(calls[2].sequence_number, seq);
  EXPECT_EQ(calls[2].names.size(), 3u);
  EXPECT_EQ(Unsynced(), 0);
}

TEST_F(SyncManagerTest, RejectedBatchIsSetAsideInTheStoreAndDoesNotBlock) {
  StoreMetrics(15);
  transport_.Script(
      {MarkBatchRejected(absl::InvalidArgumentError("bad metric name"))});
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, Options());
  EXPECT_THAT(manager.SyncNow(),
              StatusIs(absl::StatusCode::kFailedPrecondition))
      << "`fleetd sync now` reports set-aside batches as a failure";
  auto calls = transport_.calls();
  ASSERT_EQ(calls.size(), 2u);
  EXPECT_NE(calls[0].sequence_number, calls[1].sequence_number);
  SyncMetricsSnapshot m = manager.GetMetrics();
  EXPECT_EQ(m.set_aside_batches, 1);
  EXPECT_EQ(m.set_aside_records, 10);
  EXPECT_EQ(m.metrics_synced, 5);
  EXPECT_EQ(Unsynced(), 0);
  // Kept inside the store, with the server's reason, not dropped.
  auto info = storage_->Info();
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->set_aside_batches, 1);
  EXPECT_EQ(info->of(RecordKind::kMetric).set_aside, 10);
  auto listed = storage_->ListSetAside();
  ASSERT_THAT(listed, IsOk());
  ASSERT_EQ(listed->size(), 1u);
  EXPECT_EQ((*listed)[0].sequence_number, calls[0].sequence_number);
  EXPECT_EQ((*listed)[0].record_count, 10);
  EXPECT_THAT((*listed)[0].reason, ::testing::HasSubstr("bad metric name"));
  // Re-sendable: retried, it goes out again under a new number.
  ASSERT_THAT(storage_->RetrySetAside("metrics", calls[0].sequence_number),
              IsOk());
  ASSERT_THAT(manager.SyncNow(), IsOk());
  ASSERT_EQ(transport_.calls().size(), 3u);
  EXPECT_GT(transport_.calls()[2].sequence_number, calls[1].sequence_number);
  EXPECT_EQ(transport_.calls()[2].names, calls[0].names);
  EXPECT_EQ(manager.GetMetrics().metrics_synced, 15);
}

// Every failure that is not our server's verdict on the batch is retried under
// the same number until it lands: nothing is set aside or lost.
class NoVerdictTest : public SyncManagerTest,
                      public ::testing::WithParamInterface<absl::Status> {};

TEST_P(NoVerdictTest, IsRetriedUntilDeliveredAndNeverSetAside) {
  StoreMetrics(5);
  transport_.Script({GetParam(), GetParam()});
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, Options());
  absl::Status result;
  std::vector<absl::Duration> slept = SyncDrivingClock(manager, &result);
  ASSERT_THAT(result, IsOk());
  EXPECT_EQ(slept.size(), 2u) << "backed off before each retry";
  auto calls = transport_.calls();
  ASSERT_EQ(calls.size(), 3u);
  EXPECT_EQ(calls[0].sequence_number, calls[2].sequence_number);
  EXPECT_EQ(manager.GetMetrics().set_aside_batches, 0);
  EXPECT_EQ(manager.GetMetrics().metrics_synced, 5);
  EXPECT_EQ(storage_->Info()->set_aside_batches, 0);
}

INSTANTIATE_TEST_SUITE_P(
    ProxyAndTransportFaults, NoVerdictTest,
    ::testing::Values(
        // A proxy's bare HTTP 500 / 400 (Connect fallback codes).
        absl::UnknownError("HTTP 500 without a Connect error"),
        absl::InternalError("HTTP 400 without a Connect error"),
        // Codes that look final but carry no verdict of our server.
        absl::InvalidArgumentError("from a proxy"),
        absl::FailedPreconditionError("no verdict"),
        absl::DataLossError("no verdict"),
        absl::UnimplementedError("no backend configured"),
        absl::OutOfRangeError("no verdict"),
        // Transport faults.
        absl::UnavailableError("connection reset"),
        absl::DeadlineExceededError("timeout"),
        // A verdict with a retryable code is still retried.
        MarkBatchRejected(absl::UnavailableError("backend down"))));

TEST_F(SyncManagerTest, UnauthenticatedStopsSendingAndKeepsTheData) {
  StoreMetrics(5);
  transport_.Script({absl::UnauthenticatedError("revoked key")});
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, Options());
  EXPECT_THAT(manager.SyncNow(), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(manager.SyncNow(), StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_EQ(transport_.calls().size(), 1u)
      << "no second attempt before the probe time";
  EXPECT_EQ(manager.GetMetrics().state, "unauthenticated");
  EXPECT_EQ(Unsynced(), 5);
  clock_.Advance(absl::Minutes(5));  // backoff max: probe again
  ASSERT_THAT(manager.SyncNow(), IsOk());
  EXPECT_EQ(Unsynced(), 0);
}

TEST_F(SyncManagerTest,
       CircuitOpensAfterRepeatedFailuresAndProbesAfterCoolDown) {
  StoreMetrics(5);
  SyncOptions o = Options();
  o.max_retries = 1;
  o.breaker = {.failure_threshold = 3, .open_duration = absl::Seconds(30)};
  transport_.Script({absl::UnavailableError("1"), absl::UnavailableError("2"),
                     absl::UnavailableError("3")});
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, o);
  for (int i = 0; i < 3; ++i) {
    EXPECT_THAT(manager.SyncNow(), StatusIs(absl::StatusCode::kUnavailable));
  }
  EXPECT_THAT(manager.SyncNow(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(transport_.calls().size(), 3u) << "open circuit: no call";
  EXPECT_EQ(manager.GetMetrics().state, "circuit_open");
  clock_.Advance(absl::Seconds(30));
  ASSERT_THAT(manager.SyncNow(), IsOk());
  EXPECT_EQ(transport_.calls().size(), 4u);
  EXPECT_EQ(Unsynced(), 0);
}

TEST_F(SyncManagerTest, RateLimitSpacesBatches) {
  StoreMetrics(30);
  SyncOptions o = Options();
  o.max_records_per_second = 10;  // one batch of 10 per second
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, o);
  absl::Status result;
  std::vector<absl::Duration> slept = SyncDrivingClock(manager, &result);
  ASSERT_THAT(result, IsOk());
  EXPECT_THAT(slept,
              ::testing::ElementsAre(absl::Seconds(1), absl::Seconds(1)));
  EXPECT_EQ(transport_.calls().size(), 3u);
}

TEST_F(SyncManagerTest, FreshDataIsNotStarvedByABacklog) {
  StoreMetrics(50, "old");
  StoreMetrics(10, "new");
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, Options());
  ASSERT_THAT(manager.SyncNow(), IsOk());
  auto calls = transport_.calls();
  ASSERT_GE(calls.size(), 2u);
  EXPECT_EQ(calls[0].names.front(), "old0");
  EXPECT_EQ(calls[1].names.front(), "new0")
      << "second batch carries the newest records";
  EXPECT_EQ(Unsynced(), 0);
  EXPECT_EQ(manager.GetMetrics().metrics_synced, 60);
}

TEST_F(SyncManagerTest, ServerConfigAppliesExceptPinnedSettings) {
  SyncOptions o = Options();
  o.batch_size_pinned = true;
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, o);
  ASSERT_THAT(manager.FetchConfig(), IsOk());
  EXPECT_EQ(manager.options().interval, absl::Seconds(42));
  EXPECT_EQ(manager.options().compression, Compression::kZstd);
  EXPECT_EQ(manager.options().batch_size, 10) << "pinned by the operator";
}

TEST_F(SyncManagerTest, AllStreamsAreSynced) {
  StoreMetrics(3);
  v1::LogEntry l;
  l.set_message("hello");
  ASSERT_THAT(storage_->AppendLog(l), IsOk());
  v1::Event e;
  e.set_name("boot");
  ASSERT_THAT(storage_->AppendEvent(e), IsOk());
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, Options());
  ASSERT_THAT(manager.SyncNow(), IsOk());
  std::set<std::string> streams;
  for (const auto& c : transport_.calls()) streams.insert(c.stream);
  EXPECT_THAT(streams, ::testing::ElementsAre("events", "logs", "metrics"));
  EXPECT_EQ(manager.GetMetrics().logs_synced, 1);
  EXPECT_EQ(manager.GetMetrics().events_synced, 1);
}

TEST_F(SyncManagerTest, BackgroundLoopSyncsOnTriggerAndStopsCleanly) {
  SyncOptions o = Options();
  o.interval = absl::Hours(1);
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, o);
  manager.Start();
  ASSERT_TRUE(
      clock_.AwaitSleepers(1, kRealTimeout));  // first (empty) cycle done
  StoreMetrics(3);
  manager.TriggerSync();
  EXPECT_TRUE(
      fleetd::testing::WaitFor([&] { return Unsynced() == 0; }, kRealTimeout));
  manager.Stop();
  EXPECT_EQ(transport_.calls().size(), 1u);
}

TEST_F(SyncManagerTest, StreamModeSendsBatchesOnTheStreamAndMarksThemOnAck) {
  StoreMetrics(25);
  StreamingTransport transport;
  SyncOptions o = Options();
  o.use_stream = true;
  SyncManager manager(storage_.get(), &transport, &clock_, nullptr, o);
  ASSERT_THAT(manager.SyncNow(), IsOk());
  EXPECT_TRUE(transport.calls().empty()) << "no unary calls in stream mode";
  absl::MutexLock lock(&transport.shared->mu);
  ASSERT_EQ(transport.shared->received.size(), 4u);  // heartbeat + 3 batches
  EXPECT_TRUE(transport.shared->received[0].has_heartbeat());
  EXPECT_EQ(transport.shared->received[0].heartbeat().unsynced_metrics(), 25);
  EXPECT_EQ(transport.shared->received[1].metrics().metrics_size(), 10);
  EXPECT_EQ(Unsynced(), 0);
  EXPECT_EQ(manager.GetMetrics().metrics_synced, 25);
}

TEST_F(SyncManagerTest, ServerPauseStopsSendingUntilItEnds) {
  StoreMetrics(5);
  StreamingTransport transport;
  v1::StreamSyncResponse pause;
  pause.mutable_pause()->set_duration_seconds(20);
  pause.mutable_pause()->set_reason("overloaded");
  transport.shared->on_heartbeat.push_back(pause);
  SyncOptions o = Options();
  o.use_stream = true;
  SyncManager manager(storage_.get(), &transport, &clock_, nullptr, o);
  absl::Status paused = manager.SyncNow();
  EXPECT_THAT(paused, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(GetRetryAfter(paused), absl::Seconds(20));
  EXPECT_EQ(Unsynced(), 5) << "nothing sent while paused";
  clock_.Advance(absl::Seconds(20));
  ASSERT_THAT(manager.SyncNow(), IsOk());
  EXPECT_EQ(Unsynced(), 0);
}

TEST_F(SyncManagerTest, StreamRefusalIsSetAsideAndConfigUpdatesApply) {
  StoreMetrics(15);
  StreamingTransport transport;
  v1::StreamSyncResponse update;
  update.mutable_config_update()->set_sync_interval_seconds(77);
  transport.shared->on_heartbeat.push_back(update);
  transport.shared->refuse_next_batch = true;
  SyncOptions o = Options();
  o.use_stream = true;
  SyncManager manager(storage_.get(), &transport, &clock_, nullptr, o);
  EXPECT_THAT(manager.SyncNow(),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(manager.options().interval, absl::Seconds(77));
  EXPECT_EQ(manager.GetMetrics().set_aside_records, 10);
  EXPECT_EQ(manager.GetMetrics().metrics_synced, 5);
  EXPECT_EQ(Unsynced(), 0);
}

TEST_F(SyncManagerTest, RetryableStreamRefusalIsRetried) {
  StoreMetrics(5);
  StreamingTransport transport;
  transport.shared->refuse_next_batch = true;
  transport.shared->refusal_retryable = true;
  SyncOptions o = Options();
  o.use_stream = true;
  SyncManager manager(storage_.get(), &transport, &clock_, nullptr, o);
  absl::Status result;
  SyncDrivingClock(manager, &result);
  ASSERT_THAT(result, IsOk());
  EXPECT_EQ(manager.GetMetrics().set_aside_batches, 0);
  EXPECT_EQ(manager.GetMetrics().metrics_synced, 5);
}

TEST_F(SyncManagerTest, HeartbeatReportsSetAsideBatches) {
  StoreMetrics(10);
  transport_.Script({MarkBatchRejected(absl::InvalidArgumentError("bad"))});
  SyncManager unary(storage_.get(), &transport_, &clock_, nullptr, Options());
  EXPECT_THAT(unary.SyncNow(), StatusIs(absl::StatusCode::kFailedPrecondition));
  StreamingTransport transport;
  SyncOptions o = Options();
  o.use_stream = true;
  SyncManager manager(storage_.get(), &transport, &clock_, nullptr, o);
  ASSERT_THAT(manager.SyncNow(), IsOk());
  absl::MutexLock lock(&transport.shared->mu);
  ASSERT_FALSE(transport.shared->received.empty());
  const v1::SyncHeartbeat& beat = transport.shared->received[0].heartbeat();
  EXPECT_EQ(beat.set_aside_batches(), 1);
  EXPECT_EQ(beat.set_aside_records(), 10);
}

TEST_F(SyncManagerTest, TriggerDoesNotCutBackoffShort) {
  StoreMetrics(5);
  transport_.Script(
      {absl::UnavailableError("down"), absl::UnavailableError("down")});
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, Options());
  // A trigger (or the server's flush command) pending while the cycle backs
  // off: the backoff still waits its full 1 s and 2 s.
  manager.TriggerSync();
  absl::Status result;
  std::vector<absl::Duration> slept = SyncDrivingClock(manager, &result);
  ASSERT_THAT(result, IsOk());
  EXPECT_THAT(slept,
              ::testing::ElementsAre(absl::Seconds(1), absl::Seconds(2)));
  EXPECT_EQ(transport_.calls().size(), 3u);
}

TEST_F(SyncManagerTest, FlushCommandDoesNotCutBackoffShort) {
  StoreMetrics(5);
  StreamingTransport transport;
  v1::StreamSyncResponse flush;
  flush.mutable_flush()->set_reason("backlog");
  transport.shared->on_heartbeat.push_back(flush);
  transport.shared->refuse_next_batch = true;
  transport.shared->refusal_retryable = true;
  SyncOptions o = Options();
  o.use_stream = true;
  SyncManager manager(storage_.get(), &transport, &clock_, nullptr, o);
  absl::Status result;
  std::vector<absl::Duration> slept = SyncDrivingClock(manager, &result);
  ASSERT_THAT(result, IsOk());
  EXPECT_THAT(slept, ::testing::ElementsAre(absl::Seconds(1)));
}

TEST_F(SyncManagerTest, HalfOpenProbeAnsweredWithAVerdictClosesTheBreaker) {
  StoreMetrics(15);
  SyncOptions o = Options();
  o.max_retries = 1;
  o.breaker = {.failure_threshold = 1, .open_duration = absl::Seconds(30)};
  transport_.Script({absl::UnavailableError("down"),
                     MarkBatchRejected(absl::InvalidArgumentError("poison"))});
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, o);
  EXPECT_THAT(manager.SyncNow(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(manager.GetMetrics().state, "circuit_open");
  clock_.Advance(absl::Seconds(30));
  // The probe is answered with a verdict: the server is healthy, the rest of
  // the queue follows in the same cycle.
  EXPECT_THAT(manager.SyncNow(),
              StatusIs(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(manager.GetMetrics().metrics_synced, 5);
  StoreMetrics(3, "later");
  ASSERT_THAT(manager.SyncNow(), IsOk());
  EXPECT_EQ(Unsynced(), 0);
  EXPECT_EQ(transport_.calls().size(), 4u);
}

TEST_F(SyncManagerTest, RateLimitBurstFollowsTheBatchSize) {
  StoreMetrics(60);
  SyncOptions o = Options();
  o.max_records_per_second = 10;
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, o);
  v1::SyncConfig bigger;
  bigger.set_batch_size(20);  // larger batches than the initial burst
  manager.ApplyConfig(bigger);
  absl::Status result;
  std::vector<absl::Duration> slept = SyncDrivingClock(manager, &result);
  ASSERT_THAT(result, IsOk());
  // 20 records per batch at 10/s: 2 s between batches (the first finds the
  // 10 tokens of the initial burst and waits for 10 more).
  EXPECT_THAT(slept, ::testing::ElementsAre(absl::Seconds(1), absl::Seconds(2),
                                            absl::Seconds(2)));
  EXPECT_EQ(transport_.calls().size(), 3u);
}

TEST_F(SyncManagerTest, ServerPerStreamRateLimitsApply) {
  StoreMetrics(30);
  v1::LogEntry l;
  l.set_message("x");
  for (int i = 0; i < 10; ++i) ASSERT_THAT(storage_->AppendLog(l), IsOk());
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, Options());
  v1::SyncConfig c;
  c.set_max_metrics_per_second(5);
  c.set_max_logs_per_second(1000);
  manager.ApplyConfig(c);
  absl::Status result;
  std::vector<absl::Duration> slept = SyncDrivingClock(manager, &result);
  ASSERT_THAT(result, IsOk());
  // Metrics: 10 per batch at 5/s; logs go unthrottled in between.
  EXPECT_THAT(slept,
              ::testing::ElementsAre(absl::Seconds(2), absl::Seconds(2)));
  EXPECT_EQ(Unsynced(RecordKind::kLog), 0);
  EXPECT_EQ(Unsynced(), 0);
}

TEST_F(SyncManagerTest, ServerRetryAndBackoffSettingsApply) {
  StoreMetrics(5);
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, Options());
  v1::SyncConfig c;
  c.set_max_retries(2);
  c.set_initial_backoff_seconds(3);
  c.set_max_backoff_seconds(60);
  c.set_backoff_multiplier(3.0);
  manager.ApplyConfig(c);
  EXPECT_EQ(manager.options().max_retries, 2);
  EXPECT_EQ(manager.options().backoff.max, absl::Seconds(60));
  transport_.Script({absl::UnavailableError("1"), absl::UnavailableError("2"),
                     absl::UnavailableError("3")});
  absl::Status result;
  std::vector<absl::Duration> slept = SyncDrivingClock(manager, &result);
  EXPECT_THAT(result, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(slept, ::testing::ElementsAre(absl::Seconds(3)))
      << "two attempts this cycle, 3 s apart";
  EXPECT_EQ(transport_.calls().size(), 2u);
  EXPECT_EQ(Unsynced(), 5) << "max_retries never drops data";
  slept = SyncDrivingClock(manager, &result);
  EXPECT_THAT(slept, ::testing::ElementsAre(absl::Seconds(9)))
      << "the backoff keeps growing by the server's multiplier";
  ASSERT_THAT(result, IsOk());
  EXPECT_EQ(Unsynced(), 0);
}

// Forwards to a real store and records what the manager asks of it.
class RecordingStorage : public StorageWrapper {
 public:
  using StorageWrapper::StorageWrapper;
  absl::StatusOr<std::vector<StoredMetric>> ReadMetrics(
      const ReadOptions& o) override {
    ++reads;
    return StorageWrapper::ReadMetrics(o);
  }
  absl::StatusOr<std::vector<StoredLog>> ReadLogs(
      const ReadOptions& o) override {
    ++reads;
    return StorageWrapper::ReadLogs(o);
  }
  absl::StatusOr<std::vector<StoredEvent>> ReadEvents(
      const ReadOptions& o) override {
    ++reads;
    return StorageWrapper::ReadEvents(o);
  }
  absl::StatusOr<int64_t> CleanOlderThan(absl::Duration age,
                                         CleanScope scope) override {
    cleaned_older_than.push_back(age);
    return StorageWrapper::CleanOlderThan(age, scope);
  }
  absl::Status SetMaxBytes(int64_t max_bytes) override {
    max_bytes_set.push_back(max_bytes);
    return absl::OkStatus();
  }

  int reads = 0;
  std::vector<absl::Duration> cleaned_older_than;
  std::vector<int64_t> max_bytes_set;
};

TEST_F(SyncManagerTest, ServerRetentionAndStorageQuotaApply) {
  RecordingStorage recording(storage_.get());
  SyncOptions o = Options();
  SyncManager manager(&recording, &transport_, &clock_, nullptr, o);
  v1::SyncConfig c;
  c.set_retention_hours(2);
  c.set_max_local_storage_bytes(5'000'000);
  manager.ApplyConfig(c);
  EXPECT_THAT(recording.max_bytes_set, ::testing::ElementsAre(5'000'000));
  StoreMetrics(3);
  ASSERT_THAT(manager.SyncNow(), IsOk());
  EXPECT_THAT(recording.cleaned_older_than,
              ::testing::ElementsAre(absl::Hours(2)));
  // Synced history older than the retention goes at the next cycle.
  clock_.Advance(absl::Hours(3));
  ASSERT_THAT(manager.SyncNow(), IsOk());
  EXPECT_EQ(storage_->Info()->of(RecordKind::kMetric).synced, 0);
}

TEST_F(SyncManagerTest, PinnedSettingsIgnoreTheServer) {
  RecordingStorage recording(storage_.get());
  SyncOptions o = Options();
  o.max_retries_pinned = true;
  o.backoff_pinned = true;
  o.retention_pinned = true;
  o.storage_limits_pinned = true;
  SyncManager manager(&recording, &transport_, &clock_, nullptr, o);
  v1::SyncConfig c;
  c.set_max_retries(9);
  c.set_initial_backoff_seconds(7);
  c.set_retention_hours(2);
  c.set_max_local_storage_bytes(5'000'000);
  manager.ApplyConfig(c);
  EXPECT_EQ(manager.options().max_retries, 3);
  EXPECT_EQ(manager.options().backoff.initial, absl::Seconds(1));
  EXPECT_EQ(manager.options().retention, absl::ZeroDuration());
  EXPECT_TRUE(recording.max_bytes_set.empty());
}

TEST_F(SyncManagerTest, EachBatchIsReadFromTheStoreOnce) {
  RecordingStorage recording(storage_.get());
  StoreMetrics(25);
  SyncOptions o = Options();
  o.compression = Compression::kZstd;
  SyncManager manager(&recording, &transport_, &clock_, nullptr, o);
  ASSERT_THAT(manager.SyncNow(), IsOk());
  int metric_batches = 3;
  // One read per batch, plus the empty read of each stream that ends it.
  EXPECT_EQ(recording.reads, metric_batches + 3);
}

TEST_F(SyncManagerTest, StreamModeFallsBackToUnaryWithoutStreams) {
  StoreMetrics(3);
  SyncOptions o = Options();
  o.use_stream = true;
  SyncManager manager(storage_.get(), &transport_, &clock_, nullptr, o);
  ASSERT_THAT(manager.SyncNow(), IsOk());
  EXPECT_EQ(transport_.calls().size(), 1u);
  EXPECT_EQ(Unsynced(), 0);
}

}  // namespace
}  // namespace fleetd::agent
