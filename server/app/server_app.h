// The whole Fleet server wired together: PostgreSQL store, backend writers
// behind group committers, router, authenticator, core, the gRPC and Connect
// front ends, and the admin endpoint. Used by `fleetd-server serve` and by
// in-process end-to-end tests.
#ifndef FLEETD_SERVER_APP_SERVER_APP_H_
#define FLEETD_SERVER_APP_SERVER_APP_H_

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/clock/clock.h"
#include "common/metrics/metrics.h"
#include "server/app/server_config.h"

namespace fleetd::server {

class ServerApp {
 public:
  // Connects to PostgreSQL, applies migrations (PostgreSQL and backends), and
  // starts serving. Fails with the first configuration or start-up error;
  // nothing keeps running after a failure.
  static absl::StatusOr<std::unique_ptr<ServerApp>> Start(
      const ServerConfig& config);
  ~ServerApp();
  ServerApp(const ServerApp&) = delete;
  ServerApp& operator=(const ServerApp&) = delete;

  int grpc_port() const;
  int http_port() const;
  // The bound ports of FLEET_GRPC_ADDR, FLEET_HTTP_ADDR and FLEET_DOOR_ADDR
  // (all served by the front door unless FLEET_FRONT_END=legacy); 0 for an
  // address that is not set.
  int door_port() const;
  int admin_port() const;
  metrics::Registry* metrics();

  // Stops the front ends (letting calls in flight finish), then the writers.
  // Idempotent.
  void Shutdown();

 private:
  struct Parts;
  ServerApp();
  static absl::Status StartLegacyFrontEnds(const ServerConfig& config,
                                           Parts& parts);
  std::unique_ptr<Parts> parts_;
};

// Applies the PostgreSQL schema and every configured backend's schema
// (`fleetd-server migrate`).
absl::Status MigrateAll(const ServerConfig& config);

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_APP_SERVER_APP_H_
