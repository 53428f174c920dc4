#include "common/resilience/backoff.h"

#include <algorithm>
#include <cmath>

namespace fleetd {

absl::Status ValidateBackoffOptions(const BackoffOptions& options) {
  if (options.initial <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError("backoff initial delay must be positive");
  }
  if (!(options.multiplier >= 1.0) || !std::isfinite(options.multiplier)) {
    return absl::InvalidArgumentError(
        "backoff multiplier must be a finite number >= 1");
  }
  if (options.max < options.initial) {
    return absl::InvalidArgumentError(
        "backoff maximum must be at least the initial delay");
  }
  if (!(options.jitter >= 0.0 && options.jitter <= 1.0)) {
    return absl::InvalidArgumentError("backoff jitter must be within [0, 1]");
  }
  return absl::OkStatus();
}

ExponentialBackoff::ExponentialBackoff(const BackoffOptions& options,
                                       uint64_t seed)
    : options_(options), rng_(seed) {}

absl::Duration ExponentialBackoff::BaseDelay(int attempt) const {
  // Computed in floating point seconds: the cap is reached long before overflow
  // matters.
  double seconds = absl::ToDoubleSeconds(options_.initial) *
                   std::pow(options_.multiplier, std::max(attempt, 0));
  double cap = absl::ToDoubleSeconds(options_.max);
  if (!std::isfinite(seconds) || seconds > cap) seconds = cap;
  return absl::Seconds(seconds);
}

absl::Duration ExponentialBackoff::Next() {
  absl::Duration base = BaseDelay(attempt_);
  if (attempt_ < 1'000'000) ++attempt_;
  if (options_.jitter <= 0.0) return base;
  std::uniform_real_distribution<double> factor(1.0 - options_.jitter,
                                                1.0 + options_.jitter);
  absl::Duration delay = base * factor(rng_);
  return std::min(delay, options_.max);
}

}  // namespace fleetd
