#include "tests/e2e/backend_stack.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "common/status/status_macros.h"
#include "nlohmann/json.hpp"

namespace fleetd::testing {

absl::StatusOr<std::unique_ptr<BackendStack>> StartBackendStack(
    const std::string& database) {
  auto s = std::make_unique<BackendStack>();
  ASSIGN_OR_RETURN(s->pg, PostgresFixture::Shared());
  ASSIGN_OR_RETURN(s->vm, VictoriaMetricsFixture::Shared());
  ASSIGN_OR_RETURN(s->ch, ClickHouseFixture::Shared());
  ASSIGN_OR_RETURN(s->loki, LokiReceiver::Start());
  s->database = database;
  ASSIGN_OR_RETURN(s->dsn, s->pg->CreateDatabase(database));
  return s;
}

server::ServerConfig LoopbackServerConfig(const BackendStack& stack) {
  server::ServerConfig c;
  c.grpc_addr = "127.0.0.1:0";
  c.http_addr = "127.0.0.1:0";
  c.admin_addr = "127.0.0.1:0";
  c.insecure = true;
  c.postgres_dsn = stack.dsn;
  c.victoriametrics_url = stack.vm->url();
  c.loki_url = stack.loki->url();
  c.clickhouse_url = stack.ch->http_url();
  c.clickhouse_database = stack.database;
  c.max_wait = absl::Seconds(10);
  return c;
}

std::pair<size_t, size_t> VmCounts(VictoriaMetricsFixture& vm,
                                   const std::string& name,
                                   const std::string& id_label) {
  if (!vm.ForceFlush().ok()) return {0, 0};
  auto lines = vm.Export(absl::StrCat("{__name__=\"", name, "\"}"));
  if (!lines.ok()) return {0, 0};
  std::set<std::string> ids;
  size_t samples = 0;
  for (const std::string& line : *lines) {
    nlohmann::json j = nlohmann::json::parse(line);
    if (!id_label.empty()) ids.insert(j["metric"].value(id_label, ""));
    samples += j["values"].size();
  }
  return {ids.size(), samples};
}

}  // namespace fleetd::testing
