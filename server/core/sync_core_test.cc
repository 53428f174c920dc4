#include "server/core/sync_core.h"

#include <atomic>
#include <map>
#include <memory>
#include <set>
#include <thread>
#include <tuple>

#include "common/status/error_class.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/auth/api_key.h"

namespace fleetd::server {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::fleetd::testing::WaitFor;

class FakeKeys : public KeyLookup {
 public:
  absl::StatusOr<std::optional<DeviceIdentity>> LookupKeyHash(
      const std::string& hash) override {
    absl::MutexLock lock(&mu_);
    auto it = keys_.find(hash);
    if (it == keys_.end()) return std::optional<DeviceIdentity>();
    return std::optional<DeviceIdentity>(it->second);
  }
  std::string Add(const std::string& device, const std::string& org) {
    auto k = GenerateApiKey();
    absl::MutexLock lock(&mu_);
    keys_[HashApiKey(k->api_key)] = {device, org, k->key_id};
    return k->api_key;
  }

 private:
  absl::Mutex mu_;
  std::map<std::string, DeviceIdentity> keys_;
};

class FakeLedger : public Ledger, public DeviceRegistry {
 public:
  absl::StatusOr<std::vector<bool>> AreApplied(
      absl::Span<const LedgerEntry> e) override {
    absl::MutexLock lock(&mu_);
    std::vector<bool> out;
    for (const auto& x : e) out.push_back(applied_.count(Key(x)) > 0);
    return out;
  }
  absl::Status RecordApplied(absl::Span<const LedgerEntry> e) override {
    absl::MutexLock lock(&mu_);
    for (const auto& x : e) applied_.insert(Key(x));
    return absl::OkStatus();
  }
  absl::Status TouchDevices(absl::Span<const std::string> ids,
                            absl::Time) override {
    absl::MutexLock lock(&mu_);
    for (const auto& id : ids) touched_.insert(id);
    return absl::OkStatus();
  }
  absl::Status UpdateDeviceInfo(const DeviceIdentity& d,
                                const v1::DeviceInfo& info,
                                const v1::SyncDeviceCapability*,
                                absl::Time) override {
    absl::MutexLock lock(&mu_);
    infos_[d.device_id] = info.hostname();
    return absl::OkStatus();
  }
  absl::Status RecordSyncHealth(
      absl::Span<const SyncHealthReport> reports) override {
    absl::MutexLock lock(&mu_);
    for (const auto& r : reports) health_[r.device_id] = r.health;
    return absl::OkStatus();
  }
  std::optional<SyncHealth> health(const std::string& id) {
    absl::MutexLock lock(&mu_);
    auto it = health_.find(id);
    if (it == health_.end()) return std::nullopt;
    return it->second;
  }
  size_t applied_count() {
    absl::MutexLock lock(&mu_);
    return applied_.size();
  }
  bool touched(const std::string& id) {
    absl::MutexLock lock(&mu_);
    return touched_.count(id) > 0;
  }
  std::string hostname(const std::string& id) {
    absl::MutexLock lock(&mu_);
    return infos_[id];
  }

 private:
  static std::tuple<std::string, std::string, int64_t> Key(
      const LedgerEntry& e) {
    return {e.device_id, e.stream, e.sequence_number};
  }
  absl::Mutex mu_;
  std::set<std::tuple<std::string, std::string, int64_t>> applied_;
  std::set<std::string> touched_;
  std::map<std::string, std::string> infos_;
  std::map<std::string, SyncHealth> health_;
};

class RecordingWriter : public Writer {
 public:
  absl::string_view name() const override { return "recording"; }
  absl::Status Write(absl::Span<const DecodedBatch* const> batches) override {
    absl::MutexLock lock(&mu_);
    ++in_flight_;
    mu_.Await(absl::Condition(
        +[](bool* open) { return *open; }, &open_));
    --in_flight_;
    if (!fail_.ok()) return fail_;
    for (const DecodedBatch* b : batches) {
      for (int i = 0; i < b->metrics.size(); ++i) {
        rows_.push_back(b->device.device_id + "/" +
                        std::string(b->metrics.name(i)));
      }
      for (const auto& l : b->logs.logs())
        rows_.push_back(b->device.device_id + "/" + l.message());
    }
    return absl::OkStatus();
  }
  absl::Status Ping() override { return absl::OkStatus(); }
  std::vector<std::string> rows() {
    absl::MutexLock lock(&mu_);
    return rows_;
  }
  void set_fail(absl::Status s) {
    absl::MutexLock lock(&mu_);
    fail_ = std::move(s);
  }
  void set_open(bool open) {
    absl::MutexLock lock(&mu_);
    open_ = open;
  }
  int in_flight() {
    absl::MutexLock lock(&mu_);
    return in_flight_;
  }

