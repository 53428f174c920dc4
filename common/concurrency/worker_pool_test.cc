#include "common/concurrency/worker_pool.h"

#include <atomic>
#include <memory>
#include <set>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "common/concurrency/thread_census.h"
#include "common/metrics/metrics.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::fleetd::testing::WaitFor;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::unique_ptr<WorkerPool> StartPool(int32_t threads, int64_t max_queued,
                                      metrics::Registry* registry = nullptr) {
  WorkerPool::Options options;
  options.name = "test";
  options.threads = threads;
  options.max_queued = max_queued;
  options.metrics = registry;
  absl::StatusOr<std::unique_ptr<WorkerPool>> pool = WorkerPool::Start(options);
  EXPECT_THAT(pool, IsOk());
  return pool.ok() ? *std::move(pool) : nullptr;
}

// A task that blocks its worker until `release` is notified.
WorkerPool::Task Blocker(absl::Notification* release,
                         std::atomic<int>* started = nullptr) {
  return [release, started](absl::Status status) {
    if (started != nullptr) ++*started;
    release->WaitForNotification();
  };
}

TEST(WorkerPoolTest, RejectsInvalidOptions) {
  WorkerPool::Options options;
  options.threads = 0;
  EXPECT_THAT(
      WorkerPool::Start(options),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("threads")));
  options.threads = 1;
  options.max_queued = -1;
  EXPECT_THAT(
      WorkerPool::Start(options),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("max_queued")));
}

TEST(WorkerPoolTest, CreatesAllThreadsAtStartAndNoneAfterwards) {
  std::set<pid_t> before = ThreadIds();
  ASSERT_FALSE(before.empty());
  std::unique_ptr<WorkerPool> pool = StartPool(6, 100000);
  ASSERT_NE(pool, nullptr);
  std::set<pid_t> started = ThreadIds();
  EXPECT_EQ(started.size(), before.size() + 6);
  EXPECT_EQ(pool->threads(), 6);
  std::set<std::string> names;
  for (pid_t id : started) {
    if (before.count(id) == 0) names.insert(ThreadName(id));
  }
  EXPECT_THAT(names, ElementsAre("test-0", "test-1", "test-2", "test-3",
                                 "test-4", "test-5"));

  // Every task runs on one of the six threads created by Start.
  absl::Mutex mu;
  std::set<pid_t> ran_on;
  std::atomic<int> done{0};
  for (int i = 0; i < 5000; ++i) {
    ASSERT_THAT(pool->Submit([&](absl::Status status) {
      absl::MutexLock lock(&mu);
      ran_on.insert(CurrentThreadId());
      ++done;
    }),
                IsOk());
  }
  ASSERT_TRUE(WaitFor([&] { return done.load() == 5000; }));
  EXPECT_EQ(ThreadIds(), started);
  for (pid_t id : ran_on) {
    EXPECT_EQ(started.count(id), 1u);
    EXPECT_EQ(before.count(id), 0u);
  }

  pool->Shutdown();
  EXPECT_EQ(ThreadIds(), before);
}

