// A background thread that runs a task at a fixed rate on an injected Clock.
// Internal to agent/collect.
#ifndef FLEETD_AGENT_COLLECT_PERIODIC_H_
#define FLEETD_AGENT_COLLECT_PERIODIC_H_

#include <atomic>
#include <functional>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"

namespace fleetd::agent::collect_internal {

// Runs `task` once right after Start(), then every `interval` (at least 1 ms)
// of the clock's
// monotonic time. A run that overruns the next tick delays it (ticks are
// skipped, never queued). Start/Stop may be called from any thread; Stop()
// waits for a run in progress and is idempotent. `clock` must outlive this.
class PeriodicRunner {
 public:
  PeriodicRunner(Clock* clock, absl::Duration interval,
                 std::function<void()> task);
  ~PeriodicRunner();
  PeriodicRunner(const PeriodicRunner&) = delete;
  PeriodicRunner& operator=(const PeriodicRunner&) = delete;

  // No-op when already running.
  void Start();
  void Stop();

 private:
  void Loop();

  Clock* const clock_;
  const absl::Duration interval_;
  const std::function<void()> task_;

  absl::Mutex mu_;  // serialises Start/Stop
  std::thread thread_ ABSL_GUARDED_BY(mu_);
  std::atomic<bool> stopping_{false};
  Wakeup wakeup_;
};

}  // namespace fleetd::agent::collect_internal

#endif  // FLEETD_AGENT_COLLECT_PERIODIC_H_
