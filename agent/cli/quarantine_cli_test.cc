// `fleetd quarantine list|retry|drop` and the set-aside figures of `fleetd
// status`, against a running agent (over its control socket) and against the
// store directly when no agent runs. No server: the agent's sync target is a
// closed loopback port, so nothing leaves the store while the test looks.
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "agent/api/agent.h"
#include "agent/control/control.h"
#include "agent/storage/sqlite_storage.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "tests/fixtures/process.h"

namespace fleetd {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::IsOkAndHolds;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;

// Record timestamps (the store stamps set_aside_at with the real clock).
const absl::Time kStart = absl::FromUnixSeconds(1'700'000'000);

v1::Metric Metric(int i) {
  v1::Metric m;
  m.set_name("cpu_usage");
  m.set_value(i);
  m.mutable_timestamp()->set_seconds(absl::ToUnixSeconds(kStart) + i);
  return m;
}

v1::LogEntry Log(int i) {
  v1::LogEntry l;
  l.set_level("info");
  l.set_message(absl::StrCat("line ", i));
  l.mutable_timestamp()->set_seconds(absl::ToUnixSeconds(kStart) + i);
  return l;
}

agent::SetAsideBatch Rejected(std::string stream, agent::RecordKind kind,
                              int64_t sequence, agent::IdRange ids,
                              std::string reason) {
  agent::SetAsideBatch b;
  b.stream = std::move(stream);
  b.kind = kind;
  b.sequence_number = sequence;
  b.ids = ids;
  b.reason = std::move(reason);
  return b;
}

class QuarantineCliTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/fleetd-quarantine-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    data_dir_ = dir_ + "/data";
    env_ = {"FLEET_DATA_DIR=" + data_dir_,
            "FLEET_SERVER_URL=http://127.0.0.1:1",
            "FLEET_API_KEY=test-key",
            "DEVICE_ID=quarantine-dev",
            "FLEET_TIER=2",
            "SYNC_INTERVAL=1h"};
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  // Runs `fleetd ARGS...` to completion; returns its exit code and output.
  std::pair<int, std::string> RunCli(const std::vector<std::string>& args) {
    const std::string log_path = dir_ + "/cli.out";
    std::filesystem::remove(log_path);
    testing::ProcessOptions p;
    p.argv = {FLEETD_AGENT_BINARY};
    p.argv.insert(p.argv.end(), args.begin(), args.end());
    p.env = env_;
    p.log_path = log_path;
    auto child = testing::ChildProcess::Spawn(p);
    if (!child.ok()) return {-1, child.status().ToString()};
    auto code = (*child)->WaitForExit(absl::Seconds(60));
    std::ifstream in(log_path);
    std::string out((std::istreambuf_iterator<char>(in)),
                    std::istreambuf_iterator<char>());
    return {code.ok() ? *code : -1, out};
  }

  // Ten metrics and three logs; metrics 1-4 and all logs set aside.
  static void Seed(agent::Storage& store) {
    std::vector<v1::Metric> metrics;
    for (int i = 0; i < 10; ++i) metrics.push_back(Metric(i));
    ASSERT_THAT(store.AppendMetrics(metrics), IsOk());
    ASSERT_THAT(store.AppendLogs({Log(0), Log(1), Log(2)}), IsOk());
    ASSERT_THAT(
        store.SetAside(Rejected("metrics", agent::RecordKind::kMetric, 101,
                                {1, 4}, "invalid: metric name is empty")),
        IsOk());
    ASSERT_THAT(store.SetAside(Rejected("logs", agent::RecordKind::kLog, 7,
                                        {1, 3}, "invalid: log line too long")),
                IsOk());
  }

  std::string dir_;
  std::string data_dir_;
  std::vector<std::string> env_;
};

TEST_F(QuarantineCliTest, ListRetryAndDropThroughTheRunningAgent) {
  AgentOptions o;
  o.data_dir = data_dir_;
  o.server_url = "http://127.0.0.1:1";  // closed: nothing is delivered
  o.transport = "connect";
  o.api_key = "test-key";
  o.device_id = "quarantine-dev";
  o.overrides = MapEnv({{"FLEET_TIER", "2"}, {"SYNC_INTERVAL", "1h"}});
  o.fetch_server_config = false;
  o.report_device_info = false;
  auto agent = Agent::Create(o);
  ASSERT_THAT(agent, IsOk());
  agent::Storage& store = *(*agent)->storage();
  Seed(store);
  ASSERT_THAT((*agent)->Start(), IsOk());

  auto [code, text] = RunCli({"quarantine", "list"});
  EXPECT_EQ(code, 0) << text;
  EXPECT_THAT(text, HasSubstr("STREAM"));
  EXPECT_THAT(text, HasSubstr("REASON"));
  EXPECT_THAT(text, HasSubstr("invalid: metric name is empty"));
  EXPECT_THAT(text, HasSubstr("invalid: log line too long"));
  EXPECT_THAT(text, HasSubstr("101"));
  // When, in UTC.
  EXPECT_THAT(text, ContainsRegex("101 +4 +[0-9]{4}-[0-9]{2}-[0-9]{2}T"
                                  "[0-9]{2}:[0-9]{2}:[0-9]{2}Z +invalid"));
  EXPECT_THAT(text, HasSubstr("2 batches, 7 records"));

  std::tie(code, text) = RunCli({"status"});
  EXPECT_EQ(code, 0) << text;
  EXPECT_THAT(text, HasSubstr("set aside: 2 batches, 7 records (dropped 0)"));
  EXPECT_THAT(text, HasSubstr("evicted unsynced records: 0"));

  // The status JSON and the Prometheus gauges carry the same figures.
  auto status = agent::CallControl(data_dir_ + "/fleetd.sock", {"status"},
                                   absl::Seconds(30));
  ASSERT_THAT(status, IsOk());
  nlohmann::json j = nlohmann::json::parse(*status);
  EXPECT_EQ(j["set_aside_batches"], 2);
  EXPECT_EQ(j["set_aside_records"], 7);
  EXPECT_EQ(j["set_aside_dropped"], 0);
  EXPECT_EQ(j["evicted_unsynced_records"], 0);
  EXPECT_EQ(j["storage"]["kinds"]["logs"]["set_aside"], 3);
  const std::string metrics = (*agent)->RenderMetrics();
  EXPECT_THAT(metrics, HasSubstr("fleetd_agent_set_aside_batches 2"));
  EXPECT_THAT(metrics, HasSubstr("fleetd_agent_set_aside_records 7"));
  EXPECT_THAT(metrics, HasSubstr("fleetd_agent_evicted_unsynced_records 0"));

  std::tie(code, text) = RunCli({"quarantine", "retry", "metrics", "101"});
  EXPECT_EQ(code, 0) << text;
  EXPECT_THAT(text, HasSubstr("requeued 4 records of 1 set-aside batches"));
  absl::StatusOr<agent::StorageInfo> info = store.Info();
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->of(agent::RecordKind::kMetric).set_aside, 0);
  EXPECT_EQ(info->of(agent::RecordKind::kMetric).unsynced, 10);
  EXPECT_EQ(info->set_aside_batches, 1);

