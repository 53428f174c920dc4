// A complete device agent on the embeddable API (agent/api/agent.h): what an
// app does to ship its own telemetry with FleetD Sync.
//
//   export FLEET_SERVER_URL=https://fleet.example.com:50051
//   export FLEET_API_KEY=fdk_... DEVICE_ID=sensor-7
//   sync_agent --data-dir /var/lib/sensor --samples 60 --every 1s
//
// Each tick it stores a temperature reading (from the first thermal zone, or a
// simulated one), a log line, and every tenth tick an event; the agent syncs
// them in the background per the device's tier. With --samples it stops after
// that many ticks, syncs what is left and exits 0 only if everything was
// acknowledged.
#include <csignal>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>

#include "CLI/CLI.hpp"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agent/api/agent.h"
#include "glog/logging.h"

namespace {

volatile std::sig_atomic_t g_stop = 0;
void HandleStop(int) { g_stop = 1; }

std::string Env(const char* name, const std::string& fallback = "") {
  const char* v = std::getenv(name);
  return v != nullptr ? v : fallback;
}

// Degrees Celsius from the first thermal zone, or a plausible simulated value.
double ReadTemperature(int tick) {
  std::ifstream in("/sys/class/thermal/thermal_zone0/temp");
  long millidegrees;
  if (in >> millidegrees) return millidegrees / 1000.0;
  return 40.0 + (tick % 20) * 0.25;
}

}  // namespace

int main(int argc, char** argv) {
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  CLI::App cli(
      "sync_agent: an example device agent built on the FleetD Sync agent API");
  fleetd::AgentOptions options;
  options.server_url = Env("FLEET_SERVER_URL");
  options.api_key = Env("FLEET_API_KEY");
  options.device_id = Env("DEVICE_ID");
  options.transport = Env("FLEET_TRANSPORT", "grpc");
  options.ca_file = Env("FLEET_CA_FILE");
  options.data_dir = Env("FLEET_DATA_DIR", "/tmp/fleetd-example");
  options.overrides = fleetd::ProcessEnv();  // SYNC_INTERVAL, FLEET_TIER, ...
  options.control_socket = false;
  int samples = 0;
  std::string every = "1s";
  cli.add_option("--server-url", options.server_url,
                 "server URL [FLEET_SERVER_URL]");
  cli.add_option("--api-key", options.api_key,
                 "device API key [FLEET_API_KEY]");
  cli.add_option("--device-id", options.device_id, "device id [DEVICE_ID]");
  cli.add_option("--transport", options.transport,
                 "grpc or connect [FLEET_TRANSPORT]");
  cli.add_option("--data-dir", options.data_dir,
                 "data directory [FLEET_DATA_DIR]");
  cli.add_option("--samples", samples,
                 "stop after this many ticks (0: run until SIGINT)");
  cli.add_option("--every", every, "time between ticks");
  CLI11_PARSE(cli, argc, argv);
  absl::Duration tick_every;
  if (!absl::ParseDuration(every, &tick_every)) {
    std::cerr << "sync_agent: --every: not a duration: " << every << "\n";
    return 2;
  }

  auto agent = fleetd::Agent::Create(options);
  if (!agent.ok()) {
    std::cerr << "sync_agent: " << agent.status().message() << "\n";
    return 2;
  }
  if (absl::Status s = (*agent)->Start(); !s.ok()) {
    std::cerr << "sync_agent: " << s.message() << "\n";
    return 1;
  }
  std::signal(SIGINT, HandleStop);
  std::signal(SIGTERM, HandleStop);
  for (int tick = 0; !g_stop && (samples == 0 || tick < samples); ++tick) {
    double celsius = ReadTemperature(tick);
    absl::Status s = (*agent)->StoreMetric(
        "sensor_temperature_celsius", celsius,
        {{"sensor", "zone0"}, {"tick", absl::StrCat(tick)}});
    if (s.ok()) {
      s = (*agent)->StoreLog(celsius > 70 ? "warn" : "info",
                             absl::StrCat("temperature ", celsius, " C"),
                             "sync_agent");
    }
    if (s.ok() && tick % 10 == 0) {
      s = (*agent)->StoreEvent("sensor_checkpoint", {{"sensor", "zone0"}},
                               {{"celsius", celsius}});
    }
    if (!s.ok()) LOG(WARNING) << "could not store a reading: " << s;
    if (samples == 0 || tick + 1 < samples) absl::SleepFor(tick_every);
  }
  // Sync what is left now rather than waiting for the next interval.
  absl::Status synced = (*agent)->SyncNow();
  fleetd::agent::SyncMetricsSnapshot m = (*agent)->GetMetrics();
  (*agent)->Stop();
  std::cout << "metrics_synced=" << m.metrics_synced
            << " logs_synced=" << m.logs_synced
            << " events_synced=" << m.events_synced
            << " bytes_sent=" << m.bytes_sent
            << " compression_ratio=" << m.compression_ratio << "\n";
  if (!synced.ok()) {
    std::cerr << "sync_agent: final sync failed: " << synced.message() << "\n";
    return 1;
  }
  return 0;
}
