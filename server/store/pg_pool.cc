#include "server/store/pg_pool.h"

#include <pqxx/pqxx>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status/retryable.h"

namespace fleetd::server {

absl::StatusCode PgSqlStateToCode(absl::string_view sqlstate) {
  // Retryable: the same statement may succeed later.
  if (absl::StartsWith(sqlstate, "08") ||  // connection exception
      absl::StartsWith(sqlstate, "53") ||  // insufficient resources, incl.
                                           // 53300 too many connections
      sqlstate == "57P01" ||               // admin shutdown
      sqlstate == "57P02" ||               // crash shutdown
      sqlstate == "57P03" ||               // cannot connect now (starting)
      sqlstate == "40001" ||               // serialization failure
      sqlstate == "40P01") {               // deadlock detected
    return absl::StatusCode::kUnavailable;
  }
  // Statement timeout or cancel: the server was too slow, not the request.
  if (sqlstate == "57014") return absl::StatusCode::kDeadlineExceeded;
  // Unique violation, for callers that create things (keys, devices).
  if (sqlstate == "23505") return absl::StatusCode::kAlreadyExists;
  // Everything else (syntax, undefined table, data exceptions, ...) is a
  // fault of this server: never a verdict on a device's batch.
  return absl::StatusCode::kInternal;
}

absl::Status PgExceptionToStatus(const std::exception& e) {
  if (dynamic_cast<const pqxx::broken_connection*>(&e) != nullptr) {
    return absl::UnavailableError(
        absl::StrCat("postgres connection failed: ", e.what()));
  }
  if (dynamic_cast<const pqxx::in_doubt_error*>(&e) != nullptr) {
    return absl::UnavailableError(
        absl::StrCat("postgres commit in doubt: ", e.what()));
  }
  if (const auto* sql = dynamic_cast<const pqxx::sql_error*>(&e);
      sql != nullptr) {
    std::string state = sql->sqlstate();
    return absl::Status(
        PgSqlStateToCode(state),
        absl::StrCat("postgres (SQLSTATE ", state.empty() ? "none" : state,
                     "): ", e.what()));
  }
  return absl::InternalError(absl::StrCat("postgres: ", e.what()));
}

absl::StatusOr<std::unique_ptr<PgPool>> PgPool::Connect(
    const Options& options) {
  std::unique_ptr<PgPool> pool(new PgPool(options));
  auto conn = pool->Open();
  if (!conn.ok()) return conn.status();
  absl::MutexLock lock(&pool->mu_);
  pool->idle_.push_back(*std::move(conn));
  pool->open_ = 1;
  return pool;
}

PgPool::~PgPool() = default;

absl::StatusOr<std::unique_ptr<pqxx::connection>> PgPool::Open() {
  try {
    return std::make_unique<pqxx::connection>(options_.dsn);
  } catch (const std::exception& e) {
    absl::Status s = PgExceptionToStatus(e);
    if (absl::IsInternal(s)) return absl::InvalidArgumentError(s.message());
    return s;
  }
}

absl::Status PgPool::Run(const std::function<void(pqxx::connection&)>& fn) {
  std::unique_ptr<pqxx::connection> conn;
  {
    absl::MutexLock lock(&mu_);
    auto available = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
      return !idle_.empty() || open_ < options_.size;
    };
    if (!mu_.AwaitWithTimeout(absl::Condition(&available),
                              options_.acquire_timeout)) {
      return absl::ResourceExhaustedError("no free postgres connection");
    }
    if (!idle_.empty()) {
      conn = std::move(idle_.back());
      idle_.pop_back();
    } else {
      ++open_;  // reserve a slot; opened below without the lock
    }
  }
  if (conn == nullptr) {
    auto opened = Open();
    if (!opened.ok()) {
      absl::MutexLock lock(&mu_);
      --open_;
      // The DSN worked when the pool was created: whatever fails now is the
      // database's state, to be retried.
      if (IsRetryable(opened.status().code())) return opened.status();
      return absl::UnavailableError(absl::StrCat(
          "cannot open a postgres connection: ", opened.status().message()));
    }
    conn = *std::move(opened);
  }
  absl::Status status;
  try {
    fn(*conn);
  } catch (const std::exception& e) {
    status = PgExceptionToStatus(e);
  }
  absl::MutexLock lock(&mu_);
  if (conn->is_open()) {
    idle_.push_back(std::move(conn));
  } else {
    --open_;  // dropped; a fresh one opens on demand
  }
  return status;
}

}  // namespace fleetd::server
