#include "agent/capability/capability.h"

#include <stdlib.h>

#include <cstdlib>
#include <fstream>
#include <map>
#include <string>

#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::agent {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::IsOkAndHolds;
using ::fleetd::testing::StatusIs;
using ::testing::HasSubstr;

constexpr int64_t kMiB = int64_t{1} << 20;
constexpr int64_t kGiB = int64_t{1} << 30;

// A machine described entirely by the test.
class FakeProbe : public SystemProbe {
 public:
  std::map<std::string, std::string> files;
  DiskSpace disk{8 * kGiB, 4 * kGiB};
  KernelInfo kernel{"Linux", "6.1.0-test", "aarch64"};
  int cpus = 4;
  std::string last_disk_path;

  absl::StatusOr<std::string> ReadFile(const std::string& path) override {
    auto it = files.find(path);
    if (it == files.end()) return absl::NotFoundError(path);
    return it->second;
  }
  absl::StatusOr<DiskSpace> DiskSpaceAt(const std::string& path) override {
    last_disk_path = path;
    return disk;
  }
  absl::StatusOr<KernelInfo> Kernel() override { return kernel; }
  int OnlineCpus() override { return cpus; }
};

std::string Meminfo(int64_t total_kb, int64_t available_kb) {
  return "MemTotal:       " + std::to_string(total_kb) +
         " kB\n"
         "MemFree:         123456 kB\n"
         "MemAvailable:   " +
         std::to_string(available_kb) +
         " kB\n"
         "Buffers:           1000 kB\n";
}

FakeProbe RaspberryPi() {
  FakeProbe probe;
  probe.files["/proc/meminfo"] = Meminfo(3'884'096, 3'300'000);
  probe.files["/sys/devices/system/cpu/online"] = "0-3\n";
  return probe;
}

TEST(MeminfoTest, ParsesKilobyteFields) {
  std::string text = Meminfo(2048, 1024);
  EXPECT_THAT(ParseMeminfoField(text, "MemTotal"), IsOkAndHolds(2048 * 1024));
  EXPECT_THAT(ParseMeminfoField(text, "MemAvailable"),
              IsOkAndHolds(1024 * 1024));
  EXPECT_THAT(ParseMeminfoField(text, "SwapTotal"),
              StatusIs(absl::StatusCode::kNotFound));
  EXPECT_THAT(
      ParseMeminfoField("MemTotal: lots kB\n", "MemTotal"),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("MemTotal")));
}

TEST(MeminfoTest, FieldNameMustMatchExactly) {
  // "MemTotalX" must not be read as "MemTotal".
  EXPECT_THAT(
      ParseMeminfoField("MemTotalX: 5 kB\nMemTotal: 7 kB\n", "MemTotal"),
      IsOkAndHolds(7 * 1024));
}

TEST(CpuListTest, CountsRangesAndSingles) {
  EXPECT_THAT(ParseCpuList("0\n"), IsOkAndHolds(1));
  EXPECT_THAT(ParseCpuList("0-3"), IsOkAndHolds(4));
  EXPECT_THAT(ParseCpuList("0-1,3,5-7"), IsOkAndHolds(6));
  EXPECT_THAT(ParseCpuList("3-1"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseCpuList("a-b"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseCpuList(""), StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ArchitectureTest, MapsUnameMachineToGoNames) {
  EXPECT_EQ(GoArchitecture("x86_64"), "amd64");
  EXPECT_EQ(GoArchitecture("aarch64"), "arm64");
  EXPECT_EQ(GoArchitecture("armv7l"), "arm");
  EXPECT_EQ(GoArchitecture("armv6l"), "arm");
  EXPECT_EQ(GoArchitecture("i686"), "386");
  EXPECT_EQ(GoArchitecture("riscv64"), "riscv64");
  EXPECT_EQ(GoArchitecture("weird9000"), "weird9000");
}

TEST(DetectSystemTest, ReadsEverythingThroughTheProbe) {
  FakeProbe probe = RaspberryPi();
  absl::StatusOr<SystemInfo> info = DetectSystem(probe, "/var/lib/fleetd");
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->total_ram_bytes, 3'884'096 * int64_t{1024});
  EXPECT_EQ(info->available_ram_bytes, 3'300'000 * int64_t{1024});
  EXPECT_EQ(info->total_disk_bytes, 8 * kGiB);
  EXPECT_EQ(info->available_disk_bytes, 4 * kGiB);
  EXPECT_EQ(info->cpu_cores, 4);
  EXPECT_EQ(info->architecture, "arm64");
  EXPECT_EQ(info->machine, "aarch64");
  EXPECT_EQ(info->os, "linux");
  EXPECT_EQ(info->kernel_release, "6.1.0-test");
  EXPECT_EQ(probe.last_disk_path, "/var/lib/fleetd");
}

TEST(DetectSystemTest, FallsBackWhenMemAvailableIsMissing) {
  FakeProbe probe = RaspberryPi();
  probe.files["/proc/meminfo"] =
      "MemTotal: 1000 kB\nMemFree: 100 kB\nBuffers: 20 kB\nCached: 300 kB\n";
  absl::StatusOr<SystemInfo> info = DetectSystem(probe, "/data");
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->available_ram_bytes, (100 + 20 + 300) * 1024);
}

TEST(DetectSystemTest, CgroupLimitsLowerRamAndCores) {
  FakeProbe probe = RaspberryPi();
  probe.files["/sys/fs/cgroup/memory.max"] = "268435456\n";   // 256 MiB
  probe.files["/sys/fs/cgroup/cpu.max"] = "150000 100000\n";  // 1.5 CPUs
  absl::StatusOr<SystemInfo> info = DetectSystem(probe, "/data");
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->total_ram_bytes, 256 * kMiB);
  EXPECT_EQ(info->available_ram_bytes, 256 * kMiB);  // capped at the limit
  EXPECT_EQ(info->cpu_cores, 2);                     // rounded up
}

