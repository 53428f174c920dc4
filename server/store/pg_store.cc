#include "server/store/pg_store.h"

#include <algorithm>
#include <cstdint>
#include <limits>
#include <pqxx/pqxx>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "google/protobuf/util/json_util.h"
#include "server/auth/api_key.h"

namespace fleetd::server {
namespace {

// Schema migrations, applied in order; never edit one that has shipped, add a
// new one.
constexpr const char* kMigrations[] = {
    // 1: devices, keys, ledger.
    R"sql(
    CREATE TABLE devices (
      device_id     text PRIMARY KEY,
      org_id        text NOT NULL,
      created_at    timestamptz NOT NULL DEFAULT now(),
      last_seen     timestamptz,
      tier          integer,
      capability    jsonb,
      info          jsonb,
      hostname      text,
      agent_version text
    );
    CREATE INDEX devices_org ON devices (org_id);
    CREATE TABLE api_keys (
      key_id     text PRIMARY KEY,
      key_hash   text NOT NULL UNIQUE,
      device_id  text NOT NULL REFERENCES devices (device_id),
      org_id     text NOT NULL,
      created_at timestamptz NOT NULL DEFAULT now(),
      revoked_at timestamptz
    );
    CREATE INDEX api_keys_device ON api_keys (device_id);
    CREATE TABLE sync_ledger (
      device_id       text NOT NULL,
      stream          text NOT NULL,
      sequence_number bigint NOT NULL,
      record_count    integer NOT NULL,
      applied_at      timestamptz NOT NULL DEFAULT now(),
      PRIMARY KEY (device_id, stream, sequence_number)
    );
    CREATE INDEX sync_ledger_applied_at ON sync_ledger (applied_at);
    )sql",
    // 2: delivery health reported by each device (heartbeats, device info):
    // {"set_aside_batches":n,"set_aside_records":n,"evicted_records":n}.
    R"sql(
    ALTER TABLE devices ADD COLUMN sync_health jsonb;
    ALTER TABLE devices ADD COLUMN sync_health_at timestamptz;
    )sql",
    // 3: ledger retention: per (device, stream), every sequence number at or
    // below floor_seq counts as applied (its rows were compacted away).
    R"sql(
    CREATE TABLE sync_ledger_floor (
      device_id text NOT NULL,
      stream    text NOT NULL,
      floor_seq bigint NOT NULL,
      PRIMARY KEY (device_id, stream)
    );
    )sql",
    // 4: revocations by time, for key caches that ask what was revoked since
    // they last looked (KeyLookup::RevokedSince).
    R"sql(
    CREATE INDEX api_keys_revoked ON api_keys (revoked_at)
      WHERE revoked_at IS NOT NULL;
    )sql",
};
constexpr int kSchemaVersion = sizeof(kMigrations) / sizeof(kMigrations[0]);
// pg_advisory_xact_lock key that serialises migrations across servers ("fleetd"
// in ASCII).
constexpr int64_t kMigrationLock = 0x666c65657464;
// The same for ledger compactions ("fleetdLC"), so that two servers compacting
// at once neither deadlock on each other's rows nor do the work twice.
constexpr int64_t kCompactionLock = 0x666c656574644c43;

// A PostgreSQL array literal of text, {"a","b\"c"}, for unnest($n::text[]):
// one parameter for any number of values.
template <typename T, typename Get>
std::string TextArray(absl::Span<const T> items, Get get) {
  std::string out = "{";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ',';
    out += '"';
    for (char ch : get(items[i])) {
      if (ch == '"' || ch == '\\') out += '\\';
      out += ch;
    }
    out += '"';
  }
  out += '}';
  return out;
}

// A PostgreSQL array literal of integers, {1,2,3}.
template <typename T, typename Get>
std::string IntArray(absl::Span<const T> items, Get get) {
  std::string out = "{";
  for (size_t i = 0; i < items.size(); ++i) {
    if (i > 0) out += ',';
    absl::StrAppend(&out, get(items[i]));
  }
  out += '}';
  return out;
}

const std::string& DeviceOf(const LedgerEntry& e) { return e.device_id; }
const std::string& StreamOf(const LedgerEntry& e) { return e.stream; }

std::string ToTimestamptz(absl::Time t) {
  return absl::FormatTime("%Y-%m-%d %H:%M:%E6S+00", t, absl::UTCTimeZone());
}

