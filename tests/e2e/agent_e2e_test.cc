// End to end from the device: the agent (embedded, and the real `fleetd`
// binary) syncing through the real server to real PostgreSQL, VictoriaMetrics
// and ClickHouse and a Loki receiver. Records carry unique ids, so "every
// record exactly once" is checked by counting distinct ids and total samples in
// the backends.
#include <signal.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/time/clock.h"
#include "agent/api/agent.h"
#include "agent/storage/sqlite_storage.h"
#include "common/testing/status_matchers.h"
#include "common/testing/wait.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/app/server_app.h"
#include "server/store/pg_pool.h"
#include "server/store/pg_store.h"
#include "tests/e2e/backend_stack.h"
#include "tests/fixtures/process.h"

namespace fleetd {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::fleetd::testing::WaitFor;

struct Stack {
  std::unique_ptr<testing::BackendStack> backends;
  testing::PostgresFixture* pg = nullptr;
  testing::VictoriaMetricsFixture* vm = nullptr;
  testing::ClickHouseFixture* ch = nullptr;
  testing::LokiReceiver* loki = nullptr;
  server::ServerConfig config;
  std::unique_ptr<server::ServerApp> app;
  std::unique_ptr<server::PgPool> pool;
  std::unique_ptr<server::PgStore> store;
  int grpc_port = 0;
  int http_port = 0;
  int door_port = 0;  // the front door (gRPC, gRPC-Web, Connect on one port)
};
Stack* stack = nullptr;

absl::Status StartServer() {
  auto app = server::ServerApp::Start(stack->config);
  if (!app.ok()) return app.status();
  stack->app = *std::move(app);
  stack->grpc_port = stack->app->grpc_port();
  stack->http_port = stack->app->http_port();
  stack->door_port = stack->app->door_port();
  // Restarts come back on the same ports, as a real server would.
  stack->config.grpc_addr = absl::StrCat("127.0.0.1:", stack->grpc_port);
  stack->config.http_addr = absl::StrCat("127.0.0.1:", stack->http_port);
  stack->config.door_addr = absl::StrCat("127.0.0.1:", stack->door_port);
  return absl::OkStatus();
}

void StopServer() {
  if (stack->app != nullptr) stack->app->Shutdown();
  stack->app.reset();
}

class AgentE2eTest : public ::testing::Test {
 protected:
  // One stack for every suite in this binary; torn down by StackEnvironment.
  static void SetUpTestSuite() {
    if (stack != nullptr) return;
    stack = new Stack();
    auto backends = testing::StartBackendStack("fleet_agent_e2e");
    ASSERT_THAT(backends, IsOk());
    stack->backends = *std::move(backends);
    stack->pg = stack->backends->pg;
    stack->vm = stack->backends->vm;
    stack->ch = stack->backends->ch;
    stack->loki = stack->backends->loki.get();
    stack->config = testing::LoopbackServerConfig(*stack->backends);
    stack->config.door_addr = "127.0.0.1:0";
    ASSERT_THAT(StartServer(), IsOk());
    auto pool =
        server::PgPool::Connect({.dsn = stack->backends->dsn, .size = 2});
    ASSERT_THAT(pool, IsOk());
    stack->pool = *std::move(pool);
    stack->store = std::make_unique<server::PgStore>(stack->pool.get());
  }

  void SetUp() override {
    char tmpl[] = "/tmp/fleetd-agent-e2e-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static std::string Key(const std::string& device) {
    auto k = stack->store->CreateKey(device, "org-agents");
    EXPECT_THAT(k, IsOk());
    return k.ok() ? k->api_key : "";
  }

