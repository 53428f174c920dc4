// Device capability detection and the per-tier agent profile.
//
// The agent measures the device (RAM, disk at the data directory, CPU cores,
// architecture, OS), classifies it into one of three tiers, and derives its
// defaults from the tier table:
//
//   tier | device         | storage        | sync interval | compression |
//   batch 1    | full (RPi)     | 100 MB SQLite  | 5 min         | zstd | 1000
//   2    | constrained    | 5 MB SQLite    | 1 min         | gzip        | 100
//   3    | minimal sensor | memory ring    | 10 s          | none        | 10
//
// Environment variables override the defaults (SYNC_INTERVAL, BATCH_SIZE,
// COMPRESSION_TYPE, MAX_RETRIES, FLEET_STORAGE_MAX_BYTES,
// FLEET_MEMORY_BUFFER_BYTES) and FLEET_TIER forces a tier.
//
// Everything the detection reads from the system goes through SystemProbe, so
// tests feed fake /proc content and never depend on the machine they run on.
#ifndef FLEETD_AGENT_CAPABILITY_CAPABILITY_H_
#define FLEETD_AGENT_CAPABILITY_CAPABILITY_H_

#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/codec/codec.h"
#include "common/config/config.h"
#include "fleetd/v1/sync.pb.h"

namespace fleetd::agent {

enum class Tier : int32_t { kFull = 1, kConstrained = 2, kMinimal = 3 };

// "full", "constrained", "minimal".
absl::string_view TierName(Tier tier);

// Where the agent keeps unsynced data.
enum class StorageMode { kSqlite, kMemory };

// Capacity of a filesystem, in bytes.
struct DiskSpace {
  int64_t total_bytes = 0;
  // Bytes an unprivileged process may still allocate (statvfs f_bavail).
  int64_t available_bytes = 0;
};

// uname(2) fields the agent cares about.
struct KernelInfo {
  std::string sysname;  // "Linux"
  std::string release;  // "6.1.0-18-arm64"
  std::string machine;  // "x86_64", "aarch64", "armv7l"
};

// The outside world as capability detection sees it. Implementations must be
// safe to call from one thread at a time; detection runs once at start-up.
class SystemProbe {
 public:
  virtual ~SystemProbe() = default;

  // The contents of a system file such as "/proc/meminfo" or
  // "/sys/fs/cgroup/memory.max". NotFound if it does not exist.
  virtual absl::StatusOr<std::string> ReadFile(const std::string& path) = 0;
  // statvfs(2) of the filesystem holding `path`, or of its nearest existing
  // ancestor when `path` does not exist yet.
  virtual absl::StatusOr<DiskSpace> DiskSpaceAt(const std::string& path) = 0;
  virtual absl::StatusOr<KernelInfo> Kernel() = 0;
  // Processors online per sysconf(_SC_NPROCESSORS_ONLN); used only when
  // /sys/devices/system/cpu/online cannot be read.
  virtual int OnlineCpus() = 0;
};

// The real system. Files are read below `root` ("" or "/" for the real root;
// a test directory with proc/meminfo etc. for tests); DiskSpaceAt, Kernel and
// OnlineCpus always ask the real kernel.
std::unique_ptr<SystemProbe> NewRealSystemProbe(std::string root = "");

// What was measured. Sizes in bytes.
struct SystemInfo {
  // MemTotal, lowered to the cgroup memory limit when one is set.
  int64_t total_ram_bytes = 0;
  // MemAvailable (or MemFree + Buffers + Cached on kernels without it), capped
  // at total_ram_bytes.
  int64_t available_ram_bytes = 0;
  int64_t total_disk_bytes = 0;
  int64_t available_disk_bytes = 0;
  // CPUs online, lowered to the cgroup CPU quota (rounded up) when one is set.
  int32_t cpu_cores = 0;
  // Go-style names, as the original agent reports them: "amd64", "arm64",
  // "arm", "386", "riscv64", ... (unknown machines are passed through).
  std::string architecture;
  std::string os;              // "linux"
  std::string machine;         // raw uname machine, e.g. "aarch64"
  std::string kernel_release;  // raw uname release
};

// Measures the system. `data_dir` is where the agent stores data; its
// filesystem's size is the disk the tier rule looks at.
// Errors: FailedPrecondition when /proc/meminfo is missing or unreadable as
// meminfo; the probe's error when statvfs or uname fail.
absl::StatusOr<SystemInfo> DetectSystem(SystemProbe& probe,
                                        const std::string& data_dir);

// Parsers, exposed for tests.
// The value of `field` ("MemTotal") in /proc/meminfo text, in bytes.
// NotFound when the field is absent, InvalidArgument when it is malformed.
absl::StatusOr<int64_t> ParseMeminfoField(absl::string_view meminfo,
                                          absl::string_view field);
// "0-3,6,8-9" -> 7. InvalidArgument on malformed lists.
absl::StatusOr<int32_t> ParseCpuList(absl::string_view list);
// Maps a uname machine to the Go architecture name.
std::string GoArchitecture(absl::string_view machine);

// Thresholds of the tier rule (binary units: 1 GB = 2^30 bytes).
inline constexpr int64_t kTier1MinDiskBytes = int64_t{1} << 30;
inline constexpr int64_t kTier1MinRamBytes = int64_t{512} << 20;
inline constexpr int64_t kTier2MinDiskBytes = int64_t{10} << 20;
inline constexpr int64_t kTier2MinRamBytes = int64_t{64} << 20;

// Tier 1 when available disk > 1 GB and total RAM > 512 MB; tier 2 when
// available disk > 10 MB and total RAM > 64 MB; else tier 3.
Tier ClassifyTier(const SystemInfo& system);

// Everything the agent derives from its tier; the defaults come from the tier
// table, then environment overrides apply.
struct AgentProfile {
  Tier tier = Tier::kMinimal;
  // Whether FLEET_TIER chose the tier instead of the tier rule.
  bool tier_forced = false;
  SystemInfo system;

  absl::Duration sync_interval = absl::Seconds(10);
  int32_t batch_size = 10;
  Compression compression = Compression::kNone;
  int32_t max_retries = 5;

  StorageMode storage_mode = StorageMode::kMemory;
  // Byte quota of the SQLite store (tiers 1 and 2).
  int64_t storage_max_bytes = 0;
  // Byte budget of the memory ring (tier 3).
  int64_t memory_buffer_bytes = 0;

  // Reported in the capability; the transport layer may refine them.
  bool has_network = true;
  int32_t bandwidth_kbps = 0;
  bool supports_http2 = true;
};

// The table's defaults for `tier` (system left empty, tier_forced false).
AgentProfile DefaultProfile(Tier tier);

// Classifies `system` (or takes FLEET_TIER), applies the tier's defaults, then
// the environment overrides. Errors: InvalidArgument naming the variable when
// a value is invalid (e.g. "SYNC_INTERVAL: invalid value \"soon\" ...").
absl::StatusOr<AgentProfile> ResolveProfile(const SystemInfo& system,
                                            const EnvLookup& env);

// Rough in-memory size of one metric in the ring, used to turn the memory
// budget into the capability's max_metrics_in_memory.
inline constexpr int64_t kApproxMetricBytes = 96;

// The capability reported to the server.
v1::SyncDeviceCapability ToCapabilityProto(const AgentProfile& profile);

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_CAPABILITY_CAPABILITY_H_
