#include "common/clock/clock.h"

#include <algorithm>
#include <chrono>
#include <vector>

namespace fleetd {
namespace {

// Monotonic readings of the simulated clock count from here.
const absl::Time kMonotonicOrigin = absl::FromUnixSeconds(1'000'000);

}  // namespace

Wakeup::Wakeup() : state_(std::make_shared<State>()) {}

void Wakeup::Notify() {
  absl::MutexLock lock(&state_->mu);
  state_->notified = true;
}

bool Wakeup::Notified() const {
  absl::MutexLock lock(&state_->mu);
  return state_->notified;
}

bool Wakeup::Reset() {
  absl::MutexLock lock(&state_->mu);
  bool was = state_->notified;
  state_->notified = false;
  return was;
}

Clock* Clock::Real() {
  static RealClock* const clock = new RealClock();
  return clock;
}

absl::Time RealClock::Now() { return absl::Now(); }

absl::Time RealClock::MonotonicNow() {
  auto since = std::chrono::steady_clock::now().time_since_epoch();
  return absl::UnixEpoch() +
         absl::FromChrono(
             std::chrono::duration_cast<std::chrono::nanoseconds>(since));
}

bool RealClock::SleepUntil(absl::Time monotonic_deadline, Wakeup* wakeup) {
  Wakeup local;
  Wakeup::State* state =
      wakeup != nullptr ? wakeup->state_.get() : local.state_.get();
  absl::MutexLock lock(&state->mu);
  // Re-arm the timeout after spurious returns until the monotonic deadline has
  // passed.
  while (!state->notified) {
    absl::Duration left = monotonic_deadline - MonotonicNow();
    if (left <= absl::ZeroDuration()) break;
    state->mu.AwaitWithTimeout(absl::Condition(&state->notified), left);
  }
  return state->notified;
}

SimulatedClock::SimulatedClock(absl::Time start)
    : elapsed_(absl::ZeroDuration()), wall_start_(start) {}

absl::Time SimulatedClock::Now() {
  absl::MutexLock lock(&mu_);
  return wall_start_ + elapsed_;
}

absl::Time SimulatedClock::MonotonicNow() {
  absl::MutexLock lock(&mu_);
  return kMonotonicOrigin + elapsed_;
}

bool SimulatedClock::SleepUntil(absl::Time monotonic_deadline, Wakeup* wakeup) {
  Wakeup local;
  auto sleeper = std::make_shared<Sleeper>();
  sleeper->deadline = monotonic_deadline;
  sleeper->state = wakeup != nullptr ? wakeup->state_ : local.state_;
  {
    absl::MutexLock lock(&mu_);
    if (kMonotonicOrigin + elapsed_ >= monotonic_deadline) {
      absl::MutexLock state_lock(&sleeper->state->mu);
      return sleeper->state->notified;
    }
    sleepers_.insert(sleeper);
  }
  bool notified;
  {
    Wakeup::State* state = sleeper->state.get();
    absl::MutexLock state_lock(&state->mu);
    auto done = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
      return state->notified || sleeper->expired;
    };
    state->mu.Await(absl::Condition(&done));
    notified = state->notified;
  }
  absl::MutexLock lock(&mu_);
  sleepers_.erase(sleeper);
  return notified;
}

void SimulatedClock::Advance(absl::Duration d) {
  std::vector<std::shared_ptr<Sleeper>> due;
  {
    absl::MutexLock lock(&mu_);
    if (d > absl::ZeroDuration()) elapsed_ += d;
    absl::Time now = kMonotonicOrigin + elapsed_;
    for (const auto& s : sleepers_) {
      if (s->deadline <= now) due.push_back(s);
    }
  }
  // Taken after mu_ is released: a sleeper holds its state mutex and then takes
  // mu_.
  for (const auto& s : due) {
    absl::MutexLock state_lock(&s->state->mu);
    s->expired = true;
  }
}

int SimulatedClock::Sleepers() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(sleepers_.size());
}

bool SimulatedClock::AwaitSleepers(int n, absl::Duration real_timeout) const {
  absl::MutexLock lock(&mu_);
  auto enough = [&]() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return static_cast<int>(sleepers_.size()) >= n;
  };
  return mu_.AwaitWithTimeout(absl::Condition(&enough), real_timeout);
}

absl::Time SimulatedClock::NextDeadline() const {
  absl::MutexLock lock(&mu_);
  absl::Time next = absl::InfiniteFuture();
  for (const auto& s : sleepers_) next = std::min(next, s->deadline);
  return next;
}

}  // namespace fleetd
