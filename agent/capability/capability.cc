#include "agent/capability/capability.h"

#include <fcntl.h>
#include <sys/statvfs.h>
#include <sys/utsname.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <limits>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/status/status_macros.h"

namespace fleetd::agent {
namespace {

// System files read here are small; anything bigger is not what we expect.
constexpr size_t kMaxFileBytes = 1 << 20;

class RealSystemProbe final : public SystemProbe {
 public:
  explicit RealSystemProbe(std::string root) : root_(std::move(root)) {
    while (!root_.empty() && root_.back() == '/') root_.pop_back();
  }

  absl::StatusOr<std::string> ReadFile(const std::string& path) override {
    std::string full = root_ + path;
    int fd = open(full.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
      int err = errno;
      if (err == ENOENT || err == ENOTDIR) {
        return absl::NotFoundError(absl::StrCat(full, ": no such file"));
      }
      return absl::UnavailableError(
          absl::StrCat(full, ": ", std::strerror(err)));
    }
    // Files under /proc report size 0, so read until EOF.
    std::string contents;
    char buf[4096];
    for (;;) {
      ssize_t n = read(fd, buf, sizeof(buf));
      if (n == 0) break;
      if (n < 0) {
        if (errno == EINTR) continue;
        int err = errno;
        close(fd);
        return absl::UnavailableError(
            absl::StrCat(full, ": ", std::strerror(err)));
      }
      contents.append(buf, static_cast<size_t>(n));
      if (contents.size() > kMaxFileBytes) {
        close(fd);
        return absl::FailedPreconditionError(
            absl::StrCat(full, ": larger than ", kMaxFileBytes, " bytes"));
      }
    }
    close(fd);
    return contents;
  }

  absl::StatusOr<DiskSpace> DiskSpaceAt(const std::string& path) override {
    std::string p = path.empty() ? "." : path;
    for (;;) {
      struct statvfs st;
      if (statvfs(p.c_str(), &st) == 0) {
        DiskSpace space;
        const auto frsize = static_cast<int64_t>(st.f_frsize);
        space.total_bytes = static_cast<int64_t>(st.f_blocks) * frsize;
        space.available_bytes = static_cast<int64_t>(st.f_bavail) * frsize;
        return space;
      }
      int err = errno;
      if (err != ENOENT) {
        return absl::UnavailableError(
            absl::StrCat("statvfs(", p, "): ", std::strerror(err)));
      }
      // The data directory may not exist yet: measure where it will be made.
      size_t slash = p.find_last_of('/');
      if (slash == std::string::npos) {
        p = ".";
      } else if (slash == 0) {
        p = "/";
      } else {
        p.resize(slash);
      }
    }
  }

  absl::StatusOr<KernelInfo> Kernel() override {
    struct utsname u;
    if (uname(&u) != 0) {
      return absl::UnavailableError(
          absl::StrCat("uname: ", std::strerror(errno)));
    }
    return KernelInfo{u.sysname, u.release, u.machine};
  }

  int OnlineCpus() override {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? static_cast<int>(n) : 1;
  }

