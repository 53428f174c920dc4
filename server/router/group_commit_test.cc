#include "server/router/group_commit.h"

#include <atomic>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/metrics/metrics.h"
#include "common/status/error_class.h"
#include "common/status/retry_after.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/router/router.h"

namespace fleetd::server {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::fleetd::testing::WaitFor;

// A writer whose flushes can be held at a gate and made to fail.
class FakeWriter : public Writer {
 public:
  absl::string_view name() const override { return "fake"; }
  absl::Status Write(absl::Span<const DecodedBatch* const> batches) override {
    absl::MutexLock lock(&mu_);
    ++in_flight_;
    mu_.Await(absl::Condition(
        +[](bool* open) { return *open; }, &open_));
    --in_flight_;
    flush_sizes_.push_back(static_cast<int>(batches.size()));
    for (const DecodedBatch* b : batches) {
      seen_.push_back(b->sequence_number);
      if (b->sequence_number == poison_) {
        return absl::InvalidArgumentError(
            absl::StrCat("entry of batch ", poison_, " is too old"));
      }
    }
    return fail_;
  }
  absl::Status Ping() override { return absl::OkStatus(); }
  // UNIMPLEMENTED until SetInstance.
  absl::StatusOr<std::string> InstanceId() override {
    absl::MutexLock lock(&mu_);
    if (!instance_.ok()) return instance_.status();
    return *instance_;
  }

  void SetInstance(absl::StatusOr<std::string> instance) {
    absl::MutexLock lock(&mu_);
    instance_ = std::move(instance);
  }
  void Close() {
    absl::MutexLock lock(&mu_);
    open_ = false;
  }
  void Open() {
    absl::MutexLock lock(&mu_);
    open_ = true;
  }
  void Fail(absl::Status s) {
    absl::MutexLock lock(&mu_);
    fail_ = std::move(s);
  }
  // Every write that contains the batch with this sequence number is refused
  // with INVALID_ARGUMENT, as a backend refusing one entry refuses the push.
  void Poison(int64_t sequence_number) {
    absl::MutexLock lock(&mu_);
    poison_ = sequence_number;
  }
  int in_flight() {
    absl::MutexLock lock(&mu_);
    return in_flight_;
  }
  std::vector<int> flush_sizes() {
    absl::MutexLock lock(&mu_);
    return flush_sizes_;
  }
  std::vector<int64_t> seen() {
    absl::MutexLock lock(&mu_);
    return seen_;
  }

