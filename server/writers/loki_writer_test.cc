#include <algorithm>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/clock/clock.h"
#include "common/http/http_client.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"
#include "server/writers/backends.h"
#include "tests/fixtures/http_util.h"
#include "tests/fixtures/loki_receiver.h"

namespace fleetd::server {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::LokiPush;
using ::fleetd::testing::LokiReceiver;
using ::fleetd::testing::LokiStream;
using ::fleetd::testing::StatusIs;
using ::testing::AnyOf;
using ::testing::ElementsAre;
using ::testing::Pair;
using ::testing::SizeIs;

constexpr int64_t kT0 = 1'700'000'000;  // 2023-11-14, seconds.

struct Line {
  int64_t seconds;
  int32_t nanos;
  std::string level;
  std::string source;
  std::string message;
  std::map<std::string, std::string> fields;
};

LokiOptions Options(std::string url, std::string format = "protobuf",
                    std::string tenant_id = "",
                    absl::Duration timeout = absl::Seconds(10)) {
  LokiOptions options;
  options.url = std::move(url);
  options.format = std::move(format);
  options.tenant_id = std::move(tenant_id);
  options.timeout = timeout;
  return options;
}

DecodedBatch Logs(const std::string& device, const std::string& org,
                  int64_t seq, const std::vector<Line>& lines) {
  DecodedBatch b;
  b.device = {device, org, "key-1"};
  b.kind = DataKind::kLogs;
  b.stream = "logs";
  b.sequence_number = seq;
  for (const Line& l : lines) {
    v1::LogEntry* e = b.logs.add_logs();
    e->set_level(l.level);
    e->set_source(l.source);
    e->set_message(l.message);
    e->mutable_timestamp()->set_seconds(l.seconds);
    e->mutable_timestamp()->set_nanos(l.nanos);
    for (const auto& [k, v] : l.fields) (*e->mutable_fields())[k] = v;
  }
  return b;
}

// A canonical text of what the receiver accepted, for whole-value comparisons
// with readable diffs.
std::string Describe(const std::vector<LokiStream>& streams) {
  std::string out;
  for (const LokiStream& s : streams) {
    out += "stream";
    for (const auto& [k, v] : s.labels) {
      absl::StrAppend(&out, " ", k, "=\"", absl::CEscape(v), "\"");
    }
    out += "\n";
    for (const auto& e : s.entries) {
      absl::StrAppend(&out, "  ", absl::ToUnixNanos(e.timestamp), " \"",
                      absl::CEscape(e.line), "\"");
      for (const auto& [k, v] : e.structured_metadata) {
        absl::StrAppend(&out, " ", k, "=\"", absl::CEscape(v), "\"");
      }
      out += "\n";
    }
  }
  return out;
}

const LokiStream* FindStream(const std::vector<LokiStream>& streams,
                             const std::map<std::string, std::string>& labels) {
  for (const LokiStream& s : streams) {
    if (s.labels == labels) return &s;
  }
  return nullptr;
}

class LokiWriterTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    auto r = LokiReceiver::Start();
    ASSERT_THAT(r, IsOk());
    receiver_ = *std::move(r);
    writer_ = NewWriter();
  }

  std::unique_ptr<Writer> NewWriter(LokiOptions options = Options("")) {
    options.url = receiver_->url();
    options.format = GetParam();
    auto w = NewLokiWriter(options);
    EXPECT_THAT(w, IsOk());
    return w.ok() ? *std::move(w) : nullptr;
  }

  std::string content_type() const {
    return GetParam() == "json" ? "application/json" : "application/x-protobuf";
  }

  std::unique_ptr<LokiReceiver> receiver_;
  std::unique_ptr<Writer> writer_;
};

INSTANTIATE_TEST_SUITE_P(Formats, LokiWriterTest,
                         ::testing::Values("protobuf", "json"),
                         [](const auto& info) { return info.param; });

