#include "agent/collect/system_metrics.h"

#include <dirent.h>
#include <sys/statvfs.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <map>
#include <set>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "agent/collect/collect_util.h"
#include "common/status/status_macros.h"
#include "glog/logging.h"

namespace fleetd::agent {
namespace {

using collect_internal::ReadSmallFile;
using collect_internal::ToProtoTimestamp;
using collect_internal::UnderRoot;

using Labels = std::vector<std::pair<std::string, std::string>>;

// Jiffies of one /proc/stat "cpu" line.
struct CpuTimes {
  uint64_t total = 0;
  uint64_t idle = 0;  // idle + iowait
};

std::vector<absl::string_view> Fields(absl::string_view line) {
  return absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
}

absl::Status Malformed(absl::string_view file, absl::string_view what) {
  return absl::DataLossError(absl::StrCat(file, ": ", what));
}

class SystemMetricsSource final : public MetricsSource {
 public:
  explicit SystemMetricsSource(SystemMetricsOptions options)
      : options_(std::move(options)) {
    if (options_.registry == nullptr) {
      owned_registry_ = std::make_unique<metrics::Registry>();
      options_.registry = owned_registry_.get();
    }
    errors_ = &options_.registry->CounterFamily(
        "fleetd_collect_input_errors_total",
        "Inputs a collector could not read, per sample",
        {"collector", "input"});
  }

  absl::string_view name() const override { return "system"; }

  std::vector<v1::Metric> Collect() override {
    out_.clear();
    now_ = ToProtoTimestamp(options_.clock->Now());
    std::set<std::string> failed;
    const auto run = [&](const char* input, absl::Status status) {
      if (status.ok()) return;
      failed.insert(input);
      errors_->WithLabels({"system", input}).Increment();
      if (failing_.count(input) == 0) {
        LOG(WARNING) << "system metrics: cannot read " << input << ": "
                     << status;
      }
    };
    run("cpu", CollectCpu());
    run("memory", CollectMemory());
    run("disk_usage", CollectDiskUsage());
    run("disk_io", CollectDiskIo());
    run("network", CollectNetwork());
    run("load", CollectLoad());
    run("uptime", CollectUptime());
    run("thermal", CollectThermal());
    for (const std::string& input : failing_) {
      if (failed.count(input) == 0) {
        LOG(INFO) << "system metrics: " << input << " readable again";
      }
    }
    failing_ = std::move(failed);
    return std::move(out_);
  }

 private:
  void Add(absl::string_view name, double value, Labels labels = {}) {
    v1::Metric& m = out_.emplace_back();
    m.set_name(std::string(name));
    m.set_value(value);
    *m.mutable_timestamp() = now_;
    for (auto& [k, v] : labels) (*m.mutable_labels())[k] = std::move(v);
  }

  absl::StatusOr<std::string> Read(absl::string_view path) {
    return ReadSmallFile(UnderRoot(options_.root, path));
  }

  absl::Status CollectCpu() {
    ASSIGN_OR_RETURN(std::string text, Read("/proc/stat"));
    std::map<std::string, CpuTimes> sample;
    for (absl::string_view line : absl::StrSplit(text, '\n')) {
      if (!absl::StartsWith(line, "cpu")) continue;
      std::vector<absl::string_view> f = Fields(line);
      // user nice system idle [iowait irq softirq steal [guest guest_nice]]
      if (f.size() < 5) return Malformed("/proc/stat", "short cpu line");
      CpuTimes t;
      // guest time is already part of user time, so it is not added again.
      for (size_t i = 1; i < f.size() && i <= 8; ++i) {
        uint64_t v;
        if (!absl::SimpleAtoi(f[i], &v)) {
          return Malformed("/proc/stat", absl::StrCat("bad number in ", f[0]));
        }
        t.total += v;
        if (i == 4 || i == 5) t.idle += v;
      }
      sample[std::string(f[0])] = t;
    }
    if (sample.count("cpu") == 0) {
      return Malformed("/proc/stat", "no cpu line");
    }
    for (const auto& [cpu, now] : sample) {
      auto it = prev_cpu_.find(cpu);
      if (it == prev_cpu_.end()) continue;  // first sample of this cpu
      const CpuTimes& before = it->second;
      // Counters that went backwards (cpu hot-plugged out and back) give no
      // usable difference this time.
      if (now.total <= before.total || now.idle < before.idle) continue;
      double total = static_cast<double>(now.total - before.total);
      double idle = static_cast<double>(now.idle - before.idle);
      double busy = std::clamp(100.0 * (total - idle) / total, 0.0, 100.0);
      Add("system_cpu_usage_percent", busy,
          {{"cpu", cpu == "cpu" ? "all" : cpu}});
    }
    prev_cpu_ = std::move(sample);
    return absl::OkStatus();
  }

