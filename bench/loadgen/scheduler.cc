#include "bench/loadgen/scheduler.h"

namespace fleetd::bench {

Scheduler::Scheduler(Clock* clock, const std::vector<DeviceSchedule>& devices,
                     absl::Time start, absl::Time end)
    : clock_(clock), end_(end) {
  intervals_.reserve(devices.size());
  absl::MutexLock lock(&mu_);
  for (size_t i = 0; i < devices.size(); ++i) {
    const DeviceSchedule& d = devices[i];
    bool periodic = d.interval > absl::ZeroDuration() &&
                    d.interval != absl::InfiniteDuration();
    intervals_.push_back(periodic ? d.interval : absl::InfiniteDuration());
    if (!periodic) continue;
    absl::Time first = start + d.phase;
    if (first < end_) heap_.push(Job{first, static_cast<int>(i)});
  }
}

bool Scheduler::WaitNext(Job* job) {
  while (true) {
    absl::Time due;
    {
      absl::MutexLock lock(&mu_);
      if (stopped_) return false;
      if (heap_.empty()) {
        if (pending_ == 0) return false;
        due = absl::InfiniteFuture();
      } else {
        due = heap_.top().intended;
        if (due <= clock_->MonotonicNow()) {
          *job = heap_.top();
          heap_.pop();
          if (!job->one_off) {
            Job next = *job;
            next.intended = job->intended + intervals_[job->device];
            if (next.intended < end_) heap_.push(next);
          }
          return true;
        }
      }
      changed_.Reset();
    }
    // A Push or AddPending between the unlock and the sleep notifies
    // `changed_`, which SleepUntil then sees at once.
    clock_->SleepUntil(due, &changed_);
  }
}

bool Scheduler::Push(Job job) {
  job.one_off = true;
  {
    absl::MutexLock lock(&mu_);
    if (job.intended >= end_) {
      ++dropped_;
      return false;
    }
    heap_.push(job);
  }
  changed_.Notify();
  return true;
}

void Scheduler::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopped_ = true;
  }
  changed_.Notify();
}

void Scheduler::AddPending(int delta) {
  {
    absl::MutexLock lock(&mu_);
    pending_ += delta;
  }
  changed_.Notify();
}

int64_t Scheduler::dropped() const {
  absl::MutexLock lock(&mu_);
  return dropped_;
}

absl::Duration IntervalForRate(const std::vector<int>& batch_sizes,
                               double samples_per_second) {
  if (samples_per_second <= 0) return absl::InfiniteDuration();
  double total = 0;
  for (int b : batch_sizes) total += b;
  return absl::Seconds(total / samples_per_second);
}

}  // namespace fleetd::bench