absl::Time ParseTimestamp(const std::string& text) {
  // Returned by PostgreSQL as ISO 8601 in the session time zone, which we set
  // to UTC.
  absl::Time t;
  std::string err;
  if (absl::ParseTime("%Y-%m-%d %H:%M:%E*S%Ez", text, &t, &err)) return t;
  if (absl::ParseTime("%Y-%m-%d %H:%M:%E*S%z", text + "00", &t, &err)) return t;
  return absl::UnixEpoch();
}

std::string ToJson(const google::protobuf::Message& m) {
  std::string out;
  google::protobuf::util::JsonPrintOptions opts;
  opts.preserve_proto_field_names = true;
  if (!google::protobuf::util::MessageToJsonString(m, &out, opts).ok())
    return "{}";
  return out;
}

void SetUtc(pqxx::connection& c) { c.set_variable("TimeZone", "'UTC'"); }

}  // namespace

absl::Status PgStore::Migrate() {
  return pool_->Run([](pqxx::connection& c) {
    pqxx::work w(c);
    w.exec_params("SELECT pg_advisory_xact_lock($1)", kMigrationLock);
    w.exec(
        "CREATE TABLE IF NOT EXISTS schema_migrations ("
        " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT "
        "now())");
    int current =
        w.exec1("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")[0]
            .as<int>();
    for (int v = current + 1; v <= kSchemaVersion; ++v) {
      w.exec(kMigrations[v - 1]);
      w.exec_params("INSERT INTO schema_migrations (version) VALUES ($1)", v);
    }
    w.commit();
  });
}

absl::StatusOr<int> PgStore::SchemaVersion() {
  int version = 0;
  absl::Status s = pool_->Run([&](pqxx::connection& c) {
    pqxx::read_transaction r(c);
    version =
        r.exec1("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")[0]
            .as<int>();
  });
  if (!s.ok()) return s;
  return version;
}

absl::StatusOr<NewKey> PgStore::CreateKey(const std::string& device_id,
                                          const std::string& org_id) {
  auto keys = CreateKeysInternal({device_id}, org_id);
  if (!keys.ok()) return keys.status();
  return (*keys)[0];
}

absl::StatusOr<std::vector<NewKey>> PgStore::CreateKeys(
    const std::string& prefix, const std::string& org_id, int count) {
  if (count < 1) return absl::InvalidArgumentError("count must be at least 1");
  std::vector<std::string> ids;
  ids.reserve(count);
  for (int i = 1; i <= count; ++i)
    ids.push_back(absl::StrFormat("%s-%05d", prefix, i));
  return CreateKeysInternal(ids, org_id);
}

absl::StatusOr<std::vector<NewKey>> PgStore::CreateKeysInternal(
    const std::vector<std::string>& device_ids, const std::string& org_id) {
  if (org_id.empty())
    return absl::InvalidArgumentError("org id must not be empty");
  std::vector<NewKey> keys;
  keys.reserve(device_ids.size());
  for (const auto& id : device_ids) {
    if (id.empty())
      return absl::InvalidArgumentError("device id must not be empty");
    auto generated = GenerateApiKey();
    if (!generated.ok()) return generated.status();
    keys.push_back({generated->key_id, id, org_id, generated->api_key});
  }
  std::string conflict;
  absl::Status s = pool_->Run([&](pqxx::connection& c) {
    conflict.clear();
    pqxx::work w(c);
    for (const NewKey& k : keys) {
      pqxx::result r = w.exec_params(
          "INSERT INTO devices (device_id, org_id) VALUES ($1, $2) "
          "ON CONFLICT (device_id) DO UPDATE SET device_id = "
          "EXCLUDED.device_id "
          "RETURNING org_id",
          k.device_id, k.org_id);
      if (r[0][0].as<std::string>() != k.org_id) {
        conflict = k.device_id;
        return;  // rolls back
      }
      w.exec_params(
          "INSERT INTO api_keys (key_id, key_hash, device_id, org_id) "
          "VALUES ($1, $2, $3, $4)",
          k.key_id, HashApiKey(k.api_key), k.device_id, k.org_id);
    }
    w.commit();
  });
  if (!s.ok()) return s;
  if (!conflict.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat("device ", conflict, " already belongs to another org"));
  }
  return keys;
}

absl::StatusOr<NewKey> PgStore::RotateKey(const std::string& device_id) {
  std::optional<std::string> org;
  absl::Status s = pool_->Run([&](pqxx::connection& c) {
    pqxx::read_transaction r(c);
    pqxx::result res = r.exec_params(
        "SELECT org_id FROM devices WHERE device_id = $1", device_id);
    org.reset();
    if (!res.empty()) org = res[0][0].as<std::string>();
  });
  if (!s.ok()) return s;
  if (!org.has_value()) {
    return absl::NotFoundError(absl::StrCat("no device ", device_id));
  }
  return CreateKey(device_id, *org);
}

