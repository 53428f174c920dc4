#include "agent/storage/record_codec.h"

#include <limits>
#include <string>

#include "agent/storage/storage_test_util.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::agent::storage_internal {
namespace {

using ::fleetd::agent::testing::EqualsProto;
using ::fleetd::agent::testing::MakeEvent;
using ::fleetd::agent::testing::MakeLog;
using ::fleetd::agent::testing::MakeMetric;
using ::fleetd::testing::IsOk;
using ::fleetd::testing::IsOkAndHolds;
using ::fleetd::testing::StatusIs;

const absl::Time kT = absl::FromUnixSeconds(1'700'000'000);

TEST(RecordCodecTest, VarintsRoundTrip) {
  for (uint64_t v : {uint64_t{0}, uint64_t{1}, uint64_t{127}, uint64_t{128},
                     uint64_t{300}, std::numeric_limits<uint64_t>::max()}) {
    std::string buf;
    PutVarint(&buf, v);
    Reader r(buf);
    uint64_t got;
    ASSERT_TRUE(r.GetVarint(&got));
    EXPECT_EQ(got, v);
    EXPECT_TRUE(r.done());
  }
  std::string one_byte;
  PutVarint(&one_byte, 127);
  EXPECT_EQ(one_byte.size(), 1u);
}

TEST(RecordCodecTest, TimestampsAsNanoseconds) {
  google::protobuf::Timestamp ts;
  ts.set_seconds(1'700'000'000);
  ts.set_nanos(123);
  EXPECT_THAT(TimestampToNanos(ts), IsOkAndHolds(1'700'000'000'000'000'123));
  google::protobuf::Timestamp back;
  NanosToTimestamp(1'700'000'000'000'000'123, &back);
  EXPECT_THAT(back, EqualsProto(ts));

  // Before 1970 the nanos part stays positive.
  NanosToTimestamp(-1, &back);
  EXPECT_EQ(back.seconds(), -1);
  EXPECT_EQ(back.nanos(), 999'999'999);

  ts.set_seconds(int64_t{1} << 40);
  EXPECT_THAT(TimestampToNanos(ts),
              StatusIs(absl::StatusCode::kInvalidArgument));
  ts.set_seconds(0);
  ts.set_nanos(-5);
  EXPECT_THAT(TimestampToNanos(ts),
              StatusIs(absl::StatusCode::kInvalidArgument));
}

TEST(RecordCodecTest, SeriesKeyIgnoresLabelInsertionOrder) {
  v1::Metric a = MakeMetric("cpu", 1, kT, {{"x", "1"}, {"b", "2"}, {"m", "3"}});
  v1::Metric b = MakeMetric("cpu", 2, kT, {{"m", "3"}, {"x", "1"}, {"b", "2"}});
  EncodeScratch scratch;
  std::string ka;
  std::string kb;
  AppendSeriesKey(a, &scratch, &ka);
  AppendSeriesKey(b, &scratch, &kb);
  EXPECT_EQ(ka, kb);
  // Compact: 1+3 name, 1 count, 3 * (1+1 + 1+1) labels.
  EXPECT_EQ(ka.size(), 4u + 1u + 12u);

  v1::Metric decoded;
  ASSERT_THAT(DecodeSeriesKey(ka, &decoded), IsOk());
  EXPECT_EQ(decoded.name(), "cpu");
  EXPECT_EQ(decoded.labels().size(), 3u);
  EXPECT_EQ(decoded.labels().at("b"), "2");

  v1::Metric other = MakeMetric("cpu", 1, kT, {{"x", "1"}});
  std::string ko;
  AppendSeriesKey(other, &scratch, &ko);
  EXPECT_NE(ka, ko);
}

TEST(RecordCodecTest, RecordsRoundTripWithoutTheirTimestamp) {
  v1::Metric m = MakeMetric("temp", -3.25, kT, {{"room", "kitchen"}});
  std::string buf;
  AppendMetricPayload(m, &buf);
  v1::Metric mo;
  ASSERT_THAT(DecodeMetricPayload(buf, &mo), IsOk());
  m.clear_timestamp();
  EXPECT_THAT(mo, EqualsProto(m));

  v1::LogEntry l = MakeLog("started", kT, "debug");
  buf.clear();
  AppendLogBody(l, &buf);
  v1::LogEntry lo;
  ASSERT_THAT(DecodeLogBody(buf, &lo), IsOk());
  l.clear_timestamp();
  EXPECT_THAT(lo, EqualsProto(l));

  v1::Event e = MakeEvent("boot", kT);
  buf.clear();
  AppendEventBody(e, &buf);
  v1::Event eo;
  ASSERT_THAT(DecodeEventBody(buf, &eo), IsOk());
  e.clear_timestamp();
  EXPECT_THAT(eo, EqualsProto(e));
}

TEST(RecordCodecTest, TruncatedOrTrailingBytesAreDataLoss) {
  std::string buf;
  AppendLogBody(MakeLog("a message", kT), &buf);
  for (size_t cut = 0; cut < buf.size(); ++cut) {
    v1::LogEntry l;
    EXPECT_THAT(DecodeLogBody(buf.substr(0, cut), &l),
                StatusIs(absl::StatusCode::kDataLoss))
        << "cut at " << cut;
  }
  v1::LogEntry l;
  EXPECT_THAT(DecodeLogBody(buf + "x", &l),
              StatusIs(absl::StatusCode::kDataLoss));
  // A length that points past the end.
  v1::Metric m;
  EXPECT_THAT(DecodeSeriesKey(std::string("\x7f"
                                          "abc",
                                          4),
                              &m),
              StatusIs(absl::StatusCode::kDataLoss));
  // A varint that never ends.
  EXPECT_THAT(DecodeSeriesKey(std::string(12, '\xff'), &m),
              StatusIs(absl::StatusCode::kDataLoss));
}

}  // namespace
}  // namespace fleetd::agent::storage_internal
