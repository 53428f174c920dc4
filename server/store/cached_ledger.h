// An in-memory cache in front of the ledger store, so that checking a batch
// against the exactly-once ledger costs no PostgreSQL statement per request.
//
// What it keeps: per (device, stream) key, a window of the key's highest
// applied sequence numbers (Options::window, a small sorted array whose
// memory is reused when the key is evicted, so requests cause no heap
// allocation once the key is loaded) and the number at or below which it
// cannot judge (`older`: numbers left out of the window, the store's floor
// of numbers retention forgot, numbers whose write failed in doubt). At most
// Options::max_keys keys are held; beyond that, keys not looked at since the
// clock hand last passed are evicted (second chance), counted in
// fleetd_ledger_cache_evictions_total.
//
// AreApplied, per entry whose key is loaded (fleetd_ledger_cache_lookups_total
// result="hit"): applied if the sequence number is in the window; not
// applied if it is above `older`; otherwise ("miss_old") the store answers
// for that entry. Keys not loaded ("miss_key") are loaded from the store:
// their floor and their highest `window` sequence numbers, one LoadHistory
// call for all missing keys of the call, and one AreApplied call for all
// "miss_old" entries. So the store is read only on a miss, and "applied" is
// only ever answered for a number whose row this server saw or wrote.
//
// RecordApplied writes through to the store first and adds the entries to the
// loaded keys only after the store committed them; after a failed write (it
// may have committed anyway) the entries' numbers become unknown, so the next
// check of each asks the store. Entries the store already had (recorded by
// another server, or twice) are counted in fleetd_ledger_conflicts_total and
// logged.
//
// Several servers sharing one store: each has its own cache. A key is loaded
// from the store on a server's first sight of it, so what another server
// applied before then is seen. After that, a cached "not applied" for a
// sequence number above this server's window can be stale when another server
// applied it since. That is accepted: a device sends one batch per stream at a
// time and retries it where it can reach, every backend writer is idempotent
// (writer.h: a re-write never duplicates what readers see), and the ledger
// insert is ON CONFLICT DO NOTHING; such a second write shows up in
// fleetd_ledger_conflicts_total.
//
// Sequence numbers are taken as our agent makes them: increasing per stream,
// with gaps, one batch per stream in flight at a time, a rejected batch re-sent
// under a new higher number. The window only has to hold the few most recent
// batches a device may retry; older ones are answered by the store.
//
// Memory: about 200 bytes plus 8 per window entry for each key held (~450 MB
// at the default 1M keys with full 32-entry windows).
//
// Safe for concurrent use. The store must outlive the cache, and the cache
// must be the only path through which this server records batches (writes
// that bypass it are seen only by keys loaded after them).
#ifndef FLEETD_SERVER_STORE_CACHED_LEDGER_H_
#define FLEETD_SERVER_STORE_CACHED_LEDGER_H_

#include <cstdint>
#include <memory>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "absl/types/span.h"
#include "common/metrics/metrics.h"
#include "server/store/store.h"

namespace fleetd::server {

class CachedLedger final : public Ledger {
 public:
  struct Options {
    // Most (device, stream) keys held at once (>= 1).
    int64_t max_keys = 1'000'000;
    // Highest applied sequence numbers kept per key (1 to 4096).
    int window = 32;
    // Where the counters go; nullptr: a registry of the cache's own (stats()
    // works either way). Must outlive the cache.
    metrics::Registry* metrics = nullptr;
  };

  // Totals since creation.
  struct Stats {
    int64_t hits = 0;        // entries answered from memory
    int64_t key_misses = 0;  // entries whose key had to be loaded
    int64_t old_misses = 0;  // entries the store answered (below the window)
    int64_t evictions = 0;   // keys dropped to stay within max_keys
    int64_t conflicts = 0;   // recorded entries the store already had
    int64_t keys = 0;        // keys held now
  };

  // INVALID_ARGUMENT for options out of range.
  static absl::StatusOr<std::unique_ptr<CachedLedger>> Create(
      LedgerStore* store, Options options);
  ~CachedLedger() override;
  CachedLedger(const CachedLedger&) = delete;
  CachedLedger& operator=(const CachedLedger&) = delete;

  // Errors are the store's (only a miss reads it); nothing is cached from a
  // failed call.
  absl::StatusOr<std::vector<bool>> AreApplied(
      absl::Span<const LedgerEntry> entries) override;
  // The store's error, if any, with the cache unchanged.
  absl::Status RecordApplied(absl::Span<const LedgerEntry> entries) override;

  // Loads the keys the store saw a batch for within `within` (at most half
  // of max_keys, most recent first), as a miss would load them, in store
  // calls of up to kWarmChunk keys, so that a restarted server's devices,
  // which all come back at once, find their keys in memory instead of costing
  // a LoadHistory each. Keys held already are left as they are. Returns how
  // many keys it loaded; on a store error (UNIMPLEMENTED when the store
  // cannot list keys) the keys loaded before it stay. A warmed key is as a
  // key loaded at first sight (see above on several servers), loaded a little
  // earlier.
  static constexpr size_t kWarmChunk = 5000;
  absl::StatusOr<int64_t> Warm(absl::Duration within);

  Stats stats() const;

 private:
  struct Shard;
  struct Counters;
  CachedLedger(LedgerStore* store, Options options);
  Shard& ShardFor(size_t hash) const;
  // Runs `fn(slot, loading)` under the lock of the shard of `entry`'s key,
  // with the key's cached slot and its load under way, each null when
  // absent. Defined in the .cc, its only user.
  template <typename Fn>
  void WithKey(const LedgerEntry& entry, Fn fn) const;
  // Loads `keys` (distinct; hashes[k] their hash) from the store in one call
  // and holds them (merged into any loaded meanwhile), then calls
  // `visit(k, slot)` for each under its shard's lock. Defined in the .cc, its
  // only user.
  template <typename Visit>
  absl::Status LoadKeys(const std::vector<LedgerKey>& keys,
                        const std::vector<size_t>& hashes, Visit visit);
  // Loads the keys of entries[i] for i in `missing` and answers those
  // entries, adding the ones the store must answer to `unknown`.
  absl::Status LoadAndAnswer(absl::Span<const LedgerEntry> entries,
                             absl::Span<const size_t> missing,
                             std::vector<bool>& out,
                             std::vector<size_t>& unknown);

  LedgerStore* const store_;
  const Options options_;
  std::unique_ptr<metrics::Registry> own_metrics_;
  std::unique_ptr<Counters> counters_;
  size_t shard_count_;
  std::unique_ptr<Shard[]> shards_;
};

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_STORE_CACHED_LEDGER_H_