 private:
  std::string root_;
};

// Reads an optional file: its trimmed content, or nullopt when absent.
absl::StatusOr<std::optional<std::string>> ReadOptional(
    SystemProbe& probe, const std::string& path) {
  absl::StatusOr<std::string> content = probe.ReadFile(path);
  if (absl::IsNotFound(content.status())) return std::nullopt;
  if (!content.ok()) return content.status();
  return std::string(absl::StripAsciiWhitespace(*content));
}

// The cgroup memory limit in bytes, or nullopt when unlimited or unknown.
absl::StatusOr<std::optional<int64_t>> CgroupMemoryLimit(SystemProbe& probe) {
  for (const char* path : {"/sys/fs/cgroup/memory.max",
                           "/sys/fs/cgroup/memory/memory.limit_in_bytes"}) {
    ASSIGN_OR_RETURN(std::optional<std::string> text,
                     ReadOptional(probe, path));
    if (!text.has_value()) continue;
    int64_t limit;
    // "max" (v2) or a huge page-rounded INT64_MAX (v1) mean no limit.
    if (*text == "max" || !absl::SimpleAtoi(*text, &limit) || limit <= 0 ||
        limit >= (std::numeric_limits<int64_t>::max() >> 1)) {
      return std::nullopt;
    }
    return limit;
  }
  return std::nullopt;
}

// The cgroup CPU quota in whole CPUs (rounded up), or nullopt when unlimited.
absl::StatusOr<std::optional<int32_t>> CgroupCpuLimit(SystemProbe& probe) {
  int64_t quota = -1;
  int64_t period = 0;
  ASSIGN_OR_RETURN(std::optional<std::string> v2,
                   ReadOptional(probe, "/sys/fs/cgroup/cpu.max"));
  if (v2.has_value()) {
    std::vector<absl::string_view> parts =
        absl::StrSplit(*v2, ' ', absl::SkipEmpty());
    if (parts.size() != 2 || parts[0] == "max" ||
        !absl::SimpleAtoi(parts[0], &quota) ||
        !absl::SimpleAtoi(parts[1], &period)) {
      return std::nullopt;
    }
  } else {
    ASSIGN_OR_RETURN(
        std::optional<std::string> q,
        ReadOptional(probe, "/sys/fs/cgroup/cpu/cpu.cfs_quota_us"));
    ASSIGN_OR_RETURN(
        std::optional<std::string> p,
        ReadOptional(probe, "/sys/fs/cgroup/cpu/cpu.cfs_period_us"));
    if (!q.has_value() || !p.has_value() || !absl::SimpleAtoi(*q, &quota) ||
        !absl::SimpleAtoi(*p, &period)) {
      return std::nullopt;
    }
  }
  if (quota <= 0 || period <= 0) return std::nullopt;
  return static_cast<int32_t>(
      std::max<int64_t>(1, (quota + period - 1) / period));
}

absl::Status ValidateProfile(const AgentProfile& p) {
  if (p.sync_interval <= absl::ZeroDuration()) {
    return absl::InvalidArgumentError(
        "SYNC_INTERVAL: must be a positive duration such as 60s or 5m");
  }
  return absl::OkStatus();
}

}  // namespace

absl::string_view TierName(Tier tier) {
  switch (tier) {
    case Tier::kFull:
      return "full";
    case Tier::kConstrained:
      return "constrained";
    case Tier::kMinimal:
      return "minimal";
  }
  return "unknown";
}

std::unique_ptr<SystemProbe> NewRealSystemProbe(std::string root) {
  return std::make_unique<RealSystemProbe>(std::move(root));
}

absl::StatusOr<int64_t> ParseMeminfoField(absl::string_view meminfo,
                                          absl::string_view field) {
  for (absl::string_view line : absl::StrSplit(meminfo, '\n')) {
    absl::string_view rest = line;
    if (!absl::ConsumePrefix(&rest, field) ||
        !absl::ConsumePrefix(&rest, ":")) {
      continue;
    }
    rest = absl::StripAsciiWhitespace(rest);
    int64_t factor = 1;
    if (absl::ConsumeSuffix(&rest, "kB")) factor = 1024;
    int64_t value;
    if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(rest), &value) ||
        value < 0 || value > std::numeric_limits<int64_t>::max() / factor) {
      return absl::InvalidArgumentError(absl::StrCat(
          "/proc/meminfo: malformed ", field, " line \"", line, "\""));
    }
    return value * factor;
  }
  return absl::NotFoundError(absl::StrCat("/proc/meminfo: no ", field));
}

absl::StatusOr<int32_t> ParseCpuList(absl::string_view list) {
  int64_t count = 0;
  for (absl::string_view item :
       absl::StrSplit(absl::StripAsciiWhitespace(list), ',')) {
    std::pair<absl::string_view, absl::string_view> range =
        absl::StrSplit(item, absl::MaxSplits('-', 1));
    int64_t lo;
    int64_t hi;
    if (!absl::SimpleAtoi(range.first, &lo)) {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed CPU list \"", list, "\""));
    }
    hi = lo;
    if (!range.second.empty() && !absl::SimpleAtoi(range.second, &hi)) {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed CPU list \"", list, "\""));
    }
    if (lo < 0 || hi < lo || hi > 1 << 20) {
      return absl::InvalidArgumentError(
          absl::StrCat("malformed CPU list \"", list, "\""));
    }
    count += hi - lo + 1;
  }
  return static_cast<int32_t>(count);
}

std::string GoArchitecture(absl::string_view machine) {
  static constexpr std::pair<const char*, const char*> kNames[] = {
      {"x86_64", "amd64"},    {"amd64", "amd64"},   {"aarch64", "arm64"},
      {"arm64", "arm64"},     {"i386", "386"},      {"i486", "386"},
      {"i586", "386"},        {"i686", "386"},      {"riscv64", "riscv64"},
      {"ppc64le", "ppc64le"}, {"s390x", "s390x"},   {"mips", "mips"},
      {"mipsel", "mipsle"},   {"mips64", "mips64"}, {"loongarch64", "loong64"},
  };
  for (const auto& [uname_name, go_name] : kNames) {
    if (machine == uname_name) return go_name;
  }
  // armv5tel, armv6l, armv7l, armv8l (32-bit userland on a 64-bit core).
  if (absl::StartsWith(machine, "arm")) return "arm";
  return std::string(machine);
}

