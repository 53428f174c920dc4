#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/writers/backends.h"
#include "tests/fixtures/clickhouse_fixture.h"

namespace fleetd::server {
namespace {

using ::fleetd::testing::ClickHouseFixture;
using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::SizeIs;

constexpr int64_t kT0 = 1'700'000'000;  // 2023-11-14 22:13:20 UTC.

void SetTime(google::protobuf::Timestamp* ts, int64_t seconds, int32_t nanos) {
  ts->set_seconds(seconds);
  ts->set_nanos(nanos);
}

ClickHouseOptions Options(std::string url, std::string database,
                          std::string user = "", std::string password = "",
                          absl::Duration timeout = absl::Seconds(10)) {
  ClickHouseOptions options;
  options.url = std::move(url);
  options.database = std::move(database);
  options.user = std::move(user);
  options.password = std::move(password);
  options.timeout = timeout;
  return options;
}

DecodedBatch NewBatch(DataKind kind, const std::string& device, int64_t seq) {
  DecodedBatch b;
  b.device = {device, "org-a", "key-1"};
  b.kind = kind;
  b.stream = std::string(DataKindName(kind));
  b.sequence_number = seq;
  return b;
}

// `n` events; event i has properties {zone: "z<i>", a: "first"} and value
// {temp: i + 0.5}.
DecodedBatch Events(const std::string& device, int64_t seq, int n) {
  DecodedBatch b = NewBatch(DataKind::kEvents, device, seq);
  for (int i = 0; i < n; ++i) {
    v1::Event* e = b.events.add_events();
    e->set_name("door_opened");
    e->set_event_id(absl::StrCat(device, "-", seq, "-", i));
    SetTime(e->mutable_timestamp(), kT0 + i, 123'456'789);
    (*e->mutable_properties())["zone"] = absl::StrCat("z", i);
    (*e->mutable_properties())["a"] = "first";
    (*e->mutable_values())["temp"] = i + 0.5;
  }
  return b;
}

class ClickHouseWriterTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto ch = ClickHouseFixture::Shared();
    ASSERT_THAT(ch, IsOk());
    ch_ = *ch;
    // A fresh database per test.
    db_ = absl::StrCat(
        "chw_",
        absl::AsciiStrToLower(
            ::testing::UnitTest::GetInstance()->current_test_info()->name()));
    ASSERT_THAT(ch_->Query(absl::StrCat("DROP DATABASE IF EXISTS ", db_)),
                IsOk());
    auto w = NewClickHouseWriter(Options(ch_->http_url(), db_));
    ASSERT_THAT(w, IsOk());
    writer_ = *std::move(w);
  }

  // Rows of `sql` (which must end in FORMAT JSONEachRow).
  std::vector<nlohmann::json> Rows(const std::string& sql) {
    auto body = ch_->Query(sql);
    EXPECT_THAT(body, IsOk());
    std::vector<nlohmann::json> rows;
    if (!body.ok()) return rows;
    for (absl::string_view line : absl::StrSplit(*body, '\n')) {
      if (!line.empty()) rows.push_back(nlohmann::json::parse(line));
    }
    return rows;
  }

  std::string Scalar(const std::string& sql) {
    auto body = ch_->Query(sql);
    EXPECT_THAT(body, IsOk());
    return body.ok() ? std::string(absl::StripTrailingAsciiWhitespace(*body))
                     : "";
  }

  ClickHouseFixture* ch_ = nullptr;
  std::string db_;
  std::unique_ptr<Writer> writer_;
};

