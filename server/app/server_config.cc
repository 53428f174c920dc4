#include "server/app/server_config.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace fleetd::server {

void DeclareServerSettings(Settings& s, ServerConfig& c) {
  s.Choice("FLEET_FRONT_END", "front-end",
           "what serves the RPC addresses: door (gRPC, gRPC-Web and Connect "
           "on every address, HTTP/1.1 and HTTP/2, a fixed set of threads) "
           "or legacy (deprecated, removed in the next release: grpc++ on "
           "FLEET_GRPC_ADDR, Connect/gRPC-Web over HTTP/1.1 on "
           "FLEET_HTTP_ADDR)",
           &c.front_end, {"door", "legacy"})
      .String("FLEET_GRPC_ADDR", "grpc-addr",
              "listen address for gRPC (with the door also Connect and "
              "gRPC-Web); empty: none",
              &c.grpc_addr)
      .Int32("FLEET_GRPC_WORKERS", "grpc-workers",
             "threads running calls, all started at once (a batch call "
             "occupies one while it is decoded, not while backends write; a "
             "StreamSync message while it is handled)",
             &c.grpc_workers, 1, 1 << 16)
      .Int("FLEET_GRPC_QUEUE", "grpc-queue",
           "calls that may wait for a worker; more get "
           "RESOURCE_EXHAUSTED with a retry hint",
           &c.grpc_queue, 0, int64_t{1} << 24)
      .String("FLEET_HTTP_ADDR", "http-addr",
              "listen address for Connect and gRPC-Web (with the door also "
              "gRPC, and HTTP/2); empty: none",
              &c.http_addr)
      .String("FLEET_DOOR_ADDR", "door-addr",
              "a further front door address (gRPC, gRPC-Web and Connect); "
              "empty: none",
              &c.door_addr)
      .String("FLEET_DOOR_CORS_ORIGINS", "door-cors-origins",
              "browser origins allowed to call the front door (CORS), "
              "comma-separated, exact (https://console.example.com) or *; "
              "empty: no CORS",
              &c.door_cors_origins)
      .String("FLEET_ADMIN_ADDR", "admin-addr",
              "admin listen address (/metrics, /healthz, /readyz)",
              &c.admin_addr)
      .String("FLEET_TLS_CERT", "tls-cert", "TLS certificate chain (PEM file)",
              &c.tls_cert)
      .String("FLEET_TLS_KEY", "tls-key", "TLS private key (PEM file)",
              &c.tls_key)
      .Bool("FLEET_INSECURE", "insecure",
            "serve plaintext without TLS (development only)", &c.insecure)
      .String(
          "FLEET_POSTGRES_DSN", "postgres-dsn",
          "PostgreSQL connection string for devices, keys and the sync ledger",
          &c.postgres_dsn)
      .String("FLEET_VICTORIAMETRICS_URL", "victoriametrics-url",
              "VictoriaMetrics base URL for metrics", &c.victoriametrics_url)
      .String("FLEET_VICTORIAMETRICS_WRITE_PATH", "vm-write-path",
              "Prometheus remote-write path under the VictoriaMetrics URL "
              "(vminsert: /insert/<tenant>/prometheus/api/v1/write; Mimir: "
              "/api/v1/push)",
              &c.victoriametrics_write_path)
      .Bool("FLEET_VICTORIAMETRICS_FLUSH_ON_WRITE", "vm-flush-on-write",
            "also put each write on VictoriaMetrics' disk (a snapshot) "
            "before acknowledging it, so a crash of VictoriaMetrics and this "
            "server at once loses nothing (single node only; ~95 ms per "
            "write)",
            &c.victoriametrics_flush_on_write)
      .String("FLEET_LOKI_URL", "loki-url", "Loki base URL for logs",
              &c.loki_url)
      .Choice("FLEET_LOKI_FORMAT", "loki-format", "Loki push encoding",
              &c.loki_format, {"protobuf", "json"})
      .String("FLEET_CLICKHOUSE_URL", "clickhouse-url",
              "ClickHouse HTTP URL for analytics events", &c.clickhouse_url)
      .String("FLEET_CLICKHOUSE_DATABASE", "clickhouse-database",
              "ClickHouse database", &c.clickhouse_database)
      .String(
          "FLEET_ROUTE_METRICS", "route-metrics",
          "backends that receive metrics (comma-separated: victoriametrics, "
          "clickhouse)",
          &c.route_metrics)
      .String("FLEET_ROUTE_LOGS", "route-logs",
              "backends that receive logs (comma-separated: loki, clickhouse)",
              &c.route_logs)
      .String("FLEET_ROUTE_EVENTS", "route-events",
              "backends that receive analytics events (clickhouse)",
              &c.route_events)
      .Bytes("FLEET_MAX_MESSAGE_BYTES", "max-message-bytes",
             "largest request or decompressed batch accepted",
             &c.max_message_bytes)
      .Bytes("FLEET_MAX_QUEUE_BYTES", "max-queue-bytes",
             "bytes of batches queued per backend before RESOURCE_EXHAUSTED",
             &c.max_queue_bytes)
      .Duration(
          "FLEET_AUTH_CACHE_TTL", "auth-cache-ttl",
          "how long a checked API key is trusted (bounds revocation delay)",
          &c.auth_cache_ttl)
      .Duration(
          "FLEET_MAX_WAIT", "max-wait",
          "longest a call waits for the backends (less when the client's "
          "deadline is sooner); then it is answered DEADLINE_EXCEEDED while "
          "the write goes on and is recorded, so a retry is a duplicate",
          &c.max_wait)
      .Int32("FLEET_FLUSH_THREADS", "flush-threads",
             "concurrent coalesced writes per backend (a write starts beside "
             "another only when half a full one is waiting)",
             &c.flush_threads, 1, 64)
      .Duration("FLEET_REPLAY_WINDOW", "replay-window",
                "how long acknowledged writes are kept to write again when a "
                "backend restarts (covers what it held only in memory; 0: "
                "off)",
                &c.replay_window)
      .Bytes("FLEET_REPLAY_WINDOW_BYTES", "replay-window-bytes",
             "bytes of acknowledged writes kept per backend for that replay "
             "(the oldest go first, counted)",
             &c.replay_window_bytes)
      .Int32("FLEET_POSTGRES_POOL_SIZE", "postgres-pool-size",
             "PostgreSQL connections", &c.postgres_pool_size, 1, 256)
      .Int("FLEET_LEDGER_CACHE_KEYS", "ledger-cache-keys",
           "ledger keys (device, stream) kept in memory so that retries are "
           "checked without PostgreSQL (least recently used go first, "
           "counted; ~450 bytes each; 0: no cache)",
           &c.ledger_cache_keys, 0, int64_t{1} << 32)
      .Int32("FLEET_LEDGER_CACHE_WINDOW", "ledger-cache-window",
             "applied sequence numbers kept in memory per ledger key (older "
             "ones are checked in PostgreSQL)",
             &c.ledger_cache_window, 1, 4096)
      .Duration("FLEET_LEDGER_RETENTION", "ledger-retention",
                "how long ledger rows are kept; older ones are forgotten (a "
                "batch retried after this long is written again, "
                "idempotently, never acknowledged unseen; 0: keep forever)",
                &c.ledger_retention)
      .Duration("FLEET_LEDGER_COMPACT_INTERVAL", "ledger-compact-every",
                "how often ledger rows past the retention are compacted",
                &c.ledger_compact_interval);
}

