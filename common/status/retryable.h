// How callers should react to a status code.
#ifndef FLEETD_COMMON_STATUS_RETRYABLE_H_
#define FLEETD_COMMON_STATUS_RETRYABLE_H_

#include "absl/status/status.h"

namespace fleetd {

// True for codes where the same request may succeed later (UNAVAILABLE,
// DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED): the caller backs off and
// retries. Every other error means the request itself is wrong or refused and
// retrying the same bytes cannot help.
inline bool IsRetryable(absl::StatusCode code) {
  switch (code) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kResourceExhausted:
    case absl::StatusCode::kAborted:
      return true;
    default:
      return false;
  }
}

}  // namespace fleetd

#endif  // FLEETD_COMMON_STATUS_RETRYABLE_H_