TEST(WorkerPoolTest, RunsTasksInSubmissionOrder) {
  std::unique_ptr<WorkerPool> pool = StartPool(1, 100);
  absl::Notification release;
  std::atomic<int> started{0};
  ASSERT_THAT(pool->Submit(Blocker(&release, &started)), IsOk());
  ASSERT_TRUE(WaitFor([&] { return started.load() == 1; }));
  absl::Mutex mu;
  std::vector<int> order;
  for (int i = 0; i < 20; ++i) {
    ASSERT_THAT(pool->Submit([&, i](absl::Status status) {
      absl::MutexLock lock(&mu);
      order.push_back(i);
    }),
                IsOk());
  }
  EXPECT_EQ(pool->queued(), 20);
  release.Notify();
  pool->Shutdown();
  ASSERT_EQ(order.size(), 20u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(order[i], i);
}

TEST(WorkerPoolTest, TasksQueuedAtOnceReachEveryWorker) {
  // Idle workers are woken one by one (each woken worker wakes the next while
  // tasks wait): tasks that block must still get every worker.
  constexpr int kThreads = 16;
  std::unique_ptr<WorkerPool> pool = StartPool(kThreads, 100);
  absl::Notification release;
  std::atomic<int> started{0};
  for (int i = 0; i < kThreads; ++i) {
    ASSERT_THAT(pool->Submit(Blocker(&release, &started)), IsOk());
  }
  ASSERT_TRUE(WaitFor([&] { return started.load() == kThreads; }));
  EXPECT_EQ(pool->busy(), kThreads);
  release.Notify();
  pool->Shutdown();
}

TEST(WorkerPoolTest, ShortTasksOneAtATimeRunOnAFewHotWorkers) {
  // The worker that went idle last is woken first, so tasks submitted one
  // after another do not wander over the whole pool.
  std::unique_ptr<WorkerPool> pool = StartPool(32, 100);
  absl::Mutex mu;
  std::set<std::thread::id> ran_on;
  for (int i = 0; i < 200; ++i) {
    absl::Notification done;
    ASSERT_THAT(pool->Submit([&](absl::Status) {
      {
        absl::MutexLock lock(&mu);
        ran_on.insert(std::this_thread::get_id());
      }
      done.Notify();
    }),
                IsOk());
    done.WaitForNotification();
  }
  pool->Shutdown();
  absl::MutexLock lock(&mu);
  EXPECT_LE(ran_on.size(), 8u);
}

TEST(WorkerPoolTest, RefusesBoundedTasksWhenQueueIsFull) {
  metrics::Registry registry;
  std::unique_ptr<WorkerPool> pool = StartPool(2, 3, &registry);
  absl::Notification release;
  std::atomic<int> started{0};
  ASSERT_THAT(pool->Submit(Blocker(&release, &started)), IsOk());
  ASSERT_THAT(pool->Submit(Blocker(&release, &started)), IsOk());
  ASSERT_TRUE(WaitFor([&] { return started.load() == 2; }));
  EXPECT_EQ(pool->busy(), 2);

  std::atomic<int> ran{0};
  auto count = [&ran](absl::Status status) {
    if (status.ok()) ++ran;
  };
  for (int i = 0; i < 3; ++i) ASSERT_THAT(pool->Submit(count), IsOk());
  // A refused task is destroyed without being called.
  auto held = std::make_shared<int>(0);
  bool called = false;
  EXPECT_THAT(pool->Submit([held, &called](absl::Status) { called = true; }),
              StatusIs(absl::StatusCode::kResourceExhausted,
                       HasSubstr("2 of 2 workers busy, 3 tasks queued")));
  EXPECT_EQ(held.use_count(), 1);
  EXPECT_FALSE(called);
  // Work that ends something already admitted passes the bound.
  EXPECT_THAT(pool->Submit(count, WorkerPool::Admission::kAlways), IsOk());
  EXPECT_EQ(pool->queued(), 4);
  std::string rendered = registry.Render();
  EXPECT_THAT(rendered,
              HasSubstr("fleetd_worker_pool_refused_total{pool=\"test\","
                        "reason=\"queue_full\"} 1"));
  EXPECT_THAT(rendered,
              HasSubstr("fleetd_worker_pool_queued{pool=\"test\"} 4"));
  EXPECT_THAT(rendered, HasSubstr("fleetd_worker_pool_busy{pool=\"test\"} 2"));
  EXPECT_THAT(rendered,
              HasSubstr("fleetd_worker_pool_threads{pool=\"test\"} 2"));

  release.Notify();
  ASSERT_TRUE(WaitFor([&] { return ran.load() == 4; }));
  // Room again once the queue drained.
  EXPECT_TRUE(WaitFor([&] { return pool->Submit(count).ok(); }));
}

TEST(WorkerPoolTest, ZeroQueueAdmitsOnlyWhatIdleWorkersCanTake) {
  std::unique_ptr<WorkerPool> pool = StartPool(1, 0);
  absl::Notification release;
  ASSERT_THAT(pool->Submit(Blocker(&release)), IsOk());
  EXPECT_THAT(pool->Submit([](absl::Status) {}),
              StatusIs(absl::StatusCode::kResourceExhausted, HasSubstr("")));
  release.Notify();
}

TEST(WorkerPoolTest, ShutdownRunsQueuedTasks) {
  std::unique_ptr<WorkerPool> pool = StartPool(1, 100);
  absl::Notification release;
  std::atomic<int> started{0};
  ASSERT_THAT(pool->Submit(Blocker(&release, &started)), IsOk());
  ASSERT_TRUE(WaitFor([&] { return started.load() == 1; }));
  std::vector<absl::StatusCode> codes(5, absl::StatusCode::kUnknown);
  for (int i = 0; i < 5; ++i) {
    ASSERT_THAT(
        pool->Submit([&codes, i](absl::Status s) { codes[i] = s.code(); }),
        IsOk());
  }
  // Releases the blocked worker once Shutdown has begun (Submit refuses), so
  // the five tasks are still queued when it does.
  std::thread releaser([&] {
    EXPECT_TRUE(WaitFor([&] {
      return !pool->Submit([](absl::Status) {}, WorkerPool::Admission::kAlways)
                  .ok();
    }));
    release.Notify();
  });
  pool->Shutdown(WorkerPool::ShutdownMode::kRunQueued);
  releaser.join();
  EXPECT_THAT(codes, ::testing::Each(absl::StatusCode::kOk));
  EXPECT_THAT(pool->Submit([](absl::Status) {}),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("shutting")));
  pool->Shutdown();  // idempotent
}

