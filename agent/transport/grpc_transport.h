// The gRPC transport: `fleetd.v1.SyncService` over HTTP/2 with grpc++.
//
// Every call carries the API key as `x-api-key` metadata, the timeout as its
// deadline, and optionally gzip transport compression. Calls fail fast (no
// wait-for-ready): while the server cannot be reached they return UNAVAILABLE
// at once and gRPC reconnects in the background with exponential backoff
// (1 s .. 30 s). Statuses keep the server's code and message; the trailing
// metadata `retry-after-ms` becomes the status's retry hint.
//
// The transport depends only on SyncService::StubInterface, so tests inject
// the generated MockSyncServiceStub or a stub on an in-process channel.
#ifndef FLEETD_AGENT_TRANSPORT_GRPC_TRANSPORT_H_
#define FLEETD_AGENT_TRANSPORT_GRPC_TRANSPORT_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "agent/transport/server_url.h"
#include "agent/transport/transport.h"
#include "fleetd/v1/sync.grpc.pb.h"
#include "grpcpp/support/channel_arguments.h"

namespace fleetd::agent {

// Per-call settings of the gRPC transport.
struct GrpcCallConfig {
  // Sent as `x-api-key`; empty sends none.
  std::string api_key;
  // Compress requests with gzip (`grpc-encoding: gzip`).
  bool gzip = false;
};

// The channel arguments NewGrpcTransport uses: keepalive from `options`
// (pings only while calls are active, any number of them on an idle stream),
// reconnect backoff 1 s .. 30 s, the largest response message, the user agent.
grpc::ChannelArguments GrpcChannelArguments(const TransportOptions& options);

// A transport calling through `stub`, which it owns. Safe for concurrent use
// when `stub` is (generated stubs are).
std::unique_ptr<SyncTransport> NewGrpcTransportWithStub(
    std::unique_ptr<v1::SyncService::StubInterface> stub,
    GrpcCallConfig config);

// A transport on a new channel to `url` (TLS with `ca_pem` as roots, or the
// system roots when empty; plaintext for http://). `options` must have been
// validated (NewTransport does that). Does not connect yet.
absl::StatusOr<std::unique_ptr<SyncTransport>> NewGrpcTransport(
    const TransportOptions& options, const ServerUrl& url,
    const std::string& ca_pem);

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_TRANSPORT_GRPC_TRANSPORT_H_
