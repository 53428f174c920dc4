// PostgreSQL errors are classified by what the caller should do.
#include <string>

#include "common/status/retryable.h"
#include "gtest/gtest.h"
#include "pqxx/pqxx"
#include "server/store/pg_pool.h"

namespace fleetd::server {
namespace {

TEST(PgSqlStateToCodeTest, TransientStatesAreUnavailable) {
  for (const char* state :
       {"08000", "08003", "08006", "08001", "08004", "08P01",  // connection
        "57P01", "57P02", "57P03",  // admin/crash shutdown, cannot connect now
        "53000", "53100", "53200", "53300", "53400",  // insufficient resources
        "40001", "40P01"}) {  // serialization failure, deadlock
    EXPECT_EQ(PgSqlStateToCode(state), absl::StatusCode::kUnavailable) << state;
    EXPECT_TRUE(IsRetryable(PgSqlStateToCode(state))) << state;
  }
  EXPECT_EQ(PgSqlStateToCode("57014"), absl::StatusCode::kDeadlineExceeded);
}

TEST(PgSqlStateToCodeTest, EverythingElseIsInternal) {
  for (const char* state : {"42601", "42P01", "22001", "22P02", "23503",
                            "XX000", "0A000", "40002", "57000", ""}) {
    EXPECT_EQ(PgSqlStateToCode(state), absl::StatusCode::kInternal) << state;
  }
  EXPECT_EQ(PgSqlStateToCode("23505"), absl::StatusCode::kAlreadyExists);
}

TEST(PgExceptionToStatusTest, LibpqxxExceptionsMapByKind) {
  EXPECT_EQ(PgExceptionToStatus(pqxx::broken_connection("gone")).code(),
            absl::StatusCode::kUnavailable);
  EXPECT_EQ(
      PgExceptionToStatus(pqxx::sql_error("too many", "SELECT 1", "53300"))
          .code(),
      absl::StatusCode::kUnavailable);
  EXPECT_EQ(PgExceptionToStatus(pqxx::sql_error("deadlock", "UPDATE", "40P01"))
                .code(),
            absl::StatusCode::kUnavailable);
  absl::Status syntax =
      PgExceptionToStatus(pqxx::sql_error("syntax", "SELEC", "42601"));
  EXPECT_EQ(syntax.code(), absl::StatusCode::kInternal);
  EXPECT_NE(syntax.message().find("42601"), absl::string_view::npos);
  EXPECT_EQ(PgExceptionToStatus(std::runtime_error("x")).code(),
            absl::StatusCode::kInternal);
}

}  // namespace
}  // namespace fleetd::server