  // `door`: through the front door's one port instead of the transport's own.
  AgentOptions Options(const std::string& device, const std::string& transport,
                       std::map<std::string, std::string> overrides = {},
                       bool door = false) {
    AgentOptions o;
    o.data_dir = dir_ + "/" + device;
    int port = door                  ? stack->door_port
               : transport == "grpc" ? stack->grpc_port
                                     : stack->http_port;
    o.server_url = absl::StrCat("http://127.0.0.1:", port);
    o.transport = transport;
    o.api_key = Key(device);
    o.device_id = device;
    overrides.emplace("SYNC_INTERVAL", "1h");  // syncs only when the test says
    overrides.emplace("FLEET_TIER", "2");
    o.overrides = MapEnv(overrides);
    o.control_socket = false;
    return o;
  }

  // The front door's count of finished gRPC calls of `method` with `code`.
  static double DoorCalls(const std::string& method, const std::string& code) {
    const std::string series = absl::StrCat(
        "fleetd_rpc_frontend_requests_total{protocol=\"grpc\",method=\"",
        method, "\",code=\"", code, "\"} ");
    const std::string text = stack->app->metrics()->Render();
    size_t at = text.find(series);
    if (at == std::string::npos) return 0;
    return std::strtod(text.c_str() + at + series.size(), nullptr);
  }

  // Distinct values of label `id` and total samples VictoriaMetrics holds.
  static std::pair<size_t, size_t> VmCounts(const std::string& metric) {
    return testing::VmCounts(*stack->vm, metric, "id");
  }