  absl::Status CollectMemory() {
    ASSIGN_OR_RETURN(std::string text, Read("/proc/meminfo"));
    std::map<std::string, double> kv;
    for (absl::string_view line :
         absl::StrSplit(text, '\n', absl::SkipEmpty())) {
      size_t colon = line.find(':');
      if (colon == absl::string_view::npos) continue;
      std::vector<absl::string_view> f = Fields(line.substr(colon + 1));
      uint64_t v;
      if (f.empty() || !absl::SimpleAtoi(f[0], &v)) continue;
      double bytes = static_cast<double>(v);
      if (f.size() > 1 && f[1] == "kB") bytes *= 1024;
      kv[std::string(line.substr(0, colon))] = bytes;
    }
    const auto get = [&](const char* key) -> const double* {
      auto it = kv.find(key);
      return it == kv.end() ? nullptr : &it->second;
    };
    const double* total = get("MemTotal");
    if (total == nullptr) return Malformed("/proc/meminfo", "no MemTotal");
    double available;
    if (const double* a = get("MemAvailable")) {
      available = *a;
    } else {  // kernels before 3.14
      available = 0;
      for (const char* key : {"MemFree", "Buffers", "Cached"}) {
        if (const double* v = get(key)) available += *v;
      }
    }
    available = std::min(available, *total);
    Add("system_memory_total_bytes", *total);
    Add("system_memory_available_bytes", available);
    Add("system_memory_used_bytes", *total - available);
    Add("system_memory_usage_percent",
        *total > 0 ? 100.0 * (*total - available) / *total : 0.0);
    const std::pair<const char*, const char*> kPlain[] = {
        {"MemFree", "system_memory_free_bytes"},
        {"Buffers", "system_memory_buffers_bytes"},
        {"Cached", "system_memory_cached_bytes"},
        {"SwapTotal", "system_memory_swap_total_bytes"},
        {"SwapFree", "system_memory_swap_free_bytes"},
    };
    for (const auto& [key, name] : kPlain) {
      if (const double* v = get(key)) Add(name, *v);
    }
    const double* swap_total = get("SwapTotal");
    const double* swap_free = get("SwapFree");
    if (swap_total != nullptr && swap_free != nullptr) {
      Add("system_memory_swap_used_bytes",
          std::max(0.0, *swap_total - *swap_free));
    }
    return absl::OkStatus();
  }

  absl::Status CollectDiskUsage() {
    absl::Status first_error;
    for (const std::string& mount : options_.mount_points) {
      absl::StatusOr<FilesystemUsage> usage =
          options_.stat_filesystem(UnderRoot(options_.root, mount));
      if (!usage.ok()) {
        if (first_error.ok()) {
          first_error =
              absl::Status(usage.status().code(),
                           absl::StrCat(mount, ": ", usage.status().message()));
        }
        continue;
      }
      double total = static_cast<double>(usage->total_bytes);
      double free = static_cast<double>(usage->free_bytes);
      double avail = static_cast<double>(usage->available_bytes);
      double used = std::max(0.0, total - free);
      Labels labels = {{"mountpoint", mount}};
      Add("system_disk_total_bytes", total, labels);
      Add("system_disk_free_bytes", free, labels);
      Add("system_disk_available_bytes", avail, labels);
      Add("system_disk_used_bytes", used, labels);
      Add("system_disk_usage_percent",
          used + avail > 0 ? 100.0 * used / (used + avail) : 0.0, labels);
    }
    return first_error;
  }