TEST_P(LokiWriterTest, GroupsTheFlushIntoStreamsWithIdentityLabels) {
  DecodedBatch a = Logs("dev-a", "org-a", 7,
                        {{kT0 + 2, 0, "info", "app", "a2", {{"req", "r2"}}},
                         {kT0, 5, "info", "app", "a0", {{"req", "r0"}}},
                         {kT0 + 1, 0, "error", "app", "a1", {}},
                         {kT0 + 3, 0, "info", "", "a3", {{"k", "v"}}}});
  DecodedBatch b =
      Logs("dev-b", "org-b", 1,
           {{kT0, 0, "info", "app", "b0", {{"x", "1"}, {"a", "2"}}}});
  std::vector<const DecodedBatch*> flush = {&a, &b};
  ASSERT_THAT(writer_->Write(flush), IsOk());

  std::vector<LokiPush> pushes = receiver_->Pushes();
  ASSERT_THAT(pushes, SizeIs(1));  // One request for the whole flush.
  EXPECT_EQ(pushes[0].content_type, content_type());
  EXPECT_EQ(pushes[0].tenant, "");
  const std::vector<LokiStream>& streams = pushes[0].streams;
  ASSERT_THAT(streams, SizeIs(4));

  const LokiStream* info = FindStream(streams, {{"device_id", "dev-a"},
                                                {"org_id", "org-a"},
                                                {"level", "info"},
                                                {"source", "app"}});
  ASSERT_NE(info, nullptr) << Describe(streams);
  // Sorted by timestamp although the batch had them out of order.
  ASSERT_THAT(info->entries, SizeIs(2));
  EXPECT_EQ(info->entries[0].line, "a0");
  EXPECT_EQ(info->entries[0].timestamp,
            absl::FromUnixSeconds(kT0) + absl::Nanoseconds(5));
  EXPECT_THAT(info->entries[0].structured_metadata,
              ElementsAre(Pair("req", "r0")));
  EXPECT_EQ(info->entries[1].line, "a2");
  EXPECT_EQ(info->entries[1].timestamp, absl::FromUnixSeconds(kT0 + 2));

  const LokiStream* error = FindStream(streams, {{"device_id", "dev-a"},
                                                 {"org_id", "org-a"},
                                                 {"level", "error"},
                                                 {"source", "app"}});
  ASSERT_NE(error, nullptr) << Describe(streams);
  ASSERT_THAT(error->entries, SizeIs(1));
  EXPECT_EQ(error->entries[0].line, "a1");
  EXPECT_THAT(error->entries[0].structured_metadata, SizeIs(0));

  // An empty source is left out of the label set.
  const LokiStream* no_source = FindStream(
      streams,
      {{"device_id", "dev-a"}, {"org_id", "org-a"}, {"level", "info"}});
  ASSERT_NE(no_source, nullptr) << Describe(streams);
  ASSERT_THAT(no_source->entries, SizeIs(1));
  EXPECT_EQ(no_source->entries[0].line, "a3");

  const LokiStream* other = FindStream(streams, {{"device_id", "dev-b"},
                                                 {"org_id", "org-b"},
                                                 {"level", "info"},
                                                 {"source", "app"}});
  ASSERT_NE(other, nullptr) << Describe(streams);
  ASSERT_THAT(other->entries, SizeIs(1));
  EXPECT_THAT(other->entries[0].structured_metadata,
              ElementsAre(Pair("a", "2"), Pair("x", "1")));
}