  std::tie(code, text) = RunCli({"quarantine", "retry", "metrics", "101"});
  EXPECT_NE(code, 0);
  EXPECT_THAT(text, HasSubstr("no set-aside batch 101 of stream metrics"));
  std::tie(code, text) = RunCli({"quarantine", "drop", "metrics"});
  EXPECT_EQ(code, 2) << text;
  EXPECT_THAT(text, HasSubstr("give <stream> <sequence>"));
  std::tie(code, text) = RunCli({"quarantine", "drop", "--all", "logs", "7"});
  EXPECT_EQ(code, 2) << text;

  std::tie(code, text) = RunCli({"quarantine", "drop", "--all"});
  EXPECT_EQ(code, 0) << text;
  EXPECT_THAT(text, HasSubstr("dropped 3 records of 1 set-aside batches"));
  info = store.Info();
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->set_aside_batches, 0);
  EXPECT_EQ(info->of(agent::RecordKind::kLog).set_aside_dropped, 3);

  std::tie(code, text) = RunCli({"quarantine", "list"});
  EXPECT_EQ(code, 0) << text;
  EXPECT_THAT(text, HasSubstr("no set-aside batches"));
  std::tie(code, text) = RunCli({"status"});
  EXPECT_THAT(text, HasSubstr("set aside: 0 batches, 0 records (dropped 3)"));
  EXPECT_THAT(text, Not(HasSubstr("see fleetd quarantine list")));
  (*agent)->Stop();
}

TEST_F(QuarantineCliTest, WorksOnTheStoreWhenNoAgentRuns) {
  agent::SqliteStorageOptions options;
  options.data_dir = data_dir_;
  {
    auto store = agent::OpenSqliteStorage(options);
    ASSERT_THAT(store, IsOk());
    Seed(**store);
  }
  auto [code, text] = RunCli({"quarantine", "list"});
  EXPECT_EQ(code, 0) << text;
  EXPECT_THAT(text, HasSubstr("invalid: log line too long"));
  std::tie(code, text) = RunCli({"quarantine", "drop", "logs", "7"});
  EXPECT_EQ(code, 0) << text;
  EXPECT_THAT(text, HasSubstr("dropped 3 records of 1 set-aside batches"));
  std::tie(code, text) = RunCli({"quarantine", "retry", "--all"});
  EXPECT_EQ(code, 0) << text;
  EXPECT_THAT(text, HasSubstr("requeued 4 records of 1 set-aside batches"));
  std::tie(code, text) = RunCli({"storage", "info"});
  EXPECT_EQ(code, 0) << text;
  EXPECT_THAT(text, HasSubstr("set aside: 0 batches, 0 records (dropped 3)"));

  auto store = agent::OpenSqliteStorage(options);
  ASSERT_THAT(store, IsOk());
  EXPECT_THAT((*store)->ListSetAside(), IsOkAndHolds(::testing::IsEmpty()));
  absl::StatusOr<agent::StorageInfo> info = (*store)->Info();
  ASSERT_THAT(info, IsOk());
  EXPECT_EQ(info->of(agent::RecordKind::kMetric).unsynced, 10);
  EXPECT_EQ(info->of(agent::RecordKind::kLog).set_aside_dropped, 3);
}

}  // namespace
}  // namespace fleetd