  absl::Status CollectDiskIo() {
    ASSIGN_OR_RETURN(std::string text, Read("/proc/diskstats"));
    constexpr double kSectorBytes = 512;  // diskstats counts 512-byte sectors
    for (absl::string_view line :
         absl::StrSplit(text, '\n', absl::SkipEmpty())) {
      std::vector<absl::string_view> f = Fields(line);
      // major minor name reads merged sectors ms writes merged sectors ms
      // in_flight io_ms weighted_ms [...]
      if (f.size() < 14) return Malformed("/proc/diskstats", "short line");
      std::string device(f[2]);
      bool ignored = false;
      for (const std::string& prefix : options_.ignored_disk_prefixes) {
        ignored = ignored || absl::StartsWith(device, prefix);
      }
      if (ignored) continue;
      uint64_t v[11];
      for (int i = 0; i < 11; ++i) {
        if (!absl::SimpleAtoi(f[3 + i], &v[i])) {
          return Malformed("/proc/diskstats",
                           absl::StrCat("bad number for ", device));
        }
      }
      Labels labels = {{"device", device}};
      Add("system_disk_reads_completed_total", static_cast<double>(v[0]),
          labels);
      Add("system_disk_read_bytes_total",
          static_cast<double>(v[2]) * kSectorBytes, labels);
      Add("system_disk_writes_completed_total", static_cast<double>(v[4]),
          labels);
      Add("system_disk_written_bytes_total",
          static_cast<double>(v[6]) * kSectorBytes, labels);
      Add("system_disk_io_time_seconds_total", static_cast<double>(v[9]) / 1000,
          labels);
    }
    return absl::OkStatus();
  }

  absl::Status CollectNetwork() {
    ASSIGN_OR_RETURN(std::string text, Read("/proc/net/dev"));
    static constexpr const char* kNames[] = {
        // receive: bytes packets errs drop fifo frame compressed multicast
        "system_network_receive_bytes_total",
        "system_network_receive_packets_total",
        "system_network_receive_errors_total",
        "system_network_receive_drops_total",
    };
    static constexpr const char* kTxNames[] = {
        // transmit: bytes packets errs drop fifo colls carrier compressed
        "system_network_transmit_bytes_total",
        "system_network_transmit_packets_total",
        "system_network_transmit_errors_total",
        "system_network_transmit_drops_total",
    };
    for (absl::string_view line :
         absl::StrSplit(text, '\n', absl::SkipEmpty())) {
      // Header lines have '|' and no "name:" prefix.
      size_t colon = line.find(':');
      if (colon == absl::string_view::npos ||
          line.find('|') != absl::string_view::npos) {
        continue;
      }
      std::string iface(absl::StripAsciiWhitespace(line.substr(0, colon)));
      if (options_.skip_loopback && iface == "lo") continue;
      std::vector<absl::string_view> f = Fields(line.substr(colon + 1));
      if (f.size() < 16) return Malformed("/proc/net/dev", "short line");
      uint64_t v[16];
      for (int i = 0; i < 16; ++i) {
        if (!absl::SimpleAtoi(f[i], &v[i])) {
          return Malformed("/proc/net/dev",
                           absl::StrCat("bad number for ", iface));
        }
      }
      Labels labels = {{"interface", iface}};
      for (int i = 0; i < 4; ++i) {
        Add(kNames[i], static_cast<double>(v[i]), labels);
        Add(kTxNames[i], static_cast<double>(v[8 + i]), labels);
      }
    }
    return absl::OkStatus();
  }

  absl::Status CollectLoad() {
    ASSIGN_OR_RETURN(std::string text, Read("/proc/loadavg"));
    std::vector<absl::string_view> f = Fields(absl::StripAsciiWhitespace(text));
    double load[3];
    if (f.size() < 3 || !absl::SimpleAtod(f[0], &load[0]) ||
        !absl::SimpleAtod(f[1], &load[1]) ||
        !absl::SimpleAtod(f[2], &load[2])) {
      return Malformed("/proc/loadavg", "expected three load averages");
    }
    Add("system_load1", load[0]);
    Add("system_load5", load[1]);
    Add("system_load15", load[2]);
    return absl::OkStatus();
  }

