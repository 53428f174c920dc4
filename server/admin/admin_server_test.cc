#include "server/admin/admin_server.h"

#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"

namespace fleetd::server {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::testing::HasSubstr;

TEST(AdminServerTest, ServesMetricsHealthAndReadiness) {
  metrics::Registry registry;
  registry.GetCounter("fleetd_test_total", "A test counter.").Increment(5);
  bool backend_up = true;
  auto server = AdminServer::Start(
      "127.0.0.1:0", &registry,
      {{"postgres", [] { return absl::OkStatus(); }},
       {"victoriametrics", [&backend_up] {
          return backend_up ? absl::OkStatus()
                            : absl::UnavailableError("connection refused");
        }}});
  ASSERT_THAT(server, IsOk());
  httplib::Client client("127.0.0.1", (*server)->port());
  auto metrics = client.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_EQ(metrics->status, 200);
  EXPECT_THAT(metrics->body, HasSubstr("fleetd_test_total 5\n"));
  EXPECT_THAT(metrics->get_header_value("Content-Type"),
              HasSubstr("text/plain"));
  auto health = client.Get("/healthz");
  ASSERT_TRUE(health);
  EXPECT_EQ(health->status, 200);
  auto ready = client.Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200);
  backend_up = false;
  ready = client.Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 503);
  EXPECT_THAT(ready->body, HasSubstr("victoriametrics: UNAVAILABLE"));
  EXPECT_THAT(ready->body, HasSubstr("postgres: ok"));
}

TEST(AdminServerTest, BadAddressesNameTheSetting) {
  metrics::Registry registry;
  EXPECT_THAT(AdminServer::Start("nonsense", &registry, {}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("FLEET_ADMIN_ADDR")));
  EXPECT_THAT(AdminServer::Start("127.0.0.1:99999", &registry, {}),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("FLEET_ADMIN_ADDR")));
}

}  // namespace
}  // namespace fleetd::server
