// Connect protocol errors (connectrpc.com/docs/protocol#error-codes): code
// names, the error JSON of unary responses, the HTTP status fallback, and the
// retry hint headers.
#ifndef FLEETD_AGENT_TRANSPORT_CONNECT_ERROR_H_
#define FLEETD_AGENT_TRANSPORT_CONNECT_ERROR_H_

#include <optional>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace fleetd::agent {

// The Connect name of a code ("canceled", "invalid_argument", ...); "" for
// OK and codes outside the canonical range.
absl::string_view ConnectCodeName(absl::StatusCode code);

// The code a Connect name stands for (exact, lower-case names as the spec
// writes them); nullopt for anything else.
std::optional<absl::StatusCode> ConnectCodeFromName(absl::string_view name);

// The code a non-200 HTTP status implies when the body is not a Connect error
// (a proxy's or load balancer's own page). The spec's table, except that 429
// is RESOURCE_EXHAUSTED rather than UNAVAILABLE: both are retryable, and
// RESOURCE_EXHAUSTED is what an overloaded Fleet server itself answers.
//   400 INTERNAL, 401 UNAUTHENTICATED, 403 PERMISSION_DENIED,
//   404 UNIMPLEMENTED, 429 RESOURCE_EXHAUSTED, 502/503/504 UNAVAILABLE,
//   anything else UNKNOWN.
absl::StatusCode CodeFromHttpStatus(int http_status);

// The status of a unary response with HTTP status `http_status` (not 200) and
// the (already decompressed) `body`. A Connect error JSON
// `{"code": "...", "message": "..."}` (Content-Type application/json) gives
// its code and message verbatim; an unknown code name is UNKNOWN. Anything
// else falls back to CodeFromHttpStatus with a message naming the HTTP status
// and the start of the body.
// `connect_body` (may be null) is set to whether the body was a Connect error
// JSON, i.e. whether the answer came from a Connect server rather than from a
// proxy in the way.
absl::Status StatusFromConnectError(int http_status,
                                    absl::string_view content_type,
                                    absl::string_view body,
                                    bool* connect_body = nullptr);

// Parses an HTTP Retry-After value: delta-seconds ("120") or an IMF-fixdate
// ("Wed, 21 Oct 2015 07:28:00 GMT"), relative to `now` (never negative).
// nullopt when malformed.
std::optional<absl::Duration> ParseRetryAfter(absl::string_view value,
                                              absl::Time now);

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_TRANSPORT_CONNECT_ERROR_H_
