// End to end through the real server: gRPC and Connect front ends → core → real
// PostgreSQL, VictoriaMetrics and ClickHouse (and a Loki push receiver),
// reading back what each backend stored.
#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "common/codec/codec.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "fleetd/v1/sync.grpc.pb.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "server/app/server_app.h"
#include "server/rpc/testing/grpc_health_client.h"
#include "server/store/pg_pool.h"
#include "server/store/pg_store.h"
#include "tests/e2e/backend_stack.h"

namespace fleetd {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::WaitFor;
using ::testing::HasSubstr;

// The stack, shared by every test in this binary.
struct Stack {
  std::unique_ptr<testing::BackendStack> backends;
  testing::PostgresFixture* pg = nullptr;
  testing::VictoriaMetricsFixture* vm = nullptr;
  testing::ClickHouseFixture* ch = nullptr;
  testing::LokiReceiver* loki = nullptr;
  std::unique_ptr<server::ServerApp> app;
  std::unique_ptr<server::PgPool> pool;
  std::unique_ptr<server::PgStore> store;
  std::shared_ptr<grpc::Channel> channel;
  std::unique_ptr<v1::SyncService::Stub> stub;
};

Stack* stack = nullptr;

class ServerE2eTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    stack = new Stack();
    auto backends = testing::StartBackendStack("fleet_e2e");
    ASSERT_THAT(backends, IsOk());
    stack->backends = *std::move(backends);
    stack->pg = stack->backends->pg;
    stack->vm = stack->backends->vm;
    stack->ch = stack->backends->ch;
    stack->loki = stack->backends->loki.get();
    const std::string dsn = stack->backends->dsn;
    server::ServerConfig c = testing::LoopbackServerConfig(*stack->backends);
    c.route_metrics = "victoriametrics,clickhouse";
    c.max_message_bytes = 1 << 20;
    auto app = server::ServerApp::Start(c);
    ASSERT_THAT(app, IsOk());
    stack->app = *std::move(app);
    auto pool = server::PgPool::Connect({.dsn = dsn, .size = 2});
    ASSERT_THAT(pool, IsOk());
    stack->pool = *std::move(pool);
    stack->store = std::make_unique<server::PgStore>(stack->pool.get());
    stack->channel =
        grpc::CreateChannel(absl::StrCat("127.0.0.1:", stack->app->grpc_port()),
                            grpc::InsecureChannelCredentials());
    stack->stub = v1::SyncService::NewStub(stack->channel);
  }

  static void TearDownTestSuite() {
    if (stack != nullptr && stack->app != nullptr) stack->app->Shutdown();
    delete stack;
    stack = nullptr;
  }

  // A new device with its own key.
  static std::string NewDevice(const std::string& device,
                               const std::string& org = "org-e2e") {
    auto key = stack->store->CreateKey(device, org);
    EXPECT_THAT(key, IsOk());
    return key.ok() ? key->api_key : "";
  }

  static v1::SyncMetricsRequest Metrics(int64_t seq, const std::string& name,
                                        int n) {
    v1::SyncMetricsRequest r;
    r.mutable_metadata()->set_sequence_number(seq);
    int64_t now_ms = absl::ToUnixMillis(absl::Now());
    for (int i = 0; i < n; ++i) {
      v1::Metric* m = r.mutable_batch()->add_metrics();
      m->set_name(name);
      m->set_value(i);
      int64_t ms = now_ms - (n - i) * 1000;
      m->mutable_timestamp()->set_seconds(ms / 1000);
      m->mutable_timestamp()->set_nanos(static_cast<int32_t>(ms % 1000) *
                                        1'000'000);
      (*m->mutable_labels())["i"] = std::to_string(i);
    }
    return r;
  }

  // `verdict`, when given, receives the `fleetd-verdict` trailer ("" if
  // none).
  static grpc::Status CallMetrics(const std::string& key,
                                  const v1::SyncMetricsRequest& r,
                                  v1::SyncMetricsResponse* out,
                                  std::string* verdict = nullptr) {
    grpc::ClientContext ctx;
    if (!key.empty()) ctx.AddMetadata("x-api-key", key);
    ctx.set_deadline(std::chrono::system_clock::now() +
                     std::chrono::seconds(20));
    grpc::Status s = stack->stub->SyncMetrics(&ctx, r, out);
    if (verdict != nullptr) {
      verdict->clear();
      auto it = ctx.GetServerTrailingMetadata().find("fleetd-verdict");
      if (it != ctx.GetServerTrailingMetadata().end()) {
        verdict->assign(it->second.data(), it->second.size());
      }
    }
    return s;
  }

  // Number of samples VictoriaMetrics holds for metric `name`.
  static size_t VmSamples(const std::string& name) {
    return testing::VmCounts(*stack->vm, name).second;
  }

  static int ChCount(const std::string& sql) {
    auto out = stack->ch->Query(sql);
    EXPECT_THAT(out, IsOk());
    return out.ok() ? std::atoi(out->c_str()) : -1;
  }

  static httplib::Client Connect() {
    httplib::Client c("127.0.0.1", stack->app->http_port());
    c.set_read_timeout(20, 0);
    return c;
  }
};

