// A circuit breaker: stops calling a failing peer for a while, then probes it.
#ifndef FLEETD_COMMON_RESILIENCE_CIRCUIT_BREAKER_H_
#define FLEETD_COMMON_RESILIENCE_CIRCUIT_BREAKER_H_

#include "absl/base/thread_annotations.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"

namespace fleetd {

struct CircuitBreakerOptions {
  // Consecutive failures that open the circuit.
  int failure_threshold = 5;
  // How long the circuit stays open before one probe is let through.
  absl::Duration open_duration = absl::Seconds(30);
  // Successful probes needed in half-open state to close again.
  int success_threshold = 1;
};

// closed --(failure_threshold consecutive failures)--> open
// open --(open_duration passed; next Allow())--> half-open (one probe at a
// time) half-open --(success_threshold successes)--> closed; --(a failure)-->
// open again.
//
// Callers ask Allow() before each attempt and report its outcome with
// RecordSuccess() or RecordFailure(). Safe for concurrent use.
class CircuitBreaker {
 public:
  enum class State { kClosed, kOpen, kHalfOpen };

  // `clock` must outlive the breaker.
  CircuitBreaker(const CircuitBreakerOptions& options, Clock* clock);
  CircuitBreaker(const CircuitBreaker&) = delete;
  CircuitBreaker& operator=(const CircuitBreaker&) = delete;

  // Whether an attempt may go ahead now. In half-open state only one attempt is
  // admitted until its outcome is recorded.
  bool Allow();
  void RecordSuccess();
  void RecordFailure();

  State state();
  // Time until an open circuit admits a probe; zero when not open.
  absl::Duration RetryAfter();
  int consecutive_failures();
  // Times the circuit went from closed or half-open to open.
  int64_t times_opened();

 private:
  void OpenLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const CircuitBreakerOptions options_;
  Clock* const clock_;
  absl::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kClosed;
  int consecutive_failures_ ABSL_GUARDED_BY(mu_) = 0;
  int half_open_successes_ ABSL_GUARDED_BY(mu_) = 0;
  bool probe_in_flight_ ABSL_GUARDED_BY(mu_) = false;
  absl::Time opened_at_ ABSL_GUARDED_BY(mu_);
  int64_t times_opened_ ABSL_GUARDED_BY(mu_) = 0;
};

absl::string_view CircuitStateName(CircuitBreaker::State state);

}  // namespace fleetd

#endif  // FLEETD_COMMON_RESILIENCE_CIRCUIT_BREAKER_H_
