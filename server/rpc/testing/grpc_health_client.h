// A grpc++ client of grpc.health.v1.Health/Check for tests, as Kubernetes'
// gRPC probe and grpc_health_probe call it (no generated health stubs: the
// request is written out by hand).
#ifndef FLEETD_SERVER_RPC_TESTING_GRPC_HEALTH_CLIENT_H_
#define FLEETD_SERVER_RPC_TESTING_GRPC_HEALTH_CLIENT_H_

#include <memory>
#include <string>
#include <utility>

#include "absl/time/time.h"
#include "grpcpp/channel.h"
#include "grpcpp/support/status.h"

namespace fleetd::server::testing {

// Calls Check with HealthCheckRequest{service: `service`} (the field written
// out even when empty) on `channel` through grpc++'s generic stub, with
// `deadline` from now. Returns the call's status and the response message's
// bytes (empty unless the status is OK); SERVING is "\x08\x01".
std::pair<grpc::Status, std::string> GrpcHealthCheck(
    const std::shared_ptr<grpc::Channel>& channel, const std::string& service,
    absl::Duration deadline = absl::Seconds(30));

}  // namespace fleetd::server::testing

#endif  // FLEETD_SERVER_RPC_TESTING_GRPC_HEALTH_CLIENT_H_
