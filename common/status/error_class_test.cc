#include "common/status/error_class.h"

#include "common/status/retry_after.h"
#include "gtest/gtest.h"

namespace fleetd {
namespace {

TEST(ErrorClassTest, OnlyAMarkedNonRetryableVerdictSetsABatchAside) {
  EXPECT_EQ(ClassifyError(absl::OkStatus()), ErrorClass::kOk);
  EXPECT_EQ(ClassifyError(MarkBatchRejected(absl::InvalidArgumentError("x"))),
            ErrorClass::kSetAside);
  EXPECT_EQ(
      ClassifyError(MarkBatchRejected(absl::FailedPreconditionError("x"))),
      ErrorClass::kSetAside);
  EXPECT_EQ(ClassifyError(MarkBatchRejected(absl::DataLossError("x"))),
            ErrorClass::kSetAside);
}

TEST(ErrorClassTest, EverythingWithoutTheVerdictIsRetried) {
  for (absl::StatusCode code :
       {absl::StatusCode::kCancelled, absl::StatusCode::kUnknown,
        absl::StatusCode::kInvalidArgument, absl::StatusCode::kDeadlineExceeded,
        absl::StatusCode::kNotFound, absl::StatusCode::kAlreadyExists,
        absl::StatusCode::kResourceExhausted,
        absl::StatusCode::kFailedPrecondition, absl::StatusCode::kAborted,
        absl::StatusCode::kOutOfRange, absl::StatusCode::kUnimplemented,
        absl::StatusCode::kInternal, absl::StatusCode::kUnavailable,
        absl::StatusCode::kDataLoss}) {
    EXPECT_EQ(ClassifyError(absl::Status(code, "no verdict")),
              ErrorClass::kRetry)
        << absl::StatusCodeToString(code);
  }
}

TEST(ErrorClassTest, RetryableCodesStayRetryableEvenWithTheVerdict) {
  EXPECT_EQ(ClassifyError(MarkBatchRejected(absl::UnavailableError("x"))),
            ErrorClass::kRetry);
  EXPECT_EQ(ClassifyError(MarkBatchRejected(absl::ResourceExhaustedError("x"))),
            ErrorClass::kRetry);
}

TEST(ErrorClassTest, RefusedCredentialsAreTheirOwnClass) {
  EXPECT_EQ(ClassifyError(absl::UnauthenticatedError("x")),
            ErrorClass::kCredentials);
  EXPECT_EQ(ClassifyError(MarkBatchRejected(absl::PermissionDeniedError("x"))),
            ErrorClass::kCredentials);
}

TEST(ErrorClassTest, MarkingKeepsCodeMessageAndOtherPayloads) {
  absl::Status s = MarkBatchRejected(
      WithRetryAfter(absl::InvalidArgumentError("bad name"), absl::Seconds(2)));
  EXPECT_TRUE(IsBatchRejected(s));
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "bad name");
  EXPECT_EQ(GetRetryAfter(s), absl::Seconds(2));
  EXPECT_TRUE(MarkBatchRejected(absl::OkStatus()).ok());
  EXPECT_FALSE(IsBatchRejected(absl::OkStatus()));
}

}  // namespace
}  // namespace fleetd