absl::StatusOr<SystemInfo> DetectSystem(SystemProbe& probe,
                                        const std::string& data_dir) {
  SystemInfo info;

  absl::StatusOr<std::string> meminfo = probe.ReadFile("/proc/meminfo");
  if (!meminfo.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot read /proc/meminfo: ", meminfo.status().message()));
  }
  absl::StatusOr<int64_t> total = ParseMeminfoField(*meminfo, "MemTotal");
  if (!total.ok()) {
    return absl::FailedPreconditionError(total.status().message());
  }
  info.total_ram_bytes = *total;
  absl::StatusOr<int64_t> available =
      ParseMeminfoField(*meminfo, "MemAvailable");
  if (absl::IsNotFound(available.status())) {
    // Kernels before 3.14 have no MemAvailable; approximate it.
    int64_t sum = 0;
    for (const char* field : {"MemFree", "Buffers", "Cached"}) {
      absl::StatusOr<int64_t> v = ParseMeminfoField(*meminfo, field);
      if (v.ok()) sum += *v;
    }
    available = sum;
  }
  if (!available.ok()) {
    return absl::FailedPreconditionError(available.status().message());
  }
  info.available_ram_bytes = *available;

  ASSIGN_OR_RETURN(std::optional<int64_t> memory_limit,
                   CgroupMemoryLimit(probe));
  if (memory_limit.has_value() && *memory_limit < info.total_ram_bytes) {
    info.total_ram_bytes = *memory_limit;
  }
  info.available_ram_bytes =
      std::min(info.available_ram_bytes, info.total_ram_bytes);

  ASSIGN_OR_RETURN(std::optional<std::string> online,
                   ReadOptional(probe, "/sys/devices/system/cpu/online"));
  int32_t cores = 0;
  if (online.has_value()) {
    absl::StatusOr<int32_t> n = ParseCpuList(*online);
    if (n.ok()) cores = *n;
  }
  if (cores <= 0) cores = probe.OnlineCpus();
  ASSIGN_OR_RETURN(std::optional<int32_t> cpu_limit, CgroupCpuLimit(probe));
  if (cpu_limit.has_value() && *cpu_limit < cores) cores = *cpu_limit;
  info.cpu_cores = std::max(cores, 1);

  ASSIGN_OR_RETURN(DiskSpace disk, probe.DiskSpaceAt(data_dir));
  info.total_disk_bytes = disk.total_bytes;
  info.available_disk_bytes = disk.available_bytes;

  ASSIGN_OR_RETURN(KernelInfo kernel, probe.Kernel());
  info.os = absl::AsciiStrToLower(kernel.sysname);
  info.machine = kernel.machine;
  info.kernel_release = kernel.release;
  info.architecture = GoArchitecture(kernel.machine);
  return info;
}

Tier ClassifyTier(const SystemInfo& system) {
  if (system.available_disk_bytes > kTier1MinDiskBytes &&
      system.total_ram_bytes > kTier1MinRamBytes) {
    return Tier::kFull;
  }
  if (system.available_disk_bytes > kTier2MinDiskBytes &&
      system.total_ram_bytes > kTier2MinRamBytes) {
    return Tier::kConstrained;
  }
  return Tier::kMinimal;
}

AgentProfile DefaultProfile(Tier tier) {
  AgentProfile p;
  p.tier = tier;
  p.max_retries = 5;
  switch (tier) {
    case Tier::kFull:
      p.sync_interval = absl::Minutes(5);
      p.batch_size = 1000;
      p.compression = Compression::kZstd;
      p.storage_mode = StorageMode::kSqlite;
      p.storage_max_bytes = 100'000'000;
      p.memory_buffer_bytes = 0;
      break;
    case Tier::kConstrained:
      p.sync_interval = absl::Minutes(1);
      p.batch_size = 100;
      p.compression = Compression::kGzip;
      p.storage_mode = StorageMode::kSqlite;
      p.storage_max_bytes = 5'000'000;
      p.memory_buffer_bytes = 0;
      break;
    case Tier::kMinimal:
      p.sync_interval = absl::Seconds(10);
      p.batch_size = 10;
      p.compression = Compression::kNone;
      p.storage_mode = StorageMode::kMemory;
      p.storage_max_bytes = 0;
      p.memory_buffer_bytes = int64_t{1} << 20;
      break;
  }
  return p;
}

