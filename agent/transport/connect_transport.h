// The Connect transport: `fleetd.v1.SyncService` over HTTP/1.1 with the
// Connect protocol (connectrpc.com/docs/protocol), for devices where a full
// gRPC stack is too heavy.
//
// Each unary call is `POST {base}/fleetd.v1.SyncService/<Method>` with
// Content-Type application/proto, Connect-Protocol-Version: 1, X-API-Key,
// Connect-Timeout-Ms (the call's timeout), Accept-Encoding: gzip, zstd and,
// when gzip is on and it makes the body smaller, Content-Encoding: gzip.
// Response bodies are decompressed with a bound (max_response_bytes).
// Errors (see connect_error.h): the Connect error JSON's code and message; an
// HTTP status fallback for bodies that are not Connect errors; the retry hint
// from Trailer-Retry-After-Ms (milliseconds) or else Retry-After (seconds or
// an HTTP date). A 200 answer that is not application/proto, or that does not
// decompress or parse, is UNAVAILABLE: something other than the Fleet server
// answered, or the answer was damaged, and a retry is safe.
//
// StreamSync is UNIMPLEMENTED: a bidirectional stream needs HTTP/2.
#ifndef FLEETD_AGENT_TRANSPORT_CONNECT_TRANSPORT_H_
#define FLEETD_AGENT_TRANSPORT_CONNECT_TRANSPORT_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "agent/transport/server_url.h"
#include "agent/transport/transport.h"
#include "common/clock/clock.h"
#include "common/http/http_client.h"

namespace fleetd::agent {

struct ConnectCallConfig {
  // Prefix of every procedure path: "http[s]://host:port[/path]".
  std::string base_url;
  // Sent as X-API-Key; empty sends none.
  std::string api_key;
  // Compress request bodies with gzip when that makes them smaller.
  bool gzip = false;
  // Largest response body accepted after decompression.
  int64_t max_response_bytes = int64_t{16} << 20;
  // For HTTP-date Retry-After values. Not owned; must not be null.
  Clock* clock = nullptr;
};

// A transport sending through `http`, which it owns. Thread-safety is that of
// `http` (the libcurl client performs one call at a time).
std::unique_ptr<SyncTransport> NewConnectTransportWithClient(
    std::unique_ptr<HttpClient> http, ConnectCallConfig config);

// A transport on a libcurl client (one keep-alive connection, TLS verified
// against `options.ca_file` or the system roots). `options` must have been
// validated (NewTransport does that).
absl::StatusOr<std::unique_ptr<SyncTransport>> NewConnectTransport(
    const TransportOptions& options, const ServerUrl& url);

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_TRANSPORT_CONNECT_TRANSPORT_H_