 private:
  absl::Mutex mu_;
  bool open_ ABSL_GUARDED_BY(mu_) = true;
  int in_flight_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Status fail_ ABSL_GUARDED_BY(mu_);
  int64_t poison_ ABSL_GUARDED_BY(mu_) = -1;
  absl::StatusOr<std::string> instance_ ABSL_GUARDED_BY(mu_) =
      absl::UnimplementedError("fake");
  std::vector<int> flush_sizes_ ABSL_GUARDED_BY(mu_);
  std::vector<int64_t> seen_ ABSL_GUARDED_BY(mu_);
};

std::shared_ptr<DecodedBatch> MakeBatch(int64_t seq, int records) {
  auto b = std::make_shared<DecodedBatch>();
  b->device = {"dev", "org", "k"};
  b->kind = DataKind::kMetrics;
  b->stream = "metrics";
  b->sequence_number = seq;
  v1::Metric m;
  m.set_name("m");
  for (int i = 0; i < records; ++i) b->metrics.Append(m);
  return b;
}

const absl::Time kNoDeadline = absl::InfiniteFuture();

TEST(GroupCommitTest, SingleBatchIsWrittenAndAcknowledged) {
  FakeWriter writer;
  metrics::Registry registry;
  GroupCommitter gc(&writer, Clock::Real(), &registry, {});
  auto b = MakeBatch(1, 3);
  EXPECT_THAT(gc.Submit(b, kNoDeadline), IsOk());
  EXPECT_THAT(writer.seen(), ::testing::ElementsAre(1));
  EXPECT_THAT(registry.Render(),
              ::testing::HasSubstr(
                  "fleetd_backend_records_written_total{backend=\"fake\"} 3"));
}

TEST(GroupCommitTest, BatchesArrivingDuringAFlushAreCoalescedIntoTheNext) {
  FakeWriter writer;
  GroupCommitter gc(&writer, Clock::Real(), nullptr, {.flush_threads = 1});
  writer.Close();
  auto first = MakeBatch(0, 1);
  std::thread t0([&] { EXPECT_THAT(gc.Submit(first, kNoDeadline), IsOk()); });
  ASSERT_TRUE(WaitFor([&] { return writer.in_flight() == 1; }));
  std::vector<std::shared_ptr<DecodedBatch>> batches;
  for (int i = 1; i <= 20; ++i) batches.push_back(MakeBatch(i, 2));
  std::vector<std::thread> threads;
  for (auto& b : batches) {
    threads.emplace_back(
        [&gc, &b] { EXPECT_THAT(gc.Submit(b, kNoDeadline), IsOk()); });
  }
  ASSERT_TRUE(WaitFor([&] { return gc.queued_batches() == 20; }));
  writer.Open();
  t0.join();
  for (auto& t : threads) t.join();
  EXPECT_THAT(writer.flush_sizes(), ::testing::ElementsAre(1, 20));
  EXPECT_EQ(writer.seen().size(), 21u);
}

TEST(GroupCommitTest, FlushRespectsRecordLimit) {
  FakeWriter writer;
  GroupCommitter gc(&writer, Clock::Real(), nullptr,
                    {.flush_threads = 1, .max_records_per_flush = 10});
  writer.Close();
  auto first = MakeBatch(0, 1);
  std::thread t0([&] { (void)gc.Submit(first, kNoDeadline); });
  ASSERT_TRUE(WaitFor([&] { return writer.in_flight() == 1; }));
  std::vector<std::shared_ptr<DecodedBatch>> batches;
  for (int i = 1; i <= 6; ++i) batches.push_back(MakeBatch(i, 4));
  std::vector<std::thread> threads;
  for (auto& b : batches)
    threads.emplace_back([&gc, &b] { (void)gc.Submit(b, kNoDeadline); });
  ASSERT_TRUE(WaitFor([&] { return gc.queued_batches() == 6; }));
  writer.Open();
  t0.join();
  for (auto& t : threads) t.join();
  // 4 records each, at most 10 per flush: two batches per flush.
  EXPECT_THAT(writer.flush_sizes(), ::testing::ElementsAre(1, 2, 2, 2));
}

TEST(GroupCommitTest, ASecondFlushStartsBesideTheFirstOnlyForHalfAFullOne) {
  FakeWriter writer;
  GroupCommitter gc(&writer, Clock::Real(), nullptr,
                    {.flush_threads = 2, .max_records_per_flush = 10});
  std::atomic<int> done{0};
  auto count = [&](absl::Status s) {
    EXPECT_THAT(s, IsOk());
    ++done;
  };
  writer.Close();
  ASSERT_THAT(gc.Enqueue(MakeBatch(0, 1), count), IsOk());
  ASSERT_TRUE(WaitFor([&] { return writer.in_flight() == 1; }));
  // 2 records wait: too few to write beside the flush in flight.
  ASSERT_THAT(gc.Enqueue(MakeBatch(1, 2), count), IsOk());
  // 5 wait: half of a full flush; the idle flusher takes both.
  ASSERT_THAT(gc.Enqueue(MakeBatch(2, 3), count), IsOk());
  ASSERT_TRUE(WaitFor([&] { return writer.in_flight() == 2; }));
  EXPECT_EQ(gc.queued_batches(), 0u);
  writer.Open();
  ASSERT_TRUE(WaitFor([&] { return done.load() == 3; }));
  EXPECT_THAT(writer.flush_sizes(), ::testing::UnorderedElementsAre(1, 2));
}

TEST(GroupCommitTest, WriterFailureReachesEveryCallerInTheFlush) {
  FakeWriter writer;
  GroupCommitter gc(&writer, Clock::Real(), nullptr, {.flush_threads = 1});
  writer.Fail(absl::UnavailableError("backend down"));
  auto b = MakeBatch(1, 1);
  EXPECT_THAT(gc.Submit(b, kNoDeadline),
              StatusIs(absl::StatusCode::kUnavailable));
}

// Holds the writer with batch 0 in flight, queues `n` batches (1..n) behind it
// so they share the next flush, then lets everything run. Returns each queued
// batch's status, in order.
std::vector<absl::Status> FlushOfN(FakeWriter& writer, GroupCommitter& gc,
                                   int n) {
  writer.Close();
  auto first = MakeBatch(0, 1);
  absl::Status first_status;
  std::thread t0([&] { first_status = gc.Submit(first, kNoDeadline); });
  EXPECT_TRUE(WaitFor([&] { return writer.in_flight() == 1; }));
  std::vector<std::shared_ptr<DecodedBatch>> batches;
  std::vector<GroupCommitter::Ticket> tickets;
  for (int i = 1; i <= n; ++i) {
    batches.push_back(MakeBatch(i, 2));
    absl::StatusOr<GroupCommitter::Ticket> t = gc.Enqueue(batches.back());
    EXPECT_THAT(t, IsOk());
    tickets.push_back(*t);
  }
  writer.Open();
  t0.join();
  std::vector<absl::Status> out;
  for (const auto& t : tickets) out.push_back(gc.Wait(t, kNoDeadline));
  return out;
}

TEST(GroupCommitTest, RefusedContentIsIsolatedToTheBatchThatCausedIt) {
  FakeWriter writer;
  metrics::Registry registry;
  GroupCommitter gc(&writer, Clock::Real(), &registry, {.flush_threads = 1});
  writer.Poison(6);
  std::vector<absl::Status> results = FlushOfN(writer, gc, 8);
  EXPECT_EQ(writer.flush_sizes().at(1), 8) << "all 8 shared one flush";
  ASSERT_EQ(results.size(), 8u);
  for (int i = 0; i < 8; ++i) {
    int64_t seq = i + 1;
    if (seq == 6) {
      EXPECT_THAT(results[i],
                  StatusIs(absl::StatusCode::kInvalidArgument,
                           ::testing::AllOf(::testing::HasSubstr("fake"),
                                            ::testing::HasSubstr("batch 6"),
                                            ::testing::HasSubstr("too old"))));
      EXPECT_TRUE(IsBatchRejected(results[i]));
    } else {
      EXPECT_THAT(results[i], IsOk()) << "batch " << seq;
    }
  }
  // 8 → 4+4 → 2+2 → 1+1: six more writes.
  std::string text = registry.Render();
  EXPECT_THAT(text,
              ::testing::HasSubstr(
                  "fleetd_router_isolation_writes_total{backend=\"fake\"} 6"));
  EXPECT_THAT(text,
              ::testing::HasSubstr(
                  "fleetd_backend_records_written_total{backend=\"fake\"} "
                  "15"));  // batch 0 (1) + 7 × 2
  // A refusal of one batch is not a backend failure.
  EXPECT_THAT(text, ::testing::HasSubstr(
                        "fleetd_backend_flushes_total{backend=\"fake\","
                        "result=\"ok\"} 2"));
}

TEST(GroupCommitTest,
     RetryableFailureReachesEveryBatchUnmarkedWithoutSplitting) {
  FakeWriter writer;
  metrics::Registry registry;
  GroupCommitter gc(&writer, Clock::Real(), &registry, {.flush_threads = 1});
  writer.Fail(absl::UnavailableError("backend down"));
  std::vector<absl::Status> results = FlushOfN(writer, gc, 8);
  for (const absl::Status& s : results) {
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnavailable));
    EXPECT_FALSE(IsBatchRejected(s));
  }
  EXPECT_THAT(writer.flush_sizes(), ::testing::ElementsAre(1, 8));
  EXPECT_THAT(registry.Render(),
              ::testing::Not(::testing::HasSubstr(
                  "fleetd_router_isolation_writes_total{backend=\"fake\"} "
                  "1")));
}

