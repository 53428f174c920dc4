#include "common/concurrency/worker_pool.h"

#include <pthread.h>

#include <system_error>
#include <utility>

#include "absl/strings/str_cat.h"

namespace fleetd {

absl::StatusOr<std::unique_ptr<WorkerPool>> WorkerPool::Start(Options options) {
  if (options.threads < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("worker pool ", options.name,
                     ": threads must be at least 1, not ", options.threads));
  }
  if (options.max_queued < 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "worker pool ", options.name, ": max_queued must not be negative"));
  }
  std::unique_ptr<WorkerPool> pool(new WorkerPool(std::move(options)));
  pool->threads_.reserve(pool->options_.threads);
  for (int i = 0; i < pool->options_.threads; ++i) {
    try {
      pool->threads_.emplace_back([p = pool.get(), i] { p->Run(i); });
    } catch (const std::system_error& e) {
      pool->Shutdown(ShutdownMode::kRejectQueued);
      return absl::ResourceExhaustedError(absl::StrCat(
          "worker pool ", pool->options_.name, ": thread ", i, " of ",
          pool->options_.threads, " could not be created: ", e.what()));
    }
  }
  {
    // Returns with every thread running and named.
    absl::MutexLock lock(&pool->mu_);
    auto all_started = [p = pool.get()]()
                           ABSL_EXCLUSIVE_LOCKS_REQUIRED(p->mu_) {
                             return p->started_ == p->options_.threads;
                           };
    pool->mu_.Await(absl::Condition(&all_started));
  }
  if (pool->metrics_.threads != nullptr) {
    pool->metrics_.threads->Set(pool->options_.threads);
  }
  return pool;
}

WorkerPool::WorkerPool(Options options) : options_(std::move(options)) {
  metrics::Registry* registry = options_.metrics;
  if (registry == nullptr) return;
  const std::vector<std::string> pool = {options_.name};
  metrics_.threads =
      &registry
           ->GaugeFamily("fleetd_worker_pool_threads",
                         "Worker threads of a fixed pool.", {"pool"})
           .WithLabels(pool);
  metrics_.busy = &registry
                       ->GaugeFamily("fleetd_worker_pool_busy",
                                     "Workers running a task.", {"pool"})
                       .WithLabels(pool);
  metrics_.queued = &registry
                         ->GaugeFamily("fleetd_worker_pool_queued",
                                       "Tasks waiting for a worker.", {"pool"})
                         .WithLabels(pool);
  auto& refused = registry->CounterFamily(
      "fleetd_worker_pool_refused_total",
      "Tasks a pool refused: queue_full (at its bound) or shut_down.",
      {"pool", "reason"});
  metrics_.refused_full = &refused.WithLabels({options_.name, "queue_full"});
  metrics_.refused_shut_down =
      &refused.WithLabels({options_.name, "shut_down"});
}

WorkerPool::~WorkerPool() { Shutdown(ShutdownMode::kRunQueued); }

absl::Status WorkerPool::Submit(Task task, Admission admission) {
  absl::MutexLock lock(&mu_);
  if (stopping_) {
    if (metrics_.refused_shut_down != nullptr) {
      metrics_.refused_shut_down->Increment();
    }
    return absl::UnavailableError(
        absl::StrCat("worker pool ", options_.name, " is shutting down"));
  }
  if (admission == Admission::kBounded &&
      static_cast<int64_t>(queue_.size()) + busy_ >=
          options_.threads + options_.max_queued) {
    if (metrics_.refused_full != nullptr) metrics_.refused_full->Increment();
    return absl::ResourceExhaustedError(absl::StrCat(
        "worker pool ", options_.name, " is full (", busy_, " of ",
        options_.threads, " workers busy, ", queue_.size(), " tasks queued)"));
  }
  queue_.push_back(std::move(task));
  UpdateGaugesLocked();
  if (!waking_) WakeOneLocked();
  return absl::OkStatus();
}

void WorkerPool::WakeOneLocked() {
  if (idle_.empty()) return;
  Idle* worker = idle_.back();
  idle_.pop_back();
  worker->woken = true;
  waking_ = true;
  worker->cv.Signal();
}

void WorkerPool::Shutdown(ShutdownMode mode) {
  absl::MutexLock join_lock(&join_mu_);
  if (joined_) return;
  std::deque<Task> rejected;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    if (mode == ShutdownMode::kRejectQueued) rejected.swap(queue_);
    UpdateGaugesLocked();
    // Every idle worker wakes, drains what is queued (kRunQueued) and exits.
    for (Idle* worker : idle_) worker->cv.Signal();
    idle_.clear();
  }
  for (Task& task : rejected) {
    task(absl::CancelledError(
        absl::StrCat("worker pool ", options_.name, " shut down")));
  }
  rejected.clear();
  for (std::thread& thread : threads_) thread.join();
  joined_ = true;
}

int64_t WorkerPool::queued() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int64_t>(queue_.size());
}

int32_t WorkerPool::busy() const {
  absl::MutexLock lock(&mu_);
  return busy_;
}

void WorkerPool::Run(int index) {
  // Linux limits thread names to 15 characters.
  std::string name = absl::StrCat(options_.name, "-", index);
  if (name.size() > 15) name = name.substr(name.size() - 15);
  pthread_setname_np(pthread_self(), name.c_str());
  {
    absl::MutexLock lock(&mu_);
    ++started_;
  }

  Idle self;
  mu_.Lock();
  while (true) {
    while (queue_.empty() && !stopping_) {
      self.woken = false;
      idle_.push_back(&self);
      while (!self.woken && !stopping_) self.cv.Wait(&mu_);
      // Woken by a submission or another worker: that wake is used up (a
      // worker woken only by Shutdown was taken off idle_ there).
      if (self.woken) waking_ = false;
    }
    // With kRunQueued the queue is drained before the workers exit.
    if (queue_.empty()) break;
    Task task = std::move(queue_.front());
    queue_.pop_front();
    ++busy_;
    // More work waits: one more worker gets going (it wakes the next if
    // there is still more).
    if (!queue_.empty() && !waking_) WakeOneLocked();
    UpdateGaugesLocked();
    mu_.Unlock();
    task(absl::OkStatus());
    task = nullptr;  // what it captured goes before the next task starts
    mu_.Lock();
    --busy_;
    UpdateGaugesLocked();
  }
  mu_.Unlock();
}

void WorkerPool::UpdateGaugesLocked() {
  if (metrics_.busy != nullptr) metrics_.busy->Set(busy_);
  if (metrics_.queued != nullptr) {
    metrics_.queued->Set(static_cast<double>(queue_.size()));
  }
}

}  // namespace fleetd
