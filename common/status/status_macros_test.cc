#include "common/status/status_macros.h"

#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/status/retryable.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::IsOkAndHolds;
using ::fleetd::testing::StatusIs;
using ::testing::HasSubstr;
using ::testing::Not;

absl::StatusOr<int> ParsePositive(int v) {
  if (v <= 0) return absl::InvalidArgumentError("not positive");
  return v;
}

absl::StatusOr<int> DoubledOrError(int v) {
  ASSIGN_OR_RETURN(int parsed, ParsePositive(v));
  return parsed * 2;
}

absl::Status CheckBoth(int a, int b, int* reached) {
  RETURN_IF_ERROR(ParsePositive(a).status());
  ++*reached;
  RETURN_IF_ERROR(ParsePositive(b).status());
  ++*reached;
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<int>> MakeBox(int v) {
  if (v < 0) return absl::OutOfRangeError("negative");
  return std::make_unique<int>(v);
}

absl::StatusOr<int> Unbox(int v) {
  ASSIGN_OR_RETURN(std::unique_ptr<int> box, MakeBox(v));  // move-only value
  return *box + 1;
}

TEST(StatusMacrosTest, AssignOrReturnPassesValueAndPropagatesError) {
  EXPECT_THAT(DoubledOrError(21), IsOkAndHolds(42));
  EXPECT_THAT(DoubledOrError(-1), StatusIs(absl::StatusCode::kInvalidArgument,
                                           HasSubstr("positive")));
  EXPECT_THAT(Unbox(1), IsOkAndHolds(2));
  EXPECT_THAT(Unbox(-1), StatusIs(absl::StatusCode::kOutOfRange));
}

TEST(StatusMacrosTest, ReturnIfErrorStopsAtFirstError) {
  int reached = 0;
  EXPECT_THAT(CheckBoth(1, 2, &reached), IsOk());
  EXPECT_EQ(reached, 2);
  reached = 0;
  EXPECT_THAT(CheckBoth(1, -2, &reached),
              StatusIs(absl::StatusCode::kInvalidArgument));
  EXPECT_EQ(reached, 1);
  reached = 0;
  EXPECT_THAT(CheckBoth(-1, 2, &reached), Not(IsOk()));
  EXPECT_EQ(reached, 0);
}

TEST(StatusMatchersTest, MatchersRejectWhatTheyShould) {
  EXPECT_THAT(absl::InternalError("x"), Not(IsOk()));
  EXPECT_THAT(absl::OkStatus(), Not(StatusIs(absl::StatusCode::kInternal)));
  EXPECT_THAT(absl::InternalError("boom"),
              Not(StatusIs(absl::StatusCode::kInternal, HasSubstr("other"))));
  EXPECT_THAT(absl::StatusOr<int>(3), Not(IsOkAndHolds(4)));
  EXPECT_THAT(absl::StatusOr<int>(absl::UnknownError("u")),
              Not(IsOkAndHolds(4)));
}

TEST(RetryableTest, OnlyTransientCodesAreRetryable) {
  EXPECT_TRUE(IsRetryable(absl::StatusCode::kUnavailable));
  EXPECT_TRUE(IsRetryable(absl::StatusCode::kDeadlineExceeded));
  EXPECT_TRUE(IsRetryable(absl::StatusCode::kResourceExhausted));
  EXPECT_TRUE(IsRetryable(absl::StatusCode::kAborted));
  EXPECT_FALSE(IsRetryable(absl::StatusCode::kInvalidArgument));
  EXPECT_FALSE(IsRetryable(absl::StatusCode::kUnauthenticated));
  EXPECT_FALSE(IsRetryable(absl::StatusCode::kPermissionDenied));
  EXPECT_FALSE(IsRetryable(absl::StatusCode::kFailedPrecondition));
  EXPECT_FALSE(IsRetryable(absl::StatusCode::kOk));
}

}  // namespace
}  // namespace fleetd
