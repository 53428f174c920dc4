#include "agent/storage/record_validation.h"

#include <string>

#include "common/testing/status_matchers.h"
#include "common/text/utf8.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::agent {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

TEST(RecordValidationTest, AcceptsValidText) {
  v1::Metric m;
  m.set_name("temp_\xC2\xB0");
  (*m.mutable_labels())["site"] = "M\xC3\xBCnchen";
  (*m.mutable_labels())["empty"] = "";
  EXPECT_THAT(ValidateRecordText(m), IsOk());
  EXPECT_THAT(ValidateRecordText(v1::LogEntry()), IsOk());
  v1::Event e;
  e.set_name("door");
  (*e.mutable_values())["\xE2\x88\x86t"] = 1.5;
  EXPECT_THAT(ValidateRecordText(e), IsOk());
}

TEST(RecordValidationTest, NamesTheFieldTheByteAndItsOffset) {
  v1::LogEntry l;
  l.set_level("info");
  l.set_message("disk \xE2\x80\x94 full\xC0");
  EXPECT_THAT(ValidateRecordText(l),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("message is not valid UTF-8"),
                             HasSubstr("byte 0xc0 at offset 13"))));
  l.set_message("fine");
  (*l.mutable_fields())["path"] = "/var/\xFF";
  EXPECT_THAT(ValidateRecordText(l),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("fields[\"path\"] is not valid UTF-8 (byte "
                                 "0xff at offset 5)")));
}

TEST(RecordValidationTest, BadKeysAreQuotedEscapedAndCut) {
  v1::Metric m;
  m.set_name("m");
  const std::string key = "k\xFE" + std::string(200, 'x');
  (*m.mutable_labels())[key] = "v";
  absl::Status s = ValidateRecordText(m);
  EXPECT_THAT(s, StatusIs(absl::StatusCode::kInvalidArgument,
                          AllOf(HasSubstr("a key of labels"),
                                HasSubstr("\"k\\xfexxx"), HasSubstr("..."),
                                Not(HasSubstr(std::string(100, 'x'))))));
  // The message can itself travel in a proto string.
  EXPECT_TRUE(IsValidUtf8(s.message()));
}

TEST(RecordValidationTest, ChecksEveryEventStringField) {
  v1::Event e;
  e.set_name("door");
  e.set_event_id("\xED\xA0\x80");  // a surrogate
  EXPECT_THAT(ValidateRecordText(e),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("event_id is not valid UTF-8")));
  e.set_event_id("id-1");
  (*e.mutable_values())["\xC3"] = 1;
  EXPECT_THAT(ValidateRecordText(e),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("a key of values")));
}

TEST(RecordValidationTest, BatchVariantSaysWhichRecord) {
  v1::Metric m;
  m.set_name("\x80");
  EXPECT_THAT(ValidateBatchRecordText(m, "metric", 7),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("metric 7 of the batch: name is not valid")));
}

}  // namespace
}  // namespace fleetd::agent
