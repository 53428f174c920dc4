// How backend answers are classified: by what the caller should do.
#include <string>

#include "absl/strings/str_cat.h"
#include "common/status/retryable.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/writers/backends.h"
#include "server/writers/http_pool.h"

namespace fleetd::server {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::testing::HasSubstr;

HttpResponse Answer(int code, std::string body = "") {
  HttpResponse r;
  r.status_code = code;
  r.body = std::move(body);
  return r;
}

TEST(HttpStatusToStatusTest, SuccessIsOk) {
  for (int code : {200, 201, 204}) {
    EXPECT_THAT(HttpStatusToStatus("vm", Answer(code)), IsOk()) << code;
  }
}

TEST(HttpStatusToStatusTest, OutagesAndOverloadAreRetryable) {
  for (int code : {500, 502, 503, 504, 408}) {
    absl::Status s = HttpStatusToStatus("vm", Answer(code, "busy"));
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnavailable)) << code;
    EXPECT_FALSE(MisconfigurationReason(s).has_value()) << code;
  }
  EXPECT_THAT(HttpStatusToStatus("vm", Answer(429)),
              StatusIs(absl::StatusCode::kResourceExhausted));
}

TEST(HttpStatusToStatusTest, OnlyContentRefusalsAreInvalidArgument) {
  for (int code : {400, 422}) {
    absl::Status s = HttpStatusToStatus("loki", Answer(code, "entry too old"));
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument,
                            HasSubstr("loki answered HTTP")))
        << code;
    EXPECT_THAT(s.message(), HasSubstr("entry too old"));
  }
}

TEST(HttpStatusToStatusTest, MisconfigurationIsRetryableAndLabelled) {
  for (int code :
       {401, 403, 404, 405, 407, 409, 411, 413, 414, 415, 431, 301, 302}) {
    absl::Status s = HttpStatusToStatus("loki", Answer(code, "no org id"));
    EXPECT_THAT(
        s, StatusIs(absl::StatusCode::kUnavailable, HasSubstr("no org id")))
        << code;
    EXPECT_TRUE(IsRetryable(s.code()));
    EXPECT_EQ(MisconfigurationReason(s), absl::StrCat(code));
  }
}

TEST(HttpPoolTest, RequestTheClientCannotSendIsMisconfigurationNotContent) {
  HttpPool pool;
  HttpRequest request;
  request.url = "ftp://127.0.0.1:1/x";  // a scheme the client refuses
  absl::StatusOr<HttpResponse> r = pool.Send(request);
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(IsRetryable(r.status().code())) << r.status();
}

TEST(ClickHouseAnswerTest, ExceptionCodeDecides) {
  auto status = [](int http, int code) {
    return ClickHouseAnswerToStatus(
        "insert into events",
        Answer(http, absl::StrCat("Code: ", code, ", e.displayText() = ...")));
  };
  // Data errors: the rows were refused.
  for (int code : {6, 26, 27, 38, 41, 53, 70, 72, 117, 131, 321}) {
    EXPECT_THAT(status(500, code), StatusIs(absl::StatusCode::kInvalidArgument))
        << code;
  }
  EXPECT_THAT(status(500, 241), StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(status(500, 159), StatusIs(absl::StatusCode::kDeadlineExceeded));
  EXPECT_THAT(status(500, 210), StatusIs(absl::StatusCode::kUnavailable));
  // The server's own setup: retryable and labelled for the operator.
  for (int code : {60, 81, 192, 193, 194, 497, 516}) {
    absl::Status s = status(code == 60 || code == 81 ? 404 : 401, code);
    EXPECT_THAT(s, StatusIs(absl::StatusCode::kUnavailable)) << code;
    EXPECT_TRUE(MisconfigurationReason(s).has_value()) << code;
  }
  // A refusal naming no data error is a query our server built: not the
  // device's fault.
  absl::Status syntax = status(400, 62);
  EXPECT_THAT(syntax, StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_EQ(MisconfigurationReason(syntax), "400");
  EXPECT_THAT(ClickHouseAnswerToStatus("ping", Answer(503, "")),
              StatusIs(absl::StatusCode::kUnavailable));
  EXPECT_THAT(ClickHouseAnswerToStatus("ping", Answer(200, "Ok.")), IsOk());
}

// The instance identity of VictoriaMetrics and Loki (Writer::InstanceId).
TEST(ProcessStartTimeTest, FindsTheSampleAmongOthers) {
  EXPECT_EQ(ParseProcessStartTime("# HELP x\n"
                                  "process_start_time_seconds_total 5\n"
                                  "process_start_time_seconds 1796187106\n"
                                  "vm_app_uptime_seconds 2\n"),
            "1796187106");
  EXPECT_EQ(ParseProcessStartTime("process_start_time_seconds 1.7e+09\n"),
            "1.7e+09");
  EXPECT_EQ(ParseProcessStartTime("process_start_time_seconds{a=\"b\"} 17 99"),
            "17");
  EXPECT_EQ(ParseProcessStartTime("process_start_time_seconds_x 1\n"),
            std::nullopt);
  EXPECT_EQ(ParseProcessStartTime(""), std::nullopt);
}

}  // namespace
}  // namespace fleetd::server
