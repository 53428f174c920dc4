// What the end-to-end tests share: the real backends (started once per test
// binary by the fixtures), a database of the test's own, a server configuration
// pointing at them, and read-back helpers.
#ifndef FLEETD_TESTS_E2E_BACKEND_STACK_H_
#define FLEETD_TESTS_E2E_BACKEND_STACK_H_

#include <memory>
#include <string>
#include <utility>

#include "absl/status/statusor.h"
#include "server/app/server_config.h"
#include "tests/fixtures/clickhouse_fixture.h"
#include "tests/fixtures/loki_receiver.h"
#include "tests/fixtures/postgres_fixture.h"
#include "tests/fixtures/victoria_metrics_fixture.h"

namespace fleetd::testing {

struct BackendStack {
  PostgresFixture* pg = nullptr;
  VictoriaMetricsFixture* vm = nullptr;
  ClickHouseFixture* ch = nullptr;
  std::unique_ptr<LokiReceiver> loki;
  // PostgreSQL database and ClickHouse database named `database`, for this
  // binary.
  std::string database;
  std::string dsn;
};

// Starts (or reuses) the shared backends and a Loki receiver, and creates
// `database`.
absl::StatusOr<std::unique_ptr<BackendStack>> StartBackendStack(
    const std::string& database);

// A plaintext server on free loopback ports writing to `stack` (metrics to
// VictoriaMetrics, logs to Loki, events to ClickHouse).
server::ServerConfig LoopbackServerConfig(const BackendStack& stack);

// Distinct values of label `id_label` (empty: not counted) and total samples
// VictoriaMetrics holds for metric `name`, after a flush.
std::pair<size_t, size_t> VmCounts(VictoriaMetricsFixture& vm,
                                   const std::string& name,
                                   const std::string& id_label = "");

}  // namespace fleetd::testing

#endif  // FLEETD_TESTS_E2E_BACKEND_STACK_H_
