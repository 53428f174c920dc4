#include "agent/collect/ingest_formats.h"

#include <string>
#include <vector>

#include "absl/time/time.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::agent {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

const absl::Time kNow = absl::FromUnixMillis(1'700'000'000'123);

TEST(ParsePrometheusTextTest, SamplesLabelsCommentsAndTimestamps) {
  auto metrics = ParsePrometheusText(
      "# HELP temp Temperature\n"
      "# TYPE temp gauge\n"
      "\n"
      "temp{room=\"kitchen\",floor=\"1\"} 21.5\n"
      "up 1 1700000000000\n"
      "  spaced_out { a = \"1\" , b=\"2\", } -3e2   \n"
      "empty{} +4\r\n"
      "ns:rule_total .5\n",
      kNow);
  ASSERT_THAT(metrics, testing::IsOk());
  ASSERT_EQ(metrics->size(), 5u);
  const v1::Metric& temp = (*metrics)[0];
  EXPECT_EQ(temp.name(), "temp");
  EXPECT_EQ(temp.value(), 21.5);
  EXPECT_THAT(temp.labels(), UnorderedElementsAre(Pair("room", "kitchen"),
                                                  Pair("floor", "1")));
  EXPECT_EQ(temp.timestamp().seconds(), 1'700'000'000);
  EXPECT_EQ(temp.timestamp().nanos(), 123'000'000);
  const v1::Metric& up = (*metrics)[1];
  EXPECT_EQ(up.value(), 1);
  EXPECT_EQ(up.timestamp().seconds(), 1'700'000'000);
  EXPECT_EQ(up.timestamp().nanos(), 0);
  EXPECT_EQ((*metrics)[2].name(), "spaced_out");
  EXPECT_EQ((*metrics)[2].value(), -300);
  EXPECT_THAT((*metrics)[2].labels(),
              UnorderedElementsAre(Pair("a", "1"), Pair("b", "2")));
  EXPECT_EQ((*metrics)[3].value(), 4);
  EXPECT_TRUE((*metrics)[3].labels().empty());
  EXPECT_EQ((*metrics)[4].name(), "ns:rule_total");
  EXPECT_EQ((*metrics)[4].value(), 0.5);
}

TEST(ParsePrometheusTextTest, LabelValueEscapes) {
  auto metrics = ParsePrometheusText(
      R"(m{path="C:\\dir",quote="say \"hi\"",nl="a\nb",brace="}{,="} 1)", kNow);
  ASSERT_THAT(metrics, testing::IsOk());
  ASSERT_EQ(metrics->size(), 1u);
  EXPECT_THAT(
      (*metrics)[0].labels(),
      UnorderedElementsAre(Pair("path", "C:\\dir"), Pair("quote", "say \"hi\""),
                           Pair("nl", "a\nb"), Pair("brace", "}{,=")));
}

TEST(ParsePrometheusTextTest, BadLinesNameTheirLine) {
  const std::pair<std::string, std::string> cases[] = {
      {"1bad 1", "invalid metric name"},
      {"m{a=\"x\\t\"} 1", "invalid escape"},
      {"m{a=\"x} 1", "unterminated"},
      {"m{a=\"1\",a=\"2\"} 1", "given twice"},
      {"m{a=1} 1", "expected '\"'"},
      {"m{a=\"1\" b=\"2\"} 1", "expected ',' or '}'"},
      {"m{9=\"1\"} 1", "invalid label name"},
      {"m", "missing value"},
      {"m abc", "invalid value"},
      {"m 1.2.3", "invalid value"},
      {"m 0x10", "invalid value"},
      {"m NaN", "non-finite"},
      {"m +Inf", "non-finite"},
      {"m -Inf", "non-finite"},
      {"m 1e999", "out of range"},
      {"m 1 12.5", "invalid timestamp"},
      {"m 1 99999999999999999", "out of range"},
      {"m 1 1700000000000 extra", "after the timestamp"},
      {"m{a=\"\xff\"} 1", "UTF-8"},
  };
  for (const auto& [line, reason] : cases) {
    std::string text = "# ok\ngood 1\n" + line + "\nalso_good 2\n";
    EXPECT_THAT(ParsePrometheusText(text, kNow),
                testing::StatusIs(
                    absl::StatusCode::kInvalidArgument,
                    ::testing::AllOf(HasSubstr("line 3: "), HasSubstr(reason))))
        << line;
  }
}

TEST(ParsePrometheusTextTest, EmptyBodyHasNoSamples) {
  auto metrics = ParsePrometheusText("", kNow);
  ASSERT_THAT(metrics, testing::IsOk());
  EXPECT_TRUE(metrics->empty());
}

TEST(ParseJsonLogLinesTest, FieldsDefaultsAndTimestamps) {
  auto logs = ParseJsonLogLines(
      R"({"message":"disk full","level":"ERROR","source":"app","fields":{"disk":"sda"}})"
      "\n\n"
      R"({"message":"plain"})"
      "\n"
      R"({"message":"rfc","timestamp":"2024-05-01T10:00:00.5+02:00","level":"warning"})"
      "\n"
      R"({"message":"ms","timestamp":1700000000123})"
      "\n",
      kNow);
  ASSERT_THAT(logs, testing::IsOk());
  ASSERT_EQ(logs->size(), 4u);
  EXPECT_EQ((*logs)[0].message(), "disk full");
  EXPECT_EQ((*logs)[0].level(), "error");
  EXPECT_EQ((*logs)[0].source(), "app");
  EXPECT_THAT((*logs)[0].fields(), ElementsAre(Pair("disk", "sda")));
  EXPECT_EQ((*logs)[0].timestamp().seconds(), 1'700'000'000);
  EXPECT_EQ((*logs)[0].timestamp().nanos(), 123'000'000);
  EXPECT_EQ((*logs)[1].level(), "info");
  EXPECT_EQ((*logs)[1].source(), "ingest");
  EXPECT_EQ((*logs)[2].level(), "warn");
  EXPECT_EQ((*logs)[2].timestamp().seconds(),
            absl::ToUnixSeconds(absl::FromCivil(
                absl::CivilSecond(2024, 5, 1, 8, 0, 0), absl::UTCTimeZone())));
  EXPECT_EQ((*logs)[2].timestamp().nanos(), 500'000'000);
  EXPECT_EQ((*logs)[3].timestamp().seconds(), 1'700'000'000);
  EXPECT_EQ((*logs)[3].timestamp().nanos(), 123'000'000);
}

TEST(ParseJsonLogLinesTest, BadLinesNameTheirLine) {
  const std::pair<std::string, std::string> cases[] = {
      {"not json", "invalid JSON"},
      {"[1,2]", "expected a JSON object"},
      {R"({"level":"info"})", "missing \"message\""},
      {R"({"message":1})", "\"message\" must be a string"},
      {R"({"message":"x","level":"loud"})", "unknown level"},
      {R"({"message":"x","fields":{"n":1}})", "must be a string"},
      {R"({"message":"x","fields":[]})", "must be an object"},
      {R"({"message":"x","timestamp":"yesterday"})", "RFC 3339"},
      {R"({"message":"x","timestamp":true})", "RFC 3339 string or unix"},
      {R"({"message":"x","timestamp":1e300})", "out of range"},
      {R"({"msg":"x"})", "unknown key \"msg\""},
  };
  for (const auto& [line, reason] : cases) {
    std::string text = "{\"message\":\"ok\"}\n" + line + "\n";
    EXPECT_THAT(ParseJsonLogLines(text, kNow),
                testing::StatusIs(
                    absl::StatusCode::kInvalidArgument,
                    ::testing::AllOf(HasSubstr("line 2: "), HasSubstr(reason))))
        << line;
  }
}

}  // namespace
}  // namespace fleetd::agent