TEST(DetectSystemTest, UnlimitedCgroupsChangeNothing) {
  FakeProbe probe = RaspberryPi();
  probe.files["/sys/fs/cgroup/memory.max"] = "max\n";
  probe.files["/sys/fs/cgroup/cpu.max"] = "max 100000\n";
  absl::StatusOr<SystemInfo> info = DetectSystem(probe, "/data");
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->total_ram_bytes, 3'884'096 * int64_t{1024});
  EXPECT_EQ(info->cpu_cores, 4);
}

TEST(DetectSystemTest, CgroupV1Limits) {
  FakeProbe probe = RaspberryPi();
  probe.files["/sys/fs/cgroup/memory/memory.limit_in_bytes"] = "104857600\n";
  probe.files["/sys/fs/cgroup/cpu/cpu.cfs_quota_us"] = "100000\n";
  probe.files["/sys/fs/cgroup/cpu/cpu.cfs_period_us"] = "100000\n";
  absl::StatusOr<SystemInfo> info = DetectSystem(probe, "/data");
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->total_ram_bytes, 100 * kMiB);
  EXPECT_EQ(info->cpu_cores, 1);
}

TEST(DetectSystemTest, UsesSysconfWhenCpuListIsUnavailable) {
  FakeProbe probe = RaspberryPi();
  probe.files.erase("/sys/devices/system/cpu/online");
  probe.cpus = 3;
  absl::StatusOr<SystemInfo> info = DetectSystem(probe, "/data");
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->cpu_cores, 3);
}

TEST(DetectSystemTest, MissingMeminfoIsAClearError) {
  FakeProbe probe = RaspberryPi();
  probe.files.erase("/proc/meminfo");
  EXPECT_THAT(DetectSystem(probe, "/data"),
              StatusIs(absl::StatusCode::kFailedPrecondition,
                       HasSubstr("/proc/meminfo")));
  probe.files["/proc/meminfo"] = "Garbage: 1 kB\n";
  EXPECT_THAT(
      DetectSystem(probe, "/data"),
      StatusIs(absl::StatusCode::kFailedPrecondition, HasSubstr("MemTotal")));
}

// A temporary directory removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/fleetd-capability-XXXXXX";
    char* p = mkdtemp(tmpl);
    EXPECT_NE(p, nullptr);
    path_ = p != nullptr ? p : "";
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  const std::string& path() const { return path_; }

  void Write(const std::string& rel, const std::string& content) {
    std::string full = path_ + "/" + rel;
    std::string dir = full.substr(0, full.find_last_of('/'));
    std::system(("mkdir -p '" + dir + "'").c_str());
    std::ofstream(full) << content;
  }

 private:
  std::string path_;
};

TEST(RealProbeTest, ReadsFilesBelowTheInjectedRoot) {
  TempDir root;
  root.Write("proc/meminfo", Meminfo(65536, 32768));
  root.Write("sys/devices/system/cpu/online", "0-5\n");
  std::unique_ptr<SystemProbe> probe = NewRealSystemProbe(root.path() + "/");
  absl::StatusOr<SystemInfo> info = DetectSystem(*probe, root.path());
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->total_ram_bytes, 64 * kMiB);
  EXPECT_EQ(info->available_ram_bytes, 32 * kMiB);
  EXPECT_EQ(info->cpu_cores, 6);
  EXPECT_THAT(probe->ReadFile("/proc/nothing-here"),
              StatusIs(absl::StatusCode::kNotFound));
}