  std::string dir_;
};

class StackEnvironment : public ::testing::Environment {
 public:
  void TearDown() override {
    if (stack == nullptr) return;
    StopServer();
    delete stack;
    stack = nullptr;
  }
};
::testing::Environment* const stack_environment =
    ::testing::AddGlobalTestEnvironment(new StackEnvironment);

class AgentTransportTest : public AgentE2eTest,
                           public ::testing::WithParamInterface<std::string> {};

TEST_P(AgentTransportTest, MetricsLogsAndEventsArriveInEveryBackend) {
  // "grpc", "connect", "grpc-stream", or "door-grpc" / "door-connect" /
  // "door-grpc-stream": the agent's gRPC (grpc++ client, HTTP/2; unary or
  // StreamSync) or Connect (libcurl) transport against the front door's
  // single port.
  const std::string variant = GetParam();
  const bool door = absl::StartsWith(variant, "door-");
  const std::string transport =
      absl::EndsWith(variant, "connect") ? "connect" : "grpc";
  const std::string device = "agent-" + variant;
  AgentOptions options = Options(device, transport, {}, door);
  options.sync_stream = absl::EndsWith(variant, "grpc-stream");
  const double door_unary_before = DoorCalls("SyncMetrics", "OK");
  auto agent = Agent::Create(options);
  ASSERT_THAT(agent, IsOk());
  ASSERT_THAT((*agent)->Start(), IsOk());
  std::string metric = "agent_e2e_" + variant;
  absl::StrReplaceAll({{"-", "_"}}, &metric);
  for (int i = 0; i < 250; ++i) {
    ASSERT_THAT((*agent)->StoreMetric(metric, i, {{"id", std::to_string(i)}}),
                IsOk());
  }
  ASSERT_THAT(
      (*agent)->StoreLog("warn", "disk almost full", "df", {{"mount", "/"}}),
      IsOk());
  ASSERT_THAT((*agent)->StoreEvent("door_opened", {{"door", "front"}},
                                   {{"seconds", 3}}),
              IsOk());
  ASSERT_THAT((*agent)->SyncNow(), IsOk());
  auto m = (*agent)->GetMetrics();
  EXPECT_EQ(m.metrics_synced, 250);
  EXPECT_EQ(m.logs_synced, 1);
  EXPECT_EQ(m.events_synced, 1);
  EXPECT_GT(m.bytes_sent, 0);
  ASSERT_TRUE(WaitFor([&] { return VmCounts(metric).second == 250; }));
  EXPECT_EQ(VmCounts(metric).first, 250u);
  bool log_found = false;
  for (const auto& s : stack->loki->Streams()) {
    if (s.labels.count("device_id") && s.labels.at("device_id") == device) {
      log_found =
          s.entries.size() == 1 && s.entries[0].line == "disk almost full";
    }
  }
  EXPECT_TRUE(log_found);
  auto events = stack->ch->Query(absl::StrCat(
      "SELECT count() FROM fleet_agent_e2e.events FINAL WHERE device_id = '",
      device, "'"));
  ASSERT_THAT(events, IsOk());
  EXPECT_EQ(*events, "1\n");
  // Device info reported at start reached PostgreSQL.
  auto host = stack->pg->QueryOn(
      "fleet_agent_e2e",
      absl::StrCat("SELECT agent_version, tier FROM devices WHERE "
                   "device_id = '",
                   device, "'"));
  ASSERT_THAT(host, IsOk());
  EXPECT_EQ(*host, "0.1.0|2");
  if (options.sync_stream && !door) {
    // The batches went over StreamSync, acknowledged there.
    EXPECT_NE(stack->app->metrics()->Render().find(
                  "fleetd_rpc_requests_total{method=\"StreamSync\",protocol="
                  "\"grpc\",code=\"OK\"}"),
              std::string::npos);
  }
  (*agent)->Stop();
  if (options.sync_stream && door) {
    // The batches went over the front door's StreamSync, not its unary
    // calls; the agent cancels its stream when it goes away, and the door
    // counts the call then.
    EXPECT_EQ(DoorCalls("SyncMetrics", "OK"), door_unary_before);
    agent->reset();
    EXPECT_TRUE(WaitFor([&] {
      return DoorCalls("StreamSync", "CANCELLED") > 0;
    })) << stack->app->metrics()->Render();
  }
}

INSTANTIATE_TEST_SUITE_P(BothTransports, AgentTransportTest,
                         ::testing::Values("grpc", "connect", "grpc-stream",
                                           "door-grpc", "door-connect",
                                           "door-grpc-stream"),
                         [](const auto& info) {
                           return absl::StrReplaceAll(info.param, {{"-", "_"}});
                         });

TEST_F(AgentE2eTest, ServerOutageLosesNothingAndDoublesNothing) {
  auto agent =
      Agent::Create(Options("agent-outage", "grpc", {{"MAX_RETRIES", "1"}}));
  ASSERT_THAT(agent, IsOk());
  const std::string metric = "agent_e2e_outage";
  for (int i = 0; i < 300; ++i) {
    ASSERT_THAT((*agent)->StoreMetric(metric, i, {{"id", std::to_string(i)}}),
                IsOk());
  }
  StopServer();
  // The agent keeps collecting while the server is down.
  EXPECT_THAT((*agent)->SyncNow(), StatusIs(absl::StatusCode::kUnavailable));
  for (int i = 300; i < 600; ++i) {
    ASSERT_THAT((*agent)->StoreMetric(metric, i, {{"id", std::to_string(i)}}),
                IsOk());
  }
  auto info = (*agent)->GetStorageInfo();
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->of(agent::RecordKind::kMetric).unsynced, 600);
  ASSERT_THAT(StartServer(), IsOk());
  // The breaker may still be cooling down; retry the sync until the backlog is
  // gone.
  ASSERT_TRUE(WaitFor(
      [&] {
        (void)(*agent)->SyncNow();
        auto i = (*agent)->GetStorageInfo();
        return i.ok() && i->of(agent::RecordKind::kMetric).unsynced == 0;
      },
      absl::Seconds(90)));
  ASSERT_TRUE(WaitFor([&] { return VmCounts(metric).second >= 600; }));
  auto [ids, samples] = VmCounts(metric);
  EXPECT_EQ(ids, 600u);
  EXPECT_EQ(samples, 600u) << "a retried batch must not be written twice";
}

