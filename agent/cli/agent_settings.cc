#include "agent/cli/agent_settings.h"

#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "agent/collect/collector.h"
#include "agent/collect/ingest_server.h"
#include "agent/collect/log_tailer.h"
#include "agent/collect/system_metrics.h"
#include "glog/logging.h"
#include "httplib.h"

namespace fleetd::agent {
namespace {

// Overrides handed to capability detection (which validates them and names them
// in errors), declared here so they are flags too.
constexpr const char* kOverrides[][3] = {
    {"SYNC_INTERVAL", "sync-interval",
     "time between syncs, e.g. 60s or 5m (tier default)"},
    {"BATCH_SIZE", "batch-size", "records per batch (tier default)"},
    {"COMPRESSION_TYPE", "compression", "none, gzip or zstd (tier default)"},
    {"MAX_RETRIES", "max-retries",
     "attempts per batch within one sync (tier default)"},
    {"FLEET_TIER", "tier", "force the capability tier: 1, 2 or 3"},
    {"FLEET_STORAGE_MAX_BYTES", "storage-max-bytes",
     "byte quota of the SQLite store"},
    {"FLEET_MEMORY_BUFFER_BYTES", "memory-buffer-bytes",
     "size of the tier-3 memory ring"},
    {"FLEET_STORAGE_KEY", "storage-key",
     "passphrase for AES-256 storage encryption"},
    {"FLEET_STORAGE_KEY_FILE", "storage-key-file",
     "file holding the storage passphrase"},
};

bool SplitAddr(const std::string& addr, std::string* host, int* port) {
  size_t colon = addr.rfind(':');
  if (colon == std::string::npos) return false;
  *host = addr.substr(0, colon);
  try {
    *port = std::stoi(addr.substr(colon + 1));
  } catch (...) {
    return false;
  }
  return *port >= 0 && *port <= 65535;
}

class Parts final : public DaemonParts {
 public:
  ~Parts() override {
    if (ingest_ != nullptr) ingest_->Stop();
    if (collector_ != nullptr) collector_->Stop();
    if (tailer_ != nullptr) tailer_->Stop();
    if (metrics_http_ != nullptr) metrics_http_->stop();
    if (metrics_thread_.joinable()) metrics_thread_.join();
  }

  absl::Status Start(const AgentSettings& s, Agent* agent) {
    if (s.collect_system) {
      SystemMetricsOptions o;
      o.mount_points = {"/", s.data_dir};
      o.clock = agent->clock();
      o.registry = agent->metrics();
      auto source = NewSystemMetricsSource(o);
      if (!source.ok()) return source.status();
      source_ = *std::move(source);
      CollectorOptions c;
      c.interval = s.collect_interval;
      collector_ = std::make_unique<Collector>(
          source_.get(), agent->storage(), agent->clock(), agent->metrics(), c);
      collector_->Start();
    }
    std::vector<std::string> files =
        absl::StrSplit(s.log_files, ',', absl::SkipWhitespace());
    if (!files.empty()) {
      LogTailerOptions o;
      o.paths = files;
      o.state_path = s.data_dir + "/" + kLogTailerStateFile;
      auto tailer = LogTailer::Create(o, agent->storage(), agent->clock(),
                                      agent->metrics());
      if (!tailer.ok()) {
        return absl::Status(
            tailer.status().code(),
            absl::StrCat("FLEET_LOG_FILES: ", tailer.status().message()));
      }
      tailer_ = *std::move(tailer);
      tailer_->Start();
    }
    if (!s.ingest_addr.empty()) {
      IngestServerOptions o;
      o.address = s.ingest_addr;
      auto ingest = IngestServer::Start(o, agent->storage(), agent->clock(),
                                        agent->metrics());
      if (!ingest.ok()) return ingest.status();
      ingest_ = *std::move(ingest);
    }
    if (!s.metrics_addr.empty()) {
      std::string host;
      int port;
      if (!SplitAddr(s.metrics_addr, &host, &port)) {
        return absl::InvalidArgumentError(absl::StrCat(
            "FLEET_METRICS_ADDR: \"", s.metrics_addr, "\" is not host:port"));
      }
      metrics_http_ = std::make_unique<httplib::Server>();
      metrics_http_->Get("/metrics", [agent](const httplib::Request&,
                                             httplib::Response& res) {
        res.set_content(agent->RenderMetrics(), "text/plain; version=0.0.4");
      });
      if (!metrics_http_->bind_to_port(host, port)) {
        return absl::UnavailableError(absl::StrCat(
            "FLEET_METRICS_ADDR: cannot listen on ", s.metrics_addr));
      }
      metrics_thread_ =
          std::thread([this] { metrics_http_->listen_after_bind(); });
    }
    return absl::OkStatus();
  }

