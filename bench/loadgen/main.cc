// fleetd-loadgen: load-tests a Fleet server with a simulated fleet.
//
//   fleetd-loadgen --server http://127.0.0.1:50051 --transport grpc
//       --keys keys.csv --devices 1000 --duration 30s --rate 50000
//       --json out.json
//
// See bench/loadgen/loadgen.h for what is simulated and measured.
#include <fstream>
#include <iostream>
#include <string>
#include <utility>

#include "CLI/CLI.hpp"
#include "absl/time/time.h"
#include "bench/loadgen/keys_csv.h"
#include "bench/loadgen/loadgen.h"
#include "common/clock/clock.h"
#include "glog/logging.h"

namespace {

bool ParseDurationFlag(const std::string& text, absl::Duration* out,
                       const char* name) {
  if (!absl::ParseDuration(text, out) || *out <= absl::ZeroDuration()) {
    std::cerr << "fleetd-loadgen: " << name << " \"" << text
              << "\" is not a positive duration (e.g. 30s, 2m)\n";
    return false;
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  google::InitGoogleLogging(argv[0]);
  FLAGS_logtostderr = true;
  fleetd::bench::LoadgenOptions o;
  std::string keys_file, json_out, duration = "30s", timeout = "10s",
                                   grace = "5s";
  CLI::App app{"fleetd-loadgen: simulate a fleet of devices syncing"};
  app.add_option("--server", o.server_url,
                 "server URL (http://host:port or https://...)");
  app.add_option("--transport", o.transport, "grpc or connect")
      ->check(CLI::IsMember({"grpc", "connect"}));
  app.add_option("--keys", keys_file,
                 "device_id,org_id,key CSV (fleetd-server keys create --csv)")
      ->required();
  app.add_option("--devices", o.devices, "simulated devices")
      ->check(CLI::Range(1, 1000000));
  app.add_option("--duration", duration, "how long to send (e.g. 30s)");
  app.add_option("--rate", o.rate,
                 "target metric samples per second, all devices together");
  app.add_option("--batch", o.batch,
                 "samples per metrics batch (default: the tier mix "
                 "1000/100/10)");
  app.add_option("--logs-ratio", o.logs_ratio,
                 "log entries per metric sample (0: no logs)");
  app.add_option("--backlog-batches", o.backlog_batches,
                 "backlog mode: each device drains this many batches as fast "
                 "as the server allows");
  app.add_option(
      "--grpc-connections", o.grpc_connections,
      "gRPC connections the devices are spread over (default 0: one per "
      "sender thread, as Connect has)");
  app.add_option("--concurrency", o.concurrency,
                 "sender threads (calls in flight)")
      ->check(CLI::Range(1, 1024));
  app.add_option("--timeout", timeout, "per-call deadline");
  app.add_option("--grace", grace,
                 "how long queued calls may still go out after --duration");
  app.add_option("--ca-file", o.ca_file, "PEM CA bundle for https://");
  app.add_option("--seed", o.seed, "randomness seed");
  app.add_option("--json", json_out, "write the report here as JSON");
  std::string export_path;
  int export_rounds = 1;
  app.add_option("--export-vm-jsonl", export_path,
                 "instead of sending, write the samples the devices would "
                 "send as VictoriaMetrics import JSON lines (for baselines)");
  std::string export_rw_dir;
  app.add_option("--export-remote-write", export_rw_dir,
                 "instead of sending, write the same samples as Prometheus "
                 "remote-write bodies (snappy), one file per device batch, "
                 "into this directory (with --export-vm-jsonl: the same "
                 "timestamps in both)");
  app.add_option("--export-rounds", export_rounds,
                 "batches per device to export")
      ->check(CLI::Range(1, 100000));
  CLI11_PARSE(app, argc, argv);
  if (!ParseDurationFlag(duration, &o.duration, "--duration") ||
      !ParseDurationFlag(timeout, &o.call_timeout, "--timeout") ||
      !ParseDurationFlag(grace, &o.grace, "--grace")) {
    return 2;
  }
  bool exporting = !export_path.empty() || !export_rw_dir.empty();
  if (o.server_url.empty() && !exporting) {
    std::cerr << "fleetd-loadgen: --server is required\n";
    return 2;
  }
  auto keys = fleetd::bench::LoadKeysCsv(keys_file);
  if (!keys.ok()) {
    std::cerr << "fleetd-loadgen: " << keys.status() << "\n";
    return 2;
  }
  o.keys = *std::move(keys);

  if (exporting) {
    // One clock reading for both exports, so they hold the same samples.
    fleetd::SimulatedClock clock(fleetd::Clock::Real()->Now());
    int64_t exported = -1;
    for (const auto& [path, export_fn] :
         {std::pair{export_path, &fleetd::bench::ExportVmJsonl},
          std::pair{export_rw_dir, &fleetd::bench::ExportRemoteWrite}}) {
      if (path.empty()) continue;
      auto samples = export_fn(o, export_rounds, path, &clock);
      if (!samples.ok()) {
        std::cerr << "fleetd-loadgen: " << samples.status() << "\n";
        return 2;
      }
      if (exported >= 0 && *samples != exported) {
        std::cerr << "fleetd-loadgen: exported " << exported
                  << " samples as JSON lines but " << *samples
                  << " as remote write\n";
        return 2;
      }
      exported = *samples;
    }
    std::cout << exported << "\n";
    return 0;
  }
  auto report = fleetd::bench::RunLoadgen(o, fleetd::Clock::Real());
  if (!report.ok()) {
    std::cerr << "fleetd-loadgen: " << report.status() << "\n";
    return 2;
  }
  std::string json = fleetd::bench::ReportToJson(*report);
  if (!json_out.empty()) {
    std::ofstream out(json_out);
    out << json << "\n";
    if (!out) {
      std::cerr << "fleetd-loadgen: cannot write " << json_out << "\n";
      return 2;
    }
  }
  std::cout << json << "\n";
  return 0;
}
