#include "common/concurrency/timer_queue.h"

#include <vector>

namespace fleetd {

TimerQueue::TimerQueue(Clock* clock) : clock_(clock) {
  thread_ = std::thread([this] { Loop(); });
}

TimerQueue::~TimerQueue() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
  }
  wakeup_.Notify();
  thread_.join();
  // Destroyed outside the lock: a callback's captures may take locks of
  // their own.
  std::map<std::pair<absl::Time, uint64_t>, absl::AnyInvocable<void() &&>>
      dropped;
  absl::MutexLock lock(&mu_);
  dropped.swap(timers_);
}

TimerQueue::Handle TimerQueue::Schedule(absl::Time monotonic_deadline,
                                        absl::AnyInvocable<void() &&> fn) {
  Handle handle;
  bool earliest;
  {
    absl::MutexLock lock(&mu_);
    handle = {monotonic_deadline, next_id_++};
    auto it =
        timers_
            .emplace(std::make_pair(handle.deadline, handle.id), std::move(fn))
            .first;
    earliest = it == timers_.begin();
  }
  // The thread sleeps until the earliest deadline it saw: a new earliest one
  // wakes it to look again.
  if (earliest) wakeup_.Notify();
  return handle;
}

bool TimerQueue::Cancel(const Handle& handle) {
  absl::AnyInvocable<void() &&> fn;
  {
    absl::MutexLock lock(&mu_);
    auto it = timers_.find(std::make_pair(handle.deadline, handle.id));
    if (it == timers_.end()) return false;
    fn = std::move(it->second);
    timers_.erase(it);
  }
  return true;  // `fn` is destroyed here, outside the lock
}

size_t TimerQueue::pending() const {
  absl::MutexLock lock(&mu_);
  return timers_.size();
}

void TimerQueue::Loop() {
  while (true) {
    // Cleared before the map is read, so a Schedule after this point is
    // either seen below or leaves the wakeup set for the sleep.
    wakeup_.Reset();
    std::vector<absl::AnyInvocable<void() &&>> due;
    absl::Time next = absl::InfiniteFuture();
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      const absl::Time now = clock_->MonotonicNow();
      while (!timers_.empty() && timers_.begin()->first.first <= now) {
        due.push_back(std::move(timers_.begin()->second));
        timers_.erase(timers_.begin());
      }
      if (!timers_.empty()) next = timers_.begin()->first.first;
    }
    if (!due.empty()) {
      for (auto& fn : due) std::move(fn)();
      continue;
    }
    clock_->SleepUntil(next, &wakeup_);
  }
}

}  // namespace fleetd
