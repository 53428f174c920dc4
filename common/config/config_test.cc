#include "common/config/config.h"

#include <string>
#include <vector>

#include "CLI/CLI.hpp"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::IsOkAndHolds;
using ::fleetd::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

TEST(ParseTest, Durations) {
  EXPECT_THAT(ParseDurationSetting("X", "60s"),
              IsOkAndHolds(absl::Seconds(60)));
  EXPECT_THAT(ParseDurationSetting("X", "5m"), IsOkAndHolds(absl::Minutes(5)));
  EXPECT_THAT(ParseDurationSetting("X", "1h30m"),
              IsOkAndHolds(absl::Minutes(90)));
  EXPECT_THAT(ParseDurationSetting("X", "250ms"),
              IsOkAndHolds(absl::Milliseconds(250)));
  EXPECT_THAT(ParseDurationSetting("X", "30"), IsOkAndHolds(absl::Seconds(30)));
  EXPECT_THAT(ParseDurationSetting("X", "7d"),
              IsOkAndHolds(absl::Hours(24 * 7)));
  EXPECT_THAT(ParseDurationSetting("X", "1d12h"),
              IsOkAndHolds(absl::Hours(36)));
  EXPECT_THAT(ParseDurationSetting("X", "xd"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseDurationSetting("X", "7dd"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseDurationSetting("SYNC_INTERVAL", "soon"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("SYNC_INTERVAL"), HasSubstr("soon"))));
  EXPECT_THAT(ParseDurationSetting("X", "-5s"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseDurationSetting("X", ""),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseDurationSetting("X", "inf"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ParseTest, ByteSizes) {
  EXPECT_THAT(ParseByteSizeSetting("X", "1048576"), IsOkAndHolds(1048576));
  EXPECT_THAT(ParseByteSizeSetting("X", "5MB"), IsOkAndHolds(5'000'000));
  EXPECT_THAT(ParseByteSizeSetting("X", "100MiB"), IsOkAndHolds(100 << 20));
  EXPECT_THAT(ParseByteSizeSetting("X", "2gb"), IsOkAndHolds(2'000'000'000));
  EXPECT_THAT(ParseByteSizeSetting("X", "512 KiB"), IsOkAndHolds(512 << 10));
  EXPECT_THAT(ParseByteSizeSetting("QUOTA", "lots"),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("QUOTA")));
  EXPECT_THAT(ParseByteSizeSetting("X", "-1"),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseByteSizeSetting("X", "99999999999999GB"),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(ParseTest, IntsAndBools) {
  EXPECT_THAT(ParseIntSetting("X", "7", 1, 10), IsOkAndHolds(7));
  EXPECT_THAT(ParseIntSetting("BATCH_SIZE", "0", 1, 10),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("BATCH_SIZE"), HasSubstr("1 to 10"))));
  EXPECT_THAT(ParseIntSetting("X", "3x", 1, 10),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(ParseBoolSetting("X", "yes"), IsOkAndHolds(true));
  EXPECT_THAT(ParseBoolSetting("X", "0"), IsOkAndHolds(false));
  EXPECT_THAT(ParseBoolSetting("X", "True"), IsOkAndHolds(true));
  EXPECT_THAT(ParseBoolSetting("FLEET_INSECURE", "maybe"),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("FLEET_INSECURE")));
}

struct Config {
  std::string addr = "0.0.0.0:50051";
  int64_t batch = 100;
  absl::Duration interval = absl::Minutes(1);
  bool insecure = false;
  std::string compression = "gzip";
  int64_t quota = 5'000'000;
};

void Declare(Settings& s, Config& c) {
  s.String("FLEET_GRPC_ADDR", "grpc-addr", "gRPC listen address", &c.addr)
      .Int("BATCH_SIZE", "batch-size", "records per batch", &c.batch, 1, 100000)
      .Duration("SYNC_INTERVAL", "sync-interval", "time between syncs",
                &c.interval)
      .Bool("FLEET_INSECURE", "insecure", "plaintext", &c.insecure)
      .Choice("COMPRESSION_TYPE", "compression", "codec", &c.compression,
              {"none", "gzip", "zstd"})
      .Bytes("STORAGE_QUOTA", "storage-quota", "bytes", &c.quota);
}

absl::Status ParseArgs(Settings& s, std::vector<std::string> args,
                       const EnvLookup& env) {
  CLI::App app("test");
  s.AddFlags(&app);
  std::vector<std::string> reversed(args.rbegin(), args.rend());
  try {
    app.parse(reversed);
  } catch (const CLI::ParseError& e) {
    return absl::InvalidArgumentError(e.what());
  }
  return s.Resolve(env);
}

TEST(SettingsTest, DefaultsStayWhenNothingIsSet) {
  Settings s;
  Config c;
  Declare(s, c);
  ASSERT_THAT(ParseArgs(s, {}, MapEnv({})), IsOk());
  EXPECT_EQ(c.addr, "0.0.0.0:50051");
  EXPECT_EQ(c.batch, 100);
  EXPECT_EQ(c.interval, absl::Minutes(1));
  EXPECT_FALSE(s.WasSet("BATCH_SIZE"));
}

TEST(SettingsTest, EnvironmentOverridesDefaultsAndFlagsOverrideEnvironment) {
  Settings s;
  Config c;
  Declare(s, c);
  ASSERT_THAT(ParseArgs(s, {"--batch-size", "10", "--compression=zstd"},
                        MapEnv({{"BATCH_SIZE", "1000"},
                                {"SYNC_INTERVAL", "5m"},
                                {"FLEET_INSECURE", "1"},
                                {"STORAGE_QUOTA", "100MB"}})),
              IsOk());
  EXPECT_EQ(c.batch, 10);
  EXPECT_EQ(c.interval, absl::Minutes(5));
  EXPECT_TRUE(c.insecure);
  EXPECT_EQ(c.compression, "zstd");
  EXPECT_EQ(c.quota, 100'000'000);
  EXPECT_TRUE(s.WasSet("BATCH_SIZE"));
  EXPECT_FALSE(s.WasSet("FLEET_GRPC_ADDR"));
}

TEST(SettingsTest, BadValuesNameTheirSource) {
  {
    Settings s;
    Config c;
    Declare(s, c);
    EXPECT_THAT(ParseArgs(s, {}, MapEnv({{"SYNC_INTERVAL", "often"}})),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("SYNC_INTERVAL")));
  }
  {
    Settings s;
    Config c;
    Declare(s, c);
    EXPECT_THAT(ParseArgs(s, {"--batch-size", "-3"}, MapEnv({})),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("--batch-size")));
  }
  {
    Settings s;
    Config c;
    Declare(s, c);
    EXPECT_THAT(
        ParseArgs(s, {}, MapEnv({{"COMPRESSION_TYPE", "lz4"}})),
        StatusIs(absl::StatusCode::kInvalidArgument,
                 AllOf(HasSubstr("COMPRESSION_TYPE"), HasSubstr("zstd"))));
  }
}

TEST(SettingsTest, InfosListEverySetting) {
  Settings s;
  Config c;
  Declare(s, c);
  auto infos = s.infos();
  ASSERT_EQ(infos.size(), 6u);
  EXPECT_EQ(infos[0].env, "FLEET_GRPC_ADDR");
  EXPECT_EQ(infos[0].flag, "grpc-addr");
  EXPECT_EQ(infos[0].default_text, "0.0.0.0:50051");
  EXPECT_EQ(infos[2].default_text, "1m");
}

}  // namespace
}  // namespace fleetd