TEST(GroupCommitTest, OtherErrorsAreNotSplitAndNotMarked) {
  FakeWriter writer;
  GroupCommitter gc(&writer, Clock::Real(), nullptr, {.flush_threads = 1});
  writer.Fail(absl::InternalError("bug"));
  std::vector<absl::Status> results = FlushOfN(writer, gc, 4);
  for (const absl::Status& s : results) {
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kInternal));
    EXPECT_FALSE(IsBatchRejected(s));
  }
  EXPECT_THAT(writer.flush_sizes(), ::testing::ElementsAre(1, 4));
}

TEST(GroupCommitTest, SingleRefusedBatchIsMarked) {
  FakeWriter writer;
  GroupCommitter gc(&writer, Clock::Real(), nullptr, {.flush_threads = 1});
  writer.Poison(3);
  absl::Status s = gc.Submit(MakeBatch(3, 1), kNoDeadline);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(IsBatchRejected(s));
  EXPECT_EQ(writer.flush_sizes().size(), 1u);
}

TEST(GroupCommitTest,
     MisconfiguredBackendIsRetryableAndNotReadyUntilAWriteLands) {
  FakeWriter writer;
  metrics::Registry registry;
  GroupCommitter gc(&writer, Clock::Real(), &registry, {.flush_threads = 1});
  EXPECT_THAT(gc.Health(), IsOk());
  writer.Fail(BackendMisconfigured("401", "loki answered HTTP 401: no org id"));
  std::vector<absl::Status> results = FlushOfN(writer, gc, 4);
  for (const absl::Status& s : results) {
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnavailable));
    EXPECT_FALSE(IsBatchRejected(s));
  }
  EXPECT_THAT(writer.flush_sizes(), ::testing::ElementsAre(1, 4))
      << "no isolation for a misconfiguration";
  EXPECT_THAT(gc.Health(), StatusIs(absl::StatusCode::kUnavailable,
                                    ::testing::HasSubstr("no org id")));
  EXPECT_THAT(registry.Render(),
              ::testing::HasSubstr("fleetd_backend_misconfigured_total{"
                                   "backend=\"fake\",status=\"401\"} 2"));
  // An outage says nothing about the setup: still not ready.
  writer.Fail(absl::UnavailableError("down"));
  (void)gc.Submit(MakeBatch(10, 1), kNoDeadline);
  EXPECT_FALSE(gc.Health().ok());
  writer.Fail(absl::OkStatus());
  EXPECT_THAT(gc.Submit(MakeBatch(11, 1), kNoDeadline), IsOk());
  EXPECT_THAT(gc.Health(), IsOk());
}

