// CORS (the Fetch standard's cross-origin protocol) for the front door, so a
// browser page served from another origin (a fleet console, a gRPC-Web or
// Connect-Web client) may call fleetd.v1.SyncService.
//
// WithCors wraps an ExchangeHandler:
//   - A preflight (OPTIONS with Origin and Access-Control-Request-Method)
//     from an allowed origin is answered 204 here: Access-Control-Allow-
//     Origin (the origin, or "*" when any is allowed), -Allow-Methods (GET,
//     POST), -Allow-Headers (what the three protocols send: content-type,
//     the Connect and gRPC-Web headers, timeouts, codings, x-api-key),
//     -Max-Age and Vary. From any other origin, or asking for a method other
//     than GET or POST: 403 without CORS headers (the browser then refuses the
//     call).
//   - Any other request with an allowed Origin reaches the inner handler with
//     its response headers extended by Access-Control-Allow-Origin, Vary:
//     Origin and Access-Control-Expose-Headers (the gRPC status, Connect
//     trailer and retry headers a client must read). Requests without Origin
//     (devices, servers) or from other origins pass untouched: CORS is the
//     browser's check, and the API key still decides every call.
// No Access-Control-Allow-Credentials: calls carry their key in a header, not
// in cookies.
#ifndef FLEETD_SERVER_RPC_DOOR_CORS_H_
#define FLEETD_SERVER_RPC_DOOR_CORS_H_

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "server/rpc/http/exchange.h"

namespace fleetd::server::rpc::door {

struct CorsPolicy {
  // Exact origins ("https://console.example.com", scheme://host[:port] as
  // browsers send them), or "*" for any. Empty: CORS off (WithCors returns
  // the handler unchanged).
  std::vector<std::string> allowed_origins;
  // How long a browser may cache a preflight answer.
  absl::Duration max_age = absl::Hours(2);
};

http::ExchangeHandler WithCors(CorsPolicy policy, http::ExchangeHandler inner);

}  // namespace fleetd::server::rpc::door

#endif  // FLEETD_SERVER_RPC_DOOR_CORS_H_
