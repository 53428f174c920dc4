// fleetd-server's configuration: every setting is an environment variable and a
// flag.
#ifndef FLEETD_SERVER_APP_SERVER_CONFIG_H_
#define FLEETD_SERVER_APP_SERVER_CONFIG_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/time/time.h"
#include "common/config/config.h"

namespace fleetd::server {

struct ServerConfig {
  // What serves the RPC addresses: "door" (server/rpc/door: gRPC, gRPC-Web
  // and Connect on every address, HTTP/1.1 and HTTP/2, a fixed set of
  // threads) or the deprecated "legacy" pair (grpc++ on grpc_addr behind a
  // thread-per-connection TLS relay, Connect/gRPC-Web over HTTP/1.1 on
  // http_addr), kept for one release.
  std::string front_end = "door";
  // Addresses the front end listens on; empty: not served (at least one of
  // the three must be set). With the door all of them serve every protocol.
  std::string grpc_addr = "0.0.0.0:50051";
  // Threads running calls and calls that may wait for one (see
  // FrontDoorOptions::workers and max_queued_calls).
  int32_t grpc_workers = 128;
  int64_t grpc_queue = 2048;
  std::string http_addr = "0.0.0.0:8080";
  // A further door address (the door's own setting from before it served
  // the two above).
  std::string door_addr;
  // Comma-separated CORS origins of the front door; empty: off.
  std::string door_cors_origins;
  std::string admin_addr = "127.0.0.1:9090";
  std::string tls_cert;
  std::string tls_key;
  bool insecure = false;
  std::string postgres_dsn;
  std::string victoriametrics_url;
  std::string victoriametrics_write_path = "/api/v1/write";
  bool victoriametrics_flush_on_write = false;
  std::string loki_url;
  std::string loki_format = "protobuf";
  std::string clickhouse_url;
  std::string clickhouse_database = "fleetd";
  // Comma-separated backends per kind of data.
  std::string route_metrics = "victoriametrics";
  std::string route_logs = "loki";
  std::string route_events = "clickhouse";
  int64_t max_message_bytes = 16 << 20;
  int64_t max_queue_bytes = 256 << 20;
  absl::Duration auth_cache_ttl = absl::Seconds(10);
  absl::Duration max_wait = absl::Seconds(30);
  int32_t flush_threads = 2;
  // Acknowledged batches kept per backend to write again after a restart of
  // the backend (group_commit.h).
  absl::Duration replay_window = absl::Seconds(30);
  int64_t replay_window_bytes = 64 << 20;
  int32_t postgres_pool_size = 8;
  // The exactly-once ledger (server/store/cached_ledger.h, pg_store.h): keys
  // (device, stream) held in memory (0: no cache, every check asks
  // PostgreSQL), applied sequence numbers kept per key, how long ledger rows
  // are kept before they fold into per-key floors (0: forever), and how often
  // that compaction runs.
  int64_t ledger_cache_keys = 1'000'000;
  int32_t ledger_cache_window = 32;
  absl::Duration ledger_retention = absl::Hours(168);
  absl::Duration ledger_compact_interval = absl::Hours(1);
};

// Declares every setting of `config` (with its current values as defaults) on
// `settings`.
void DeclareServerSettings(Settings& settings, ServerConfig& config);

// Cross-setting checks: a known front end with at least one address (the
// legacy one needs both of its own); TLS material or FLEET_INSECURE=1; a
// backend URL for every backend a route names; a PostgreSQL DSN; ledger
// durations not negative (the compaction interval positive). Errors name the
// variables involved.
absl::Status ValidateServerConfig(const ServerConfig& config);

// The backends named by a route setting ("victoriametrics,clickhouse"),
// validated.
absl::StatusOr<std::vector<std::string>> ParseRoute(const std::string& setting,
                                                    const std::string& value);

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_APP_SERVER_CONFIG_H_
