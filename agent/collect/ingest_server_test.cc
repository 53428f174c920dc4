#include "agent/collect/ingest_server.h"

#include <memory>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "agent/collect/collect_test_util.h"
#include "common/clock/clock.h"
#include "common/config/config.h"
#include "common/metrics/metrics.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"

namespace fleetd::agent {
namespace {

using collect_testing::AllLogs;
using collect_testing::AllMetrics;
using collect_testing::FlakyStorage;
using collect_testing::NewTestStorage;
using ::testing::HasSubstr;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

class IngestServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    IngestServerOptions options;
    options.address = "127.0.0.1:0";
    options.max_body_bytes = 4096;
    auto server = IngestServer::Start(options, &storage_, &clock_, &registry_);
    ASSERT_THAT(server, testing::IsOk());
    server_ = *std::move(server);
    ASSERT_GT(server_->port(), 0);
    client_ = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    client_->set_read_timeout(30, 0);
  }

  httplib::Result Post(const std::string& path, const std::string& body) {
    return client_->Post(path.c_str(), body, "text/plain");
  }

  double Rejected(const std::string& kind, const std::string& reason) {
    return registry_
        .CounterFamily("fleetd_ingest_requests_rejected_total", "",
                       {"kind", "reason"})
        .WithLabels({kind, reason})
        .Value();
  }
  double Accepted(const std::string& kind) {
    return registry_
        .CounterFamily("fleetd_ingest_records_accepted_total", "", {"kind"})
        .WithLabels({kind})
        .Value();
  }

  SimulatedClock clock_{absl::FromUnixSeconds(1'700'000'000)};
  std::unique_ptr<Storage> memory_ = NewTestStorage(&clock_);
  FlakyStorage storage_{memory_.get()};
  metrics::Registry registry_;
  std::unique_ptr<IngestServer> server_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(IngestServerTest, GoodMetricsAreStoredInOneAppend) {
  auto res = Post("/v1/metrics",
                  "# TYPE temp gauge\n"
                  "temp{room=\"a\\\"b\\\\c\\nd\"} 21.5\n"
                  "up 1 1600000000000\n");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 204);
  std::vector<v1::Metric> stored = AllMetrics(*memory_);
  ASSERT_EQ(stored.size(), 2u);
  EXPECT_EQ(stored[0].name(), "temp");
  EXPECT_EQ(stored[0].value(), 21.5);
  EXPECT_THAT(stored[0].labels(),
              UnorderedElementsAre(Pair("room", "a\"b\\c\nd")));
  // No timestamp: the time the request arrived.
  EXPECT_EQ(stored[0].timestamp().seconds(), 1'700'000'000);
  EXPECT_EQ(stored[1].timestamp().seconds(), 1'600'000'000);
  EXPECT_EQ(storage_.appends(), 1);
  EXPECT_EQ(Accepted("metrics"), 2);
}

TEST_F(IngestServerTest, GoodLogsAreStored) {
  auto res = Post(
      "/v1/logs",
      R"({"message":"started","level":"info","source":"app"})"
      "\n"
      R"({"message":"disk full","level":"error","fields":{"disk":"sda"},"timestamp":"2024-05-01T10:00:00Z"})"
      "\n");
  ASSERT_TRUE(res) << httplib::to_string(res.error());
  EXPECT_EQ(res->status, 204);
  std::vector<v1::LogEntry> stored = AllLogs(*memory_);
  ASSERT_EQ(stored.size(), 2u);
  EXPECT_EQ(stored[0].message(), "started");
  EXPECT_EQ(stored[0].source(), "app");
  EXPECT_EQ(stored[1].level(), "error");
  EXPECT_THAT(stored[1].fields(), UnorderedElementsAre(Pair("disk", "sda")));
  EXPECT_EQ(stored[1].timestamp().seconds(), 1'714'557'600);
  EXPECT_EQ(Accepted("logs"), 2);
}

TEST_F(IngestServerTest, OneBadMetricLineRejectsTheWholeRequest) {
  auto res = Post("/v1/metrics", "a 1\nb 2\nc{x=\"1\"} NaN\nd 4\n");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_THAT(res->body, HasSubstr("line 3"));
  EXPECT_TRUE(AllMetrics(*memory_).empty());
  EXPECT_EQ(storage_.appends(), 0);
  EXPECT_EQ(Rejected("metrics", "bad_request"), 1);
}

TEST_F(IngestServerTest, OneBadLogLineRejectsTheWholeRequest) {
  auto res =
      Post("/v1/logs",
           "{\"message\":\"a\"}\n{\"message\":\"b\"}\n{\"message\":\"c\"}\n"
           "{\"message\":\"d\",\"level\":\"loud\"}\n");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400);
  EXPECT_THAT(res->body, HasSubstr("line 4"));
  EXPECT_THAT(res->body, HasSubstr("unknown level"));
  EXPECT_TRUE(AllLogs(*memory_).empty());
  EXPECT_EQ(Rejected("logs", "bad_request"), 1);
}

TEST_F(IngestServerTest, OversizeBodyIs413AndNothingStored) {
  std::string body;
  while (body.size() <= 4096) body += "some_metric_name 1\n";
  auto res = Post("/v1/metrics", body);
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 413);
  EXPECT_TRUE(AllMetrics(*memory_).empty());
  EXPECT_EQ(Rejected("metrics", "too_large"), 1);

  // A chunked body (no Content-Length) is counted as it arrives.
  httplib::Client chunked("127.0.0.1", server_->port());
  size_t sent = 0;
  auto res2 = chunked.Post(
      "/v1/logs",
      [&](size_t, httplib::DataSink& sink) {
        std::string line = "{\"message\":\"" + std::string(100, 'x') + "\"}\n";
        if (sent > 64 * 1024) {
          sink.done();
          return true;
        }
        sent += line.size();
        return sink.write(line.data(), line.size());
      },
      "application/x-ndjson");
  if (res2) {  // the server may close before the client finished sending
    EXPECT_EQ(res2->status, 413);
  }
  EXPECT_TRUE(
      testing::WaitFor([&] { return Rejected("logs", "too_large") == 1; }));
  EXPECT_TRUE(AllLogs(*memory_).empty());

  // The server still serves after both.
  auto ok = Post("/v1/metrics", "small 1\n");
  ASSERT_TRUE(ok);
  EXPECT_EQ(ok->status, 204);
}

TEST_F(IngestServerTest, RetryableStoreFailureIs503) {
  storage_.FailAppends(absl::UnavailableError("busy"));
  auto res = Post("/v1/metrics", "m 1\n");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 503);
  EXPECT_EQ(res->get_header_value("Retry-After"), "1");
  EXPECT_EQ(Rejected("metrics", "store_unavailable"), 1);

  storage_.FailAppends(absl::DataLossError("corrupt"));
  res = Post("/v1/logs", "{\"message\":\"x\"}\n");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 500);
  EXPECT_EQ(Rejected("logs", "store_error"), 1);
}

TEST_F(IngestServerTest, WrongMethodAndPath) {
  auto get = client_->Get("/v1/metrics");
  ASSERT_TRUE(get);
  EXPECT_EQ(get->status, 405);
  EXPECT_EQ(get->get_header_value("Allow"), "POST");
  auto put = client_->Put("/v1/logs", "x", "text/plain");
  ASSERT_TRUE(put);
  EXPECT_EQ(put->status, 405);
  auto other = Post("/v1/events", "x");
  ASSERT_TRUE(other);
  EXPECT_EQ(other->status, 404);
}

TEST_F(IngestServerTest, EmptyBodyIsNoContent) {
  auto res = Post("/v1/metrics", "# nothing\n");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 204);
  EXPECT_EQ(storage_.appends(), 0);
}

