// System metrics of the device, read from /proc, /sys and statvfs(2).
//
// Every Collect() takes one sample and returns it as Prometheus-style metrics,
// all stamped with the clock's Now() at the start of the sample:
//
//   system_cpu_usage_percent{cpu="all"|"cpu0"|...}   busy share since the
//       previous sample (absent from the first sample: usage needs two)
//   system_memory_{total,free,available,buffers,cached,used}_bytes,
//   system_memory_usage_percent, system_memory_swap_{total,free,used}_bytes
//   system_disk_{total,free,available,used}_bytes{mountpoint="/"},
//   system_disk_usage_percent{mountpoint}          (used / (used + available),
//                                                   as df reports it)
//   system_disk_{read,written}_bytes_total{device="sda"},
//   system_disk_{reads,writes}_completed_total{device},
//   system_disk_io_time_seconds_total{device}
//   system_network_{receive,transmit}_{bytes,packets,errors,drops}_total
//       {interface="eth0"}
//   system_load1, system_load5, system_load15
//   system_uptime_seconds
//   system_temperature_celsius{zone="cpu-thermal"}  one per readable
//       /sys/class/thermal/thermal_zone*/temp; the zone is its `type` (the
//       directory name when the type is missing or already taken)
//
// A missing or malformed input (say /proc/diskstats in a container) drops that
// input's metrics from the sample, counts
// fleetd_collect_input_errors_total{collector="system",input=...}, and logs a
// warning when the input starts failing (and a note when it recovers); the
// other inputs are still reported. No thermal zones is not an error.
#ifndef FLEETD_AGENT_COLLECT_SYSTEM_METRICS_H_
#define FLEETD_AGENT_COLLECT_SYSTEM_METRICS_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "agent/collect/metrics_source.h"
#include "common/clock/clock.h"
#include "common/metrics/metrics.h"
#include "fleetd/v1/sync.pb.h"

namespace fleetd::agent {

// What statvfs(2) says about one filesystem, in bytes.
struct FilesystemUsage {
  uint64_t total_bytes = 0;      // f_blocks * f_frsize
  uint64_t free_bytes = 0;       // f_bfree * f_frsize
  uint64_t available_bytes = 0;  // f_bavail * f_frsize (unprivileged)
};

// The statvfs seam: usage of the filesystem holding `path`. Errors as the
// implementation sees fit (NotFound, Unavailable...).
using StatFilesystemFn =
    std::function<absl::StatusOr<FilesystemUsage>(const std::string& path)>;

// statvfs(2).
StatFilesystemFn RealStatFilesystem();

struct SystemMetricsOptions {
  // Where /proc and /sys are looked for: "/" on a device, the host's root
  // mounted elsewhere in a container, a fake tree in tests.
  std::string root = "/";
  // Mount points whose usage is reported; each is statvfs'd under `root`.
  std::vector<std::string> mount_points = {"/"};
  // Block devices in /proc/diskstats whose name starts with one of these are
  // skipped.
  std::vector<std::string> ignored_disk_prefixes = {"loop", "ram"};
  // Leave out the loopback interface "lo".
  bool skip_loopback = true;
  // Defaults to RealStatFilesystem().
  StatFilesystemFn stat_filesystem;
  // Timestamps. Not owned; nullptr: Clock::Real().
  Clock* clock = nullptr;
  // Error counters. Not owned, may be null (a private registry is used).
  metrics::Registry* registry = nullptr;
};

// Errors: InvalidArgument for an empty root or mount point.
absl::StatusOr<std::unique_ptr<MetricsSource>> NewSystemMetricsSource(
    SystemMetricsOptions options);

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_COLLECT_SYSTEM_METRICS_H_
