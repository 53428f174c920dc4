// Open-loop send schedule for the load generator.
//
// Each device sends one batch every `interval`, starting at `start + phase`,
// whatever happened to its earlier batches: the schedule is fixed by the
// target rate, not by how fast the server answers. Every job carries the time
// it was *meant* to be sent, and latency is measured from that time, so a
// slow server shows up as latency instead of silently lowering the offered
// rate (no coordinated omission).
//
// Besides the periodic jobs, Push() adds one-off jobs (backlog batches and
// retries) due at a given time.
#ifndef FLEETD_BENCH_LOADGEN_SCHEDULER_H_
#define FLEETD_BENCH_LOADGEN_SCHEDULER_H_

#include <cstdint>
#include <queue>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"

namespace fleetd::bench {

struct Job {
  // Monotonic time the job is meant to be sent at.
  absl::Time intended;
  int device = 0;
  // Periodic (false) or one-off (true).
  bool one_off = false;
  // Caller-defined payload of one-off jobs (backlog and retries): what to
  // send, the sequence number to reuse (0: a new one), batches left after
  // this one, the attempt number.
  int kind = 0;
  int64_t sequence = 0;
  int remaining = 0;
  int attempt = 0;
};

struct DeviceSchedule {
  // Zero or infinite: the device has no periodic jobs.
  absl::Duration interval;
  // Offset of the first send from `start`, in [0, interval).
  absl::Duration phase;
};

// Thread-safe. Times are Clock::MonotonicNow() readings.
class Scheduler {
 public:
  // Periodic jobs are due in [start, end); one-off jobs due at or after `end`
  // are dropped (counted by dropped()).
  Scheduler(Clock* clock, const std::vector<DeviceSchedule>& devices,
            absl::Time start, absl::Time end);

  // Blocks until the next job is due and returns it in `*job`. Returns false
  // once no job is left and none is pending (see AddPending), or after Stop().
  // Jobs are returned in order of intended time (ties by device).
  bool WaitNext(Job* job);

  // Makes WaitNext return false from now on.
  void Stop();

  // Adds a one-off job due at `job.intended` and wakes WaitNext. Returns false
  // (and counts it in dropped()) if the job is due at or after `end`.
  bool Push(Job job);

  // While > 0, WaitNext keeps waiting even when nothing is scheduled (a
  // running call may still Push a follow-up job). Callers increment before
  // handing a job out and decrement when it is done.
  void AddPending(int delta);

  int64_t dropped() const;

 private:
  struct Later {
    bool operator()(const Job& a, const Job& b) const {
      if (a.intended != b.intended) return a.intended > b.intended;
      return a.device > b.device;
    }
  };

  Clock* const clock_;
  const absl::Time end_;
  std::vector<absl::Duration> intervals_;
  Wakeup changed_;
  mutable absl::Mutex mu_;
  std::priority_queue<Job, std::vector<Job>, Later> heap_ ABSL_GUARDED_BY(mu_);
  int pending_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopped_ ABSL_GUARDED_BY(mu_) = false;
  int64_t dropped_ ABSL_GUARDED_BY(mu_) = 0;
};

// The interval every device must use so that `batch_sizes` (one entry per
// device, samples per batch) add up to `samples_per_second`.
absl::Duration IntervalForRate(const std::vector<int>& batch_sizes,
                               double samples_per_second);

}  // namespace fleetd::bench

#endif  // FLEETD_BENCH_LOADGEN_SCHEDULER_H_
