#include "agent/collect/periodic.h"

#include <algorithm>
#include <utility>

namespace fleetd::agent::collect_internal {

PeriodicRunner::PeriodicRunner(Clock* clock, absl::Duration interval,
                               std::function<void()> task)
    : clock_(clock),
      interval_(std::max(interval, absl::Milliseconds(1))),
      task_(std::move(task)) {}

PeriodicRunner::~PeriodicRunner() { Stop(); }

void PeriodicRunner::Start() {
  absl::MutexLock lock(&mu_);
  if (thread_.joinable()) return;
  stopping_ = false;
  wakeup_.Reset();
  thread_ = std::thread([this] { Loop(); });
}

void PeriodicRunner::Stop() {
  absl::MutexLock lock(&mu_);
  if (!thread_.joinable()) return;
  stopping_ = true;
  wakeup_.Notify();
  thread_.join();
}

void PeriodicRunner::Loop() {
  absl::Time next = clock_->MonotonicNow();
  while (!stopping_) {
    task_();
    next += interval_;
    absl::Time now = clock_->MonotonicNow();
    if (next <= now) next = now + interval_;  // overran: skip missed ticks
    if (stopping_) break;
    clock_->SleepUntil(next, &wakeup_);
  }
}

}  // namespace fleetd::agent::collect_internal
