#include "agent/storage/sqlite_schema.h"

namespace fleetd::agent::storage_internal {
namespace {

// Version 1: the data tables.
//  - kinds: per record kind, the next id and the counters Info() reports;
//    updated in the same transaction as the data they count.
//  - series: interned metric identities (name + sorted labels, compact).
//  - metrics/logs/events: `synced` is 0 or 1 (SQLite stores both in the record
//    header alone, so marking synced rewrites no payload bytes); `ts` is Unix
//    nanoseconds; a metric value is kept as the bits of its double so that NaN
//    (which SQLite would turn into NULL) and its payload survive.
constexpr char kV1[] = R"sql(
CREATE TABLE kinds(
  kind INTEGER PRIMARY KEY,
  next_id INTEGER NOT NULL,
  unsynced INTEGER NOT NULL,
  synced INTEGER NOT NULL,
  dropped_unsynced INTEGER NOT NULL,
  evicted_synced INTEGER NOT NULL,
  cleaned INTEGER NOT NULL);
INSERT INTO kinds VALUES (0, 1, 0, 0, 0, 0, 0), (1, 1, 0, 0, 0, 0, 0),
                         (2, 1, 0, 0, 0, 0, 0);
CREATE TABLE series(id INTEGER PRIMARY KEY, key BLOB NOT NULL UNIQUE);
CREATE TABLE metrics(
  id INTEGER PRIMARY KEY,
  synced INTEGER NOT NULL,
  ts INTEGER NOT NULL,
  series INTEGER NOT NULL,
  value_bits INTEGER NOT NULL);
CREATE TABLE logs(
  id INTEGER PRIMARY KEY,
  synced INTEGER NOT NULL,
  ts INTEGER NOT NULL,
  body BLOB NOT NULL);
CREATE TABLE events(
  id INTEGER PRIMARY KEY,
  synced INTEGER NOT NULL,
  ts INTEGER NOT NULL,
  body BLOB NOT NULL);
)sql";

// Version 2: pending batch identities, so a batch keeps its sequence number
// across agent restarts.
constexpr char kV2[] = R"sql(
CREATE TABLE pending_batches(
  stream TEXT PRIMARY KEY,
  kind INTEGER NOT NULL,
  sequence INTEGER NOT NULL,
  first_id INTEGER NOT NULL,
  last_id INTEGER NOT NULL,
  record_count INTEGER NOT NULL,
  retry_count INTEGER NOT NULL);
)sql";

// Version 3: set-aside batches (batches the server rejected as invalid), kept
// in the store so they stay encrypted and within the quota.
//  - The records' `synced` column becomes their state: 0 unsynced, 1 synced,
//    and -N for a record set aside in the batch with set_aside.id = N (so a
//    batch's records are exact even when its id range spans records of an
//    earlier set-aside batch).
//  - set_aside: one row per batch; its id orders batches oldest first
//    (AUTOINCREMENT: an id is never reused, so no record can point at a
//    later batch by mistake). set_aside_at is Unix nanoseconds.
//  - kinds gets the set-aside counters.
constexpr char kV3[] = R"sql(
CREATE TABLE set_aside(
  id INTEGER PRIMARY KEY AUTOINCREMENT,
  stream TEXT NOT NULL,
  kind INTEGER NOT NULL,
  sequence INTEGER NOT NULL,
  first_id INTEGER NOT NULL,
  last_id INTEGER NOT NULL,
  record_count INTEGER NOT NULL,
  reason TEXT NOT NULL,
  set_aside_at INTEGER NOT NULL,
  UNIQUE(stream, sequence));
ALTER TABLE kinds ADD COLUMN set_aside INTEGER NOT NULL DEFAULT 0;
ALTER TABLE kinds ADD COLUMN set_aside_dropped INTEGER NOT NULL DEFAULT 0;
)sql";

constexpr Migration kMigrations[] = {{1, kV1}, {2, kV2}, {3, kV3}};
static_assert(kMigrations[sizeof(kMigrations) / sizeof(kMigrations[0]) - 1]
                      .version == kSchemaVersion,
              "kSchemaVersion must be the last migration's version");

}  // namespace

absl::Span<const Migration> SchemaMigrations() { return kMigrations; }

}  // namespace fleetd::agent::storage_internal