TEST(RealProbeTest, MeasuresTheFilesystemOfAMissingDataDirectory) {
  TempDir root;
  std::unique_ptr<SystemProbe> probe = NewRealSystemProbe();
  absl::StatusOr<DiskSpace> missing =
      probe->DiskSpaceAt(root.path() + "/not/yet/created");
  absl::StatusOr<DiskSpace> parent = probe->DiskSpaceAt(root.path());
  ASSERT_THAT(missing, IsOk());
  ASSERT_THAT(parent, IsOk());
  EXPECT_EQ(missing->total_bytes, parent->total_bytes);
  EXPECT_GT(missing->total_bytes, 0);
}

TEST(RealProbeTest, DetectsThisMachineSanely) {
  // Only sanity: the real machine's size must not matter to the suite.
  TempDir dir;
  std::unique_ptr<SystemProbe> probe = NewRealSystemProbe();
  absl::StatusOr<SystemInfo> info = DetectSystem(*probe, dir.path());
  ASSERT_THAT(info, IsOk());
  EXPECT_GT(info->total_ram_bytes, 0);
  EXPECT_LE(info->available_ram_bytes, info->total_ram_bytes);
  EXPECT_GE(info->cpu_cores, 1);
  EXPECT_GE(info->total_disk_bytes, info->available_disk_bytes);
  EXPECT_FALSE(info->architecture.empty());
  EXPECT_EQ(info->os, "linux");
}

SystemInfo Machine(int64_t ram, int64_t disk) {
  SystemInfo s;
  s.total_ram_bytes = ram;
  s.available_ram_bytes = ram;
  s.total_disk_bytes = disk;
  s.available_disk_bytes = disk;
  s.cpu_cores = 1;
  s.architecture = "arm";
  s.os = "linux";
  return s;
}

TEST(ClassifyTierTest, AppliesTheTierRuleWithStrictThresholds) {
  EXPECT_EQ(ClassifyTier(Machine(4 * kGiB, 32 * kGiB)), Tier::kFull);
  EXPECT_EQ(ClassifyTier(Machine(512 * kMiB + 1, kGiB + 1)), Tier::kFull);
  // Exactly at a threshold is not above it.
  EXPECT_EQ(ClassifyTier(Machine(512 * kMiB, 32 * kGiB)), Tier::kConstrained);
  EXPECT_EQ(ClassifyTier(Machine(4 * kGiB, kGiB)), Tier::kConstrained);
  EXPECT_EQ(ClassifyTier(Machine(64 * kMiB + 1, 10 * kMiB + 1)),
            Tier::kConstrained);
  EXPECT_EQ(ClassifyTier(Machine(64 * kMiB, 32 * kGiB)), Tier::kMinimal);
  EXPECT_EQ(ClassifyTier(Machine(4 * kGiB, 10 * kMiB)), Tier::kMinimal);
  EXPECT_EQ(ClassifyTier(Machine(16 * kMiB, 0)), Tier::kMinimal);
}

TEST(ProfileTest, DefaultsFollowTheTierTable) {
  AgentProfile full = DefaultProfile(Tier::kFull);
  EXPECT_EQ(full.storage_mode, StorageMode::kSqlite);
  EXPECT_EQ(full.storage_max_bytes, 100'000'000);
  EXPECT_EQ(full.sync_interval, absl::Minutes(5));
  EXPECT_EQ(full.compression, Compression::kZstd);
  EXPECT_EQ(full.batch_size, 1000);

  AgentProfile constrained = DefaultProfile(Tier::kConstrained);
  EXPECT_EQ(constrained.storage_mode, StorageMode::kSqlite);
  EXPECT_EQ(constrained.storage_max_bytes, 5'000'000);
  EXPECT_EQ(constrained.sync_interval, absl::Minutes(1));
  EXPECT_EQ(constrained.compression, Compression::kGzip);
  EXPECT_EQ(constrained.batch_size, 100);

  AgentProfile minimal = DefaultProfile(Tier::kMinimal);
  EXPECT_EQ(minimal.storage_mode, StorageMode::kMemory);
  EXPECT_GT(minimal.memory_buffer_bytes, 0);
  EXPECT_EQ(minimal.sync_interval, absl::Seconds(10));
  EXPECT_EQ(minimal.compression, Compression::kNone);
  EXPECT_EQ(minimal.batch_size, 10);
}

TEST(ProfileTest, DetectedTierWithoutOverrides) {
  absl::StatusOr<AgentProfile> p =
      ResolveProfile(Machine(128 * kMiB, 64 * kMiB), MapEnv({}));
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ(p->tier, Tier::kConstrained);
  EXPECT_FALSE(p->tier_forced);
  EXPECT_EQ(p->batch_size, 100);
  EXPECT_EQ(p->system.total_ram_bytes, 128 * kMiB);
}

