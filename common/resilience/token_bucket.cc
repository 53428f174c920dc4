#include "common/resilience/token_bucket.h"

#include <algorithm>

namespace fleetd {

TokenBucket::TokenBucket(double rate_per_second, double burst, Clock* clock)
    : clock_(clock),
      rate_(std::max(rate_per_second, 1e-9)),
      burst_(std::max(burst, 1.0)),
      tokens_(burst_),
      last_(clock->MonotonicNow()) {}

void TokenBucket::RefillLocked() {
  absl::Time now = clock_->MonotonicNow();
  if (now > last_) {
    tokens_ =
        std::min(burst_, tokens_ + absl::ToDoubleSeconds(now - last_) * rate_);
    last_ = now;
  }
}

bool TokenBucket::TryConsume(double n) {
  absl::MutexLock lock(&mu_);
  RefillLocked();
  if (tokens_ + 1e-9 < n) return false;
  tokens_ -= n;
  return true;
}

absl::Duration TokenBucket::TimeUntilAvailable(double n) {
  absl::MutexLock lock(&mu_);
  if (n > burst_) return absl::InfiniteDuration();
  RefillLocked();
  if (tokens_ + 1e-9 >= n) return absl::ZeroDuration();
  return absl::Seconds((n - tokens_) / rate_);
}

double TokenBucket::Available() {
  absl::MutexLock lock(&mu_);
  RefillLocked();
  return tokens_;
}

void TokenBucket::SetRate(double rate_per_second, double burst) {
  absl::MutexLock lock(&mu_);
  RefillLocked();
  rate_ = std::max(rate_per_second, 1e-9);
  burst_ = std::max(burst, 1.0);
  tokens_ = std::min(tokens_, burst_);
}

void TokenBucket::RaiseBurst(double burst) {
  absl::MutexLock lock(&mu_);
  RefillLocked();
  burst_ = std::max(burst_, burst);
}

}  // namespace fleetd
