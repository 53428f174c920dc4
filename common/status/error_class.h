// Error classes: what a caller does with a failed delivery.
//
// The one rule that keeps data from being lost: a batch is set aside only on a
// definite verdict by a fleetd-server that the batch itself is invalid. Such a
// verdict is an absl::Status carrying the "batch rejected" payload
// (MarkBatchRejected); the server's front ends send it on the wire as the
// response metadata `fleetd-verdict: rejected` (gRPC and gRPC-Web trailers,
// Connect `Trailer-Fleetd-Verdict` on unary errors and end-of-stream metadata
// on streams), and the agent's transports restore the payload only from a
// well-formed error of our server (a gRPC status with that trailer, a Connect
// error body with that header). Nothing else can produce it: a proxy's bare
// HTTP 500, a reset, a TLS failure or a timeout never carries it.
//
//   class        | codes / cause                                | the agent
//   -------------+----------------------------------------------+------------------------------
//   retry        | UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED,     | keeps the
//   batch (same sequence
//                | RESOURCE_EXHAUSTED, UNKNOWN, INTERNAL,       | number),
//                backs off with jitter | UNIMPLEMENTED, any HTTP status without
//                a     | (or the server's retry hint) | Connect error body,
//                resets, TLS failures,    | and retries until acknowledged |
//                and every error code without the verdict    | or the store's
//                quota evicts | (e.g. a proxy's INVALID_ARGUMENT)            |
//                it (counted)
//   credentials  | UNAUTHENTICATED, PERMISSION_DENIED           | keeps the
//   data, stops sending,
//                |                                              | probes again
//                after max backoff
//   set aside    | a non-retryable code WITH the verdict        | moves the
//   batch into the
//                | (INVALID_ARGUMENT, FAILED_PRECONDITION,      | store's
//                set-aside area | OUT_OF_RANGE, DATA_LOSS, ...) | (counted,
//                listed, re-sendable)
#ifndef FLEETD_COMMON_STATUS_ERROR_CLASS_H_
#define FLEETD_COMMON_STATUS_ERROR_CLASS_H_

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "common/status/retryable.h"

namespace fleetd {

inline constexpr char kBatchRejectedPayload[] =
    "type.fleetd.dev/batch-rejected";
// Wire form of the verdict: metadata key and its one value.
inline constexpr char kVerdictMetadataKey[] = "fleetd-verdict";
inline constexpr char kVerdictRejected[] = "rejected";

// Returns `status` marked as the server's definite rejection of the batch
// itself. OK stays OK.
inline absl::Status MarkBatchRejected(absl::Status status) {
  if (!status.ok()) {
    status.SetPayload(kBatchRejectedPayload, absl::Cord(kVerdictRejected));
  }
  return status;
}

// Whether `status` carries the server's rejection verdict.
inline bool IsBatchRejected(const absl::Status& status) {
  return !status.ok() && status.GetPayload(kBatchRejectedPayload).has_value();
}

enum class ErrorClass {
  kOk,           // delivered
  kRetry,        // keep the batch and retry it later
  kCredentials,  // the key was refused: keep the data, wait for a fixed key
  kSetAside,     // our server rejected the batch itself: set it aside
};

// The class of a delivery outcome; see the table above.
inline ErrorClass ClassifyError(const absl::Status& status) {
  if (status.ok()) return ErrorClass::kOk;
  if (absl::IsUnauthenticated(status) || absl::IsPermissionDenied(status)) {
    return ErrorClass::kCredentials;
  }
  if (IsBatchRejected(status) && !IsRetryable(status.code())) {
    return ErrorClass::kSetAside;
  }
  return ErrorClass::kRetry;
}

inline const char* ErrorClassName(ErrorClass c) {
  switch (c) {
    case ErrorClass::kOk:
      return "ok";
    case ErrorClass::kRetry:
      return "retry";
    case ErrorClass::kCredentials:
      return "credentials";
    case ErrorClass::kSetAside:
      return "set_aside";
  }
  return "retry";
}

}  // namespace fleetd

#endif  // FLEETD_COMMON_STATUS_ERROR_CLASS_H_
