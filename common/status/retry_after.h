// A retry hint carried on an absl::Status, for overload answers
// (RESOURCE_EXHAUSTED, UNAVAILABLE). Front ends turn it into their protocol's
// form (gRPC trailing metadata `retry-after-ms`, HTTP `Retry-After`); clients
// read it back from there.
#ifndef FLEETD_COMMON_STATUS_RETRY_AFTER_H_
#define FLEETD_COMMON_STATUS_RETRY_AFTER_H_

#include <cstdint>
#include <optional>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"

namespace fleetd {

inline constexpr char kRetryAfterPayload[] = "type.fleetd.dev/retry-after-ms";

// Returns `status` with a retry hint of `delay` (rounded up to whole
// milliseconds).
inline absl::Status WithRetryAfter(absl::Status status, absl::Duration delay) {
  int64_t ms =
      absl::ToInt64Milliseconds(absl::Ceil(delay, absl::Milliseconds(1)));
  status.SetPayload(kRetryAfterPayload,
                    absl::Cord(absl::StrCat(ms < 0 ? 0 : ms)));
  return status;
}

// The retry hint on `status`, if any.
inline std::optional<absl::Duration> GetRetryAfter(const absl::Status& status) {
  auto payload = status.GetPayload(kRetryAfterPayload);
  if (!payload.has_value()) return std::nullopt;
  int64_t ms;
  if (!absl::SimpleAtoi(std::string(*payload), &ms) || ms < 0)
    return std::nullopt;
  return absl::Milliseconds(ms);
}

}  // namespace fleetd

#endif  // FLEETD_COMMON_STATUS_RETRY_AFTER_H_