TEST_F(ClickHouseWriterTest, MigrateIsIdempotent) {
  ASSERT_THAT(writer_->Migrate(), IsOk());
  ASSERT_THAT(writer_->Migrate(), IsOk());
  EXPECT_EQ(Scalar(absl::StrCat("SELECT groupArray(name) FROM (SELECT name "
                                "FROM system.tables WHERE database = '",
                                db_, "' ORDER BY name)")),
            "['events','logs','metrics']");
  for (const char* table : {"events", "logs", "metrics"}) {
    SCOPED_TRACE(table);
    EXPECT_THAT(
        Scalar(absl::StrCat("SELECT engine_full FROM system.tables WHERE "
                            "database = '",
                            db_, "' AND name = '", table, "'")),
        HasSubstr("ReplacingMergeTree() PARTITION BY toYYYYMM(timestamp) "
                  "ORDER BY (org_id, device_id, stream, sequence_number, "
                  "idx)"));
    EXPECT_EQ(Scalar(absl::StrCat(
                  "SELECT type, default_kind FROM system.columns WHERE "
                  "database = '",
                  db_, "' AND table = '", table, "' AND name = 'timestamp'")),
              "DateTime\tMATERIALIZED");
  }
  // Data survives a second migration.
  DecodedBatch b = Events("dev-a", 1, 1);
  std::vector<const DecodedBatch*> one = {&b};
  ASSERT_THAT(writer_->Write(one), IsOk());
  ASSERT_THAT(writer_->Migrate(), IsOk());
  EXPECT_EQ(Scalar(absl::StrCat("SELECT count() FROM ", db_, ".events")), "1");
}

TEST_F(ClickHouseWriterTest, EventsReadBack) {
  ASSERT_THAT(writer_->Migrate(), IsOk());
  DecodedBatch b = Events("dev-a", 42, 2);
  std::vector<const DecodedBatch*> one = {&b};
  ASSERT_THAT(writer_->Write(one), IsOk());
  std::vector<nlohmann::json> rows =
      Rows(absl::StrCat("SELECT *, timestamp FROM ", db_,
                        ".events ORDER BY idx FORMAT JSONEachRow"));
  ASSERT_THAT(rows, SizeIs(2));
  for (int i = 0; i < 2; ++i) {
    SCOPED_TRACE(i);
    const nlohmann::json& r = rows[i];
    EXPECT_EQ(r["org_id"], "org-a");
    EXPECT_EQ(r["device_id"], "dev-a");
    EXPECT_EQ(r["stream"], "events");
    EXPECT_EQ(r["sequence_number"], "42");  // 64-bit integers come quoted.
    EXPECT_EQ(r["idx"], i);
    EXPECT_EQ(r["timestamp_ms"], std::to_string((kT0 + i) * 1000 + 123));
    EXPECT_EQ(r["timestamp"],
              i == 0 ? "2023-11-14 22:13:20" : "2023-11-14 22:13:21");
    EXPECT_EQ(r["name"], "door_opened");
    EXPECT_EQ(r["event_id"], absl::StrCat("dev-a-42-", i));
    // Sorted by key, values aligned with their keys.
    EXPECT_EQ(r["properties_keys"], nlohmann::json({"a", "zone"}));
    EXPECT_EQ(r["properties_values"],
              nlohmann::json({"first", absl::StrCat("z", i)}));
    EXPECT_EQ(r["values_keys"], nlohmann::json({"temp"}));
    EXPECT_EQ(r["values_values"], nlohmann::json({i + 0.5}));
  }
}

