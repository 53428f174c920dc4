// A small pool of PostgreSQL connections (libpqxx), with exceptions turned into
// statuses.
//
// libpqxx reports errors by throwing; nothing thrown crosses this class.
// Errors are picked by what the caller should do (PgSqlStateToCode): lost or
// refused connections, shutdowns, resource shortages, serialization failures
// and deadlocks are UNAVAILABLE (retry); anything else is INTERNAL, a fault of
// this server that devices retry too, never a verdict on their data.
#ifndef FLEETD_SERVER_STORE_PG_POOL_H_
#define FLEETD_SERVER_STORE_PG_POOL_H_

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "pqxx/connection"

namespace fleetd::server {

class PgPool {
 public:
  struct Options {
    std::string dsn;
    int size = 4;
    // How long Run() waits for a free connection before RESOURCE_EXHAUSTED.
    absl::Duration acquire_timeout = absl::Seconds(5);
  };

  // Opens one connection to check the DSN; the rest open lazily. UNAVAILABLE if
  // the server cannot be reached, INVALID_ARGUMENT for a malformed DSN.
  static absl::StatusOr<std::unique_ptr<PgPool>> Connect(
      const Options& options);
  ~PgPool();
  PgPool(const PgPool&) = delete;
  PgPool& operator=(const PgPool&) = delete;

  // Runs `fn` with exclusive use of a pooled connection. An exception from `fn`
  // becomes the returned status; a connection that broke is discarded and
  // reopened next time. `fn` should run its own transaction (pqxx::work) and
  // commit it. Safe for concurrent use.
  absl::Status Run(const std::function<void(pqxx::connection&)>& fn);

 private:
  explicit PgPool(Options options) : options_(std::move(options)) {}
  absl::StatusOr<std::unique_ptr<pqxx::connection>> Open();

  const Options options_;
  absl::Mutex mu_;
  std::vector<std::unique_ptr<pqxx::connection>> idle_ ABSL_GUARDED_BY(mu_);
  int open_ ABSL_GUARDED_BY(mu_) = 0;  // connections handed out or idle
};

// The status code for a PostgreSQL SQLSTATE: UNAVAILABLE for class 08
// (connection exception), class 53 (insufficient resources, 53300 too many
// connections), 57P01/57P02/57P03 (admin or crash shutdown, cannot connect
// now), 40001 (serialization failure) and 40P01 (deadlock); DEADLINE_EXCEEDED
// for 57014 (statement timeout / cancel); ALREADY_EXISTS for 23505 (unique
// violation); INTERNAL for everything else.
absl::StatusCode PgSqlStateToCode(absl::string_view sqlstate);

// Converts a caught exception (from libpqxx or elsewhere) into a status. For
// use inside catch blocks of code that talks to PostgreSQL directly.
absl::Status PgExceptionToStatus(const std::exception& e);

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_STORE_PG_POOL_H_
