// Time as a dependency.
//
// Code never reads the system clock directly: it takes a Clock*, so that tests
// drive time with a SimulatedClock that only moves when told to, and backoff,
// circuit-breaker, rate-limit and scheduling tests run in microseconds without
// sleeping.
#ifndef FLEETD_COMMON_CLOCK_CLOCK_H_
#define FLEETD_COMMON_CLOCK_CLOCK_H_

#include <cstdint>
#include <memory>
#include <set>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace fleetd {

// A signal that ends a Clock::SleepUntil early. Notify() may be called from any
// thread, any number of times; the wakeup stays notified until Reset(). Safe
// for concurrent use.
class Wakeup {
 public:
  Wakeup();
  Wakeup(const Wakeup&) = delete;
  Wakeup& operator=(const Wakeup&) = delete;

  void Notify();
  bool Notified() const;
  // Clears the notified state. Returns whether it was notified.
  bool Reset();

 private:
  friend class RealClock;
  friend class SimulatedClock;
  struct State {
    mutable absl::Mutex mu;
    bool notified ABSL_GUARDED_BY(mu) = false;
  };
  // Shared so a clock that is waking sleepers never touches freed memory.
  std::shared_ptr<State> state_;
};

// Source of wall time, monotonic time and sleeping. Implementations are safe
// for concurrent use.
class Clock {
 public:
  virtual ~Clock() = default;

  // Wall-clock time, for timestamps that leave the process.
  virtual absl::Time Now() = 0;
  // Monotonic time, for intervals, deadlines and rates. Only differences
  // between two readings of the same clock mean anything.
  virtual absl::Time MonotonicNow() = 0;
  // Blocks until MonotonicNow() >= deadline or `wakeup` (may be null) is
  // notified. Returns true if it returned because of the wakeup.
  virtual bool SleepUntil(absl::Time monotonic_deadline, Wakeup* wakeup) = 0;

  bool SleepFor(absl::Duration d, Wakeup* wakeup = nullptr) {
    return SleepUntil(MonotonicNow() + d, wakeup);
  }

  // The process-wide real clock. Never destroyed.
  static Clock* Real();
};

// The system clock: absl::Now() for wall time, std::chrono::steady_clock for
// monotonic time.
class RealClock final : public Clock {
 public:
  absl::Time Now() override;
  absl::Time MonotonicNow() override;
  bool SleepUntil(absl::Time monotonic_deadline, Wakeup* wakeup) override;
};

// A clock for tests that moves only when Advance() or SetTime() is called.
// Sleepers wake when simulated time reaches their deadline. Wall and monotonic
// time move together.
class SimulatedClock final : public Clock {
 public:
  // Wall time starts at `start`; monotonic time starts at an arbitrary fixed
  // origin.
  explicit SimulatedClock(
      absl::Time start = absl::FromUnixSeconds(1'700'000'000));

  absl::Time Now() override;
  absl::Time MonotonicNow() override;
  bool SleepUntil(absl::Time monotonic_deadline, Wakeup* wakeup) override;

  // Moves time forward by `d` (>= 0) and wakes every sleeper whose deadline has
  // passed.
  void Advance(absl::Duration d);
  // Number of threads blocked in SleepUntil right now.
  int Sleepers() const;
  // Blocks (in real time, at most `real_timeout`) until at least `n` threads
  // sleep on this clock. Tests call it before Advance() so that the sleeper
  // they want to wake is there. Returns whether that happened in time.
  bool AwaitSleepers(int n, absl::Duration real_timeout) const;
  // The earliest deadline among current sleepers, or InfiniteFuture if there
  // are none.
  absl::Time NextDeadline() const;

 private:
  struct Sleeper {
    absl::Time deadline;
    std::shared_ptr<Wakeup::State> state;
    bool expired = false;  // Guarded by state->mu.
  };

  mutable absl::Mutex mu_;
  absl::Duration elapsed_ ABSL_GUARDED_BY(mu_);
  const absl::Time wall_start_;
  std::set<std::shared_ptr<Sleeper>> sleepers_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fleetd

#endif  // FLEETD_COMMON_CLOCK_CLOCK_H_