TEST_F(ClickHouseWriterTest, MetricAndLogCopiesReadBack) {
  ASSERT_THAT(writer_->Migrate(), IsOk());
  DecodedBatch m = NewBatch(DataKind::kMetrics, "dev-m", 5);
  v1::Metric metric;
  metric.set_name("cpu_usage");
  metric.set_value(0.1);
  SetTime(metric.mutable_timestamp(), kT0, 999'000'000);
  (*metric.mutable_labels())["core"] = "1";
  (*metric.mutable_labels())["cluster"] = "eu";
  m.metrics.Append(metric);
  DecodedBatch l = NewBatch(DataKind::kLogs, "dev-l", 6);
  v1::LogEntry* log = l.logs.add_logs();
  log->set_level("error");
  log->set_source("kernel");
  log->set_message("disk full");
  SetTime(log->mutable_timestamp(), kT0 + 60, 0);
  (*log->mutable_fields())["mount"] = "/data";
  // One flush with both kinds (and events): one INSERT per table.
  DecodedBatch e = Events("dev-e", 7, 1);
  std::vector<const DecodedBatch*> flush = {&m, &l, &e};
  ASSERT_THAT(writer_->Write(flush), IsOk());

  std::vector<nlohmann::json> metrics = Rows(absl::StrCat(
      "SELECT *, timestamp FROM ", db_, ".metrics FORMAT JSONEachRow"));
  ASSERT_THAT(metrics, SizeIs(1));
  EXPECT_EQ(metrics[0]["device_id"], "dev-m");
  EXPECT_EQ(metrics[0]["stream"], "metrics");
  EXPECT_EQ(metrics[0]["sequence_number"], "5");
  EXPECT_EQ(metrics[0]["idx"], 0);
  EXPECT_EQ(metrics[0]["name"], "cpu_usage");
  EXPECT_EQ(metrics[0]["value"], 0.1);
  EXPECT_EQ(metrics[0]["timestamp_ms"], std::to_string(kT0 * 1000 + 999));
  EXPECT_EQ(metrics[0]["timestamp"], "2023-11-14 22:13:20");
  EXPECT_EQ(metrics[0]["labels_keys"], nlohmann::json({"cluster", "core"}));
  EXPECT_EQ(metrics[0]["labels_values"], nlohmann::json({"eu", "1"}));

  std::vector<nlohmann::json> logs = Rows(absl::StrCat(
      "SELECT *, timestamp FROM ", db_, ".logs FORMAT JSONEachRow"));
  ASSERT_THAT(logs, SizeIs(1));
  EXPECT_EQ(logs[0]["device_id"], "dev-l");
  EXPECT_EQ(logs[0]["stream"], "logs");
  EXPECT_EQ(logs[0]["level"], "error");
  EXPECT_EQ(logs[0]["source"], "kernel");
  EXPECT_EQ(logs[0]["message"], "disk full");
  EXPECT_EQ(logs[0]["timestamp_ms"], std::to_string((kT0 + 60) * 1000));
  EXPECT_EQ(logs[0]["timestamp"], "2023-11-14 22:14:20");
  EXPECT_EQ(logs[0]["fields_keys"], nlohmann::json({"mount"}));
  EXPECT_EQ(logs[0]["fields_values"], nlohmann::json({"/data"}));

  EXPECT_EQ(Scalar(absl::StrCat("SELECT count() FROM ", db_, ".events")), "1");
}

TEST_F(ClickHouseWriterTest, RetriedBatchCountsOnce) {
  ASSERT_THAT(writer_->Migrate(), IsOk());
  const std::string table = absl::StrCat(db_, ".events");
  // No background merge until the copies are counted.
  ASSERT_THAT(ch_->Query(absl::StrCat("SYSTEM STOP MERGES ", table)), IsOk());
  DecodedBatch a = Events("dev-a", 1, 3);
  DecodedBatch b = Events("dev-b", 1, 2);
  std::vector<const DecodedBatch*> first = {&a};
  ASSERT_THAT(writer_->Write(first), IsOk());
  // The retry of `a` travels coalesced with a new batch.
  std::vector<const DecodedBatch*> retry = {&b, &a};
  ASSERT_THAT(writer_->Write(retry), IsOk());
  ASSERT_THAT(writer_->Write(first), IsOk());
  EXPECT_EQ(Scalar(absl::StrCat("SELECT count() FROM ", table, " FINAL")), "5");
  EXPECT_EQ(Scalar(absl::StrCat("SELECT count() FROM ", table,
                                " FINAL WHERE device_id = 'dev-a'")),
            "3");
  // The copies are really there until merged, and merging removes them.
  EXPECT_EQ(Scalar(absl::StrCat("SELECT count() FROM ", table)), "11");
  ASSERT_THAT(ch_->Query(absl::StrCat("SYSTEM START MERGES ", table)), IsOk());
  ASSERT_THAT(ch_->Query(absl::StrCat("OPTIMIZE TABLE ", table, " FINAL")),
              IsOk());
  EXPECT_EQ(Scalar(absl::StrCat("SELECT count() FROM ", table)), "5");
}