  absl::Status CollectUptime() {
    ASSIGN_OR_RETURN(std::string text, Read("/proc/uptime"));
    std::vector<absl::string_view> f = Fields(absl::StripAsciiWhitespace(text));
    double up;
    if (f.empty() || !absl::SimpleAtod(f[0], &up) || !std::isfinite(up)) {
      return Malformed("/proc/uptime", "expected seconds");
    }
    Add("system_uptime_seconds", up);
    return absl::OkStatus();
  }

  absl::Status CollectThermal() {
    const std::string dir = UnderRoot(options_.root, "/sys/class/thermal");
    DIR* d = ::opendir(dir.c_str());
    if (d == nullptr) return absl::OkStatus();  // no thermal zones here
    std::vector<std::string> zones;
    while (struct dirent* e = ::readdir(d)) {
      if (absl::StartsWith(e->d_name, "thermal_zone"))
        zones.push_back(e->d_name);
    }
    ::closedir(d);
    // thermal_zone2 before thermal_zone10.
    std::sort(zones.begin(), zones.end(),
              [](const std::string& a, const std::string& b) {
                return a.size() != b.size() ? a.size() < b.size() : a < b;
              });
    absl::Status first_error;
    std::set<std::string> names;
    for (const std::string& zone : zones) {
      const std::string base = absl::StrCat(dir, "/", zone);
      absl::StatusOr<std::string> temp = ReadSmallFile(base + "/temp");
      int64_t millidegrees;
      if (!temp.ok() ||
          !absl::SimpleAtoi(absl::StripAsciiWhitespace(*temp), &millidegrees)) {
        // Some drivers answer EINVAL/ENODATA while the sensor is off.
        if (first_error.ok()) {
          first_error = temp.ok() ? Malformed(base + "/temp", "not a number")
                                  : temp.status();
        }
        continue;
      }
      absl::StatusOr<std::string> type = ReadSmallFile(base + "/type");
      std::string name =
          type.ok() ? std::string(absl::StripAsciiWhitespace(*type)) : "";
      if (name.empty() || names.count(name) > 0) name = zone;
      names.insert(name);
      Add("system_temperature_celsius",
          static_cast<double>(millidegrees) / 1000, {{"zone", name}});
    }
    return first_error;
  }

  SystemMetricsOptions options_;
  std::unique_ptr<metrics::Registry> owned_registry_;
  metrics::Family<metrics::Counter>* errors_;

  std::map<std::string, CpuTimes> prev_cpu_;
  std::set<std::string> failing_;  // inputs that failed in the last sample
  // The sample being built.
  std::vector<v1::Metric> out_;
  google::protobuf::Timestamp now_;
};

}  // namespace

StatFilesystemFn RealStatFilesystem() {
  return [](const std::string& path) -> absl::StatusOr<FilesystemUsage> {
    struct statvfs st;
    if (::statvfs(path.c_str(), &st) != 0) {
      int err = errno;
      std::string msg =
          absl::StrCat("statvfs ", path, ": ", std::strerror(err));
      if (err == ENOENT || err == ENOTDIR) return absl::NotFoundError(msg);
      return absl::UnavailableError(msg);
    }
    const uint64_t unit = st.f_frsize != 0 ? st.f_frsize : st.f_bsize;
    FilesystemUsage u;
    u.total_bytes = static_cast<uint64_t>(st.f_blocks) * unit;
    u.free_bytes = static_cast<uint64_t>(st.f_bfree) * unit;
    u.available_bytes = static_cast<uint64_t>(st.f_bavail) * unit;
    return u;
  };
}

absl::StatusOr<std::unique_ptr<MetricsSource>> NewSystemMetricsSource(
    SystemMetricsOptions options) {
  if (options.root.empty()) {
    return absl::InvalidArgumentError("system metrics: empty root directory");
  }
  for (const std::string& mount : options.mount_points) {
    if (mount.empty()) {
      return absl::InvalidArgumentError("system metrics: empty mount point");
    }
  }
  if (!options.stat_filesystem) options.stat_filesystem = RealStatFilesystem();
  if (options.clock == nullptr) options.clock = Clock::Real();
  return std::unique_ptr<MetricsSource>(
      new SystemMetricsSource(std::move(options)));
}

}  // namespace fleetd::agent