TEST_P(LokiWriterTest, HostileValuesRoundTripExactly) {
  const std::vector<std::string> hostile = {
      "\"} |= \"x\" or {a=~\".+",          "say \"hi\" and 'bye' and `tick`",
      "back\\slash \\\" \\n \\\\",         "new\nline\r\ttab",
      "'); DROP TABLE logs; --",           "ünïcödé ✓ 日本語 🚀",
      std::string("ctl \x01\x1f\x7f end"), "{device_id=\"other\"}",
  };
  for (size_t i = 0; i < hostile.size(); ++i) {
    SCOPED_TRACE(absl::CEscape(hostile[i]));
    receiver_->Clear();
    const std::string& h = hostile[i];
    DecodedBatch b = Logs(absl::StrCat("dev-", h), absl::StrCat(h, "-org"),
                          static_cast<int64_t>(i),
                          {{kT0, 0, "warn", h, h, {{"detail", h}}}});
    std::vector<const DecodedBatch*> one = {&b};
    ASSERT_THAT(writer_->Write(one), IsOk()) << receiver_->last_rejection();
    std::vector<LokiStream> streams = receiver_->Streams();
    ASSERT_THAT(streams, SizeIs(1));
    EXPECT_THAT(streams[0].labels,
                ElementsAre(Pair("device_id", absl::StrCat("dev-", h)),
                            Pair("level", "warn"),
                            Pair("org_id", absl::StrCat(h, "-org")),
                            Pair("source", h)));
    ASSERT_THAT(streams[0].entries, SizeIs(1));
    EXPECT_EQ(streams[0].entries[0].line, h);
    EXPECT_THAT(streams[0].entries[0].structured_metadata,
                ElementsAre(Pair("detail", h)));
  }
}

TEST_P(LokiWriterTest, SameBatchWrittenAgainYieldsIdenticalEntries) {
  DecodedBatch a = Logs("dev-a", "org-a", 3,
                        {{kT0 + 1, 0, "info", "app", "second", {{"b", "2"}}},
                         {kT0, 0, "info", "app", "first", {{"a", "1"}}},
                         {kT0, 0, "info", "app", "same-ts", {}}});
  DecodedBatch other =
      Logs("dev-b", "org-a", 9, {{kT0, 0, "info", "app", "other device", {}}});
  std::vector<const DecodedBatch*> alone = {&a};
  ASSERT_THAT(writer_->Write(alone), IsOk());
  ASSERT_THAT(writer_->Write(alone), IsOk());
  // A retry can also be coalesced with other batches: the retried stream is
  // still the same.
  std::vector<const DecodedBatch*> coalesced = {&other, &a};
  ASSERT_THAT(writer_->Write(coalesced), IsOk());

  std::vector<LokiPush> pushes = receiver_->Pushes();
  ASSERT_THAT(pushes, SizeIs(3));
  EXPECT_EQ(Describe(pushes[0].streams), Describe(pushes[1].streams));
  ASSERT_THAT(pushes[0].streams, SizeIs(1));
  const LokiStream* again =
      FindStream(pushes[2].streams, pushes[0].streams[0].labels);
  ASSERT_NE(again, nullptr);
  EXPECT_EQ(Describe({*again}), Describe(pushes[0].streams));
}

TEST_P(LokiWriterTest, SendsTenantHeader) {
  std::unique_ptr<Writer> w = NewWriter(Options("", "protobuf", "tenant-7"));
  DecodedBatch b = Logs("dev-a", "org-a", 1, {{kT0, 0, "info", "", "x", {}}});
  std::vector<const DecodedBatch*> one = {&b};
  ASSERT_THAT(w->Write(one), IsOk());
  std::vector<LokiPush> pushes = receiver_->Pushes();
  ASSERT_THAT(pushes, SizeIs(1));
  EXPECT_EQ(pushes[0].tenant, "tenant-7");
}

TEST_P(LokiWriterTest, FlushWithoutLogsSendsNothing) {
  DecodedBatch metrics;
  metrics.device = {"dev-a", "org-a", "k"};
  metrics.kind = DataKind::kMetrics;
  v1::Metric m;
  m.set_name("m");
  metrics.metrics.Append(m);
  DecodedBatch empty = Logs("dev-a", "org-a", 2, {});
  std::vector<const DecodedBatch*> flush = {&metrics, &empty};
  ASSERT_THAT(writer_->Write(flush), IsOk());
  EXPECT_EQ(receiver_->counters().accepted, 0);
  EXPECT_EQ(receiver_->counters().rejected, 0);
}