absl::Status PgStore::RevokeKey(const std::string& key_id) {
  int affected = 0;
  absl::Status s = pool_->Run([&](pqxx::connection& c) {
    pqxx::work w(c);
    affected = w.exec_params(
                    "UPDATE api_keys SET revoked_at = now() "
                    "WHERE key_id = $1 AND revoked_at IS NULL",
                    key_id)
                   .affected_rows();
    w.commit();
  });
  if (!s.ok()) return s;
  if (affected == 0)
    return absl::NotFoundError(absl::StrCat("no active key ", key_id));
  return absl::OkStatus();
}

absl::StatusOr<int> PgStore::RevokeDeviceKeys(const std::string& device_id) {
  int affected = 0;
  absl::Status s = pool_->Run([&](pqxx::connection& c) {
    pqxx::work w(c);
    affected = w.exec_params(
                    "UPDATE api_keys SET revoked_at = now() "
                    "WHERE device_id = $1 AND revoked_at IS NULL",
                    device_id)
                   .affected_rows();
    w.commit();
  });
  if (!s.ok()) return s;
  return affected;
}

absl::StatusOr<std::vector<KeyInfo>> PgStore::ListKeys(
    const std::string& device_id) {
  std::vector<KeyInfo> out;
  absl::Status s = pool_->Run([&](pqxx::connection& c) {
    SetUtc(c);
    out.clear();
    pqxx::read_transaction r(c);
    pqxx::result res = r.exec_params(
        "SELECT key_id, device_id, org_id, created_at::text, revoked_at::text "
        "FROM api_keys WHERE $1 = '' OR device_id = $1 ORDER BY device_id, "
        "created_at",
        device_id);
    for (const auto& row : res) {
      KeyInfo k;
      k.key_id = row[0].as<std::string>();
      k.device_id = row[1].as<std::string>();
      k.org_id = row[2].as<std::string>();
      k.created_at = ParseTimestamp(row[3].as<std::string>());
      if (!row[4].is_null())
        k.revoked_at = ParseTimestamp(row[4].as<std::string>());
      out.push_back(std::move(k));
    }
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<std::optional<DeviceIdentity>> PgStore::LookupKeyHash(
    const std::string& sha256_hex) {
  std::optional<DeviceIdentity> identity;
  absl::Status s = pool_->Run([&](pqxx::connection& c) {
    identity.reset();
    pqxx::nontransaction r(c);  // one statement: its own snapshot
    pqxx::result res = r.exec_params(
        "SELECT device_id, org_id, key_id FROM api_keys "
        "WHERE key_hash = $1 AND revoked_at IS NULL",
        sha256_hex);
    if (!res.empty()) {
      identity = DeviceIdentity{res[0][0].as<std::string>(),
                                res[0][1].as<std::string>(),
                                res[0][2].as<std::string>()};
    }
  });
  if (!s.ok()) return s;
  return identity;
}

absl::StatusOr<KeyLookup::Revocations> PgStore::RevokedSince(absl::Time since) {
  Revocations out;
  absl::Status s = pool_->Run([&](pqxx::connection& c) {
    SetUtc(c);
    out = Revocations();
    pqxx::nontransaction r(c);  // one statement: its own snapshot
    // Hashes are hex, so a comma-joined list parses back without quoting.
    pqxx::result res = r.exec_params(
        "SELECT now()::text, coalesce(string_agg(key_hash, ','), '') "
        "FROM api_keys WHERE revoked_at >= $1::timestamptz",
        since == absl::InfinitePast()     ? std::string("-infinity")
        : since == absl::InfiniteFuture() ? std::string("infinity")
                                          : ToTimestamptz(since));
    out.now = ParseTimestamp(res[0][0].as<std::string>());
    const std::string hashes = res[0][1].as<std::string>();
    if (!hashes.empty()) out.hashes = absl::StrSplit(hashes, ',');
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<KeyLookup::ValidKeySet> PgStore::ValidKeys(size_t limit) {
  ValidKeySet out;
  absl::Status s = pool_->Run([&](pqxx::connection& c) {
    SetUtc(c);
    out = ValidKeySet();
    pqxx::read_transaction r(c);
    out.now =
        ParseTimestamp(r.exec1("SELECT now()::text")[0].as<std::string>());
    pqxx::result res = r.exec_params(
        "SELECT key_hash, device_id, org_id, key_id FROM api_keys "
        "WHERE revoked_at IS NULL ORDER BY created_at DESC LIMIT $1",
        static_cast<int64_t>(
            std::min<size_t>(limit, std::numeric_limits<int64_t>::max())));
    out.keys.reserve(res.size());
    for (const auto& row : res) {
      out.keys.emplace_back(
          row[0].as<std::string>(),
          DeviceIdentity{row[1].as<std::string>(), row[2].as<std::string>(),
                         row[3].as<std::string>()});
    }
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<std::vector<bool>> PgStore::AreApplied(
    absl::Span<const LedgerEntry> entries) {
  std::vector<bool> applied(entries.size(), false);
  if (entries.empty()) return applied;
  const std::string devices = TextArray(entries, DeviceOf);
  const std::string streams = TextArray(entries, StreamOf);
  const std::string seqs =
      IntArray(entries, [](const LedgerEntry& e) { return e.sequence_number; });
  absl::Status s = pool_->Run([&](pqxx::connection& c) {
    pqxx::nontransaction r(c);  // one statement: its own snapshot
    pqxx::result rows = r.exec_params(
        "SELECT k.i, EXISTS (SELECT 1 FROM sync_ledger l WHERE l.device_id = "
        "k.d AND l.stream = k.s AND l.sequence_number = k.q) "
        "FROM unnest($1::text[], $2::text[], $3::bigint[]) WITH ORDINALITY "
        "AS k(d, s, q, i)",
        devices, streams, seqs);
    for (const auto& row : rows) {
      applied[row[0].as<size_t>() - 1] = row[1].as<bool>();
    }
  });
  if (!s.ok()) return s;
  return applied;
}

absl::Status PgStore::RecordApplied(absl::Span<const LedgerEntry> entries) {
  return RecordAppliedCountingPresent(entries).status();
}

absl::StatusOr<int64_t> PgStore::RecordAppliedCountingPresent(
    absl::Span<const LedgerEntry> entries) {
  if (entries.empty()) return 0;
  const std::string devices = TextArray(entries, DeviceOf);
  const std::string streams = TextArray(entries, StreamOf);
  const std::string seqs =
      IntArray(entries, [](const LedgerEntry& e) { return e.sequence_number; });
  const std::string counts =
      IntArray(entries, [](const LedgerEntry& e) { return e.record_count; });
  const std::string now = ToTimestamptz(clock_->Now());
  int64_t inserted = 0;
  absl::Status s = pool_->Run([&](pqxx::connection& c) {
    // One statement, so no transaction around it: BEGIN and COMMIT would be
    // two more round trips per flush. A connection lost while it runs leaves
    // the outcome unknown, exactly as a COMMIT lost in flight would (the
    // caller treats every failure as "may have been recorded").
    pqxx::nontransaction w(c);
    // In key order, so that two flushes sharing keys (two servers) wait on
    // each other instead of deadlocking.
    inserted =
        w.exec_params(
             "INSERT INTO sync_ledger (device_id, stream, sequence_number, "
             "record_count, applied_at) "
             "SELECT k.d, k.s, k.q, k.c, $5::timestamptz "
             "FROM unnest($1::text[], $2::text[], $3::bigint[], $4::integer[]) "
             "AS k(d, s, q, c) "
             "ORDER BY k.d, k.s, k.q ON CONFLICT DO NOTHING",
             devices, streams, seqs, counts, now)
            .affected_rows();
  });
  if (!s.ok()) return s;
  return static_cast<int64_t>(entries.size()) - inserted;
}

absl::StatusOr<std::vector<LedgerHistory>> PgStore::LoadHistory(
    absl::Span<const LedgerKey> keys, int limit) {
  if (limit < 1) return absl::InvalidArgumentError("limit must be at least 1");
  std::vector<LedgerHistory> out(keys.size());
  if (keys.empty()) return out;
  const std::string devices = TextArray(
      keys,
      [](const LedgerKey& k) -> const std::string& { return k.device_id; });
  const std::string streams = TextArray(
      keys, [](const LedgerKey& k) -> const std::string& { return k.stream; });
  absl::Status s = pool_->Run([&](pqxx::connection& c) {
    for (LedgerHistory& h : out) h = LedgerHistory();
    pqxx::nontransaction r(c);  // one statement: its own snapshot
    // One row more than asked tells whether older rows exist (`older`).
    pqxx::result rows = r.exec_params(
        "SELECT k.i, f.floor_seq, l.sequence_number "
        "FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS k(d, s, i) "
        "LEFT JOIN sync_ledger_floor f ON f.device_id = k.d AND f.stream = k.s "
        "LEFT JOIN LATERAL (SELECT sequence_number FROM sync_ledger l "
        "WHERE l.device_id = k.d AND l.stream = k.s "
        "ORDER BY l.sequence_number DESC LIMIT $3) l ON true",
        devices, streams, limit + 1);
    for (const auto& row : rows) {
      LedgerHistory& h = out[row[0].as<size_t>() - 1];
      if (!row[1].is_null()) h.floor = row[1].as<int64_t>();
      if (!row[2].is_null()) h.recent.push_back(row[2].as<int64_t>());
    }
  });
  if (!s.ok()) return s;
  for (LedgerHistory& h : out) {
    std::sort(h.recent.begin(), h.recent.end());
    h.older = h.floor;
    if (h.recent.size() > static_cast<size_t>(limit)) {
      h.older = std::max(h.floor, h.recent.front());
      h.recent.erase(h.recent.begin());
    }
  }
  return out;
}

absl::StatusOr<std::vector<LedgerKey>> PgStore::RecentKeys(
    absl::Duration within, size_t limit) {
  std::vector<LedgerKey> out;
  if (limit == 0) return out;
  // applied_at is written from the injected clock: compare on it too.
  const std::string since = ToTimestamptz(clock_->Now() - within);
  absl::Status s = pool_->Run([&](pqxx::connection& c) {
    out.clear();
    pqxx::nontransaction r(c);
    pqxx::result rows = r.exec_params(
        "SELECT device_id, stream FROM sync_ledger "
        "WHERE applied_at >= $1::timestamptz "
        "GROUP BY device_id, stream ORDER BY max(applied_at) DESC LIMIT $2",
        since,
        static_cast<int64_t>(
            std::min<size_t>(limit, std::numeric_limits<int64_t>::max())));
    out.reserve(rows.size());
    for (const auto& row : rows) {
      out.push_back({row[0].as<std::string>(), row[1].as<std::string>()});
    }
  });
  if (!s.ok()) return s;
  return out;
}

absl::StatusOr<LedgerCompaction> PgStore::CompactLedger(absl::Time older_than) {
  LedgerCompaction done;
  const std::string cutoff = ToTimestamptz(older_than);
  absl::Status s = pool_->Run([&](pqxx::connection& c) {
    pqxx::work w(c);
    w.exec_params("SELECT pg_advisory_xact_lock($1)", kCompactionLock);
    pqxx::row row = w.exec_params1(
        "WITH gone AS (DELETE FROM sync_ledger WHERE applied_at < "
        "$1::timestamptz RETURNING device_id, stream, sequence_number), "
        "raised AS (INSERT INTO sync_ledger_floor AS f (device_id, stream, "
        "floor_seq) SELECT device_id, stream, max(sequence_number) FROM gone "
        "GROUP BY device_id, stream ON CONFLICT (device_id, stream) DO UPDATE "
        "SET floor_seq = GREATEST(f.floor_seq, EXCLUDED.floor_seq) "
        "RETURNING 1) "
        "SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM raised)",
        cutoff);
    done.rows_deleted = row[0].as<int64_t>();
    done.floors_raised = row[1].as<int64_t>();
    w.commit();
  });
  if (!s.ok()) return s;
  return done;
}

absl::StatusOr<LedgerSize> PgStore::GetLedgerSize() {
  LedgerSize size;
  absl::Status s = pool_->Run([&](pqxx::connection& c) {
    pqxx::read_transaction r(c);
    pqxx::row row = r.exec1(
        "SELECT (SELECT count(*) FROM sync_ledger), "
        "(SELECT count(*) FROM sync_ledger_floor), "
        "pg_total_relation_size('sync_ledger') + "
        "pg_total_relation_size('sync_ledger_floor')");
    size.rows = row[0].as<int64_t>();
    size.floor_keys = row[1].as<int64_t>();
    size.table_bytes = row[2].as<int64_t>();
  });
  if (!s.ok()) return s;
  return size;
}

absl::Status PgStore::TouchDevices(absl::Span<const std::string> device_ids,
                                   absl::Time seen) {
  if (device_ids.empty()) return absl::OkStatus();
  const std::string ids =
      TextArray(device_ids,
                [](const std::string& id) -> const std::string& { return id; });
  const std::string when = ToTimestamptz(seen);
  return pool_->Run([&](pqxx::connection& c) {
    // One statement for every device (a round trip per device made a flush
    // of a large fleet cost thousands). Rows are locked in device order, so
    // two servers touching overlapping devices wait instead of deadlocking.
    pqxx::nontransaction w(c);
    w.exec_params(
        "WITH k AS (SELECT device_id FROM devices "
        "WHERE device_id = ANY($1::text[]) ORDER BY device_id FOR UPDATE) "
        "UPDATE devices d SET last_seen = GREATEST(COALESCE(d.last_seen, "
        "$2::timestamptz), $2::timestamptz) FROM k "
        "WHERE d.device_id = k.device_id",
        ids, when);
  });
}

namespace {

std::string SyncHealthJson(const SyncHealth& h) {
  return absl::StrCat("{\"set_aside_batches\":", h.set_aside_batches,
                      ",\"set_aside_records\":", h.set_aside_records,
                      ",\"evicted_records\":", h.evicted_records, "}");
}

}  // namespace

absl::Status PgStore::RecordSyncHealth(
    absl::Span<const SyncHealthReport> reports) {
  if (reports.empty()) return absl::OkStatus();
  return pool_->Run([&](pqxx::connection& c) {
    pqxx::work w(c);
    for (const SyncHealthReport& r : reports) {
      // An older report never overwrites a newer one.
      w.exec_params(
          "UPDATE devices SET sync_health = $2::jsonb, sync_health_at = "
          "$3::timestamptz WHERE device_id = $1 AND (sync_health_at IS NULL "
          "OR sync_health_at <= $3::timestamptz)",
          r.device_id, SyncHealthJson(r.health), ToTimestamptz(r.reported_at));
    }
    w.commit();
  });
}

absl::StatusOr<std::optional<SyncHealthReport>> PgStore::GetSyncHealth(
    const std::string& device_id) {
  std::optional<SyncHealthReport> out;
  absl::Status s = pool_->Run([&](pqxx::connection& c) {
    SetUtc(c);
    pqxx::read_transaction r(c);
    pqxx::result rows = r.exec_params(
        "SELECT (sync_health->>'set_aside_batches')::bigint, "
        "(sync_health->>'set_aside_records')::bigint, "
        "(sync_health->>'evicted_records')::bigint, sync_health_at::text "
        "FROM devices WHERE device_id = $1 AND sync_health IS NOT NULL",
        device_id);
    if (rows.empty()) return;
    SyncHealthReport report;
    report.device_id = device_id;
    report.health.set_aside_batches = rows[0][0].as<int64_t>(0);
    report.health.set_aside_records = rows[0][1].as<int64_t>(0);
    report.health.evicted_records = rows[0][2].as<int64_t>(0);
    report.reported_at = ParseTimestamp(rows[0][3].as<std::string>());
    out = report;
  });
  if (!s.ok()) return s;
  return out;
}

absl::Status PgStore::UpdateDeviceInfo(
    const DeviceIdentity& device, const v1::DeviceInfo& info,
    const v1::SyncDeviceCapability* capability, absl::Time seen) {
  return pool_->Run([&](pqxx::connection& c) {
    pqxx::work w(c);
    w.exec_params(
        "UPDATE devices SET info = $2::jsonb, hostname = $3, agent_version = "
        "$4, "
        "last_seen = GREATEST(COALESCE(last_seen, $5::timestamptz), "
        "$5::timestamptz), "
        "tier = COALESCE($6, tier), capability = COALESCE($7::jsonb, "
        "capability), "
        "sync_health = CASE WHEN sync_health_at IS NULL OR sync_health_at <= "
        "$5::timestamptz THEN $8::jsonb ELSE sync_health END, "
        "sync_health_at = GREATEST(COALESCE(sync_health_at, $5::timestamptz), "
        "$5::timestamptz) "
        "WHERE device_id = $1",
        device.device_id, ToJson(info), info.hostname(), info.agent_version(),
        ToTimestamptz(seen),
        capability != nullptr ? std::optional<int>(capability->tier())
                              : std::nullopt,
        capability != nullptr ? std::optional<std::string>(ToJson(*capability))
                              : std::nullopt,
        SyncHealthJson({info.set_aside_batches(), info.set_aside_records(),
                        info.evicted_records()}));
    w.commit();
  });
}

}  // namespace fleetd::server