 private:
  absl::Mutex mu_;
  std::vector<std::string> rows_;
  absl::Status fail_;
  bool open_ = true;
  int in_flight_ = 0;
};

class CollectingSink : public StreamSink {
 public:
  bool Send(const v1::StreamSyncResponse& r) override {
    absl::MutexLock lock(&mu_);
    sent_.push_back(r);
    return true;
  }
  std::vector<v1::StreamSyncResponse> sent() {
    absl::MutexLock lock(&mu_);
    return sent_;
  }

 private:
  absl::Mutex mu_;
  std::vector<v1::StreamSyncResponse> sent_;
};

class SyncCoreTest : public ::testing::Test {
 protected:
  SyncCoreTest()
      : auth_(&keys_, &clock_, {}),
        metrics_commit_(&metrics_writer_, &clock_, nullptr,
                        {.breaker = {.failure_threshold = 1000}}),
        logs_commit_(&logs_writer_, &clock_, nullptr, {}),
        router_({{DataKind::kMetrics, {&metrics_commit_}},
                 {DataKind::kLogs, {&logs_commit_}}}),
        core_(&auth_, &ledger_, &ledger_, &router_, &clock_, &registry_, {}) {
    key_ = keys_.Add("dev-1", "org-1");
  }

  CallContext Context(const std::string& key) {
    CallContext c;
    c.api_key = key;
    c.protocol = "test";
    return c;
  }

  static v1::SyncMetricsRequest Metrics(int64_t seq, int n) {
    v1::SyncMetricsRequest r;
    r.mutable_metadata()->set_sequence_number(seq);
    for (int i = 0; i < n; ++i) {
      v1::Metric* m = r.mutable_batch()->add_metrics();
      m->set_name("m" + std::to_string(i));
      m->set_value(i);
    }
    return r;
  }