TEST(RouterTest, RejectionByOneDestinationStaysMarked) {
  FakeWriter accepting, refusing;
  refusing.Poison(1);
  GroupCommitter a(&accepting, Clock::Real(), nullptr, {.flush_threads = 1});
  GroupCommitter b(&refusing, Clock::Real(), nullptr, {.flush_threads = 1});
  Router router({{DataKind::kMetrics, {&a, &b}}});
  absl::Status s = router.Deliver(MakeBatch(1, 1), kNoDeadline);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(IsBatchRejected(s));
  EXPECT_THAT(accepting.seen(), ::testing::ElementsAre(1));

  // A rejection beats another destination's outage too.
  accepting.Fail(absl::UnavailableError("down"));
  s = router.Deliver(MakeBatch(1, 1), kNoDeadline);
  EXPECT_TRUE(IsBatchRejected(s));

  auto logs = MakeBatch(2, 1);
  logs->kind = DataKind::kLogs;
  s = router.Deliver(logs, kNoDeadline);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnimplemented));
  EXPECT_FALSE(IsBatchRejected(s));
}

TEST(GroupCommitTest, BreakerOpensAfterRepeatedFailuresAndFailsFastWithHint) {
  FakeWriter writer;
  SimulatedClock clock;
  GroupCommitter gc(
      &writer, &clock, nullptr,
      {.flush_threads = 1,
       .breaker = {.failure_threshold = 3, .open_duration = absl::Seconds(5)}});
  writer.Fail(absl::UnavailableError("down"));
  auto b = MakeBatch(1, 1);
  for (int i = 0; i < 3; ++i) {
    EXPECT_THAT(gc.Submit(b, kNoDeadline),
                StatusIs(absl::StatusCode::kUnavailable));
  }
  EXPECT_EQ(writer.seen().size(), 3u);
  absl::Status fast = gc.Submit(b, kNoDeadline);
  EXPECT_THAT(fast, StatusIs(absl::StatusCode::kUnavailable,
                             ::testing::HasSubstr("failing")));
  EXPECT_EQ(GetRetryAfter(fast), absl::Seconds(5));
  EXPECT_EQ(writer.seen().size(), 3u)
      << "open breaker must not call the writer";
  writer.Fail(absl::OkStatus());
  clock.Advance(absl::Seconds(5));
  EXPECT_THAT(gc.Submit(b, kNoDeadline), IsOk()) << "half-open probe succeeds";
  EXPECT_THAT(gc.Submit(b, kNoDeadline), IsOk());
}

