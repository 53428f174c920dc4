// A token bucket rate limiter.
#ifndef FLEETD_COMMON_RESILIENCE_TOKEN_BUCKET_H_
#define FLEETD_COMMON_RESILIENCE_TOKEN_BUCKET_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"

namespace fleetd {

// Tokens refill continuously at `rate` per second up to `burst`; the bucket
// starts full. Safe for concurrent use.
class TokenBucket {
 public:
  // REQUIRES: rate > 0, burst >= 1. `clock` must outlive the bucket.
  TokenBucket(double rate_per_second, double burst, Clock* clock);
  TokenBucket(const TokenBucket&) = delete;
  TokenBucket& operator=(const TokenBucket&) = delete;

  // Takes `n` tokens if that many are available now; otherwise takes none.
  bool TryConsume(double n = 1);
  // How long until `n` tokens will be available (zero if they are now). For n >
  // burst the answer is InfiniteDuration(): such a request can never be served
  // whole.
  absl::Duration TimeUntilAvailable(double n = 1);
  double Available();
  // Changes the rate and burst, keeping the tokens already earned (capped at
  // the new burst).
  void SetRate(double rate_per_second, double burst);
  // Raises the burst to at least `burst` (the rate stays).
  void RaiseBurst(double burst);

 private:
  void RefillLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Clock* const clock_;
  absl::Mutex mu_;
  double rate_ ABSL_GUARDED_BY(mu_);
  double burst_ ABSL_GUARDED_BY(mu_);
  double tokens_ ABSL_GUARDED_BY(mu_);
  absl::Time last_ ABSL_GUARDED_BY(mu_);
};

}  // namespace fleetd

#endif  // FLEETD_COMMON_RESILIENCE_TOKEN_BUCKET_H_