TEST_F(ClickHouseWriterTest, HostileStringsAreStoredVerbatim) {
  ASSERT_THAT(writer_->Migrate(), IsOk());
  const std::vector<std::string> hostile = {
      "'); DROP TABLE events; --",
      "\"quoted\" and 'single' and `back`",
      "back\\slash \\' \\\" \\n \\\\",
      "new\nline\r\ttab",
      "ünïcödé ✓ 日本語 🚀",
      std::string("ctl \x01\x1f\x7f end"),
      "{\"json\": [1, 2]}\n{\"another\":\"row\"}",
  };
  DecodedBatch b = NewBatch(DataKind::kEvents, hostile[0], 1);
  b.device.org_id = hostile[1];
  b.stream = "events";
  for (size_t i = 0; i < hostile.size(); ++i) {
    v1::Event* e = b.events.add_events();
    e->set_name("hostile");
    e->set_event_id(hostile[i]);
    SetTime(e->mutable_timestamp(), kT0, 0);
    (*e->mutable_properties())["text"] = hostile[i];
  }
  DecodedBatch l = NewBatch(DataKind::kLogs, hostile[2], 1);
  v1::LogEntry* log = l.logs.add_logs();
  log->set_level("info");
  log->set_source(hostile[3]);
  log->set_message(hostile[4]);
  SetTime(log->mutable_timestamp(), kT0, 0);
  std::vector<const DecodedBatch*> flush = {&b, &l};
  ASSERT_THAT(writer_->Write(flush), IsOk());

  std::vector<nlohmann::json> rows = Rows(absl::StrCat(
      "SELECT device_id, org_id, event_id, properties_values FROM ", db_,
      ".events ORDER BY idx FORMAT JSONEachRow"));
  ASSERT_THAT(rows, SizeIs(hostile.size()));
  for (size_t i = 0; i < hostile.size(); ++i) {
    SCOPED_TRACE(absl::CEscape(hostile[i]));
    EXPECT_EQ(rows[i]["device_id"], hostile[0]);
    EXPECT_EQ(rows[i]["org_id"], hostile[1]);
    EXPECT_EQ(rows[i]["event_id"], hostile[i]);
    EXPECT_EQ(rows[i]["properties_values"], nlohmann::json({hostile[i]}));
  }
  std::vector<nlohmann::json> logs =
      Rows(absl::StrCat("SELECT device_id, source, message FROM ", db_,
                        ".logs FORMAT JSONEachRow"));
  ASSERT_THAT(logs, SizeIs(1));
  EXPECT_EQ(logs[0]["device_id"], hostile[2]);
  EXPECT_EQ(logs[0]["source"], hostile[3]);
  EXPECT_EQ(logs[0]["message"], hostile[4]);
  // Nothing was dropped.
  EXPECT_EQ(Scalar(absl::StrCat("SELECT count() FROM system.tables WHERE "
                                "database = '",
                                db_, "'")),
            "3");
}