TEST_P(LokiWriterTest, MapsHttpAnswersToStatusCodes) {
  DecodedBatch b = Logs("dev-a", "org-a", 1, {{kT0, 0, "info", "", "x", {}}});
  std::vector<const DecodedBatch*> one = {&b};
  receiver_->FailWith(503);
  EXPECT_THAT(writer_->Write(one), StatusIs(absl::StatusCode::kUnavailable));
  receiver_->FailWith(500);
  EXPECT_THAT(writer_->Write(one), StatusIs(absl::StatusCode::kUnavailable));
  receiver_->FailWith(400);
  EXPECT_THAT(writer_->Write(one),
              StatusIs(absl::StatusCode::kInvalidArgument));
  receiver_->FailWith(429);
  EXPECT_THAT(writer_->Write(one),
              StatusIs(absl::StatusCode::kResourceExhausted));
  // Loki with multi-tenancy on and no tenant configured answers 401 ("no org
  // id"): the server's setup is wrong, not the logs. Retryable, labelled.
  receiver_->FailWith(401);
  absl::Status no_org = writer_->Write(one);
  EXPECT_THAT(no_org, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(MisconfigurationReason(no_org), "401");
  receiver_->FailWith(413);
  EXPECT_THAT(writer_->Write(one), StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(receiver_->counters().failed, 6);
  receiver_->Accept();
  EXPECT_THAT(writer_->Write(one), IsOk());
  EXPECT_EQ(receiver_->EntryCount(), 1u);
}

TEST_P(LokiWriterTest, ContentLokiRefusesIsInvalidArgument) {
  // A real validation failure rather than a simulated one: a line longer than
  // the receiver's (Loki's default) max_line_size.
  DecodedBatch b =
      Logs("dev-a", "org-a", 1,
           {{kT0, 0, "info", "", std::string(300 * 1024, 'x'), {}}});
  std::vector<const DecodedBatch*> one = {&b};
  EXPECT_THAT(writer_->Write(one),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(receiver_->counters().rejected, 1);
}

TEST_P(LokiWriterTest, HangingLokiTimesOutAndTheRetryIsIdentical) {
  std::unique_ptr<Writer> w =
      NewWriter(Options("", "protobuf", "", absl::Milliseconds(300)));
  DecodedBatch b = Logs("dev-a", "org-a", 1,
                        {{kT0, 0, "info", "app", "held", {{"f", "1"}}}});
  std::vector<const DecodedBatch*> one = {&b};
  receiver_->Hang();
  EXPECT_THAT(w->Write(one), StatusIs(AnyOf(absl::StatusCode::kDeadlineExceeded,
                                            absl::StatusCode::kUnavailable),
                                      ::testing::_));
  EXPECT_TRUE(receiver_->WaitForHanging(1, absl::Seconds(10)));
  // Loki may still accept the abandoned request (the client gave up, not the
  // server): the retry must then produce the same entries so that Loki drops
  // the copy.
  receiver_->Accept();
  ASSERT_TRUE(receiver_->WaitForEntries(1, absl::Seconds(10)));
  ASSERT_THAT(w->Write(one), IsOk());
  std::vector<LokiPush> pushes = receiver_->Pushes();
  ASSERT_THAT(pushes, SizeIs(2));
  EXPECT_EQ(Describe(pushes[0].streams), Describe(pushes[1].streams));
}

TEST_P(LokiWriterTest, PingAsksReady) {
  EXPECT_THAT(writer_->Ping(), IsOk());
  auto down = NewLokiWriter(
      Options("http://127.0.0.1:1", GetParam(), "", absl::Seconds(5)));
  ASSERT_THAT(down, IsOk());
  EXPECT_THAT((*down)->Ping(), StatusIs(absl::StatusCode::kUnavailable));
  DecodedBatch b = Logs("dev-a", "org-a", 1, {{kT0, 0, "info", "", "x", {}}});
  std::vector<const DecodedBatch*> one = {&b};
  EXPECT_THAT((*down)->Write(one), StatusIs(absl::StatusCode::kUnavailable));
}

TEST(LokiWriterOptionsTest, RejectsBadOptions) {
  EXPECT_THAT(NewLokiWriter(Options("")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(NewLokiWriter(Options("http://127.0.0.1:3100", "xml")),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(NewLokiWriter(Options("http://127.0.0.1:3100", "protobuf", "",
                                    absl::ZeroDuration())),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

// The same write and read-back against a real Loki (not packaged for Debian,
// so only when one is pointed at). Written twice: Loki must keep one copy.
class RealLokiTest : public ::testing::TestWithParam<std::string> {};

INSTANTIATE_TEST_SUITE_P(Formats, RealLokiTest,
                         ::testing::Values("protobuf", "json"),
                         [](const auto& info) { return info.param; });

TEST_P(RealLokiTest, WritesAndReadsBackOnce) {
  const char* url = std::getenv("FLEETD_TEST_LOKI_URL");
  if (url == nullptr || *url == '\0') {
    GTEST_SKIP() << "FLEETD_TEST_LOKI_URL is not set (Loki is not packaged "
                    "for Debian; point it at a Loki >= 2.9, e.g. "
                    "http://127.0.0.1:3100, to run this test)";
  }
  auto w = NewLokiWriter(Options(url, GetParam()));
  ASSERT_THAT(w, IsOk());
  ASSERT_THAT((*w)->Ping(), IsOk());

  Clock* clock = Clock::Real();
  const absl::Time now = clock->Now();
  // Unique per run, and hostile, so the selector must be escaped right.
  const std::string device = absl::StrCat("loki-writer-test-", GetParam(), "-",
                                          absl::ToUnixNanos(now), " \"q\\");
  const int64_t t0 = absl::ToUnixSeconds(now) - 120;
  DecodedBatch b = Logs(device, "org-real", 1,
                        {{t0 + 1, 0, "info", "app", "line two", {{"k", "2"}}},
                         {t0, 0, "info", "app", "line one", {{"k", "1"}}},
                         {t0, 500, "error", "app", "line three", {}}});
  std::vector<const DecodedBatch*> one = {&b};
  ASSERT_THAT((*w)->Write(one), IsOk());
  ASSERT_THAT((*w)->Write(one), IsOk());  // A retry: deduplicated by Loki.

  std::string selector = "{device_id=\"";
  for (char c : device) {
    if (c == '"' || c == '\\') selector.push_back('\\');
    selector.push_back(c);
  }
  selector += "\"}";
  const std::string query_url = absl::StrCat(
      url, "/loki/api/v1/query_range?direction=forward&limit=100&query=",
      fleetd::testing::UrlEncode(selector),
      "&start=", (t0 - 60) * 1'000'000'000, "&end=", (t0 + 60) * 1'000'000'000);
  auto http = NewCurlHttpClient();
  ASSERT_THAT(http, IsOk());

  std::vector<std::string> lines;
  nlohmann::json result;
  const absl::Time deadline = clock->MonotonicNow() + absl::Seconds(60);
  for (;;) {
    auto response = (*http)->Send(fleetd::testing::GetRequest(query_url));
    ASSERT_THAT(response, IsOk());
    ASSERT_EQ(response->status_code, 200) << response->body;
    result = nlohmann::json::parse(response->body)["data"]["result"];
    lines.clear();
    for (const auto& stream : result) {
      EXPECT_EQ(stream["stream"]["device_id"], device);
      EXPECT_EQ(stream["stream"]["org_id"], "org-real");
      EXPECT_EQ(stream["stream"]["source"], "app");
      for (const auto& v : stream["values"]) lines.push_back(v[1]);
    }
    if (lines.size() >= 3 || clock->MonotonicNow() > deadline) break;
    clock->SleepFor(absl::Milliseconds(200));  // Poll interval, not a wait.
  }
  std::sort(lines.begin(), lines.end());
  EXPECT_THAT(lines, ElementsAre("line one", "line three", "line two"))
      << result.dump();
}

}  // namespace
}  // namespace fleetd::server