  SimulatedClock clock_;
  FakeKeys keys_;
  FakeLedger ledger_;
  CachingAuthenticator auth_;
  RecordingWriter metrics_writer_;
  RecordingWriter logs_writer_;
  GroupCommitter metrics_commit_;
  GroupCommitter logs_commit_;
  Router router_;
  metrics::Registry registry_;
  SyncCore core_;
  std::string key_;
};

TEST_F(SyncCoreTest, BatchIsWrittenRecordedAndAcknowledged) {
  auto r = core_.SyncMetrics(Context(key_), Metrics(7, 3));
  ASSERT_THAT(r, IsOk());
  EXPECT_TRUE(r->success());
  EXPECT_EQ(r->last_sequence_ack(), 7);
  EXPECT_FALSE(r->duplicate());
  EXPECT_THAT(metrics_writer_.rows(),
              ::testing::ElementsAre("dev-1/m0", "dev-1/m1", "dev-1/m2"));
  EXPECT_EQ(ledger_.applied_count(), 1u);
  core_.FlushLastSeen();
  EXPECT_TRUE(ledger_.touched("dev-1"));
}

TEST_F(SyncCoreTest, RetriedBatchIsAcknowledgedButWrittenOnce) {
  ASSERT_THAT(core_.SyncMetrics(Context(key_), Metrics(7, 2)), IsOk());
  auto again = core_.SyncMetrics(Context(key_), Metrics(7, 2));
  ASSERT_THAT(again, IsOk());
  EXPECT_TRUE(again->duplicate());
  EXPECT_EQ(metrics_writer_.rows().size(), 2u);
  // Same number on another stream is a different batch.
  auto logs = v1::SyncLogsRequest();
  logs.mutable_metadata()->set_sequence_number(7);
  logs.mutable_batch()->add_logs()->set_message("hello");
  ASSERT_THAT(core_.SyncLogs(Context(key_), logs), IsOk());
  EXPECT_THAT(logs_writer_.rows(), ::testing::ElementsAre("dev-1/hello"));
}

TEST_F(SyncCoreTest, BackendFailureIsRetryableAndNothingIsRecorded) {
  metrics_writer_.set_fail(absl::UnavailableError("vm down"));
  EXPECT_THAT(core_.SyncMetrics(Context(key_), Metrics(9, 2)),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(ledger_.applied_count(), 0u);
  metrics_writer_.set_fail(absl::OkStatus());
  auto retry = core_.SyncMetrics(Context(key_), Metrics(9, 2));
  ASSERT_THAT(retry, IsOk());
  EXPECT_FALSE(retry->duplicate());
  EXPECT_EQ(metrics_writer_.rows().size(), 2u);
  EXPECT_EQ(ledger_.applied_count(), 1u);
}

TEST_F(SyncCoreTest,
       ConcurrentRetryOfAnInFlightBatchWaitsAndIsNotWrittenTwice) {
  metrics_writer_.set_open(false);
  absl::StatusOr<v1::SyncMetricsResponse> first, second;
  std::thread a(
      [&] { first = core_.SyncMetrics(Context(key_), Metrics(11, 1)); });
  ASSERT_TRUE(WaitFor([&] { return metrics_writer_.in_flight() == 1; }));
  std::thread b(
      [&] { second = core_.SyncMetrics(Context(key_), Metrics(11, 1)); });
  // The retry must not reach the writer while the first is in flight.
  metrics_writer_.set_open(true);
  a.join();
  b.join();
  ASSERT_THAT(first, IsOk());
  ASSERT_THAT(second, IsOk());
  EXPECT_NE(first->duplicate(), second->duplicate());
  EXPECT_EQ(metrics_writer_.rows().size(), 1u);
}

// Answers of the asynchronous forms, as they arrive.
class Answers {
 public:
  Reply<v1::SyncMetricsResponse> Slot() {
    return [this](absl::StatusOr<v1::SyncMetricsResponse> r) {
      absl::MutexLock lock(&mu_);
      got_.push_back(std::move(r));
    };
  }
  std::vector<absl::StatusOr<v1::SyncMetricsResponse>> got() {
    absl::MutexLock lock(&mu_);
    return got_;
  }
  size_t count() { return got().size(); }

 private:
  absl::Mutex mu_;
  std::vector<absl::StatusOr<v1::SyncMetricsResponse>> got_
      ABSL_GUARDED_BY(mu_);
};

TEST_F(SyncCoreTest, AsyncCallReturnsAtOnceAndIsAnsweredOnceRecorded) {
  metrics_writer_.set_open(false);
  Answers answers;
  // Returns while the backend write is held: nothing waits on this thread.
  core_.SyncMetricsAsync(Context(key_), Metrics(21, 2), answers.Slot());
  ASSERT_TRUE(WaitFor([&] { return metrics_writer_.in_flight() == 1; }));
  EXPECT_EQ(answers.count(), 0u);
  EXPECT_EQ(ledger_.applied_count(), 0u);
  metrics_writer_.set_open(true);
  ASSERT_TRUE(WaitFor([&] { return answers.count() == 1; }));
  ASSERT_THAT(answers.got()[0], IsOk());
  EXPECT_EQ(answers.got()[0]->last_sequence_ack(), 21);
  EXPECT_FALSE(answers.got()[0]->duplicate());
  // Acknowledged only once recorded.
  EXPECT_EQ(ledger_.applied_count(), 1u);
  EXPECT_EQ(metrics_writer_.rows().size(), 2u);
}

TEST_F(SyncCoreTest, AsyncRefusalsAreAnsweredBeforeTheCallReturns) {
  Answers answers;
  core_.SyncMetricsAsync(Context("fleetd_not-a-key"), Metrics(1, 1),
                         answers.Slot());
  ASSERT_EQ(answers.count(), 1u);
  EXPECT_THAT(answers.got()[0], StatusIs(absl::StatusCode::kUnauthenticated));
  v1::SyncMetricsRequest bad = Metrics(2, 1);
  bad.mutable_batch()->mutable_metrics(0)->set_name("not a name");
  core_.SyncMetricsAsync(Context(key_), bad, answers.Slot());
  ASSERT_EQ(answers.count(), 2u);
  EXPECT_THAT(answers.got()[1], StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(metrics_writer_.rows().empty());
}

// The request as received (the front door's binary codec): decoded from its
// bytes, recorded and written as the message form is, a retry of it answered
// as a duplicate, and bytes that are no request refused as the batch's
// rejection before anything is written.
TEST_F(SyncCoreTest, WireRequestsAreAppliedAsMessagesAre) {
  Answers answers;
  const std::string bytes = Metrics(23, 3).SerializeAsString();
  core_.SyncMetricsWireAsync(Context(key_), bytes, answers.Slot());
  ASSERT_TRUE(WaitFor([&] { return answers.count() == 1; }));
  ASSERT_THAT(answers.got()[0], IsOk());
  EXPECT_EQ(answers.got()[0]->last_sequence_ack(), 23);
  EXPECT_FALSE(answers.got()[0]->duplicate());
  EXPECT_EQ(metrics_writer_.rows().size(), 3u);
  EXPECT_EQ(ledger_.applied_count(), 1u);

  core_.SyncMetricsAsync(Context(key_), Metrics(23, 3), answers.Slot());
  ASSERT_TRUE(WaitFor([&] { return answers.count() == 2; }));
  ASSERT_THAT(answers.got()[1], IsOk());
  EXPECT_TRUE(answers.got()[1]->duplicate()) << "the same batch, once";
  EXPECT_EQ(metrics_writer_.rows().size(), 3u);

  core_.SyncMetricsWireAsync(Context(key_), bytes.substr(0, bytes.size() - 1),
                             answers.Slot());
  ASSERT_EQ(answers.count(), 3u);
  EXPECT_THAT(answers.got()[2], StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(IsBatchRejected(answers.got()[2].status()));
  core_.SyncMetricsWireAsync(Context("fleetd_not-a-key"), bytes,
                             answers.Slot());
  ASSERT_EQ(answers.count(), 4u);
  EXPECT_THAT(answers.got()[3], StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_EQ(metrics_writer_.rows().size(), 3u);
  EXPECT_EQ(ledger_.applied_count(), 1u);
}

TEST_F(SyncCoreTest, AsyncRetryOfABatchUnderWayJoinsItAndIsWrittenOnce) {
  metrics_writer_.set_open(false);
  Answers answers;
  core_.SyncMetricsAsync(Context(key_), Metrics(22, 1), answers.Slot());
  ASSERT_TRUE(WaitFor([&] { return metrics_writer_.in_flight() == 1; }));
  core_.SyncMetricsAsync(Context(key_), Metrics(22, 1), answers.Slot());
  EXPECT_EQ(answers.count(), 0u);
  metrics_writer_.set_open(true);
  ASSERT_TRUE(WaitFor([&] { return answers.count() == 2; }));
  ASSERT_THAT(answers.got()[0], IsOk());
  ASSERT_THAT(answers.got()[1], IsOk());
  EXPECT_NE(answers.got()[0]->duplicate(), answers.got()[1]->duplicate());
  EXPECT_EQ(metrics_writer_.rows().size(), 1u);
  EXPECT_EQ(ledger_.applied_count(), 1u);
}

TEST_F(SyncCoreTest, BlockingCallPastItsDeadlineStillRecordsTheBatchOnce) {
  metrics_writer_.set_open(false);
  CallContext context = Context(key_);
  context.deadline = clock_.Now() + absl::Seconds(5);
  absl::StatusOr<v1::SyncMetricsResponse> first;
  std::thread caller(
      [&] { first = core_.SyncMetrics(context, Metrics(23, 1)); });
  ASSERT_TRUE(WaitFor([&] { return metrics_writer_.in_flight() == 1; }));
  clock_.Advance(absl::Seconds(6));
  caller.join();
  EXPECT_THAT(first, StatusIs(absl::StatusCode::kDeadlineExceeded));
  // The delivery goes on: once it lands it is recorded, so the device's
  // retry is a duplicate and nothing is written twice.
  metrics_writer_.set_open(true);
  ASSERT_TRUE(WaitFor([&] { return ledger_.applied_count() == 1; }));
  auto retry = core_.SyncMetrics(Context(key_), Metrics(23, 1));
  ASSERT_THAT(retry, IsOk());
  EXPECT_TRUE(retry->duplicate());
  EXPECT_EQ(metrics_writer_.rows().size(), 1u);
}

TEST_F(SyncCoreTest, AsyncCallIsAnsweredAtItsDeadlineAndTheBatchStillOnce) {
  metrics_writer_.set_open(false);
  CallContext context = Context(key_);
  context.deadline = clock_.Now() + absl::Seconds(5);
  Answers answers;
  core_.SyncMetricsAsync(context, Metrics(25, 1), answers.Slot());
  ASSERT_TRUE(WaitFor([&] { return metrics_writer_.in_flight() == 1; }));
  clock_.Advance(absl::Seconds(4));
  // Not before the deadline: the answer still waits for the delivery.
  ASSERT_TRUE(
      WaitFor([&] { return clock_.NextDeadline() > clock_.MonotonicNow(); }));
  EXPECT_EQ(answers.count(), 0u);
  // The write still hangs, but the call is answered at its deadline, so a
  // stuck backend holds no call (nor its request) past it.
  clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(WaitFor([&] { return answers.count() == 1; }));
  EXPECT_THAT(answers.got()[0], StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_EQ(ledger_.applied_count(), 0u);
  // The delivery goes on: once it lands it is recorded (the late outcome is
  // not given to the caller twice), and the retry is a duplicate.
  metrics_writer_.set_open(true);
  ASSERT_TRUE(WaitFor([&] { return ledger_.applied_count() == 1; }));
  core_.SyncMetricsAsync(Context(key_), Metrics(25, 1), answers.Slot());
  ASSERT_TRUE(WaitFor([&] { return answers.count() == 2; }));
  ASSERT_THAT(answers.got()[1], IsOk());
  EXPECT_TRUE(answers.got()[1]->duplicate());
  EXPECT_EQ(metrics_writer_.rows().size(), 1u);
  EXPECT_EQ(answers.count(), 2u);
}

TEST_F(SyncCoreTest, DestructorWaitsForDeliveriesUnderWay) {
  auto core = std::make_unique<SyncCore>(&auth_, &ledger_, &ledger_, &router_,
                                         &clock_, nullptr, SyncCore::Options{});
  metrics_writer_.set_open(false);
  std::atomic<bool> destroyed{false};
  std::atomic<bool> answered_before_destroyed{false};
  core->SyncMetricsAsync(Context(key_), Metrics(24, 1),
                         [&](absl::StatusOr<v1::SyncMetricsResponse> r) {
                           EXPECT_THAT(r, IsOk());
                           answered_before_destroyed = !destroyed.load();
                         });
  ASSERT_TRUE(WaitFor([&] { return metrics_writer_.in_flight() == 1; }));
  std::thread destroyer([&] {
    core.reset();
    destroyed = true;
  });
  metrics_writer_.set_open(true);
  destroyer.join();
  EXPECT_TRUE(answered_before_destroyed.load());
  EXPECT_EQ(ledger_.applied_count(), 1u);
}

TEST_F(SyncCoreTest, BadKeysWriteNothing) {
  EXPECT_THAT(core_.SyncMetrics(Context(""), Metrics(1, 1)),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_THAT(core_.SyncMetrics(Context("fdk_nope"), Metrics(1, 1)),
              StatusIs(absl::StatusCode::kUnauthenticated));
  auto unknown = GenerateApiKey();
  EXPECT_THAT(core_.SyncMetrics(Context(unknown->api_key), Metrics(1, 1)),
              StatusIs(absl::StatusCode::kUnauthenticated));
  EXPECT_TRUE(metrics_writer_.rows().empty());
  EXPECT_EQ(ledger_.applied_count(), 0u);
}

TEST_F(SyncCoreTest, NamingAnotherDeviceIsDeniedAndWritesNothing) {
  auto r = Metrics(1, 1);
  r.mutable_metadata()->set_device_id("dev-2");
  EXPECT_THAT(core_.SyncMetrics(Context(key_), r),
              StatusIs(absl::StatusCode::kPermissionDenied));
  EXPECT_TRUE(metrics_writer_.rows().empty());
}

TEST_F(SyncCoreTest, UnroutedKindIsUnimplemented) {
  v1::SyncEventsRequest r;
  r.mutable_batch()->add_events()->set_name("boot");
  EXPECT_THAT(core_.SyncEvents(Context(key_), r),
              StatusIs(absl::StatusCode::kUnimplemented));
}

TEST_F(SyncCoreTest, GetSyncConfigFollowsTheTierTable) {
  v1::GetSyncConfigRequest r;
  r.mutable_capability()->set_tier(1);
  auto c = core_.GetSyncConfig(Context(key_), r);
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->config().sync_interval_seconds(), 300);
  EXPECT_EQ(c->config().batch_size(), 1000);
  EXPECT_EQ(c->config().compression_type(), "zstd");
  EXPECT_EQ(c->config().retention_hours(), 168);
  EXPECT_EQ(c->config().max_metrics_per_second(), 1000);
  r.mutable_capability()->set_tier(0);
  r.mutable_capability()->set_total_disk(20'000'000);
  r.mutable_capability()->set_total_ram(128'000'000);
  c = core_.GetSyncConfig(Context(key_), r);
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->config().sync_interval_seconds(), 60);
  EXPECT_EQ(c->config().batch_size(), 100);
  EXPECT_EQ(c->config().compression_type(), "gzip");
  r.mutable_capability()->set_total_disk(1'000'000);
  c = core_.GetSyncConfig(Context(key_), r);
  ASSERT_THAT(c, IsOk());
  EXPECT_EQ(c->config().sync_interval_seconds(), 10);
  EXPECT_EQ(c->config().batch_size(), 10);
  EXPECT_EQ(c->config().compression_type(), "none");
  r.set_device_id("dev-9");
  EXPECT_THAT(core_.GetSyncConfig(Context(key_), r),
              StatusIs(absl::StatusCode::kPermissionDenied));
}

TEST_F(SyncCoreTest, UpdateDeviceInfoStoresTheReport) {
  v1::UpdateDeviceInfoRequest r;
  r.mutable_info()->set_hostname("pi-kitchen");
  ASSERT_THAT(core_.UpdateDeviceInfo(Context(key_), r), IsOk());
  EXPECT_EQ(ledger_.hostname("dev-1"), "pi-kitchen");
}

TEST_F(SyncCoreTest, StreamAcksBatchesAndAnswersHeartbeats) {
  CollectingSink sink;
  auto session = core_.OpenStream(Context(key_), &sink);
  ASSERT_THAT(session, IsOk());
  v1::StreamSyncRequest req;
  req.mutable_metadata()->set_sequence_number(100);
  req.mutable_metadata()->mutable_capability()->set_tier(2);
  *req.mutable_metrics() = Metrics(100, 2).batch();
  ASSERT_THAT((*session)->OnRequest(req), IsOk());
  v1::StreamSyncRequest bad;
  bad.mutable_metadata()->set_sequence_number(101);
  bad.mutable_metrics()->add_metrics()->set_name("bad name");
  ASSERT_THAT((*session)->OnRequest(bad), IsOk())
      << "a bad batch does not end the stream";
  v1::StreamSyncRequest hb;
  hb.mutable_heartbeat()->set_unsynced_metrics(500);
  ASSERT_THAT((*session)->OnRequest(hb), IsOk());
  EXPECT_THAT((*session)->Finish(), IsOk());
  auto sent = sink.sent();
  ASSERT_EQ(sent.size(), 4u);
  EXPECT_EQ(sent[0].config_update().batch_size(), 100);
  EXPECT_EQ(sent[1].ack().sequence_number(), 100);
  EXPECT_TRUE(sent[1].ack().success());
  EXPECT_EQ(sent[2].ack().sequence_number(), 101);
  EXPECT_FALSE(sent[2].ack().success());
  EXPECT_FALSE(sent[2].ack().retryable());
  EXPECT_TRUE(sent[3].has_flush());
  EXPECT_EQ(metrics_writer_.rows().size(), 2u);
}

TEST_F(SyncCoreTest, RefusedAckIsFinalOnlyForTheBatchRejectionVerdict) {
  CollectingSink sink;
  auto session = core_.OpenStream(Context(key_), &sink);
  ASSERT_THAT(session, IsOk());
  // A fault of the server's (the backend write fails with INTERNAL): the
  // device keeps the batch and retries.
  metrics_writer_.set_fail(absl::InternalError("bug"));
  v1::StreamSyncRequest req;
  req.mutable_metadata()->set_sequence_number(7);
  *req.mutable_metrics() = Metrics(7, 1).batch();
  ASSERT_THAT((*session)->OnRequest(req), IsOk());
  // The backend refuses the content: isolated, marked, final.
  metrics_writer_.set_fail(absl::InvalidArgumentError("bad sample"));
  req.mutable_metadata()->set_sequence_number(8);
  ASSERT_THAT((*session)->OnRequest(req), IsOk());
  // No backend for events: the server's setup, retryable.
  v1::StreamSyncRequest events;
  events.mutable_metadata()->set_sequence_number(9);
  events.mutable_events()->add_events()->set_name("e");
  ASSERT_THAT((*session)->OnRequest(events), IsOk());
  EXPECT_THAT((*session)->Finish(), IsOk());
  auto sent = sink.sent();
  ASSERT_EQ(sent.size(), 3u);
  EXPECT_FALSE(sent[0].ack().success());
  EXPECT_TRUE(sent[0].ack().retryable()) << sent[0].ack().error_message();
  EXPECT_FALSE(sent[1].ack().success());
  EXPECT_FALSE(sent[1].ack().retryable());
  EXPECT_THAT(sent[1].ack().error_message(),
              ::testing::HasSubstr("recording refused batch 8"));
  EXPECT_FALSE(sent[2].ack().success());
  EXPECT_TRUE(sent[2].ack().retryable()) << sent[2].ack().error_message();
}

TEST_F(SyncCoreTest, UnaryRejectionCarriesTheVerdictAndOutagesDoNot) {
  auto bad = Metrics(1, 1);
  bad.mutable_batch()->mutable_metrics(0)->set_name("bad name");
  absl::StatusOr<v1::SyncMetricsResponse> r =
      core_.SyncMetrics(Context(key_), bad);
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(IsBatchRejected(r.status()));
  r = core_.SyncMetrics(Context(""), Metrics(2, 1));
  EXPECT_FALSE(IsBatchRejected(r.status()));
  metrics_writer_.set_fail(absl::UnavailableError("down"));
  r = core_.SyncMetrics(Context(key_), Metrics(3, 1));
  EXPECT_THAT(r, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_FALSE(IsBatchRejected(r.status()));
}

TEST_F(SyncCoreTest, HeartbeatSetAsideCountsAreRecordedAndCounted) {
  CollectingSink sink;
  auto session = core_.OpenStream(Context(key_), &sink);
  ASSERT_THAT(session, IsOk());
  v1::StreamSyncRequest hb;
  hb.mutable_heartbeat()->set_set_aside_batches(2);
  hb.mutable_heartbeat()->set_set_aside_records(30);
  hb.mutable_heartbeat()->set_evicted_records(5);
  ASSERT_THAT((*session)->OnRequest(hb), IsOk());
  ASSERT_THAT((*session)->OnRequest(hb), IsOk());  // unchanged: no new write
  core_.FlushLastSeen();
  std::optional<SyncHealth> h = ledger_.health("dev-1");
  ASSERT_TRUE(h.has_value());
  EXPECT_EQ(h->set_aside_batches, 2);
  EXPECT_EQ(h->set_aside_records, 30);
  EXPECT_EQ(h->evicted_records, 5);
  hb.mutable_heartbeat()->set_set_aside_batches(3);
  ASSERT_THAT((*session)->OnRequest(hb), IsOk());
  core_.FlushLastSeen();
  EXPECT_EQ(ledger_.health("dev-1")->set_aside_batches, 3);
  std::string text = registry_.Render();
  EXPECT_THAT(text, ::testing::HasSubstr(
                        "fleetd_device_set_aside_batches_reported_total 3"));
  EXPECT_THAT(text, ::testing::HasSubstr("fleetd_devices_set_aside_batches 3"));
  EXPECT_THAT(text, ::testing::HasSubstr("fleetd_devices_evicted_records 5"));
  EXPECT_THAT((*session)->Finish(), IsOk());
}

TEST_F(SyncCoreTest, StreamEndsWhenOpenedWithABadKey) {
  CollectingSink sink;
  EXPECT_THAT(core_.OpenStream(Context("bad"), &sink),
              StatusIs(absl::StatusCode::kUnauthenticated));
}

TEST_F(SyncCoreTest, RpcMetricsAreCounted) {
  ASSERT_THAT(core_.SyncMetrics(Context(key_), Metrics(1, 1)), IsOk());
  (void)core_.SyncMetrics(Context(""), Metrics(2, 1));
  std::string text = registry_.Render();
  EXPECT_THAT(
      text,
      ::testing::HasSubstr(
          "fleetd_rpc_requests_total{method=\"SyncMetrics\",protocol=\"test\","
          "code=\"OK\"} 1"));
  EXPECT_THAT(text, ::testing::HasSubstr("code=\"UNAUTHENTICATED\"} 1"));
  EXPECT_THAT(
      text, ::testing::HasSubstr(
                "fleetd_batches_total{kind=\"metrics\",result=\"applied\"} 1"));
}

}  // namespace
}  // namespace fleetd::server