TEST(ProfileTest, EnvironmentOverridesTheTierDefaults) {
  absl::StatusOr<AgentProfile> p =
      ResolveProfile(Machine(4 * kGiB, 32 * kGiB),
                     MapEnv({{"SYNC_INTERVAL", "60s"},
                             {"BATCH_SIZE", "250"},
                             {"COMPRESSION_TYPE", "gzip"},
                             {"MAX_RETRIES", "7"},
                             {"FLEET_STORAGE_MAX_BYTES", "20MB"}}));
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ(p->tier, Tier::kFull);
  EXPECT_EQ(p->sync_interval, absl::Seconds(60));
  EXPECT_EQ(p->batch_size, 250);
  EXPECT_EQ(p->compression, Compression::kGzip);
  EXPECT_EQ(p->max_retries, 7);
  EXPECT_EQ(p->storage_max_bytes, 20'000'000);
}

TEST(ProfileTest, ForcedTierTakesThatTiersDefaults) {
  absl::StatusOr<AgentProfile> p = ResolveProfile(
      Machine(4 * kGiB, 32 * kGiB), MapEnv({{"FLEET_TIER", "3"}}));
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ(p->tier, Tier::kMinimal);
  EXPECT_TRUE(p->tier_forced);
  EXPECT_EQ(p->storage_mode, StorageMode::kMemory);
  EXPECT_EQ(p->sync_interval, absl::Seconds(10));
  EXPECT_EQ(p->batch_size, 10);

  // Overrides still apply on top of a forced tier, and names work too.
  p = ResolveProfile(Machine(16 * kMiB, 0),
                     MapEnv({{"FLEET_TIER", "full"}, {"SYNC_INTERVAL", "5m"}}));
  ASSERT_THAT(p, IsOk());
  EXPECT_EQ(p->tier, Tier::kFull);
  EXPECT_EQ(p->compression, Compression::kZstd);
  EXPECT_EQ(p->sync_interval, absl::Minutes(5));
}

TEST(ProfileTest, InvalidValuesNameTheVariable) {
  SystemInfo m = Machine(4 * kGiB, 32 * kGiB);
  struct Case {
    const char* var;
    const char* value;
  };
  for (const Case& c :
       {Case{"SYNC_INTERVAL", "soon"}, Case{"SYNC_INTERVAL", "0s"},
        Case{"BATCH_SIZE", "0"}, Case{"BATCH_SIZE", "many"},
        Case{"COMPRESSION_TYPE", "lz4"}, Case{"MAX_RETRIES", "-1"},
        Case{"FLEET_TIER", "4"}, Case{"FLEET_STORAGE_MAX_BYTES", "1KB"}}) {
    SCOPED_TRACE(std::string(c.var) + "=" + c.value);
    EXPECT_THAT(ResolveProfile(m, MapEnv({{c.var, c.value}})),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(c.var)));
  }
  EXPECT_THAT(ResolveProfile(m, MapEnv({{"FLEET_TIER", "3"},
                                        {"FLEET_MEMORY_BUFFER_BYTES", "100"}})),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("FLEET_MEMORY_BUFFER_BYTES")));
}

TEST(CapabilityProtoTest, MapsTheProfileOntoTheWireMessage) {
  FakeProbe probe = RaspberryPi();
  absl::StatusOr<SystemInfo> system = DetectSystem(probe, "/data");
  ASSERT_THAT(system, IsOk());
  absl::StatusOr<AgentProfile> p = ResolveProfile(*system, MapEnv({}));
  ASSERT_THAT(p, IsOk());
  v1::SyncDeviceCapability cap = ToCapabilityProto(*p);
  EXPECT_EQ(cap.tier(), 1);
  EXPECT_EQ(cap.total_ram(), 3'884'096 * int64_t{1024});
  EXPECT_EQ(cap.available_ram(), 3'300'000 * int64_t{1024});
  EXPECT_EQ(cap.total_disk(), 8 * kGiB);
  EXPECT_EQ(cap.available_disk(), 4 * kGiB);
  EXPECT_EQ(cap.cpu_cores(), 4);
  EXPECT_EQ(cap.architecture(), "arm64");
  EXPECT_EQ(cap.os(), "linux");
  EXPECT_TRUE(cap.has_sqlite());
  EXPECT_EQ(cap.local_storage_size(), 100'000'000);
  EXPECT_EQ(cap.max_metrics_in_memory(), 1000);
  EXPECT_TRUE(cap.has_network());

  AgentProfile minimal = DefaultProfile(Tier::kMinimal);
  minimal.memory_buffer_bytes = 96 * 1000;
  cap = ToCapabilityProto(minimal);
  EXPECT_EQ(cap.tier(), 3);
  EXPECT_FALSE(cap.has_sqlite());
  EXPECT_EQ(cap.local_storage_size(), 0);
  EXPECT_EQ(cap.max_metrics_in_memory(), 1000);
}

}  // namespace
}  // namespace fleetd::agent
