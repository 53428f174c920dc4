// Conversion between absl::Status and grpc::Status.
//
// The canonical codes of Abseil and gRPC share their numbers (0..16); this is
// the one place that relies on it. Messages are carried over unchanged; absl
// payloads are dropped.
#ifndef FLEETD_COMMON_STATUS_GRPC_STATUS_H_
#define FLEETD_COMMON_STATUS_GRPC_STATUS_H_

#include "absl/status/status.h"
#include "grpcpp/support/status.h"

namespace fleetd {

grpc::Status ToGrpcStatus(const absl::Status& status);
absl::Status FromGrpcStatus(const grpc::Status& status);

}  // namespace fleetd

#endif  // FLEETD_COMMON_STATUS_GRPC_STATUS_H_