TEST(WorkerPoolTest, ShutdownRejectsQueuedTasksAndLetsRunningOnesFinish) {
  std::unique_ptr<WorkerPool> pool = StartPool(1, 100);
  absl::Notification release;
  std::atomic<int> started{0};
  std::atomic<bool> running_finished{false};
  ASSERT_THAT(pool->Submit([&](absl::Status) {
    ++started;
    release.WaitForNotification();
    running_finished = true;
  }),
              IsOk());
  ASSERT_TRUE(WaitFor([&] { return started.load() == 1; }));
  std::vector<int> rejected_order;
  std::vector<absl::StatusCode> codes;
  for (int i = 0; i < 3; ++i) {
    ASSERT_THAT(pool->Submit([&, i](absl::Status s) {
      rejected_order.push_back(i);
      codes.push_back(s.code());
      // The rejection comes before the pool waits for the running task.
      if (i == 2) release.Notify();
    }),
                IsOk());
  }
  pool->Shutdown(WorkerPool::ShutdownMode::kRejectQueued);
  EXPECT_TRUE(running_finished.load());
  EXPECT_THAT(rejected_order, ElementsAre(0, 1, 2));
  EXPECT_THAT(codes, ::testing::Each(absl::StatusCode::kCancelled));
}

TEST(WorkerPoolTest, ConcurrentSubmittersEachTaskRunsOnce) {
  std::unique_ptr<WorkerPool> pool = StartPool(4, 1 << 20);
  constexpr int kSubmitters = 8;
  constexpr int kEach = 2000;
  std::vector<std::atomic<int>> runs(kSubmitters * kEach);
  std::vector<std::thread> submitters;
  for (int t = 0; t < kSubmitters; ++t) {
    submitters.emplace_back([&, t] {
      for (int i = 0; i < kEach; ++i) {
        int slot = t * kEach + i;
        EXPECT_THAT(pool->Submit([&runs, slot](absl::Status) { ++runs[slot]; }),
                    IsOk());
      }
    });
  }
  for (std::thread& t : submitters) t.join();
  pool->Shutdown();
  for (const std::atomic<int>& r : runs) ASSERT_EQ(r.load(), 1);
}

TEST(WorkerPoolTest, TasksMaySubmitMoreTasks) {
  std::unique_ptr<WorkerPool> pool = StartPool(1, 10);
  absl::Notification second_ran;
  ASSERT_THAT(pool->Submit([&](absl::Status) {
    EXPECT_THAT(pool->Submit([&](absl::Status) { second_ran.Notify(); }),
                IsOk());
  }),
              IsOk());
  EXPECT_TRUE(second_ran.WaitForNotificationWithTimeout(absl::Seconds(30)));
}

}  // namespace
}  // namespace fleetd
