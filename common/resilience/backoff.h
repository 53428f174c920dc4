// Exponential backoff with jitter, for retrying a failed sync.
#ifndef FLEETD_COMMON_RESILIENCE_BACKOFF_H_
#define FLEETD_COMMON_RESILIENCE_BACKOFF_H_

#include <cstdint>
#include <random>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace fleetd {

struct BackoffOptions {
  absl::Duration initial = absl::Seconds(1);
  double multiplier = 2.0;
  absl::Duration max = absl::Minutes(5);
  // Each delay is drawn uniformly from [base * (1 - jitter), base * (1 +
  // jitter)] and then capped at `max`, so devices that failed together do not
  // retry in lockstep.
  double jitter = 0.2;
};

// Checks that initial > 0, multiplier >= 1, max >= initial and jitter in [0,
// 1].
absl::Status ValidateBackoffOptions(const BackoffOptions& options);

// Produces the delays before successive retries: initial, initial*multiplier,
// ... capped at max, each with jitter. Deterministic for a given seed. Not
// thread-safe: one instance belongs to one retry loop.
class ExponentialBackoff {
 public:
  // REQUIRES: ValidateBackoffOptions(options).ok().
  ExponentialBackoff(const BackoffOptions& options, uint64_t seed);

  // The delay to wait before the next attempt; counts the attempt.
  absl::Duration Next();
  // After a success: the next delay starts from `initial` again.
  void Reset() { attempt_ = 0; }
  // Failures counted since the last Reset().
  int attempt() const { return attempt_; }
  // The delay before jitter for a 0-based attempt number.
  absl::Duration BaseDelay(int attempt) const;
  const BackoffOptions& options() const { return options_; }
  // Replaces the options (e.g. from the server's configuration), keeping the
  // count of failures. REQUIRES: ValidateBackoffOptions(options).ok().
  void SetOptions(const BackoffOptions& options) { options_ = options; }

 private:
  BackoffOptions options_;
  std::mt19937_64 rng_;
  int attempt_ = 0;
};

}  // namespace fleetd

#endif  // FLEETD_COMMON_RESILIENCE_BACKOFF_H_
