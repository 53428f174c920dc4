// gRPC's standard health check (grpc.health.v1.Health/Check) on the front
// door, which load balancers and orchestrators (Kubernetes' grpc probe,
// grpc_health_probe, Envoy) call to learn whether a server takes calls.
//
// WithGrpcHealth wraps an ExchangeHandler. POST /grpc.health.v1.Health/Check
// with content-type application/grpc[+proto] over HTTP/2 is answered here:
// one uncompressed HealthCheckRequest envelope (a message of at most
// kMaxHealthRequestBytes); its `service` field (1) "" (the server as a whole)
// or "fleetd.v1.SyncService" is answered HealthCheckResponse{status: SERVING}
// with grpc-status 0, any other service NOT_FOUND, as the health protocol
// says. A request that does not parse is INVALID_ARGUMENT, a compressed one
// UNIMPLEMENTED, a larger one RESOURCE_EXHAUSTED (all trailers-only).
// Over HTTP/1.1: 505 (gRPC needs HTTP/2); another content-type: 415. The
// server answers only while it accepts calls: during shutdown its connections
// are closing, which a prober sees as not serving. Watch (server streaming) is
// not served (404 from the inner handler, which gRPC clients read as
// UNIMPLEMENTED); probes use Check. Everything else goes to `inner`.
#ifndef FLEETD_SERVER_RPC_DOOR_HEALTH_H_
#define FLEETD_SERVER_RPC_DOOR_HEALTH_H_

#include <cstddef>

#include "server/rpc/http/exchange.h"

namespace fleetd::server::rpc::door {

inline constexpr char kHealthCheckPath[] = "/grpc.health.v1.Health/Check";
inline constexpr size_t kMaxHealthRequestBytes = 1024;

http::ExchangeHandler WithGrpcHealth(http::ExchangeHandler inner);

}  // namespace fleetd::server::rpc::door

#endif  // FLEETD_SERVER_RPC_DOOR_HEALTH_H_
