// gMock matchers for absl::Status and absl::StatusOr (missing from Abseil
// 20220623).
//
//   EXPECT_THAT(DoIt(), IsOk());
//   EXPECT_THAT(Parse("x"), StatusIs(absl::StatusCode::kInvalidArgument,
//                                   HasSubstr("bad")));
//   EXPECT_THAT(Parse("1"), IsOkAndHolds(1));
#ifndef FLEETD_COMMON_TESTING_STATUS_MATCHERS_H_
#define FLEETD_COMMON_TESTING_STATUS_MATCHERS_H_

#include <ostream>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "gmock/gmock.h"

namespace fleetd::testing {
namespace internal {

inline const absl::Status& GetStatus(const absl::Status& status) {
  return status;
}
template <typename T>
const absl::Status& GetStatus(const absl::StatusOr<T>& status_or) {
  return status_or.status();
}

}  // namespace internal

MATCHER(IsOk, negation ? "is not OK" : "is OK") {
  const absl::Status& status = internal::GetStatus(arg);
  if (!status.ok()) *result_listener << "status is " << status;
  return status.ok();
}

MATCHER_P2(StatusIs, code_matcher, message_matcher,
           std::string("has a status whose code ") +
               ::testing::DescribeMatcher<absl::StatusCode>(code_matcher,
                                                            negation) +
               " and whose message " +
               ::testing::DescribeMatcher<std::string>(message_matcher,
                                                       negation)) {
  const absl::Status& status = internal::GetStatus(arg);
  *result_listener << "status is " << status;
  return ::testing::Matches(code_matcher)(status.code()) &&
         ::testing::Matches(message_matcher)(std::string(status.message()));
}

// Matches a status with the given code and any message.
inline auto StatusIs(absl::StatusCode code) {
  return StatusIs(code, ::testing::_);
}

MATCHER_P(IsOkAndHolds, value_matcher,
          negation ? "is not OK or holds a value that does not match"
                   : "is OK and holds a matching value") {
  if (!arg.ok()) {
    *result_listener << "status is " << arg.status();
    return false;
  }
  return ::testing::ExplainMatchResult(value_matcher, *arg, result_listener);
}

}  // namespace fleetd::testing

#endif  // FLEETD_COMMON_TESTING_STATUS_MATCHERS_H_