absl::StatusOr<std::vector<std::string>> ParseRoute(const std::string& setting,
                                                    const std::string& value) {
  std::vector<std::string> out;
  for (absl::string_view part :
       absl::StrSplit(value, ',', absl::SkipWhitespace())) {
    std::string name(absl::StripAsciiWhitespace(part));
    if (name != "victoriametrics" && name != "loki" && name != "clickhouse") {
      return absl::InvalidArgumentError(
          absl::StrCat(setting, ": unknown backend \"", name,
                       "\" (want victoriametrics, loki or clickhouse)"));
    }
    out.push_back(name);
  }
  return out;
}

absl::Status ValidateServerConfig(const ServerConfig& c) {
  if (c.front_end == "legacy") {
    if (c.grpc_addr.empty() || c.http_addr.empty()) {
      return absl::InvalidArgumentError(
          "FLEET_FRONT_END=legacy needs FLEET_GRPC_ADDR and FLEET_HTTP_ADDR");
    }
  } else if (c.front_end != "door") {
    return absl::InvalidArgumentError(
        absl::StrCat("FLEET_FRONT_END: unknown front end \"", c.front_end,
                     "\" (want door or legacy)"));
  } else if (c.grpc_addr.empty() && c.http_addr.empty() &&
             c.door_addr.empty()) {
    return absl::InvalidArgumentError(
        "no listen address: set FLEET_GRPC_ADDR, FLEET_HTTP_ADDR or "
        "FLEET_DOOR_ADDR");
  }
  bool has_tls = !c.tls_cert.empty() || !c.tls_key.empty();
  if (has_tls && (c.tls_cert.empty() || c.tls_key.empty())) {
    return absl::InvalidArgumentError(
        "FLEET_TLS_CERT and FLEET_TLS_KEY must be set together");
  }
  if (!has_tls && !c.insecure) {
    return absl::InvalidArgumentError(
        "no TLS material: set FLEET_TLS_CERT and FLEET_TLS_KEY, or "
        "FLEET_INSECURE=1 to serve "
        "plaintext (development only)");
  }
  if (c.postgres_dsn.empty()) {
    return absl::InvalidArgumentError("FLEET_POSTGRES_DSN is required");
  }
  if (c.ledger_retention < absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "FLEET_LEDGER_RETENTION must not be negative");
  }
  if (c.ledger_compact_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "FLEET_LEDGER_COMPACT_INTERVAL must be positive");
  }
  struct RouteSetting {
    const char* name;
    const std::string* value;
    const char*
        first_choice;  // the backend made for this kind besides ClickHouse
  };
  for (RouteSetting r :
       {RouteSetting{"FLEET_ROUTE_METRICS", &c.route_metrics,
                     "victoriametrics"},
        RouteSetting{"FLEET_ROUTE_LOGS", &c.route_logs, "loki"},
        RouteSetting{"FLEET_ROUTE_EVENTS", &c.route_events, "clickhouse"}}) {
    auto backends = ParseRoute(r.name, *r.value);
    if (!backends.ok()) return backends.status();
    for (const std::string& b : *backends) {
      if (b != r.first_choice && b != "clickhouse") {
        return absl::InvalidArgumentError(
            absl::StrCat(r.name, ": ", b, " cannot store this kind of data"));
      }
      const std::string& url = b == "victoriametrics" ? c.victoriametrics_url
                               : b == "loki"          ? c.loki_url
                                                      : c.clickhouse_url;
      if (url.empty()) {
        std::string var = b == "victoriametrics" ? "FLEET_VICTORIAMETRICS_URL"
                          : b == "loki"          ? "FLEET_LOKI_URL"
                                                 : "FLEET_CLICKHOUSE_URL";
        return absl::InvalidArgumentError(absl::StrCat(
            r.name, " routes to ", b, " but ", var, " is not set"));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace fleetd::server
