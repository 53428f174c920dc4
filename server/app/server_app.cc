#include "server/app/server_app.h"

#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/status/status_macros.h"
#include "glog/logging.h"
#include "server/admin/admin_server.h"
#include "server/auth/authenticator.h"
#include "server/core/sync_core.h"
#include "server/router/group_commit.h"
#include "server/router/router.h"
#include "server/rpc/connect/connect_front_end.h"
#include "server/rpc/door/front_door.h"
#include "server/rpc/grpc/grpc_front_end.h"
#include "server/store/cached_ledger.h"
#include "server/store/ledger_compactor.h"
#include "server/store/pg_pool.h"
#include "server/store/pg_store.h"
#include "server/writers/backends.h"

namespace fleetd::server {

struct ServerApp::Parts {
  metrics::Registry metrics;
  std::unique_ptr<PgPool> pool;
  std::unique_ptr<PgStore> store;
  // What SyncCore checks and records batches with; null when
  // FLEET_LEDGER_CACHE_KEYS=0 (then `store` is used directly).
  std::unique_ptr<CachedLedger> ledger_cache;
  // Null when FLEET_LEDGER_RETENTION=0 (rows kept forever).
  std::unique_ptr<LedgerCompactor> ledger_compactor;
  std::map<std::string, std::unique_ptr<Writer>> writers;
  std::map<std::string, std::unique_ptr<GroupCommitter>> committers;
  std::unique_ptr<Router> router;
  std::unique_ptr<CachingAuthenticator> auth;
  std::unique_ptr<SyncCore> core;
  // FLEET_FRONT_END=legacy only (deprecated).
  std::unique_ptr<rpc::GrpcFrontEnd> grpc;
  std::unique_ptr<rpc::ConnectFrontEnd> connect;
  // Serves every RPC address (legacy: FLEET_DOOR_ADDR only, when set).
  std::unique_ptr<rpc::FrontDoor> door;
  // The bound ports of FLEET_GRPC_ADDR, FLEET_HTTP_ADDR and FLEET_DOOR_ADDR;
  // 0 when not served.
  int grpc_port = 0;
  int http_port = 0;
  int door_port = 0;
  std::unique_ptr<AdminServer> admin;
  bool stopped = false;
};

namespace {

// The ledger keys loaded at start: those of devices that sent a batch this
// recently (a device syncs every few seconds to minutes).
constexpr absl::Duration kLedgerWarmWindow = absl::Minutes(10);

// Creates the writers every route names, once each.
absl::Status MakeWriters(
    const ServerConfig& c, metrics::Registry* metrics,
    std::map<std::string, std::unique_ptr<Writer>>* writers) {
  for (const auto& [setting, value] :
       {std::pair<const char*, const std::string*>{"FLEET_ROUTE_METRICS",
                                                   &c.route_metrics},
        {"FLEET_ROUTE_LOGS", &c.route_logs},
        {"FLEET_ROUTE_EVENTS", &c.route_events}}) {
    ASSIGN_OR_RETURN(std::vector<std::string> names,
                     ParseRoute(setting, *value));
    for (const std::string& name : names) {
      if (writers->count(name) > 0) continue;
      absl::StatusOr<std::unique_ptr<Writer>> w;
      if (name == "victoriametrics") {
        w = NewVictoriaMetricsWriter(
            {.url = c.victoriametrics_url,
             .write_path = c.victoriametrics_write_path,
             .flush_on_write = c.victoriametrics_flush_on_write,
             .metrics = metrics});
      } else if (name == "loki") {
        w = NewLokiWriter({.url = c.loki_url, .format = c.loki_format});
      } else {
        w = NewClickHouseWriter(
            {.url = c.clickhouse_url, .database = c.clickhouse_database});
      }
      if (!w.ok()) return w.status();
      (*writers)[name] = *std::move(w);
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<PgPool>> ConnectPostgres(const ServerConfig& c) {
  auto pool =
      PgPool::Connect({.dsn = c.postgres_dsn, .size = c.postgres_pool_size});
  if (!pool.ok()) {
    return absl::Status(
        pool.status().code(),
        absl::StrCat("FLEET_POSTGRES_DSN: ", pool.status().message()));
  }
  return pool;
}

}  // namespace

absl::Status MigrateAll(const ServerConfig& config) {
  ASSIGN_OR_RETURN(std::unique_ptr<PgPool> pool, ConnectPostgres(config));
  PgStore store(pool.get());
  RETURN_IF_ERROR(store.Migrate());
  std::map<std::string, std::unique_ptr<Writer>> writers;
  RETURN_IF_ERROR(MakeWriters(config, /*metrics=*/nullptr, &writers));
  for (auto& [name, w] : writers) {
    absl::Status s = w->Migrate();
    if (!s.ok())
      return absl::Status(s.code(), absl::StrCat(name, ": ", s.message()));
  }
  return absl::OkStatus();
}

ServerApp::ServerApp() : parts_(std::make_unique<Parts>()) {}

ServerApp::~ServerApp() { Shutdown(); }

// FLEET_FRONT_END=legacy (deprecated): grpc++ on the gRPC address and the
// HTTP/1.1 Connect front end on the HTTP address.
absl::Status ServerApp::StartLegacyFrontEnds(const ServerConfig& c, Parts& p) {
  LOG(WARNING) << "FLEET_FRONT_END=legacy is deprecated and goes in the next "
                  "release: the front door serves gRPC, Connect and gRPC-Web "
                  "on both addresses";
  rpc::GrpcFrontEndOptions grpc_options;
  grpc_options.address = c.grpc_addr;
  grpc_options.tls_cert_file = c.tls_cert;
  grpc_options.tls_key_file = c.tls_key;
  grpc_options.insecure = c.insecure;
  grpc_options.max_receive_message_bytes = c.max_message_bytes;
  grpc_options.workers = c.grpc_workers;
  grpc_options.max_queued_calls = c.grpc_queue;
  grpc_options.metrics = &p.metrics;
  ASSIGN_OR_RETURN(p.grpc,
                   rpc::GrpcFrontEnd::Start(grpc_options, p.core.get()));

  rpc::ConnectFrontEndOptions connect_options;
  connect_options.address = c.http_addr;
  connect_options.tls_cert_file = c.tls_cert;
  connect_options.tls_key_file = c.tls_key;
  connect_options.insecure = c.insecure;
  connect_options.max_message_bytes = c.max_message_bytes;
  // Each worker serves one connection at a time, idle keep-alive included.
  // Devices sync every few seconds to minutes, so a long keep-alive only ties
  // workers up: close idle connections quickly and keep enough workers for
  // bursts of concurrent devices.
  connect_options.threads = 64;
  connect_options.idle_timeout = absl::Seconds(1);
  connect_options.metrics = &p.metrics;
  ASSIGN_OR_RETURN(p.connect,
                   rpc::ConnectFrontEnd::Start(connect_options, p.core.get()));

  p.grpc_port = p.grpc->port();
  p.http_port = p.connect->port();
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<ServerApp>> ServerApp::Start(
    const ServerConfig& c) {
  RETURN_IF_ERROR(ValidateServerConfig(c));
  if (c.insecure) {
    LOG(WARNING)
        << "FLEET_INSECURE=1: serving plaintext without TLS; development only";
  }
  std::unique_ptr<ServerApp> app(new ServerApp());
  Parts& p = *app->parts_;
  ASSIGN_OR_RETURN(p.pool, ConnectPostgres(c));
  p.store = std::make_unique<PgStore>(p.pool.get(), Clock::Real());
  RETURN_IF_ERROR(p.store->Migrate());
  Ledger* ledger = p.store.get();
  if (c.ledger_cache_keys > 0) {
    ASSIGN_OR_RETURN(
        p.ledger_cache,
        CachedLedger::Create(p.store.get(), {.max_keys = c.ledger_cache_keys,
                                             .window = c.ledger_cache_window,
                                             .metrics = &p.metrics}));
    ledger = p.ledger_cache.get();
    // After a restart every device comes back at once: load the keys of the
    // devices heard from lately in a few statements instead of one each.
    const absl::Time warm_start = absl::Now();
    absl::StatusOr<int64_t> warmed = p.ledger_cache->Warm(kLedgerWarmWindow);
    if (warmed.ok()) {
      LOG(INFO) << "ledger cache: " << *warmed
                << " keys of devices heard from in the last "
                << absl::FormatDuration(kLedgerWarmWindow) << " loaded in "
                << absl::FormatDuration(absl::Now() - warm_start);
    } else {
      LOG(WARNING) << "ledger cache starts cold: " << warmed.status();
    }
  }
  if (c.ledger_retention > absl::ZeroDuration()) {
    ASSIGN_OR_RETURN(
        p.ledger_compactor,
        LedgerCompactor::Start(p.store.get(), Clock::Real(),
                               {.retention = c.ledger_retention,
                                .interval = c.ledger_compact_interval,
                                .metrics = &p.metrics}));
  }
  RETURN_IF_ERROR(MakeWriters(c, &p.metrics, &p.writers));
  for (auto& [name, w] : p.writers) {
    absl::Status s = w->Migrate();
    if (!s.ok()) {
      // A backend that is down at start is not fatal: writes to it fail
      // retryably until it returns, and /readyz reports it.
      LOG(WARNING) << "could not prepare " << name
                   << " (will retry on write): " << s;
    }
    GroupCommitter::Options opts;
    opts.flush_threads = c.flush_threads;
    opts.max_queue_bytes = static_cast<size_t>(c.max_queue_bytes);
    opts.replay_window = c.replay_window;
    opts.replay_window_bytes = static_cast<size_t>(c.replay_window_bytes);
    p.committers[name] = std::make_unique<GroupCommitter>(
        w.get(), Clock::Real(), &p.metrics, opts);
  }
  std::map<DataKind, std::vector<GroupCommitter*>> routes;
  for (const auto& [kind, value] : {std::pair<DataKind, const std::string*>{
                                        DataKind::kMetrics, &c.route_metrics},
                                    {DataKind::kLogs, &c.route_logs},
                                    {DataKind::kEvents, &c.route_events}}) {
    ASSIGN_OR_RETURN(std::vector<std::string> names,
                     ParseRoute("route", *value));
    for (const std::string& name : names)
      routes[kind].push_back(p.committers[name].get());
  }
  p.router = std::make_unique<Router>(std::move(routes));
  p.auth = std::make_unique<CachingAuthenticator>(
      p.store.get(), Clock::Real(),
      CachingAuthenticator::Options{.ttl = c.auth_cache_ttl});
  // Devices reconnect together after a restart: one query for their keys
  // instead of one each.
  if (absl::Status warm = p.auth->Warm(); !warm.ok()) {
    LOG(WARNING) << "API key cache starts cold: " << warm;
  }
  SyncCore::Options core_options;
  core_options.limits.max_decompressed_bytes =
      static_cast<size_t>(c.max_message_bytes);
  core_options.max_wait = c.max_wait;
  p.core = std::make_unique<SyncCore>(p.auth.get(), ledger, p.store.get(),
                                      p.router.get(), Clock::Real(), &p.metrics,
                                      core_options);

  if (c.front_end == "legacy") {
    RETURN_IF_ERROR(StartLegacyFrontEnds(c, p));
  }
  // The door serves every address set that the legacy front ends do not.
  std::vector<std::pair<const std::string*, int*>> door_addresses;
  auto serve = [&door_addresses](const std::string& address, int* port) {
    if (!address.empty()) door_addresses.push_back({&address, port});
  };
  if (c.front_end != "legacy") {
    serve(c.grpc_addr, &p.grpc_port);
    serve(c.http_addr, &p.http_port);
  }
  serve(c.door_addr, &p.door_port);
  if (!door_addresses.empty()) {
    rpc::FrontDoorOptions door;
    door.address = *door_addresses.front().first;
    for (size_t i = 1; i < door_addresses.size(); ++i) {
      door.more_addresses.push_back(*door_addresses[i].first);
    }
    door.tls_cert_file = c.tls_cert;
    door.tls_key_file = c.tls_key;
    door.insecure = c.insecure;
    door.workers = c.grpc_workers;
    door.max_queued_calls = c.grpc_queue;
    door.max_message_bytes = c.max_message_bytes;
    door.metrics = &p.metrics;
    for (absl::string_view origin :
         absl::StrSplit(c.door_cors_origins, ',', absl::SkipWhitespace())) {
      door.cors_allowed_origins.emplace_back(
          absl::StripAsciiWhitespace(origin));
    }
    ASSIGN_OR_RETURN(p.door, rpc::FrontDoor::Start(door, p.core.get()));
    std::vector<int> ports = p.door->ports();
    for (size_t i = 0; i < door_addresses.size(); ++i) {
      *door_addresses[i].second = ports[i];
    }
  }

  std::vector<AdminServer::Check> checks;
  PgStore* store = p.store.get();
  checks.push_back(
      {"postgres", [store] { return store->SchemaVersion().status(); }});
  for (auto& [name, w] : p.writers) {
    Writer* writer = w.get();
    GroupCommitter* committer = p.committers[name].get();
    // Reachable is not enough: a backend that refuses our writes (401 from a
    // Loki without tenant, ...) keeps the server not ready until a write lands.
    checks.push_back({name, [writer, committer] {
                        RETURN_IF_ERROR(committer->Health());
                        return writer->Ping();
                      }});
  }
  ASSIGN_OR_RETURN(
      p.admin, AdminServer::Start(c.admin_addr, &p.metrics, std::move(checks)));
  LOG(INFO) << "fleetd-server (" << c.front_end << " front end) serving "
            << (c.front_end == "legacy" ? "gRPC" : "gRPC, Connect, gRPC-Web")
            << " on port " << p.grpc_port << ", "
            << (c.front_end == "legacy" ? "Connect/gRPC-Web" : "the same")
            << " on port " << p.http_port
            << (p.door_port != 0
                    ? absl::StrCat(", front door on port ", p.door_port)
                    : "")
            << ", admin on port " << p.admin->port();
  return app;
}

int ServerApp::grpc_port() const { return parts_->grpc_port; }
int ServerApp::http_port() const { return parts_->http_port; }
int ServerApp::door_port() const { return parts_->door_port; }
int ServerApp::admin_port() const { return parts_->admin->port(); }
metrics::Registry* ServerApp::metrics() { return &parts_->metrics; }

void ServerApp::Shutdown() {
  Parts& p = *parts_;
  if (p.stopped) return;
  p.stopped = true;
  if (p.grpc != nullptr) p.grpc->Shutdown();
  if (p.connect != nullptr) p.connect->Shutdown();
  if (p.door != nullptr) p.door->Shutdown();
  p.core.reset();        // flushes last-seen times
  p.committers.clear();  // fails anything still queued as UNAVAILABLE
  p.ledger_compactor.reset();
  if (p.admin != nullptr) p.admin->Shutdown();
}

}  // namespace fleetd::server
