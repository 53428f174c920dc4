#include "common/resilience/circuit_breaker.h"

#include <algorithm>

namespace fleetd {

CircuitBreaker::CircuitBreaker(const CircuitBreakerOptions& options,
                               Clock* clock)
    : options_(options), clock_(clock) {}

bool CircuitBreaker::Allow() {
  absl::MutexLock lock(&mu_);
  switch (state_) {
    case State::kClosed:
      return true;
    case State::kOpen:
      if (clock_->MonotonicNow() - opened_at_ < options_.open_duration)
        return false;
      state_ = State::kHalfOpen;
      half_open_successes_ = 0;
      probe_in_flight_ = true;
      return true;
    case State::kHalfOpen:
      if (probe_in_flight_) return false;
      probe_in_flight_ = true;
      return true;
  }
  return false;
}

void CircuitBreaker::RecordSuccess() {
  absl::MutexLock lock(&mu_);
  consecutive_failures_ = 0;
  if (state_ == State::kHalfOpen) {
    probe_in_flight_ = false;
    if (++half_open_successes_ >= std::max(1, options_.success_threshold)) {
      state_ = State::kClosed;
    }
  }
}

void CircuitBreaker::RecordFailure() {
  absl::MutexLock lock(&mu_);
  ++consecutive_failures_;
  switch (state_) {
    case State::kClosed:
      if (consecutive_failures_ >= std::max(1, options_.failure_threshold))
        OpenLocked();
      break;
    case State::kHalfOpen:
      OpenLocked();
      break;
    case State::kOpen:
      break;  // A straggler from before the circuit opened.
  }
}

void CircuitBreaker::OpenLocked() {
  state_ = State::kOpen;
  opened_at_ = clock_->MonotonicNow();
  probe_in_flight_ = false;
  ++times_opened_;
}

CircuitBreaker::State CircuitBreaker::state() {
  absl::MutexLock lock(&mu_);
  return state_;
}

absl::Duration CircuitBreaker::RetryAfter() {
  absl::MutexLock lock(&mu_);
  if (state_ != State::kOpen) return absl::ZeroDuration();
  return std::max(
      absl::ZeroDuration(),
      options_.open_duration - (clock_->MonotonicNow() - opened_at_));
}

int CircuitBreaker::consecutive_failures() {
  absl::MutexLock lock(&mu_);
  return consecutive_failures_;
}

int64_t CircuitBreaker::times_opened() {
  absl::MutexLock lock(&mu_);
  return times_opened_;
}

absl::string_view CircuitStateName(CircuitBreaker::State state) {
  switch (state) {
    case CircuitBreaker::State::kClosed:
      return "closed";
    case CircuitBreaker::State::kOpen:
      return "open";
    case CircuitBreaker::State::kHalfOpen:
      return "half_open";
  }
  return "unknown";
}

}  // namespace fleetd
