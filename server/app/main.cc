// fleetd-server: the Fleet server, plus its administration commands.
//
//   fleetd-server [serve]                      run the server (the default)
//   fleetd-server migrate                      apply PostgreSQL and backend
//   schemas fleetd-server keys create --device D --org O      print a new key
//   for device D fleetd-server keys create --count N --prefix P --org O --csv
//                                              provision N devices, CSV
//                                              device_id,org_id,key
//   fleetd-server keys rotate --device D       print an additional key for D
//   fleetd-server keys revoke --key-id K | --device D
//   fleetd-server keys list [--device D]
#include <csignal>
#include <cstdio>
#include <iostream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/clock.h"
#include "common/config/config.h"
#include "glog/logging.h"
#include "server/app/server_app.h"
#include "server/store/pg_pool.h"
#include "server/store/pg_store.h"

namespace fleetd::server {
namespace {

// Set by SIGINT/SIGTERM; the main thread polls it (only a flag is
// async-signal-safe).
volatile std::sig_atomic_t g_stop_requested = 0;

void HandleStop(int) { g_stop_requested = 1; }

int Fail(const absl::Status& s) {
  std::cerr << "fleetd-server: " << s.message() << "\n";
  return s.code() == absl::StatusCode::kInvalidArgument ? 2 : 1;
}

absl::StatusOr<std::unique_ptr<PgPool>> OpenStore(const ServerConfig& c) {
  if (c.postgres_dsn.empty()) {
    return absl::InvalidArgumentError("FLEET_POSTGRES_DSN is required");
  }
  auto pool = PgPool::Connect({.dsn = c.postgres_dsn, .size = 2});
  if (!pool.ok()) {
    return absl::Status(
        pool.status().code(),
        absl::StrCat("FLEET_POSTGRES_DSN: ", pool.status().message()));
  }
  PgStore store(pool->get());
  absl::Status s = store.Migrate();
  if (!s.ok()) return s;
  return pool;
}

int Serve(const ServerConfig& config) {
  auto app = ServerApp::Start(config);
  if (!app.ok()) return Fail(app.status());
  std::signal(SIGINT, HandleStop);
  std::signal(SIGTERM, HandleStop);
  while (!g_stop_requested) absl::SleepFor(absl::Milliseconds(200));
  LOG(INFO) << "shutting down";
  (*app)->Shutdown();
  return 0;
}

}  // namespace

int Main(int argc, char** argv) {
  ServerConfig config;
  Settings settings;
  DeclareServerSettings(settings, config);

  CLI::App cli("fleetd-server: FleetD Sync server", "fleetd-server");
  cli.require_subcommand(0, 1);
  settings.AddFlags(&cli);

  CLI::App* serve = cli.add_subcommand("serve", "Run the server (the default)");
  CLI::App* migrate =
      cli.add_subcommand("migrate", "Apply the PostgreSQL and backend schemas");
  CLI::App* keys = cli.add_subcommand("keys", "Manage device API keys");
  keys->require_subcommand(1);

  std::string device, org, prefix, key_id;
  int count = 0;
  bool csv = false;
  CLI::App* create =
      keys->add_subcommand("create", "Create a key (prints it alone)");
  create->add_option("--device", device, "device id");
  create->add_option("--org", org, "organisation id")->required();
  create->add_option("--count", count,
                     "provision this many devices (with --prefix)");
  create->add_option("--prefix", prefix, "device id prefix for --count");
  create->add_flag("--csv", csv, "print device_id,org_id,key lines");
  CLI::App* rotate =
      keys->add_subcommand("rotate", "Add a new key for a device");
  rotate->add_option("--device", device, "device id")->required();
  CLI::App* revoke =
      keys->add_subcommand("revoke", "Revoke a key, or all keys of a device");
  revoke->add_option("--key-id", key_id, "key id (the part after fdk_)");
  revoke->add_option("--device", device, "revoke every key of this device");
  CLI::App* list =
      keys->add_subcommand("list", "List keys (never their secrets)");
  list->add_option("--device", device, "only this device");

  try {
    cli.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return cli.exit(e);
  }
  if (absl::Status s = settings.Resolve(ProcessEnv()); !s.ok()) return Fail(s);

  if (migrate->parsed()) {
    absl::Status s = MigrateAll(config);
    if (!s.ok()) return Fail(s);
    std::cerr << "fleetd-server: schemas are up to date\n";
    return 0;
  }
  if (keys->parsed()) {
    auto pool = OpenStore(config);
    if (!pool.ok()) return Fail(pool.status());
    PgStore store(pool->get());
    if (create->parsed()) {
      if (count > 0) {
        if (prefix.empty())
          return Fail(absl::InvalidArgumentError("--count needs --prefix"));
        auto created = store.CreateKeys(prefix, org, count);
        if (!created.ok()) return Fail(created.status());
        for (const NewKey& k : *created) {
          if (csv) {
            std::cout << k.device_id << "," << k.org_id << "," << k.api_key
                      << "\n";
          } else {
            std::cout << k.api_key << "\n";
          }
        }
        return 0;
      }
      if (device.empty())
        return Fail(absl::InvalidArgumentError("--device is required"));
      auto created = store.CreateKey(device, org);
      if (!created.ok()) return Fail(created.status());
      if (csv) {
        std::cout << created->device_id << "," << created->org_id << ","
                  << created->api_key << "\n";
      } else {
        std::cout << created->api_key << "\n";
      }
      return 0;
    }
    if (rotate->parsed()) {
      auto created = store.RotateKey(device);
      if (!created.ok()) return Fail(created.status());
      std::cout << created->api_key << "\n";
      std::cerr << "fleetd-server: new key " << created->key_id << " for "
                << device << "; older keys stay valid until revoked\n";
      return 0;
    }
    if (revoke->parsed()) {
      if (!key_id.empty()) {
        absl::Status s = store.RevokeKey(key_id);
        if (!s.ok()) return Fail(s);
        std::cerr << "fleetd-server: revoked key " << key_id << "\n";
        return 0;
      }
      if (device.empty()) {
        return Fail(absl::InvalidArgumentError("give --key-id or --device"));
      }
      auto n = store.RevokeDeviceKeys(device);
      if (!n.ok()) return Fail(n.status());
      std::cerr << "fleetd-server: revoked " << *n << " keys of " << device
                << "\n";
      return 0;
    }
    if (list->parsed()) {
      auto all = store.ListKeys(device);
      if (!all.ok()) return Fail(all.status());
      std::cout << "key_id\tdevice_id\torg_id\tcreated_at\trevoked_at\n";
      for (const KeyInfo& k : *all) {
        std::cout << k.key_id << "\t" << k.device_id << "\t" << k.org_id << "\t"
                  << absl::FormatTime(absl::RFC3339_sec, k.created_at,
                                      absl::UTCTimeZone())
                  << "\t"
                  << (k.revoked_at.has_value()
                          ? absl::FormatTime(absl::RFC3339_sec, *k.revoked_at,
                                             absl::UTCTimeZone())
                          : std::string("-"))
                  << "\n";
      }
      return 0;
    }
  }
  (void)serve;
  return Serve(config);
}

}  // namespace fleetd::server

int main(int argc, char** argv) {
  // Debian builds Abseil without NDEBUG, so every Mutex lock would also feed
  // its lock-order graph (about 3 % of the server's CPU under load). Tests
  // keep the detector; the server binary does not pay for it.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  return fleetd::server::Main(argc, argv);
}