TEST_F(AgentE2eTest, MinimalTierRingCountsWhatItOverwrote) {
  auto agent = Agent::Create(Options("agent-tier3", "grpc",
                                     {{"FLEET_TIER", "3"},
                                      {"FLEET_MEMORY_BUFFER_BYTES", "65536"},
                                      {"BATCH_SIZE", "500"}}));
  ASSERT_THAT(agent, IsOk());
  EXPECT_EQ((*agent)->profile().tier, agent::Tier::kMinimal);
  const std::string metric = "agent_e2e_ring";
  const int kStored = 5000;  // far more than a 64 KiB ring holds
  for (int i = 0; i < kStored; ++i) {
    ASSERT_THAT((*agent)->StoreMetric(metric, i, {{"id", std::to_string(i)}}),
                IsOk());
  }
  auto info = (*agent)->GetStorageInfo();
  ASSERT_THAT(info, IsOk());
  int64_t dropped = info->of(agent::RecordKind::kMetric).dropped_unsynced;
  int64_t kept = info->of(agent::RecordKind::kMetric).unsynced;
  EXPECT_GT(dropped, 0);
  EXPECT_EQ(dropped + kept, kStored)
      << "every record is either kept or counted as dropped";
  ASSERT_THAT((*agent)->SyncNow(), IsOk());
  ASSERT_TRUE(WaitFor(
      [&] { return VmCounts(metric).second == static_cast<size_t>(kept); }));
  // The ring drops the oldest: what arrived is exactly the newest `kept`
  // records.
  auto [ids, samples] = VmCounts(metric);
  EXPECT_EQ(ids, static_cast<size_t>(kept));
  EXPECT_EQ(samples, static_cast<size_t>(kept));
}

TEST_F(AgentE2eTest, KilledAgentResumesWithoutLossOrDuplicates) {
  const std::string device = "agent-sigkill";
  const std::string data_dir = dir_ + "/" + device;
  std::filesystem::create_directories(data_dir);
  const std::string metric = "agent_e2e_sigkill";
  const int kRecords = 20000;
  {
    // Pre-fill the agent's store, as if collected while offline.
    agent::SqliteStorageOptions o;
    o.data_dir = data_dir;
    auto store = agent::OpenSqliteStorage(o);
    ASSERT_THAT(store, IsOk());
    std::vector<v1::Metric> batch;
    for (int i = 0; i < kRecords; ++i) {
      v1::Metric m;
      m.set_name(metric);
      m.set_value(i);
      int64_t ms =
          absl::ToUnixMillis(absl::Now()) - 60'000 + i;  // distinct timestamps
      m.mutable_timestamp()->set_seconds(ms / 1000);
      m.mutable_timestamp()->set_nanos(static_cast<int32_t>(ms % 1000) *
                                       1'000'000);
      (*m.mutable_labels())["id"] = std::to_string(i);
      batch.push_back(std::move(m));
    }
    ASSERT_THAT((*store)->AppendMetrics(batch), IsOk());
  }
  std::string key = Key(device);
  auto spawn = [&]() {
    testing::ProcessOptions p;
    p.argv = {FLEETD_AGENT_BINARY, "run"};
    p.env = {
        absl::StrCat("FLEET_SERVER_URL=http://127.0.0.1:", stack->grpc_port),
        "FLEET_API_KEY=" + key, "DEVICE_ID=" + device,
        "FLEET_DATA_DIR=" + data_dir, "FLEET_TIER=2",
        "FLEET_STORAGE_MAX_BYTES=100MB", "BATCH_SIZE=50", "SYNC_INTERVAL=1s",
        // Drain as fast as the server takes it (tier 2's server-side limit is
        // 100 metrics/s); this test is about the kill, not the rate limit.
        "FLEET_SYNC_RATE_LIMIT=0", "FLEET_COLLECT_SYSTEM=0",
        "FLEET_INGEST_ADDR=", "FLEET_METRICS_ADDR="};
    p.log_path = dir_ + "/agent.log";
    p.stop_grace = absl::Seconds(20);
    return testing::ChildProcess::Spawn(p);
  };
  auto ledger_batches = [&]() -> int {
    auto n = stack->pg->QueryOn(
        "fleet_agent_e2e",
        absl::StrCat("SELECT count(*) FROM sync_ledger WHERE device_id = '",
                     device, "'"));
    return n.ok() ? std::atoi(n->c_str()) : -1;
  };
  auto first = spawn();
  ASSERT_THAT(first, IsOk());
  // Kill it while it is in the middle of draining its 400 batches.
  ASSERT_TRUE(
      WaitFor([&] { return ledger_batches() >= 20; }, absl::Seconds(60)))
      << testing::FileTail(dir_ + "/agent.log");
  kill((*first)->pid(), SIGKILL);
  ASSERT_THAT((*first)->WaitForExit(absl::Seconds(10)), IsOk());
  int at_kill = ledger_batches();
  auto second = spawn();
  ASSERT_THAT(second, IsOk());
  ASSERT_TRUE(WaitFor([&] { return ledger_batches() >= kRecords / 50; },
                      absl::Seconds(120)))
      << testing::FileTail(dir_ + "/agent.log");
  (*second)->Stop();
  EXPECT_LT(at_kill, kRecords / 50) << "the kill should land mid-sync";
  auto sum = stack->pg->QueryOn(
      "fleet_agent_e2e",
      absl::StrCat(
          "SELECT sum(record_count) FROM sync_ledger WHERE device_id = '",
          device, "'"));
  ASSERT_THAT(sum, IsOk());
  EXPECT_EQ(*sum, absl::StrCat(kRecords));
  ASSERT_TRUE(WaitFor([&] {
    return VmCounts(metric).second >= static_cast<size_t>(kRecords);
  }));
  auto [ids, samples] = VmCounts(metric);
  EXPECT_EQ(ids, static_cast<size_t>(kRecords));
  EXPECT_EQ(samples, static_cast<size_t>(kRecords));
}

