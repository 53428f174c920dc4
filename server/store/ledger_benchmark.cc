// What the exactly-once ledger costs (cached_ledger.h, pg_store.h), against a
// real PostgreSQL started by the test fixture:
//   BM_CacheHit            AreApplied for one batch whose key is in memory
//                          (the request path with the cache).
//   BM_CacheFill/keys      keys loaded into the cache (misses over an
//                          in-memory store): heap bytes per key held.
//   BM_PgCheck/new:0,1     one batch checked in PostgreSQL: the statement
//                          every request ran before the cache (0), and the
//                          coalesced one a miss runs now (1).
//   BM_Flush/mode/entries  one group-commit flush of `entries` batches:
//                          0 = one INSERT per batch (RecordApplied before),
//                          1 = one INSERT ... SELECT FROM unnest(arrays)
//                              (PgStore::RecordApplied now),
//                          2 = COPY into a temp table, then one INSERT ...
//                              SELECT (the alternative, measured slower).
//   BM_Retention/devices/batches/compact  devices x batches recorded in
//                          flushes of 400, a batch per device every 2.4
//                          simulated hours (100 batches: 10 days), compacted
//                          every simulated hour with 7 days' retention (or
//                          never): rows and table size at the end (as left,
//                          and after VACUUM FULL). The 10,000-device runs
//                          (1M batches, ~30 s each; 3M, 30 days, steady
//                          state) are left out of the smoke test:
//                            --benchmark_filter=Retention/devices:10000
#include <malloc.h>

#include <algorithm>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "benchmark/benchmark.h"
#include "common/clock/clock.h"
#include "pqxx/pqxx"
#include "server/store/cached_ledger.h"
#include "server/store/ledger_workload.h"
#include "server/store/pg_store.h"
#include "server/store/testing/fake_ledger_store.h"
#include "tests/fixtures/postgres_fixture.h"

