// FleetD Sync agent, embeddable: the public C++ API for device apps that link
// the agent library instead of (or besides) running the `fleetd` daemon.
//
//   fleetd::AgentOptions options;
//   options.data_dir = "/var/lib/myapp";
//   options.server_url = "https://fleet.example.com:50051";
//   options.api_key = key;
//   auto agent = fleetd::Agent::Create(options);      // detects the tier,
//   opens storage
//   (*agent)->Start();                                   // syncs in the
//   background
//   (*agent)->StoreMetric("temperature_celsius", 21.5, {{"room", "kitchen"}});
//   (*agent)->StoreLog("info", "door opened", "doorbell");
//   (*agent)->TriggerSync();                             // or wait for the
//   interval auto m = (*agent)->GetMetrics();                     //
//   metrics_synced, bytes_sent, ...
//   (*agent)->Stop();
//
// The parts are also available one by one (DetectCapabilities, CreateStorage,
// CreateSyncClient, agent::SyncManager) for apps that wire their own.
#ifndef FLEETD_AGENT_API_AGENT_H_
#define FLEETD_AGENT_API_AGENT_H_

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "agent/capability/capability.h"
#include "agent/control/control.h"
#include "agent/storage/storage.h"
#include "agent/sync/sync_manager.h"
#include "agent/transport/transport.h"
#include "common/clock/clock.h"
#include "common/config/config.h"
#include "common/metrics/metrics.h"

namespace fleetd {

struct AgentOptions {
  // Holds the store (fleetd.db, set-aside batches included), the control
  // socket (fleetd.sock) and collector state. Created if missing; must be
  // writable.
  std::string data_dir = "/var/lib/fleetd";
  std::string server_url;  // https://host:port, or http:// for plaintext
  std::string transport = "grpc";  // "grpc" or "connect"
  std::string api_key;
  std::string ca_file;    // PEM bundle; empty: system roots
  std::string device_id;  // empty: the host name
  std::string org_id;     // empty: the key's org (the server decides anyway)
  // Tier detection input and overrides: SYNC_INTERVAL, BATCH_SIZE,
  // COMPRESSION_TYPE, MAX_RETRIES, FLEET_TIER, FLEET_STORAGE_MAX_BYTES,
  // FLEET_MEMORY_BUFFER_BYTES, FLEET_STORAGE_KEY(_FILE). Empty lookup: none.
  EnvLookup overrides;
  // Sync over the StreamSync bidi stream (gRPC only; falls back to unary
  // calls).
  bool sync_stream = false;
  // Most records per second the sync sends (token bucket); 0: no limit.
  double sync_max_records_per_second = 0;
  // The operator chose the limit above (even 0): the server's per-stream
  // limits (SyncConfig max_metrics_per_second, ...) are then not applied.
  bool sync_rate_limit_pinned = false;
  // Ask the server for the tier's configuration at start (GetSyncConfig).
  bool fetch_server_config = true;
  // Report host name, OS and capability to the server at start
  // (UpdateDeviceInfo).
  bool report_device_info = true;
  // Local control socket for the `fleetd` CLI.
  bool control_socket = true;
  // Time source; null: the real clock. Not owned.
  Clock* clock = nullptr;
};

class Agent {
 public:
  // Detects the capability tier, opens the tier's storage (SQLite in WAL mode,
  // or the memory ring on tier 3) and creates the sync client. Errors name the
  // setting at fault (e.g. "FLEET_SERVER_URL: ...", "FLEET_DATA_DIR: not
  // writable").
  static absl::StatusOr<std::unique_ptr<Agent>> Create(AgentOptions options);
  ~Agent();
  Agent(const Agent&) = delete;
  Agent& operator=(const Agent&) = delete;

  // Fetches the server's config (if asked), reports device info, starts syncing
  // in the background and opens the control socket. Failures to reach the
  // server are not errors: data is stored and synced when the server is back.
  absl::Status Start();
  // Stops syncing (the batch in flight finishes or stays pending) and closes
  // everything.
  void Stop();

  // Store records for the next sync. Fail only when the store refuses them
  // (full beyond eviction: RESOURCE_EXHAUSTED). `timestamp` defaults to now.
  absl::Status StoreMetric(
      const std::string& name, double value,
      const std::map<std::string, std::string>& labels = {},
      std::optional<absl::Time> timestamp = std::nullopt);
  absl::Status StoreLog(const std::string& level, const std::string& message,
                        const std::string& source = "",
                        const std::map<std::string, std::string>& fields = {});
  absl::Status StoreEvent(
      const std::string& name,
      const std::map<std::string, std::string>& properties = {},
      const std::map<std::string, double>& values = {});

  // Syncs as soon as possible (background), or now on this thread (returns the
  // result).
  void TriggerSync();
  absl::Status SyncNow();

  agent::SyncMetricsSnapshot GetMetrics();
  absl::StatusOr<agent::StorageInfo> GetStorageInfo();
  const agent::AgentProfile& profile() const { return profile_; }
  const AgentOptions& options() const { return options_; }

  // The parts, for the daemon (collectors, ingest endpoint, CLI handlers).
  agent::Storage* storage() { return storage_.get(); }
  agent::SyncTransport* transport() { return transport_.get(); }
  agent::SyncManager* sync() { return sync_.get(); }
  metrics::Registry* metrics() { return &metrics_; }
  Clock* clock() { return clock_; }
  // Prometheus text of the agent's metrics, with backlog, dropped and
  // set-aside counts (refreshed from the store's Info() on every call).
  std::string RenderMetrics();
  // Runs a control command ("status", "sync-now", "storage-info",
  // "storage-clean AGE synced|all", "debug-storage", "logs-sync", "metrics",
  // "quarantine-list", "quarantine-retry STREAM SEQ|all",
  // "quarantine-drop STREAM SEQ|all", "ping") and returns its JSON answer;
  // this is what the control socket serves. A retry triggers a sync; "all"
  // skips batches the quota evicted meanwhile, a named batch that is gone is
  // an error (NOT_FOUND).
  std::string HandleCommand(const std::vector<std::string>& args);

 private:
  Agent() = default;

  AgentOptions options_;
  Clock* clock_ = nullptr;
  agent::AgentProfile profile_;
  metrics::Registry metrics_;
  std::unique_ptr<agent::Storage> storage_;
  std::unique_ptr<agent::SyncTransport> transport_;
  std::unique_ptr<agent::SyncManager> sync_;
  std::unique_ptr<agent::ControlServer> control_;
  bool started_ = false;
};

// Detects this device's capability and resolves its profile (tier defaults plus
// overrides).
absl::StatusOr<agent::AgentProfile> DetectCapabilities(
    const std::string& data_dir, const EnvLookup& overrides);
// The tier's storage: SQLite under `data_dir` (optionally encrypted with `key`)
// for tiers 1-2, the memory ring for tier 3.
absl::StatusOr<std::unique_ptr<agent::Storage>> CreateStorage(
    const agent::AgentProfile& profile, const std::string& data_dir,
    const std::string& key, Clock* clock);
// A sync client: "grpc" or "connect" to `server_url`, authenticating with
// `api_key`.
absl::StatusOr<std::unique_ptr<agent::SyncTransport>> CreateSyncClient(
    const std::string& transport, const std::string& server_url,
    const std::string& api_key, const std::string& ca_file, Clock* clock);

}  // namespace fleetd

#endif  // FLEETD_AGENT_API_AGENT_H_