TEST_F(ServerE2eTest, MetricsOverGrpcReachVictoriaMetricsAndClickHouseOnce) {
  std::string key = NewDevice("e2e-m1");
  auto req = Metrics(1, "e2e_grpc_metric", 5);
  v1::SyncMetricsResponse resp;
  ASSERT_TRUE(CallMetrics(key, req, &resp).ok());
  EXPECT_TRUE(resp.success());
  EXPECT_EQ(resp.last_sequence_ack(), 1);
  ASSERT_TRUE(WaitFor([] { return VmSamples("e2e_grpc_metric") == 5; }));
  // Retried batch: acknowledged, marked duplicate, not written again anywhere.
  v1::SyncMetricsResponse again;
  ASSERT_TRUE(CallMetrics(key, req, &again).ok());
  EXPECT_TRUE(again.duplicate());
  EXPECT_EQ(VmSamples("e2e_grpc_metric"), 5u);
  EXPECT_EQ(ChCount("SELECT count() FROM fleet_e2e.metrics FINAL WHERE name = "
                    "'e2e_grpc_metric' AND device_id = 'e2e-m1'"),
            5);
  auto lines = stack->vm->Export("{__name__=\"e2e_grpc_metric\"}");
  ASSERT_THAT(lines, IsOk());
  for (const std::string& line : *lines) {
    EXPECT_THAT(line, HasSubstr("\"device_id\":\"e2e-m1\""));
    EXPECT_THAT(line, HasSubstr("\"org_id\":\"org-e2e\""));
  }
}

TEST_F(ServerE2eTest, LogsAndEventsOverConnectReachLokiAndClickHouse) {
  std::string key = NewDevice("e2e-l1");
  v1::SyncLogsRequest logs;
  logs.mutable_metadata()->set_sequence_number(1);
  v1::LogEntry* e = logs.mutable_batch()->add_logs();
  e->set_level("error");
  e->set_source("sensord");
  e->set_message("e2e connect log line");
  (*e->mutable_fields())["request_id"] = "r-1";
  auto client = Connect();
  httplib::Headers h = {{"X-API-Key", key}, {"Connect-Protocol-Version", "1"}};
  auto res = client.Post("/fleetd.v1.SyncService/SyncLogs", h,
                         logs.SerializeAsString(), "application/proto");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  v1::SyncLogsResponse lr;
  ASSERT_TRUE(lr.ParseFromString(res->body));
  EXPECT_TRUE(lr.success());
  bool found = false;
  for (const auto& s : stack->loki->Streams()) {
    if (s.labels.count("device_id") && s.labels.at("device_id") == "e2e-l1") {
      found = true;
      EXPECT_EQ(s.labels.at("org_id"), "org-e2e");
      EXPECT_EQ(s.labels.at("level"), "error");
      ASSERT_EQ(s.entries.size(), 1u);
      EXPECT_EQ(s.entries[0].line, "e2e connect log line");
    }
  }
  EXPECT_TRUE(found);

  // Events as Connect JSON.
  std::string json = R"({"metadata":{"sequenceNumber":"1"},"batch":{"events":[
      {"name":"door_opened","eventId":"ev-1","properties":{"door":"front"},
       "values":{"duration_s":2.5}}]}})";
  res = client.Post("/fleetd.v1.SyncService/SyncEvents", h, json,
                    "application/json");
  ASSERT_TRUE(res);
  ASSERT_EQ(res->status, 200) << res->body;
  EXPECT_THAT(res->body, HasSubstr("\"success\":true"));
  EXPECT_EQ(ChCount("SELECT count() FROM fleet_e2e.events FINAL WHERE "
                    "device_id = 'e2e-l1' "
                    "AND name = 'door_opened'"),
            1);
}