TEST_F(ClickHouseWriterTest, DatabaseNameMustBeAnIdentifier) {
  for (const std::string& bad :
       {std::string(""), std::string("1abc"), std::string("fleetd; DROP"),
        std::string("a`b"), std::string("a.b"), std::string("db-1"),
        std::string(65, 'a')}) {
    SCOPED_TRACE(bad);
    EXPECT_THAT(NewClickHouseWriter(Options(ch_->http_url(), bad)),
                StatusIs(absl::StatusCode::kInvalidArgument));
  }
  EXPECT_THAT(NewClickHouseWriter(Options("", "fleetd")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  // A keyword is fine: names are always quoted.
  EXPECT_THAT(NewClickHouseWriter(Options(ch_->http_url(), "select")), IsOk());
}

TEST_F(ClickHouseWriterTest, MissingTablesAreUnavailableUntilMigrated) {
  DecodedBatch b = Events("dev-a", 1, 1);
  std::vector<const DecodedBatch*> one = {&b};
  EXPECT_THAT(writer_->Write(one), StatusIs(absl::StatusCode::kUnavailable));
  ASSERT_THAT(writer_->Migrate(), IsOk());
  EXPECT_THAT(writer_->Write(one), IsOk());
}

TEST_F(ClickHouseWriterTest, RowsClickHouseCannotParseAreInvalidArgument) {
  // A table whose column types disagree with the rows: ClickHouse refuses the
  // data itself (a parse error, "Code: 27/72").
  ASSERT_THAT(ch_->Query(absl::StrCat("CREATE DATABASE ", db_)), IsOk());
  ASSERT_THAT(
      ch_->Query(absl::StrCat(
          "CREATE TABLE ", db_,
          ".events (org_id String, device_id String, stream String, "
          "sequence_number Int64, idx UInt32, timestamp_ms UInt64, name "
          "UInt8, event_id String, properties_keys Array(String), "
          "properties_values Array(String), values_keys Array(String), "
          "values_values Array(Float64)) ENGINE = Memory")),
      IsOk());
  DecodedBatch b = Events("dev-a", 1, 1);
  std::vector<const DecodedBatch*> one = {&b};
  EXPECT_THAT(writer_->Write(one),
              StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("Code:")));
}

TEST_F(ClickHouseWriterTest, TimestampBefore1970IsRefused) {
  ASSERT_THAT(writer_->Migrate(), IsOk());
  DecodedBatch b = Events("dev-a", 1, 1);
  SetTime(b.events.mutable_events(0)->mutable_timestamp(), -5, 0);
  std::vector<const DecodedBatch*> one = {&b};
  EXPECT_THAT(writer_->Write(one),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(Scalar(absl::StrCat("SELECT count() FROM ", db_, ".events")), "0");
}

TEST_F(ClickHouseWriterTest, SendsCredentials) {
  ASSERT_THAT(writer_->Migrate(), IsOk());
  DecodedBatch b = Events("dev-a", 1, 1);
  std::vector<const DecodedBatch*> one = {&b};
  auto good = NewClickHouseWriter(Options(ch_->http_url(), db_, "default"));
  ASSERT_THAT(good, IsOk());
  EXPECT_THAT((*good)->Write(one), IsOk());
  // The fixture knows no such user: the header must have been sent, and a
  // misconfigured server keeps the data (retryable) instead of refusing it.
  auto bad =
      NewClickHouseWriter(Options(ch_->http_url(), db_, "nobody", "secret"));
  ASSERT_THAT(bad, IsOk());
  EXPECT_THAT((*bad)->Write(one), StatusIs(absl::StatusCode::kUnavailable,
                                           HasSubstr("Unknown user nobody")));
  EXPECT_THAT((*bad)->Migrate(), StatusIs(absl::StatusCode::kUnavailable));
}

TEST_F(ClickHouseWriterTest, PingAndFlushWithoutRowsSendNothing) {
  EXPECT_THAT(writer_->Ping(), IsOk());
  // No database yet: a flush with nothing to insert must not touch it.
  DecodedBatch empty = NewBatch(DataKind::kEvents, "dev-a", 1);
  std::vector<const DecodedBatch*> one = {&empty};
  EXPECT_THAT(writer_->Write(one), IsOk());
  EXPECT_THAT(writer_->Write({}), IsOk());
}

TEST(ClickHouseWriterStoppedTest, StoppedClickHouseIsUnavailable) {
  auto ch = ClickHouseFixture::Start();
  ASSERT_THAT(ch, IsOk());
  auto w = NewClickHouseWriter(
      Options((*ch)->http_url(), "fleetd", "", "", absl::Seconds(5)));
  ASSERT_THAT(w, IsOk());
  ASSERT_THAT((*w)->Migrate(), IsOk());
  DecodedBatch b = Events("dev-a", 1, 2);
  std::vector<const DecodedBatch*> one = {&b};
  ASSERT_THAT((*w)->Write(one), IsOk());
  ASSERT_THAT((*w)->Ping(), IsOk());
  ch->reset();  // Killed; the port now refuses connections.
  EXPECT_THAT((*w)->Write(one), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT((*w)->Ping(), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT((*w)->Migrate(), StatusIs(absl::StatusCode::kUnavailable));
}

}  // namespace
}  // namespace fleetd::server
