// The `fleetd` daemon's settings (each an environment variable and a flag) and
// the parts the daemon runs around the embeddable Agent: the Prometheus metrics
// endpoint, the local ingest endpoint and the collectors.
#ifndef FLEETD_AGENT_CLI_AGENT_SETTINGS_H_
#define FLEETD_AGENT_CLI_AGENT_SETTINGS_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "agent/api/agent.h"
#include "common/config/config.h"

namespace fleetd::agent {

struct AgentSettings {
  std::string server_url;
  std::string transport = "grpc";
  std::string api_key;
  std::string device_id;
  std::string org_id;
  std::string data_dir = "/var/lib/fleetd";
  std::string ca_file;
  std::string ingest_addr = "127.0.0.1:9200";
  std::string metrics_addr = "127.0.0.1:9201";
  absl::Duration collect_interval = absl::Seconds(15);
  bool collect_system = true;
  std::string log_files;  // comma-separated paths to tail
  int64_t sync_rate_limit = 0;
  // Whether the operator set FLEET_SYNC_RATE_LIMIT (then the server's
  // per-stream limits do not apply).
  bool sync_rate_limit_set = false;
  bool sync_stream = false;
  // Capability overrides, passed to tier detection as given (validated there).
  std::map<std::string, std::string> overrides;

  // Declares every setting on `settings`.
  void Declare(Settings& settings);
  // After Resolve(): collects the capability overrides that were set.
  void Finish(const Settings& settings);
  AgentOptions ToOptions() const;

 private:
  std::map<std::string, std::string> raw_overrides_;
};

// Whatever runs beside the Agent in `fleetd run`; stops everything when
// destroyed.
class DaemonParts {
 public:
  virtual ~DaemonParts() = default;
};
absl::StatusOr<std::unique_ptr<DaemonParts>> StartDaemonParts(
    const AgentSettings& settings, Agent* agent);

// `fleetd debug ping`: GetSyncConfig against the server with this key; prints
// the round trip time and the server's configuration for this device.
absl::Status Ping(const AgentSettings& settings);

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_CLI_AGENT_SETTINGS_H_
