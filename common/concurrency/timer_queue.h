// Deadlines that run a callback on one thread of their own.
#ifndef FLEETD_COMMON_CONCURRENCY_TIMER_QUEUE_H_
#define FLEETD_COMMON_CONCURRENCY_TIMER_QUEUE_H_

#include <cstdint>
#include <map>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/functional/any_invocable.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"

namespace fleetd {

// Runs each scheduled callback once its monotonic deadline (on the injected
// clock) has passed, unless it was cancelled first. Callbacks run one at a
// time on the queue's own thread, outside its lock, in deadline order; they
// must be quick. Safe for concurrent use. Destruction drops callbacks not yet
// run (they are destroyed uncalled) and waits for one that is running.
class TimerQueue {
 public:
  // Names a scheduled callback for Cancel.
  struct Handle {
    absl::Time deadline = absl::InfinitePast();
    uint64_t id = 0;
  };

  // `clock` must outlive the queue.
  explicit TimerQueue(Clock* clock);
  ~TimerQueue();
  TimerQueue(const TimerQueue&) = delete;
  TimerQueue& operator=(const TimerQueue&) = delete;

  // Runs `fn` once MonotonicNow() >= `monotonic_deadline` (at once, on the
  // queue's thread, when it has passed already).
  Handle Schedule(absl::Time monotonic_deadline,
                  absl::AnyInvocable<void() &&> fn);
  // Forgets a callback that has not started: returns true if it will not
  // run (and destroys it here), false if it ran, is running or was cancelled.
  bool Cancel(const Handle& handle);
  // Callbacks scheduled and neither run nor cancelled.
  size_t pending() const;

 private:
  void Loop();

  Clock* const clock_;
  mutable absl::Mutex mu_;
  std::map<std::pair<absl::Time, uint64_t>, absl::AnyInvocable<void() &&>>
      timers_ ABSL_GUARDED_BY(mu_);
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  Wakeup wakeup_;
  std::thread thread_;
};

}  // namespace fleetd

#endif  // FLEETD_COMMON_CONCURRENCY_TIMER_QUEUE_H_