TEST(GroupCommitTest, FullQueueRefusesWithResourceExhaustedAndRetryHint) {
  FakeWriter writer;
  auto big = MakeBatch(1, 100);
  GroupCommitter gc(&writer, Clock::Real(), nullptr,
                    {.flush_threads = 1,
                     .max_queue_bytes = big->approx_bytes() + 10,
                     .overload_retry_after = absl::Seconds(2)});
  writer.Close();
  auto first = MakeBatch(0, 1);
  std::thread t0([&] { EXPECT_THAT(gc.Submit(first, kNoDeadline), IsOk()); });
  ASSERT_TRUE(WaitFor([&] { return writer.in_flight() == 1; }));
  std::thread t1([&] { EXPECT_THAT(gc.Submit(big, kNoDeadline), IsOk()); });
  ASSERT_TRUE(WaitFor([&] { return gc.queued_batches() == 1; }));
  auto more = MakeBatch(2, 100);
  absl::Status refused = gc.Submit(more, kNoDeadline);
  EXPECT_THAT(refused, StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_EQ(GetRetryAfter(refused), absl::Seconds(2));
  writer.Open();
  t0.join();
  t1.join();
  EXPECT_THAT(writer.seen(), ::testing::ElementsAre(0, 1));
}

TEST(GroupCommitTest, CallerDeadlineEndsTheWait) {
  FakeWriter writer;
  GroupCommitter gc(&writer, Clock::Real(), nullptr, {.flush_threads = 1});
  writer.Close();
  auto b = MakeBatch(1, 1);
  EXPECT_THAT(
      gc.Submit(b, Clock::Real()->MonotonicNow() + absl::Milliseconds(20)),
      StatusIs(absl::StatusCode::kDeadlineExceeded));
  writer.Open();
}

TEST(GroupCommitTest, ShutdownNeverLeavesCallersHanging) {
  FakeWriter writer;
  auto first = MakeBatch(0, 1);
  auto queued = MakeBatch(1, 1);
  absl::Status queued_status;
  std::thread t0, t1;
  {
    GroupCommitter gc(&writer, Clock::Real(), nullptr, {.flush_threads = 1});
    writer.Close();
    t0 = std::thread([&] { (void)gc.Submit(first, kNoDeadline); });
    ASSERT_TRUE(WaitFor([&] { return writer.in_flight() == 1; }));
    t1 = std::thread([&] { queued_status = gc.Submit(queued, kNoDeadline); });
    ASSERT_TRUE(WaitFor([&] { return gc.queued_batches() == 1; }));
    // Let the in-flight flush finish only once shutdown has begun.
    std::thread opener([&] { writer.Open(); });
    opener.join();
  }
  t0.join();
  t1.join();
  // The queued batch either made it into a flush before shutdown or was failed;
  // it is never left hanging, and a failure is retryable.
  if (!queued_status.ok()) {
    EXPECT_THAT(queued_status, StatusIs(absl::StatusCode::kUnavailable));
  }
}

// ---- Without waiting (Enqueue with a callback, Router::DeliverAsync) -------

// Outcomes handed to callbacks, with the thread each ran on.
class Outcomes {
 public:
  GroupCommitter::Done Slot(int id) {
    return [this, id](absl::Status s) {
      absl::MutexLock lock(&mu_);
      got_.push_back({id, std::move(s), std::this_thread::get_id()});
    };
  }
  absl::AnyInvocable<void(absl::Status) &&> RouterSlot(int id) {
    return Slot(id);
  }
  struct Got {
    int id;
    absl::Status status;
    std::thread::id thread;
  };
  std::vector<Got> got() {
    absl::MutexLock lock(&mu_);
    return got_;
  }
  size_t count() { return got().size(); }

 private:
  absl::Mutex mu_;
  std::vector<Got> got_ ABSL_GUARDED_BY(mu_);
};

TEST(GroupCommitAsyncTest, DoneGetsTheFlushOutcomeOnceOnAFlusherThread) {
  FakeWriter writer;
  GroupCommitter gc(&writer, Clock::Real(), nullptr, {.flush_threads = 1});
  Outcomes outcomes;
  writer.Close();
  // Nobody waits: Enqueue returns while the flush is held.
  ASSERT_THAT(gc.Enqueue(MakeBatch(1, 1), outcomes.Slot(1)), IsOk());
  ASSERT_TRUE(WaitFor([&] { return writer.in_flight() == 1; }));
  writer.Fail(absl::UnavailableError("down"));
  ASSERT_THAT(gc.Enqueue(MakeBatch(2, 1), outcomes.Slot(2)), IsOk());
  EXPECT_EQ(outcomes.count(), 0u) << "answered before its flush ended";
  writer.Open();
  ASSERT_TRUE(WaitFor([&] { return outcomes.count() == 2; }));
  std::vector<Outcomes::Got> got = outcomes.got();
  // Both were in the held flush, which failed: each caller hears it once.
  for (const Outcomes::Got& g : got) {
    EXPECT_THAT(g.status, StatusIs(absl::StatusCode::kUnavailable));
    EXPECT_NE(g.thread, std::this_thread::get_id());
  }
  writer.Fail(absl::OkStatus());
  ASSERT_THAT(gc.Enqueue(MakeBatch(3, 1), outcomes.Slot(3)), IsOk());
  ASSERT_TRUE(WaitFor([&] { return outcomes.count() == 3; }));
  EXPECT_EQ(outcomes.got()[2].id, 3);
  EXPECT_THAT(outcomes.got()[2].status, IsOk());
}

TEST(GroupCommitAsyncTest, RefusedAtOnceReturnsTheErrorAndNeverCallsDone) {
  FakeWriter writer;
  auto big = MakeBatch(1, 100);
  GroupCommitter gc(
      &writer, Clock::Real(), nullptr,
      {.flush_threads = 1, .max_queue_bytes = big->approx_bytes() + 10});
  Outcomes outcomes;
  writer.Close();
  ASSERT_THAT(gc.Enqueue(MakeBatch(0, 1), outcomes.Slot(0)), IsOk());
  ASSERT_TRUE(WaitFor([&] { return writer.in_flight() == 1; }));
  ASSERT_THAT(gc.Enqueue(big, outcomes.Slot(1)), IsOk());
  EXPECT_THAT(gc.Enqueue(MakeBatch(2, 100), outcomes.Slot(2)),
              StatusIs(absl::StatusCode::kResourceExhausted));
  writer.Open();
  ASSERT_TRUE(WaitFor([&] { return outcomes.count() == 2; }));
  for (const Outcomes::Got& g : outcomes.got()) EXPECT_NE(g.id, 2);
  EXPECT_THAT(writer.seen(), ::testing::ElementsAre(0, 1));
}

TEST(GroupCommitAsyncTest, DoneMayEnqueueAgainFromTheFlusher) {
  FakeWriter first_writer, second_writer;
  GroupCommitter first(&first_writer, Clock::Real(), nullptr,
                       {.flush_threads = 1});
  GroupCommitter second(&second_writer, Clock::Real(), nullptr,
                        {.flush_threads = 1});
  Outcomes outcomes;
  auto batch = MakeBatch(7, 1);
  ASSERT_THAT(first.Enqueue(batch,
                            [&](absl::Status s) {
                              ASSERT_THAT(s, IsOk());
                              ASSERT_THAT(
                                  second.Enqueue(batch, outcomes.Slot(7)),
                                  IsOk());
                            }),
              IsOk());
  ASSERT_TRUE(WaitFor([&] { return outcomes.count() == 1; }));
  EXPECT_THAT(outcomes.got()[0].status, IsOk());
  EXPECT_THAT(second_writer.seen(), ::testing::ElementsAre(7));
}

TEST(GroupCommitAsyncTest, ShutdownAnswersQueuedBatchesUnavailable) {
  FakeWriter writer;
  Outcomes outcomes;
  {
    GroupCommitter gc(&writer, Clock::Real(), nullptr, {.flush_threads = 1});
    writer.Close();
    ASSERT_THAT(gc.Enqueue(MakeBatch(0, 1), outcomes.Slot(0)), IsOk());
    ASSERT_TRUE(WaitFor([&] { return writer.in_flight() == 1; }));
    ASSERT_THAT(gc.Enqueue(MakeBatch(1, 1), outcomes.Slot(1)), IsOk());
    std::thread opener([&] { writer.Open(); });
    opener.join();
  }
  // Both answered by the time the committer is gone; the queued one either
  // made a flush or heard UNAVAILABLE.
  ASSERT_EQ(outcomes.count(), 2u);
  for (const Outcomes::Got& g : outcomes.got()) {
    if (!g.status.ok()) {
      EXPECT_THAT(g.status, StatusIs(absl::StatusCode::kUnavailable));
    }
  }
}

TEST(RouterTest, DeliverAsyncAnswersOnceWithTheMostTellingVerdict) {
  FakeWriter a_writer, b_writer;
  GroupCommitter a(&a_writer, Clock::Real(), nullptr, {.flush_threads = 1});
  GroupCommitter b(&b_writer, Clock::Real(), nullptr, {.flush_threads = 1});
  Router router({{DataKind::kMetrics, {&a, &b}}});
  Outcomes outcomes;

  // Answered only once both destinations have it.
  b_writer.Close();
  router.DeliverAsync(MakeBatch(1, 1), outcomes.RouterSlot(1));
  ASSERT_TRUE(WaitFor([&] { return b_writer.in_flight() == 1; }));
  ASSERT_TRUE(WaitFor([&] { return a_writer.seen().size() == 1; }));
  EXPECT_EQ(outcomes.count(), 0u);
  b_writer.Open();
  ASSERT_TRUE(WaitFor([&] { return outcomes.count() == 1; }));
  EXPECT_THAT(outcomes.got()[0].status, IsOk());

  // One outage, one rejection: the rejection stands, still marked.
  a_writer.Fail(absl::UnavailableError("down"));
  b_writer.Poison(2);
  router.DeliverAsync(MakeBatch(2, 1), outcomes.RouterSlot(2));
  ASSERT_TRUE(WaitFor([&] { return outcomes.count() == 2; }));
  EXPECT_THAT(outcomes.got()[1].status,
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_TRUE(IsBatchRejected(outcomes.got()[1].status));

  // An outage alone is retryable.
  router.DeliverAsync(MakeBatch(3, 1), outcomes.RouterSlot(3));
  ASSERT_TRUE(WaitFor([&] { return outcomes.count() == 3; }));
  EXPECT_THAT(outcomes.got()[2].status,
              StatusIs(absl::StatusCode::kUnavailable));

  // No route: answered at once, on the caller's thread.
  auto logs = MakeBatch(4, 1);
  logs->kind = DataKind::kLogs;
  router.DeliverAsync(logs, outcomes.RouterSlot(4));
  ASSERT_EQ(outcomes.count(), 4u);
  EXPECT_THAT(outcomes.got()[3].status,
              StatusIs(absl::StatusCode::kUnimplemented));
  EXPECT_EQ(outcomes.got()[3].thread, std::this_thread::get_id());
}

TEST(RouterTest, DeliverAsyncCountsADestinationThatRefusedAtOnce) {
  FakeWriter a_writer, b_writer;
  GroupCommitter a(&a_writer, Clock::Real(), nullptr, {.flush_threads = 1});
  SimulatedClock clock;
  GroupCommitter b(
      &b_writer, &clock, nullptr,
      {.flush_threads = 1,
       .breaker = {.failure_threshold = 1, .open_duration = absl::Hours(1)}});
  b_writer.Fail(absl::UnavailableError("down"));
  ASSERT_THAT(b.Submit(MakeBatch(0, 1), kNoDeadline),
              StatusIs(absl::StatusCode::kUnavailable));
  // b's breaker is open now: it refuses at once, a writes.
  Router router({{DataKind::kMetrics, {&a, &b}}});
  Outcomes outcomes;
  router.DeliverAsync(MakeBatch(1, 1), outcomes.RouterSlot(1));
  ASSERT_TRUE(WaitFor([&] { return outcomes.count() == 1; }));
  EXPECT_THAT(outcomes.got()[0].status,
              StatusIs(absl::StatusCode::kUnavailable,
                       ::testing::HasSubstr("failing")));
  EXPECT_THAT(a_writer.seen(), ::testing::ElementsAre(1));
}

// ---- Replay window ----------------------------------------------------------

// Drives the committer's monitor on a simulated clock: each Tick moves time and
// waits until the monitor finished the round (poll and replay) it caused.
class ReplayWindowTest : public ::testing::Test {
 protected:
  static constexpr absl::Duration kWindow = absl::Seconds(30);

  void Start(GroupCommitter::Options options = {}) {
    options.flush_threads = 1;
    options.replay_window = kWindow;
    options.replay_poll_interval = absl::Seconds(1);
    if (options.replay_window_bytes == 0) options.replay_window_bytes = 1 << 20;
    gc_ = std::make_unique<GroupCommitter>(&writer_, &clock_, &registry_,
                                           options);
    ASSERT_TRUE(WaitFor([&] { return gc_->monitor_rounds() >= 1; }));
  }

  // Moves time by `d` once the monitor sleeps, and waits for its next round.
  void Tick(absl::Duration d = absl::Seconds(1)) {
    const int64_t round = gc_->monitor_rounds();
    // The monitor is the only sleeper on this clock; it sleeps once its round
    // is over.
    ASSERT_TRUE(clock_.AwaitSleepers(1, absl::Seconds(30)));
    clock_.Advance(d);
    ASSERT_TRUE(WaitFor([&] { return gc_->monitor_rounds() > round; }));
  }

  void Write(int64_t seq) {
    EXPECT_THAT(gc_->Submit(MakeBatch(seq, 2), kNoDeadline), IsOk());
  }

  std::string Metric(const std::string& name) {
    return absl::StrCat(name, "{backend=\"fake\"}");
  }

  FakeWriter writer_;
  SimulatedClock clock_;
  metrics::Registry registry_;
  std::unique_ptr<GroupCommitter> gc_;
};

TEST_F(ReplayWindowTest, BatchesOfTheLastWindowAreReplayedOnceAfterARestart) {
  writer_.SetInstance("instance-a");
  Start();
  Write(1);                 // t = 0
  Tick(absl::Seconds(20));  // t = 20: instance-a confirmed
  Write(2);                 // t = 20
  Tick(absl::Seconds(15));  // t = 35: batch 1 is older than the window
  Write(3);                 // t = 35
  EXPECT_EQ(gc_->replay_window_batches(), 2u);

  writer_.SetInstance("instance-b");  // restarted: memory lost
  Tick();
  // Replayed in order, after what was written before.
  EXPECT_THAT(writer_.seen(), ::testing::ElementsAre(1, 2, 3, 2, 3));
  Tick();
  Tick();
  EXPECT_THAT(writer_.seen(), ::testing::ElementsAre(1, 2, 3, 2, 3))
      << "replayed once";
  const std::string text = registry_.Render();
  EXPECT_THAT(text,
              ::testing::HasSubstr(absl::StrCat(
                  Metric("fleetd_backend_restarts_detected_total"), " 1")));
  EXPECT_THAT(text,
              ::testing::HasSubstr(absl::StrCat(
                  Metric("fleetd_backend_replayed_batches_total"), " 2")));
}

TEST_F(ReplayWindowTest, AnOutageDoesNotAgeTheWindowOut) {
  writer_.SetInstance("instance-a");
  Start();
  Write(1);
  Tick();
  // Down for a minute: the identity cannot be asked, so the window is kept.
  writer_.SetInstance(absl::UnavailableError("connection refused"));
  Tick(absl::Seconds(60));
  Tick();
  EXPECT_EQ(gc_->replay_window_batches(), 1u);
  writer_.SetInstance("instance-b");
  Tick();
  EXPECT_THAT(writer_.seen(), ::testing::ElementsAre(1, 1));
}

TEST_F(ReplayWindowTest, WindowIsBoundedByBytesOldestFirstAndCounted) {
  const size_t one = MakeBatch(0, 2)->approx_bytes();
  writer_.SetInstance("instance-a");
  Start({.replay_window_bytes = 2 * one});
  for (int64_t seq = 1; seq <= 4; ++seq) Write(seq);
  EXPECT_EQ(gc_->replay_window_batches(), 2u);
  EXPECT_EQ(gc_->replay_window_bytes(), 2 * one);
  EXPECT_THAT(registry_.Render(),
              ::testing::HasSubstr(absl::StrCat(
                  Metric("fleetd_backend_replay_window_evicted_total"), " 2")));
  writer_.SetInstance("instance-b");
  Tick();
  EXPECT_THAT(writer_.seen(), ::testing::ElementsAre(1, 2, 3, 4, 3, 4));
}

TEST_F(ReplayWindowTest, AFlushInFlightDuringTheRestartIsReplayedToo) {
  writer_.SetInstance("instance-a");
  Start();
  writer_.Close();
  std::thread t([&] { Write(1); });
  ASSERT_TRUE(WaitFor([&] { return writer_.in_flight() == 1; }));
  writer_.SetInstance("instance-b");
  Tick();  // noticed while batch 1 was still being written
  writer_.Open();
  t.join();
  Tick();
  EXPECT_THAT(writer_.seen(), ::testing::ElementsAre(1, 1));
}

TEST_F(ReplayWindowTest, FailedReplayIsRetriedAtTheNextPoll) {
  writer_.SetInstance("instance-a");
  Start();
  Write(1);
  writer_.SetInstance("instance-b");
  writer_.Fail(absl::UnavailableError("still starting"));
  Tick();
  EXPECT_THAT(writer_.seen(), ::testing::ElementsAre(1, 1));  // failed
  writer_.Fail(absl::OkStatus());
  Tick();
  EXPECT_THAT(writer_.seen(), ::testing::ElementsAre(1, 1, 1));
  Tick();
  EXPECT_THAT(writer_.seen(), ::testing::ElementsAre(1, 1, 1));
  EXPECT_THAT(registry_.Render(),
              ::testing::HasSubstr(absl::StrCat(
                  Metric("fleetd_backend_replay_failures_total"), " 1")));
}

TEST_F(ReplayWindowTest, WriterWithoutIdentityKeepsNoWindow) {
  Start();  // the fake's InstanceId is UNIMPLEMENTED
  Write(1);
  Tick();
  EXPECT_EQ(gc_->replay_window_batches(), 0u);
  EXPECT_EQ(gc_->replay_window_bytes(), 0u);
}

}  // namespace
}  // namespace fleetd::server