// Runs `fleetd ARGS...` to completion; returns its exit code and output.
std::pair<int, std::string> RunCli(const std::vector<std::string>& args,
                                   const std::vector<std::string>& env,
                                   const std::string& log_path) {
  std::filesystem::remove(log_path);
  testing::ProcessOptions p;
  p.argv = {FLEETD_AGENT_BINARY};
  p.argv.insert(p.argv.end(), args.begin(), args.end());
  p.env = env;
  p.log_path = log_path;
  auto child = testing::ChildProcess::Spawn(p);
  if (!child.ok()) return {-1, child.status().ToString()};
  auto code = (*child)->WaitForExit(absl::Seconds(120));
  std::ifstream in(log_path);
  std::string out((std::istreambuf_iterator<char>(in)),
                  std::istreambuf_iterator<char>());
  return {code.ok() ? *code : -1, out};
}

TEST_F(AgentE2eTest, CliCommandsTalkToTheRunningAgentOrSaySoClearly) {
  const std::string device = "cli-agent";
  std::vector<std::string> env = {
      absl::StrCat("FLEET_SERVER_URL=http://127.0.0.1:", stack->grpc_port),
      "FLEET_API_KEY=" + Key(device),
      "DEVICE_ID=" + device,
      "FLEET_DATA_DIR=" + dir_ + "/cli",
      "FLEET_TIER=2",
      "SYNC_INTERVAL=1h",
      "FLEET_COLLECT_INTERVAL=1s",
      "FLEET_INGEST_ADDR=",
      "FLEET_METRICS_ADDR="};
  std::filesystem::create_directories(dir_ + "/cli");
  const std::string out = dir_ + "/cli.out";
  auto [code, text] = RunCli({"status"}, env, out);
  EXPECT_NE(code, 0);
  EXPECT_NE(text.find("not running"), std::string::npos) << text;

  testing::ProcessOptions p;
  p.argv = {FLEETD_AGENT_BINARY, "run"};
  p.env = env;
  p.log_path = dir_ + "/cli-agent.log";
  auto agent = testing::ChildProcess::Spawn(p);
  ASSERT_THAT(agent, IsOk());
  ASSERT_TRUE(WaitFor([&] { return RunCli({"status"}, env, out).first == 0; }))
      << testing::FileTail(p.log_path);
  // The collector stores system metrics every second; wait for some, then sync
  // them.
  ASSERT_TRUE(WaitFor([&] {
    auto [c, t] = RunCli({"storage", "info"}, env, out);
    return c == 0 && t.find("metrics: unsynced 0,") == std::string::npos;
  })) << testing::FileTail(p.log_path);
  std::tie(code, text) = RunCli({"sync", "now"}, env, out);
  EXPECT_EQ(code, 0) << text;
  EXPECT_NE(text.find("metrics_synced"), std::string::npos) << text;
  std::tie(code, text) = RunCli({"status"}, env, out);
  EXPECT_EQ(code, 0) << text;
  EXPECT_NE(text.find("device: cli-agent (tier 2)"), std::string::npos) << text;
  std::tie(code, text) = RunCli({"logs", "sync"}, env, out);
  EXPECT_EQ(code, 0) << text;
  EXPECT_NE(text.find("acknowledged"), std::string::npos) << text;
  std::tie(code, text) = RunCli({"debug", "storage"}, env, out);
  EXPECT_EQ(code, 0) << text;
  EXPECT_NE(text.find("storage: sqlite"), std::string::npos) << text;
  std::tie(code, text) = RunCli({"debug", "ping"}, env, out);
  EXPECT_EQ(code, 0) << text;
  EXPECT_NE(text.find("ok in"), std::string::npos) << text;
  std::tie(code, text) =
      RunCli({"storage", "clean", "--older-than", "7d"}, env, out);
  EXPECT_EQ(code, 0) << text;
  EXPECT_NE(text.find("removed 0 records older than 7d"), std::string::npos)
      << text;
  (*agent)->Stop();
  // Without the agent: storage commands open the store directly, status says
  // why not.
  std::tie(code, text) = RunCli({"storage", "info"}, env, out);
  EXPECT_EQ(code, 0) << text;
  EXPECT_NE(text.find("metrics: unsynced"), std::string::npos) << text;
  std::tie(code, text) = RunCli({"sync", "now"}, env, out);
  EXPECT_NE(code, 0);
  EXPECT_NE(text.find("not running"), std::string::npos) << text;
}