TEST(IngestServerStartTest, BadAddressesAndBusyPort) {
  SimulatedClock clock;
  auto storage = NewTestStorage(&clock);
  IngestServerOptions options;
  options.address = "no-port";
  EXPECT_THAT(IngestServer::Start(options, storage.get(), &clock, nullptr),
              testing::StatusIs(absl::StatusCode::kInvalidArgument,
                                HasSubstr("FLEET_INGEST_ADDR")));
  options.address = "127.0.0.1:70000";
  EXPECT_THAT(IngestServer::Start(options, storage.get(), &clock, nullptr),
              testing::StatusIs(absl::StatusCode::kInvalidArgument));

  options.address = "127.0.0.1:0";
  auto first = IngestServer::Start(options, storage.get(), &clock, nullptr);
  ASSERT_THAT(first, testing::IsOk());
  options.address = "127.0.0.1:" + std::to_string((*first)->port());
  EXPECT_THAT(IngestServer::Start(options, storage.get(), &clock, nullptr),
              testing::StatusIs(absl::StatusCode::kUnavailable));
  (*first)->Stop();
  (*first)->Stop();
}

TEST(IngestServerStartTest, SettingsDeclareTheAddress) {
  IngestServerOptions options;
  Settings settings;
  AddIngestSettings(settings, &options);
  ASSERT_THAT(
      settings.Resolve(MapEnv({{"FLEET_INGEST_ADDR", "127.0.0.1:9300"},
                               {"FLEET_INGEST_MAX_BODY_BYTES", "2MiB"}})),
      testing::IsOk());
  EXPECT_EQ(options.address, "127.0.0.1:9300");
  EXPECT_EQ(options.max_body_bytes, 2 << 20);
  IngestServerOptions defaults;
  EXPECT_EQ(defaults.address, "127.0.0.1:9200");
}

}  // namespace
}  // namespace fleetd::agent