TEST_F(ServerE2eTest, BackendOutageIsRetryableAndTheRetryLandsExactlyOnce) {
  std::string key = NewDevice("e2e-o1");
  v1::SyncLogsRequest logs;
  logs.mutable_metadata()->set_sequence_number(77);
  logs.mutable_batch()->add_logs()->set_message(
      "written once despite the outage");
  stack->loki->FailWith(503);
  grpc::ClientContext ctx;
  ctx.AddMetadata("x-api-key", key);
  v1::SyncLogsResponse resp;
  grpc::Status s = stack->stub->SyncLogs(&ctx, logs, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  stack->loki->Accept();
  for (int attempt = 0; attempt < 2; ++attempt) {
    grpc::ClientContext retry;
    retry.AddMetadata("x-api-key", key);
    s = stack->stub->SyncLogs(&retry, logs, &resp);
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  size_t entries = 0;
  for (const auto& st : stack->loki->Streams()) {
    if (st.labels.count("device_id") && st.labels.at("device_id") == "e2e-o1") {
      entries += st.entries.size();
    }
  }
  EXPECT_EQ(entries, 1u);
}

TEST_F(ServerE2eTest, BadKeysAreRefusedAndWriteNothing) {
  auto req = Metrics(1, "e2e_badkey_metric", 2);
  v1::SyncMetricsResponse resp;
  EXPECT_EQ(CallMetrics("", req, &resp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  EXPECT_EQ(CallMetrics("fdk_000000000000_" + std::string(64, '0'), req, &resp)
                .error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  std::string key = NewDevice("e2e-revoked");
  auto listed = stack->store->ListKeys("e2e-revoked");
  ASSERT_THAT(listed, IsOk());
  ASSERT_THAT(stack->store->RevokeKey((*listed)[0].key_id), IsOk());
  // Revoked before its first use, so no cached approval exists (a key in use
  // stops working within the cache TTL; the authenticator's unit tests cover
  // that).
  EXPECT_EQ(CallMetrics(key, req, &resp).error_code(),
            grpc::StatusCode::UNAUTHENTICATED);
  auto client = Connect();
  auto res = client.Post("/fleetd.v1.SyncService/SyncMetrics",
                         req.SerializeAsString(), "application/proto");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 401);
  EXPECT_THAT(res->body, HasSubstr("unauthenticated"));
  EXPECT_EQ(VmSamples("e2e_badkey_metric"), 0u);
}

TEST_F(ServerE2eTest, AnotherTenantsDeviceIsPermissionDenied) {
  std::string key = NewDevice("e2e-t1", "org-one");
  auto req = Metrics(1, "e2e_tenant_metric", 1);
  req.mutable_metadata()->set_device_id("e2e-someone-else");
  v1::SyncMetricsResponse resp;
  EXPECT_EQ(CallMetrics(key, req, &resp).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  req = Metrics(2, "e2e_tenant_metric", 1);
  req.mutable_metadata()->set_org_id("org-two");
  EXPECT_EQ(CallMetrics(key, req, &resp).error_code(),
            grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(VmSamples("e2e_tenant_metric"), 0u);
}

TEST_F(ServerE2eTest,
       HostileInputIsRejectedWithTheRightStatusAndWritesNothing) {
  std::string key = NewDevice("e2e-h1");
  auto client = Connect();
  httplib::Headers h = {{"X-API-Key", key}, {"Connect-Protocol-Version", "1"}};
  // Malformed protobuf.
  auto res = client.Post("/fleetd.v1.SyncService/SyncMetrics", h,
                         std::string("\xff\xff\xff", 3), "application/proto");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400) << res->body;
  // Invalid UTF-8 in a string field (metric name bytes ff fe), hand-encoded
  // since our own serializer refuses to produce it:
  // SyncMetricsRequest{batch{metrics{name}}}.
  res = client.Post("/fleetd.v1.SyncService/SyncMetrics", h,
                    std::string("\x12\x06\x0a\x04\x0a\x02\xff\xfe", 8),
                    "application/proto");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 400) << res->body;
  EXPECT_THAT(res->body, HasSubstr("invalid_argument"));
  // Wrong content type.
  res = client.Post("/fleetd.v1.SyncService/SyncMetrics", h, "hello",
                    "text/plain");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 415);
  // Oversized body (limit 1 MiB in this stack): refused unread.
  res = client.Post("/fleetd.v1.SyncService/SyncMetrics", h,
                    std::string((1 << 20) + 4096, 'a'), "application/proto");
  ASSERT_TRUE(res);
  EXPECT_EQ(res->status, 429);
  EXPECT_THAT(res->body, HasSubstr("resource_exhausted"));
  // In-message zstd bomb: small, expands far beyond the limit.
  auto bomb = Compress(Compression::kZstd, std::string(64 << 20, '\0'));
  ASSERT_THAT(bomb, IsOk());
  v1::SyncMetricsRequest r;
  r.mutable_metadata()->set_sequence_number(5);
  r.mutable_batch()->set_compression("zstd");
  r.mutable_batch()->set_compressed_data(*bomb);
  v1::SyncMetricsResponse resp;
  // A batch over the size limit can never pass: our verdict on the batch
  // (INVALID_ARGUMENT with the `fleetd-verdict: rejected` trailer), not the
  // retryable RESOURCE_EXHAUSTED of an overload.
  std::string verdict;
  grpc::Status s = CallMetrics(key, r, &resp, &verdict);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT)
      << s.error_message();
  EXPECT_EQ(verdict, "rejected");
  // Injection in a label name: refused whole; injection in a value: stored
  // verbatim.
  auto bad = Metrics(6, "e2e_hostile_metric", 2);
  (*bad.mutable_batch()
        ->mutable_metrics(1)
        ->mutable_labels())["x\"} or vector(1)"] = "v";
  verdict.clear();
  EXPECT_EQ(CallMetrics(key, bad, &resp, &verdict).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(verdict, "rejected");
  EXPECT_EQ(VmSamples("e2e_hostile_metric"), 0u)
      << "nothing partial is written";
  auto good = Metrics(7, "e2e_hostile_metric", 1);
  const std::string hostile = "'); DROP TABLE metrics; -- \"} or {a=~\".+\"}";
  (*good.mutable_batch()->mutable_metrics(0)->mutable_labels())["site"] =
      hostile;
  ASSERT_TRUE(CallMetrics(key, good, &resp).ok());
  EXPECT_EQ(ChCount("SELECT count() FROM fleet_e2e.metrics FINAL WHERE "
                    "device_id = 'e2e-h1'"),
            1);
  auto site = stack->ch->Query(
      "SELECT labels_values[indexOf(labels_keys, 'site')] FROM "
      "fleet_e2e.metrics FINAL "
      "WHERE device_id = 'e2e-h1' FORMAT TSVRaw");
  ASSERT_THAT(site, IsOk());
  EXPECT_EQ(*site, hostile + "\n");
}

TEST_F(ServerE2eTest, MisconfiguredLokiIsRetryableAndShownByReadyz) {
  std::string key = NewDevice("e2e-m1");
  v1::SyncLogsRequest logs;
  logs.mutable_metadata()->set_sequence_number(1);
  logs.mutable_batch()->add_logs()->set_message("kept while loki says 401");
  // Loki with multi-tenancy on and no tenant configured: "401 no org id".
  stack->loki->FailWith(401);
  grpc::ClientContext ctx;
  ctx.AddMetadata("x-api-key", key);
  v1::SyncLogsResponse resp;
  grpc::Status s = stack->stub->SyncLogs(&ctx, logs, &resp);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
  EXPECT_EQ(ctx.GetServerTrailingMetadata().count("fleetd-verdict"), 0u);
  httplib::Client admin("127.0.0.1", stack->app->admin_port());
  auto ready = admin.Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 503) << ready->body;
  EXPECT_THAT(ready->body, HasSubstr("loki"));
  auto metrics = admin.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_THAT(metrics->body,
              HasSubstr("fleetd_backend_misconfigured_total{backend=\"loki\","
                        "status=\"401\"}"));
  // Fixed: the retry lands and the server is ready again.
  stack->loki->Accept();
  grpc::ClientContext retry;
  retry.AddMetadata("x-api-key", key);
  s = stack->stub->SyncLogs(&retry, logs, &resp);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ready = admin.Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200) << ready->body;
}

TEST_F(ServerE2eTest, ReportedSetAsideCountsLandInPostgres) {
  std::string key = NewDevice("e2e-s1");
  // Heartbeat over StreamSync: coalesced, written within a few seconds.
  {
    grpc::ClientContext ctx;
    ctx.AddMetadata("x-api-key", key);
    auto stream = stack->stub->StreamSync(&ctx);
    v1::StreamSyncRequest hb;
    hb.mutable_heartbeat()->set_set_aside_batches(2);
    hb.mutable_heartbeat()->set_set_aside_records(40);
    hb.mutable_heartbeat()->set_evicted_records(3);
    ASSERT_TRUE(stream->Write(hb));
    stream->WritesDone();
    v1::StreamSyncResponse ignored;
    while (stream->Read(&ignored)) {
    }
    ASSERT_TRUE(stream->Finish().ok());
  }
  std::optional<server::SyncHealthReport> got;
  ASSERT_TRUE(WaitFor(
      [&] {
        auto h = stack->store->GetSyncHealth("e2e-s1");
        if (!h.ok() || !h->has_value()) return false;
        got = **h;
        return true;
      },
      absl::Seconds(20)));
  EXPECT_EQ(got->health.set_aside_batches, 2);
  EXPECT_EQ(got->health.set_aside_records, 40);
  EXPECT_EQ(got->health.evicted_records, 3);
  // Device info carries the same counts and is stored at once.
  grpc::ClientContext ctx;
  ctx.AddMetadata("x-api-key", key);
  v1::UpdateDeviceInfoRequest info;
  info.mutable_info()->set_hostname("pi-e2e");
  info.mutable_info()->set_set_aside_batches(5);
  info.mutable_info()->set_set_aside_records(50);
  v1::UpdateDeviceInfoResponse resp;
  ASSERT_TRUE(stack->stub->UpdateDeviceInfo(&ctx, info, &resp).ok());
  auto h = stack->store->GetSyncHealth("e2e-s1");
  ASSERT_THAT(h, IsOk());
  ASSERT_TRUE(h->has_value());
  EXPECT_EQ((*h)->health.set_aside_batches, 5);
  EXPECT_EQ((*h)->health.evicted_records, 0);
  httplib::Client admin("127.0.0.1", stack->app->admin_port());
  auto metrics = admin.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_THAT(metrics->body,
              HasSubstr("fleetd_device_set_aside_batches_reported_total"));
}

// grpc.health.v1.Health/Check on `port` (plaintext): the status and the
// response bytes.
std::pair<grpc::Status, std::string> HealthCheck(int port,
                                                 const std::string& service) {
  return server::testing::GrpcHealthCheck(
      grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                          grpc::InsecureChannelCredentials()),
      service);
}