TEST_F(AgentE2eTest, ExampleAgentOnThePublicApiSyncsEverything) {
  const std::string device = "example-agent";
  testing::ProcessOptions p;
  p.argv = {FLEETD_EXAMPLE_BINARY, "--samples", "25", "--every", "10ms"};
  p.env = {absl::StrCat("FLEET_SERVER_URL=http://127.0.0.1:", stack->grpc_port),
           "FLEET_API_KEY=" + Key(device),
           "DEVICE_ID=" + device,
           "FLEET_DATA_DIR=" + dir_ + "/example",
           "FLEET_TIER=2",
           "SYNC_INTERVAL=1h"};
  p.log_path = dir_ + "/example.log";
  auto child = testing::ChildProcess::Spawn(p);
  ASSERT_THAT(child, IsOk());
  auto code = (*child)->WaitForExit(absl::Seconds(120));
  ASSERT_THAT(code, IsOk());
  EXPECT_EQ(*code, 0) << testing::FileTail(p.log_path);
  ASSERT_TRUE(WaitFor([&] {
    auto [ids, samples] = VmCounts("sensor_temperature_celsius");
    return samples >= 25;
  })) << testing::FileTail(p.log_path);
  std::ifstream log(p.log_path);
  std::string text((std::istreambuf_iterator<char>(log)),
                   std::istreambuf_iterator<char>());
  EXPECT_NE(text.find("metrics_synced=25 logs_synced=25 events_synced=3"),
            std::string::npos)
      << text;
}

}  // namespace
}  // namespace fleetd
