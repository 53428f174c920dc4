// Waiting on a condition with a deadline, for tests. Never a fixed sleep:
// returns as soon as the condition holds, and fails (returns false) only after
// `timeout` of real time.
#ifndef FLEETD_COMMON_TESTING_WAIT_H_
#define FLEETD_COMMON_TESTING_WAIT_H_

#include <algorithm>
#include <functional>

#include "absl/time/clock.h"
#include "absl/time/time.h"

namespace fleetd::testing {

inline bool WaitFor(const std::function<bool()>& condition,
                    absl::Duration timeout = absl::Seconds(30)) {
  absl::Time deadline = absl::Now() + timeout;
  absl::Duration pause = absl::Microseconds(50);
  while (!condition()) {
    if (absl::Now() >= deadline) return false;
    absl::SleepFor(pause);  // poll interval, growing to 10 ms
    pause = std::min(pause * 2, absl::Milliseconds(10));
  }
  return true;
}

}  // namespace fleetd::testing

#endif  // FLEETD_COMMON_TESTING_WAIT_H_