 private:
  std::unique_ptr<MetricsSource> source_;
  std::unique_ptr<Collector> collector_;
  std::unique_ptr<LogTailer> tailer_;
  std::unique_ptr<IngestServer> ingest_;
  std::unique_ptr<httplib::Server> metrics_http_;
  std::thread metrics_thread_;
};

}  // namespace

void AgentSettings::Declare(Settings& s) {
  s.String("FLEET_SERVER_URL", "server-url",
           "server address: https://host:port (TLS) or http://host:port "
           "(plaintext)",
           &server_url)
      .Choice("FLEET_TRANSPORT", "transport", "protocol to the server",
              &transport, {"grpc", "connect"})
      .String("FLEET_API_KEY", "api-key", "this device's API key", &api_key)
      .String("DEVICE_ID", "device-id", "device id (default: the host name)",
              &device_id)
      .String("ORG_ID", "org-id", "organisation id (default: the key's)",
              &org_id)
      .String("FLEET_DATA_DIR", "data-dir", "where the agent keeps its data",
              &data_dir)
      .String("FLEET_CA_FILE", "ca-file",
              "PEM CA bundle for the server's certificate", &ca_file)
      .String("FLEET_INGEST_ADDR", "ingest-addr",
              "local endpoint where apps push metrics and logs (empty: off)",
              &ingest_addr)
      .String("FLEET_METRICS_ADDR", "metrics-addr",
              "Prometheus endpoint for the agent's own metrics (empty: off)",
              &metrics_addr)
      .Duration("FLEET_COLLECT_INTERVAL", "collect-interval",
                "how often system metrics are collected", &collect_interval)
      .Bool("FLEET_COLLECT_SYSTEM", "collect-system", "collect system metrics",
            &collect_system)
      .String("FLEET_LOG_FILES", "log-files",
              "comma-separated log files to tail", &log_files)
      .Int("FLEET_SYNC_RATE_LIMIT", "sync-rate-limit",
           "most records per second sent to the server (0: no limit)",
           &sync_rate_limit, 0, 100'000'000)
      .Bool(
          "FLEET_SYNC_STREAM", "sync-stream",
          "sync over the StreamSync stream (acks, heartbeats, server commands; "
          "gRPC only)",
          &sync_stream);
  for (const auto& o : kOverrides) {
    s.String(o[0], o[1], o[2], &raw_overrides_[o[0]]);
  }
}

void AgentSettings::Finish(const Settings& s) {
  sync_rate_limit_set = s.WasSet("FLEET_SYNC_RATE_LIMIT");
  overrides.clear();
  for (const auto& o : kOverrides) {
    if (s.WasSet(o[0])) overrides[o[0]] = raw_overrides_[o[0]];
  }
}

AgentOptions AgentSettings::ToOptions() const {
  AgentOptions o;
  o.data_dir = data_dir;
  o.server_url = server_url;
  o.transport = transport;
  o.api_key = api_key;
  o.ca_file = ca_file;
  o.device_id = device_id;
  o.org_id = org_id;
  o.overrides = MapEnv(overrides);
  o.sync_max_records_per_second = static_cast<double>(sync_rate_limit);
  o.sync_rate_limit_pinned = sync_rate_limit_set;
  o.sync_stream = sync_stream;
  return o;
}

absl::StatusOr<std::unique_ptr<DaemonParts>> StartDaemonParts(
    const AgentSettings& settings, Agent* agent) {
  auto parts = std::make_unique<Parts>();
  absl::Status s = parts->Start(settings, agent);
  if (!s.ok()) return s;
  return parts;
}

absl::Status Ping(const AgentSettings& s) {
  auto transport = CreateSyncClient(s.transport, s.server_url, s.api_key,
                                    s.ca_file, nullptr);
  if (!transport.ok()) return transport.status();
  v1::GetSyncConfigRequest request;
  request.set_device_id(s.device_id);
  absl::Time start = absl::Now();
  auto response = (*transport)->GetSyncConfig(request, absl::Seconds(10));
  absl::Duration rtt = absl::Now() - start;
  if (!response.ok()) {
    return absl::Status(
        response.status().code(),
        absl::StrCat("server ", s.server_url, " over ", s.transport, ": ",
                     response.status().message()));
  }
  std::cout << "server " << s.server_url << " over " << s.transport
            << ": ok in " << absl::FormatDuration(rtt) << "\n"
            << "config: " << response->config().ShortDebugString() << "\n";
  return absl::OkStatus();
}

}  // namespace fleetd::agent
