// Schema of the SQLite store and its migrations. Internal to agent/storage;
// exposed so tests can build a database at an old version and migrate it.
//
// The schema version is PRAGMA user_version. Opening a database at version v
// applies migrations v+1..kSchemaVersion, each in its own transaction together
// with the new user_version, so a crash mid-migration leaves a consistent
// version. Migrations are append-only: never edit one that has shipped.
#ifndef FLEETD_AGENT_STORAGE_SQLITE_SCHEMA_H_
#define FLEETD_AGENT_STORAGE_SQLITE_SCHEMA_H_

#include "absl/types/span.h"

namespace fleetd::agent::storage_internal {

struct Migration {
  int version;      // user_version after this migration
  const char* sql;  // statements taking the schema from version-1 to version
};

// All migrations, in order; the last one's version is kSchemaVersion.
absl::Span<const Migration> SchemaMigrations();
inline constexpr int kSchemaVersion = 3;

}  // namespace fleetd::agent::storage_internal

#endif  // FLEETD_AGENT_STORAGE_SQLITE_SCHEMA_H_