// The front door serves both configured addresses: gRPC (health checks and
// SyncService by grpc++) and Connect on each.
TEST_F(ServerE2eTest, BothAddressesServeEveryProtocol) {
  std::string key = NewDevice("e2e-door");
  for (int port : {stack->app->grpc_port(), stack->app->http_port()}) {
    SCOPED_TRACE(port);
    auto [status, bytes] = HealthCheck(port, "");
    ASSERT_TRUE(status.ok()) << status.error_message();
    EXPECT_EQ(bytes, std::string("\x08\x01", 2));  // SERVING
    EXPECT_EQ(HealthCheck(port, "fleetd.v1.SyncService").second,
              std::string("\x08\x01", 2));
    EXPECT_EQ(HealthCheck(port, "no.Such").first.error_code(),
              grpc::StatusCode::NOT_FOUND);

    auto channel = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port),
                                       grpc::InsecureChannelCredentials());
    auto stub = v1::SyncService::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.AddMetadata("x-api-key", key);
    v1::GetSyncConfigRequest req;
    v1::GetSyncConfigResponse resp;
    grpc::Status got = stub->GetSyncConfig(&ctx, req, &resp);
    EXPECT_TRUE(got.ok()) << got.error_message();

    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(20, 0);
    httplib::Headers headers = {{"x-api-key", key}};
    auto r = c.Post("/fleetd.v1.SyncService/GetSyncConfig", headers, "{}",
                    "application/json");
    ASSERT_TRUE(r);
    EXPECT_EQ(r->status, 200) << r->body;
  }
}

TEST_F(ServerE2eTest, AdminEndpointReportsMetricsAndReadiness) {
  httplib::Client admin("127.0.0.1", stack->app->admin_port());
  auto ready = admin.Get("/readyz");
  ASSERT_TRUE(ready);
  EXPECT_EQ(ready->status, 200) << ready->body;
  auto metrics = admin.Get("/metrics");
  ASSERT_TRUE(metrics);
  EXPECT_THAT(metrics->body, HasSubstr("fleetd_rpc_requests_total"));
  EXPECT_THAT(metrics->body, HasSubstr("fleetd_backend_flushes_total"));
}

}  // namespace
}  // namespace fleetd
