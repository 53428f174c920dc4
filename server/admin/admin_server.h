// The operator endpoint: /metrics (Prometheus text), /healthz (process alive)
// and /readyz (every backend reachable).
#ifndef FLEETD_SERVER_ADMIN_ADMIN_SERVER_H_
#define FLEETD_SERVER_ADMIN_ADMIN_SERVER_H_

#include <functional>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/metrics/metrics.h"

namespace httplib {
class Server;
}  // namespace httplib

namespace fleetd::server {

class AdminServer {
 public:
  // A named readiness check (e.g. "postgres", "victoriametrics").
  struct Check {
    std::string name;
    std::function<absl::Status()> probe;
  };

  // Binds `address` ("host:port", port 0 picks a free one) and serves in a
  // background thread. `registry` must outlive the server.
  static absl::StatusOr<std::unique_ptr<AdminServer>> Start(
      const std::string& address, metrics::Registry* registry,
      std::vector<Check> checks);
  ~AdminServer();
  AdminServer(const AdminServer&) = delete;
  AdminServer& operator=(const AdminServer&) = delete;

  int port() const { return port_; }
  void Shutdown();

 private:
  AdminServer() = default;

  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
};

// Splits "host:port" (IPv6 hosts in brackets). INVALID_ARGUMENT names
// `setting`.
absl::Status SplitHostPort(const std::string& address,
                           const std::string& setting, std::string* host,
                           int* port);

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_ADMIN_ADMIN_SERVER_H_
