#include "server/app/server_config.h"

#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::server {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;

ServerConfig Loaded(std::map<std::string, std::string> env,
                    absl::Status* status) {
  ServerConfig c;
  Settings s;
  DeclareServerSettings(s, c);
  *status = s.Resolve(MapEnv(std::move(env)));
  return c;
}

std::map<std::string, std::string> Base() {
  return {{"FLEET_INSECURE", "1"},
          {"FLEET_POSTGRES_DSN", "host=127.0.0.1"},
          {"FLEET_VICTORIAMETRICS_URL", "http://127.0.0.1:8428"},
          {"FLEET_LOKI_URL", "http://127.0.0.1:3100"},
          {"FLEET_CLICKHOUSE_URL", "http://127.0.0.1:8123"}};
}

TEST(ServerConfigTest, DefaultsMatchTheDocumentedOnes) {
  absl::Status s;
  ServerConfig c = Loaded({}, &s);
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(c.grpc_addr, "0.0.0.0:50051");
  EXPECT_EQ(c.http_addr, "0.0.0.0:8080");
  EXPECT_EQ(c.admin_addr, "127.0.0.1:9090");
  EXPECT_FALSE(c.insecure);
  EXPECT_EQ(c.grpc_workers, 128);
  EXPECT_EQ(c.grpc_queue, 2048);
  EXPECT_EQ(c.front_end, "door");
}

TEST(ServerConfigTest, FrontEndChoiceAndItsAddresses) {
  absl::Status s;
  auto env = Base();
  // The door may serve a single address.
  env["FLEET_HTTP_ADDR"] = "";
  ServerConfig c = Loaded(env, &s);
  ASSERT_THAT(s, IsOk());
  EXPECT_THAT(ValidateServerConfig(c), IsOk());
  // ... but needs one.
  env["FLEET_GRPC_ADDR"] = "";
  c = Loaded(env, &s);
  ASSERT_THAT(s, IsOk());
  EXPECT_THAT(ValidateServerConfig(c),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("no listen address")));
  env["FLEET_DOOR_ADDR"] = "127.0.0.1:8443";
  c = Loaded(env, &s);
  EXPECT_THAT(ValidateServerConfig(c), IsOk());
  // The legacy pair needs both of its addresses.
  env["FLEET_FRONT_END"] = "legacy";
  c = Loaded(env, &s);
  ASSERT_THAT(s, IsOk());
  EXPECT_THAT(ValidateServerConfig(c),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("FLEET_FRONT_END=legacy")));
  env.erase("FLEET_GRPC_ADDR");
  env.erase("FLEET_HTTP_ADDR");
  c = Loaded(env, &s);
  EXPECT_THAT(ValidateServerConfig(c), IsOk());
  env["FLEET_FRONT_END"] = "nginx";
  Loaded(env, &s);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument,
                          HasSubstr("FLEET_FRONT_END")));
}

TEST(ServerConfigTest, GrpcWorkersAndQueueFromTheEnvironment) {
  absl::Status s;
  auto env = Base();
  env["FLEET_GRPC_WORKERS"] = "32";
  env["FLEET_GRPC_QUEUE"] = "0";
  ServerConfig c = Loaded(env, &s);
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(c.grpc_workers, 32);
  EXPECT_EQ(c.grpc_queue, 0);
  env["FLEET_GRPC_WORKERS"] = "0";
  Loaded(env, &s);
  EXPECT_FALSE(s.ok());
}

TEST(ServerConfigTest, RefusesToStartWithoutTlsUnlessInsecureIsExplicit) {
  absl::Status s;
  auto env = Base();
  env.erase("FLEET_INSECURE");
  ServerConfig c = Loaded(env, &s);
  ASSERT_THAT(s, IsOk());
  EXPECT_THAT(ValidateServerConfig(c),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("FLEET_TLS_CERT"),
                             HasSubstr("FLEET_INSECURE"))));
  env["FLEET_TLS_CERT"] = "/etc/fleetd/cert.pem";
  c = Loaded(env, &s);
  EXPECT_THAT(
      ValidateServerConfig(c),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("FLEET_TLS_KEY")));
  env["FLEET_TLS_KEY"] = "/etc/fleetd/key.pem";
  c = Loaded(env, &s);
  EXPECT_THAT(ValidateServerConfig(c), IsOk());
  c = Loaded(Base(), &s);
  EXPECT_THAT(ValidateServerConfig(c), IsOk());
}

TEST(ServerConfigTest, BadValuesNameTheVariable) {
  absl::Status s;
  auto env = Base();
  env["FLEET_INSECURE"] = "perhaps";
  Loaded(env, &s);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument,
                          HasSubstr("FLEET_INSECURE")));
  env = Base();
  env["FLEET_MAX_MESSAGE_BYTES"] = "huge";
  Loaded(env, &s);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument,
                          HasSubstr("FLEET_MAX_MESSAGE_BYTES")));
}

TEST(ServerConfigTest, RoutesNeedTheirBackendsAndMatchingKinds) {
  absl::Status s;
  auto env = Base();
  env.erase("FLEET_LOKI_URL");
  ServerConfig c = Loaded(env, &s);
  EXPECT_THAT(ValidateServerConfig(c),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("FLEET_ROUTE_LOGS"),
                             HasSubstr("FLEET_LOKI_URL"))));
  env["FLEET_ROUTE_LOGS"] = "clickhouse";
  c = Loaded(env, &s);
  EXPECT_THAT(ValidateServerConfig(c), IsOk())
      << "logs may go to ClickHouse instead";
  env["FLEET_ROUTE_METRICS"] = "victoriametrics,clickhouse";
  c = Loaded(env, &s);
  EXPECT_THAT(ValidateServerConfig(c), IsOk());
  env["FLEET_ROUTE_METRICS"] = "loki";
  c = Loaded(env, &s);
  EXPECT_THAT(ValidateServerConfig(c),
              StatusIs(absl::StatusCode::kInvalidArgument));
  env["FLEET_ROUTE_METRICS"] = "elasticsearch";
  c = Loaded(env, &s);
  EXPECT_THAT(
      ValidateServerConfig(c),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("elasticsearch")));
}

TEST(ServerConfigTest, LedgerSettingsDefaultAndParse) {
  absl::Status s;
  ServerConfig c = Loaded(Base(), &s);
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(c.ledger_cache_keys, 1'000'000);
  EXPECT_EQ(c.ledger_cache_window, 32);
  EXPECT_EQ(c.ledger_retention, absl::Hours(168));
  EXPECT_EQ(c.ledger_compact_interval, absl::Hours(1));
  auto env = Base();
  env["FLEET_LEDGER_CACHE_KEYS"] = "0";
  env["FLEET_LEDGER_RETENTION"] = "30d";
  c = Loaded(env, &s);
  ASSERT_THAT(s, IsOk());
  EXPECT_EQ(c.ledger_cache_keys, 0);
  EXPECT_EQ(c.ledger_retention, absl::Hours(720));
  EXPECT_THAT(ValidateServerConfig(c), IsOk());
  env["FLEET_LEDGER_COMPACT_INTERVAL"] = "0s";
  c = Loaded(env, &s);
  ASSERT_THAT(s, IsOk());
  EXPECT_THAT(ValidateServerConfig(c),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("FLEET_LEDGER_COMPACT_INTERVAL")));
}

}  // namespace
}  // namespace fleetd::server