absl::StatusOr<AgentProfile> ResolveProfile(const SystemInfo& system,
                                            const EnvLookup& env) {
  // The tier decides every other default, so it is resolved first.
  std::string forced;
  Settings tier_settings;
  tier_settings.Choice(
      "FLEET_TIER", "tier", "Force the capability tier instead of detecting it",
      &forced, {"1", "2", "3", "full", "constrained", "minimal"});
  RETURN_IF_ERROR(tier_settings.Resolve(env));

  Tier tier = ClassifyTier(system);
  bool tier_forced = false;
  if (!forced.empty()) {
    tier_forced = true;
    if (forced == "1" || forced == "full") {
      tier = Tier::kFull;
    } else if (forced == "2" || forced == "constrained") {
      tier = Tier::kConstrained;
    } else {
      tier = Tier::kMinimal;
    }
  }

  AgentProfile profile = DefaultProfile(tier);
  profile.tier_forced = tier_forced;
  profile.system = system;

  std::string compression(CompressionName(profile.compression));
  Settings settings;
  settings
      .Duration("SYNC_INTERVAL", "sync-interval",
                "How often to sync (e.g. 60s, 5m)", &profile.sync_interval)
      .Int32("BATCH_SIZE", "batch-size", "Records per sync batch",
             &profile.batch_size, 1, 100'000)
      .Choice("COMPRESSION_TYPE", "compression",
              "Batch compression on the wire", &compression,
              {"none", "gzip", "zstd"})
      .Int32("MAX_RETRIES", "max-retries",
             "Attempts per batch before backing off to the next interval",
             &profile.max_retries, 0, 1000)
      .Bytes("FLEET_STORAGE_MAX_BYTES", "storage-max-bytes",
             "Byte quota of the SQLite store (tiers 1-2)",
             &profile.storage_max_bytes)
      .Bytes("FLEET_MEMORY_BUFFER_BYTES", "memory-buffer-bytes",
             "Byte budget of the memory ring (tier 3)",
             &profile.memory_buffer_bytes);
  RETURN_IF_ERROR(settings.Resolve(env));
  RETURN_IF_ERROR(ValidateProfile(profile));
  ASSIGN_OR_RETURN(profile.compression, ParseCompression(compression));

  constexpr int64_t kMinStoreBytes = 64 << 10;
  if (profile.storage_mode == StorageMode::kSqlite &&
      profile.storage_max_bytes < kMinStoreBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("FLEET_STORAGE_MAX_BYTES: must be at least ",
                     kMinStoreBytes, " bytes for the SQLite store"));
  }
  if (profile.storage_mode == StorageMode::kMemory &&
      profile.memory_buffer_bytes < kMinStoreBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("FLEET_MEMORY_BUFFER_BYTES: must be at least ",
                     kMinStoreBytes, " bytes for the memory ring"));
  }
  return profile;
}

v1::SyncDeviceCapability ToCapabilityProto(const AgentProfile& profile) {
  v1::SyncDeviceCapability cap;
  cap.set_tier(static_cast<int32_t>(profile.tier));
  cap.set_total_ram(profile.system.total_ram_bytes);
  cap.set_available_ram(profile.system.available_ram_bytes);
  cap.set_total_disk(profile.system.total_disk_bytes);
  cap.set_available_disk(profile.system.available_disk_bytes);
  cap.set_cpu_cores(profile.system.cpu_cores);
  cap.set_architecture(profile.system.architecture);
  cap.set_os(profile.system.os);
  const bool sqlite = profile.storage_mode == StorageMode::kSqlite;
  cap.set_has_sqlite(sqlite);
  cap.set_local_storage_size(sqlite ? profile.storage_max_bytes : 0);
  int64_t in_memory = sqlite ? profile.batch_size
                             : profile.memory_buffer_bytes / kApproxMetricBytes;
  cap.set_max_metrics_in_memory(static_cast<int32_t>(
      std::min<int64_t>(in_memory, std::numeric_limits<int32_t>::max())));
  cap.set_has_network(profile.has_network);
  cap.set_bandwidth_kbps(profile.bandwidth_kbps);
  cap.set_supports_http2(profile.supports_http2);
  return cap;
}

}  // namespace fleetd::agent