namespace fleetd::server {
namespace {

// A fresh migrated database on the fixture's server.
struct Db {
  std::unique_ptr<PgPool> pool;
  std::unique_ptr<PgStore> store;
};

std::unique_ptr<Db> NewDb(benchmark::State& state, const std::string& name,
                          Clock* clock) {
  auto pg = fleetd::testing::PostgresFixture::Shared();
  if (!pg.ok()) {
    state.SkipWithError("cannot start PostgreSQL");
    return nullptr;
  }
  static int counter = 0;
  auto dsn = (*pg)->CreateDatabase(absl::StrCat(name, "_", ++counter));
  if (!dsn.ok()) {
    state.SkipWithError("cannot create a database");
    return nullptr;
  }
  auto db = std::make_unique<Db>();
  auto pool = PgPool::Connect({.dsn = *dsn, .size = 2});
  if (!pool.ok()) {
    state.SkipWithError("cannot connect");
    return nullptr;
  }
  db->pool = *std::move(pool);
  db->store = std::make_unique<PgStore>(db->pool.get(), clock);
  if (!db->store->Migrate().ok()) {
    state.SkipWithError("cannot migrate");
    return nullptr;
  }
  return db;
}

// 100 keys, seq `round` of each, as a group-commit flush carries them.
std::vector<LedgerEntry> Flush(int entries, int64_t round) {
  std::vector<LedgerEntry> out;
  out.reserve(entries);
  for (int i = 0; i < entries; ++i) {
    out.push_back({absl::StrCat("bench-device-", i), "metrics",
                   1'700'000'000'000'000'000 + round * 1'000'000'000, 100});
  }
  return out;
}

constexpr int kHitKeys = 10'000;

// A cache holding kHitKeys keys of 32 applied batches each, over a fake store
// that counts its calls (shared by the benchmark's threads).
struct HitSetup {
  testing::FakeLedgerStore store;
  std::unique_ptr<CachedLedger> cache;
};

HitSetup* Hits() {
  static HitSetup* setup = [] {
    auto* s = new HitSetup();
    std::vector<LedgerEntry> applied;
    for (int k = 0; k < kHitKeys; ++k) {
      for (int j = 0; j < 32; ++j) {
        applied.push_back(
            {absl::StrCat("bench-device-", k), "metrics",
             1'700'000'000'000'000'000 + int64_t{j} * 1'000'000'000, 1});
      }
    }
    auto cache = CachedLedger::Create(&s->store, {});
    if (!cache.ok() || !s->store.RecordApplied(applied).ok() ||
        !(*cache)->AreApplied(applied).ok()) {  // loads every key
      return s;
    }
    s->cache = *std::move(cache);
    return s;
  }();
  return setup;
}

void BM_CacheHit(benchmark::State& state) {
  HitSetup* setup = Hits();
  CachedLedger* cache = setup->cache.get();
  if (cache == nullptr) {
    state.SkipWithError("cannot fill the cache");
    return;
  }
  constexpr int kKeys = kHitKeys;
  testing::FakeLedgerStore* store = &setup->store;
  // Half applied (in the window), half the next batch (not applied).
  std::vector<LedgerEntry> asked;
  for (int k = 0; k < kKeys; ++k) {
    asked.push_back({absl::StrCat("bench-device-", k), "metrics",
                     1'700'000'000'000'000'000 +
                         int64_t{k % 2 == 0 ? 31 : 32} * 1'000'000'000,
                     1});
  }
  const int64_t reads = store->calls().reads();
  size_t i = static_cast<size_t>(state.thread_index()) * 7919;
  for (auto _ : state) {
    auto r = cache->AreApplied({&asked[i % asked.size()], 1});
    benchmark::DoNotOptimize(r);
    ++i;
  }
  if (store->calls().reads() != reads) {
    state.SkipWithError("a hit read the store");
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_CacheHit)->Threads(1)->Threads(2);

// Heap bytes in use (glibc), for the cache's memory per key.
double HeapInUse() {
  struct mallinfo2 m = mallinfo2();
  return static_cast<double>(m.uordblks + m.hblkhd);
}

// Loads `keys` keys with full 32-entry windows into a cache (misses over the
// fake store, 100 keys per call): heap bytes per key held, and time per key.
void BM_CacheFill(benchmark::State& state) {
  const int keys = static_cast<int>(state.range(0));
  for (auto _ : state) {
    state.PauseTiming();
    testing::FakeLedgerStore store;
    std::vector<LedgerEntry> asked;
    for (int k = 0; k < keys; ++k) {
      std::vector<LedgerEntry> applied;
      for (int j = 0; j < 32; ++j) {
        applied.push_back({absl::StrCat("device-", k), "metrics",
                           1'700'000'000'000'000'000 + int64_t{j}, 1});
      }
      (void)store.RecordApplied(applied);
      asked.push_back(applied.back());
    }
    const double before = HeapInUse();
    auto cache = CachedLedger::Create(&store, {.max_keys = keys});
    state.ResumeTiming();
    for (size_t i = 0; i < asked.size(); i += 100) {
      const size_t n = std::min<size_t>(100, asked.size() - i);
      auto r = (*cache)->AreApplied({&asked[i], n});
      benchmark::DoNotOptimize(r);
    }
    state.PauseTiming();
    state.counters["bytes_per_key"] = (HeapInUse() - before) / keys;
    state.counters["keys"] = static_cast<double>((*cache)->stats().keys);
    state.ResumeTiming();
  }
  state.SetItemsProcessed(state.iterations() * keys);
}
BENCHMARK(BM_CacheFill)
    ->Arg(100'000)
    ->Iterations(1)
    ->Unit(benchmark::kMillisecond);

void BM_PgCheck(benchmark::State& state) {
  const bool old = state.range(0) == 0;
  auto db = NewDb(state, "ledger_check", Clock::Real());
  if (db == nullptr) return;
  std::vector<LedgerEntry> applied = Flush(100, 1);
  if (!db->store->RecordApplied(applied).ok()) {
    state.SkipWithError("cannot record");
    return;
  }
  size_t i = 0;
  for (auto _ : state) {
    const LedgerEntry& e = applied[i++ % applied.size()];
    if (old) {
      bool found = false;
      absl::Status s = db->pool->Run([&](pqxx::connection& c) {
        pqxx::read_transaction r(c);
        found = !r.exec_params(
                      "SELECT 1 FROM sync_ledger WHERE device_id = $1 AND "
                      "stream = $2 AND sequence_number = $3",
                      e.device_id, e.stream, e.sequence_number)
                     .empty();
      });
      if (!s.ok() || !found) state.SkipWithError("old check failed");
    } else {
      auto r = db->store->AreApplied({&e, 1});
      if (!r.ok() || !(*r)[0]) state.SkipWithError("check failed");
    }
  }
  state.SetLabel(old ? "old: SELECT per request" : "new: unnest (a miss)");
}
BENCHMARK(BM_PgCheck)
    ->ArgName("new")
    ->Arg(0)
    ->Arg(1)
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

// RecordApplied as it was before the coalesced statement: one INSERT per
// batch in one transaction.
absl::Status RecordPerRow(PgPool* pool, absl::Span<const LedgerEntry> entries) {
  return pool->Run([&](pqxx::connection& c) {
    pqxx::work w(c);
    for (const LedgerEntry& e : entries) {
      w.exec_params(
          "INSERT INTO sync_ledger (device_id, stream, sequence_number, "
          "record_count) "
          "VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
          e.device_id, e.stream, e.sequence_number, e.record_count);
    }
    w.commit();
  });
}

// The COPY alternative: stream the flush into a temp table, insert from it.
absl::Status RecordByCopy(PgPool* pool, absl::Span<const LedgerEntry> entries) {
  return pool->Run([&](pqxx::connection& c) {
    pqxx::work w(c);
    w.exec(
        "CREATE TEMP TABLE IF NOT EXISTS ledger_in (device_id text, stream "
        "text, sequence_number bigint, record_count integer) ON COMMIT DELETE "
        "ROWS");
    {
      pqxx::stream_to copy(w, "ledger_in");
      for (const LedgerEntry& e : entries) {
        copy << std::make_tuple(e.device_id, e.stream, e.sequence_number,
                                e.record_count);
      }
      copy.complete();
    }
    w.exec(
        "INSERT INTO sync_ledger (device_id, stream, sequence_number, "
        "record_count, applied_at) SELECT device_id, stream, sequence_number, "
        "record_count, now() FROM ledger_in ORDER BY 1, 2, 3 "
        "ON CONFLICT DO NOTHING");
    w.commit();
  });
}

void BM_Flush(benchmark::State& state) {
  const int mode = static_cast<int>(state.range(0));
  const int entries = static_cast<int>(state.range(1));
  auto db = NewDb(state, "ledger_flush", Clock::Real());
  if (db == nullptr) return;
  int64_t round = 0;
  for (auto _ : state) {
    state.PauseTiming();
    std::vector<LedgerEntry> flush = Flush(entries, ++round);
    state.ResumeTiming();
    absl::Status s = mode == 0   ? RecordPerRow(db->pool.get(), flush)
                     : mode == 1 ? db->store->RecordApplied(flush)
                                 : RecordByCopy(db->pool.get(), flush);
    if (!s.ok()) {
      state.SkipWithError(std::string(s.message()).c_str());
      return;
    }
  }
  state.SetItemsProcessed(state.iterations() * entries);
  state.SetLabel(mode == 0   ? "per row (before)"
                 : mode == 1 ? "unnest, one statement (now)"
                             : "COPY + INSERT");
}
BENCHMARK(BM_Flush)
    ->ArgNames({"mode", "entries"})
    ->Args({0, 100})
    ->Args({1, 100})
    ->Args({2, 100})
    ->Args({1, 500})
    ->Args({2, 500})
    ->Unit(benchmark::kMicrosecond)
    ->UseRealTime();

void BM_Retention(benchmark::State& state) {
  LedgerWorkload w;
  w.devices = static_cast<int>(state.range(0));
  w.batches_per_device = static_cast<int>(state.range(1));
  w.flush_entries = 400;
  w.span = absl::Hours(2.4) * w.batches_per_device;  // 100 batches: 10 days
  if (state.range(2) == 0) w.retention = absl::ZeroDuration();
  for (auto _ : state) {
    SimulatedClock clock(absl::FromUnixSeconds(1'700'000'000));
    auto db = NewDb(state, "ledger_retention", &clock);
    if (db == nullptr) return;
    PgPool* pool = db->pool.get();
    w.vacuum = [pool] {
      return pool->Run([](pqxx::connection& c) {
        pqxx::nontransaction n(c);
        n.exec("VACUUM sync_ledger");
      });
    };
    auto run = RunLedgerWorkload(db->store.get(), &clock, w);
    if (!run.ok()) {
      state.SkipWithError(std::string(run.status().message()).c_str());
      return;
    }
    state.PauseTiming();
    // table_MB: as the run left it (VACUUM as autovacuum would, so deleted
    // rows' space is reused); table_MB_vacuumed: the live rows alone.
    absl::Status s = db->pool->Run([](pqxx::connection& c) {
      pqxx::nontransaction n(c);
      n.exec("VACUUM FULL sync_ledger");
      n.exec("VACUUM FULL sync_ledger_floor");
    });
    auto vacuumed = db->store->GetLedgerSize();
    state.ResumeTiming();
    state.counters["batches"] = static_cast<double>(run->batches);
    state.counters["compactions"] = static_cast<double>(run->compactions);
    state.counters["vacuums"] = static_cast<double>(run->vacuums);
    state.counters["rows"] = static_cast<double>(run->size.rows);
    state.counters["floor_keys"] = static_cast<double>(run->size.floor_keys);
    state.counters["table_MB"] = run->size.table_bytes / 1048576.0;
    if (s.ok() && vacuumed.ok()) {
      state.counters["table_MB_vacuumed"] = vacuumed->table_bytes / 1048576.0;
    }
  }
}
BENCHMARK(BM_Retention)
    ->ArgNames({"devices", "batches", "compact"})
    ->Args({200, 100, 1})
    ->Args({200, 100, 0})
    ->Args({10'000, 100, 1})
    ->Args({10'000, 100, 0})
    ->Args({10'000, 300, 1})
    ->Iterations(1)
    ->Unit(benchmark::kSecond)
    ->UseRealTime();

}  // namespace
}  // namespace fleetd::server
