#include "server/store/cached_ledger.h"

#include <algorithm>
#include <deque>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "common/status/status_macros.h"
#include "glog/logging.h"

namespace fleetd::server {
namespace {

// (device_id, stream), viewing strings owned elsewhere.
using KeyRef = std::pair<absl::string_view, absl::string_view>;

size_t HashOf(const KeyRef& key) { return absl::Hash<KeyRef>{}(key); }

enum class Answer { kApplied, kNotApplied, kUnknown };

// One key held in memory. Invariant: every sequence number of the key that
// this server knows applied and that is above `older` is in `window`.
struct Slot {
  std::string device_id;
  std::string stream;
  // Numbers at or below it that are not in `window` are unknown here: left
  // out of the window (dropped, or never loaded), forgotten by retention (the
  // store's floor), or written in doubt (a failed RecordApplied).
  int64_t older = INT64_MIN;
  std::vector<int64_t> window;  // ascending; capacity kept when reused
  bool referenced = false;      // looked at since the clock hand passed

  Answer Evaluate(int64_t seq) const {
    if (std::binary_search(window.begin(), window.end(), seq)) {
      return Answer::kApplied;
    }
    if (seq <= older) return Answer::kUnknown;
    return Answer::kNotApplied;
  }

  void Add(int64_t seq, size_t max) {
    auto it = std::lower_bound(window.begin(), window.end(), seq);
    if (it != window.end() && *it == seq) return;
    window.insert(it, seq);
    if (window.size() > max) {
      older = std::max(older, window.front());
      window.erase(window.begin());
    }
  }

  // Everything `h` adds to what is held (a load racing with another).
  void Merge(const LedgerHistory& h, size_t max) {
    older = std::max({older, h.older, h.floor});
    for (int64_t seq : h.recent) Add(seq, max);
  }

  // A write of `seq` whose outcome is unknown: ask the store next time.
  void Doubt(int64_t seq) {
    older = std::max(older, seq);
    auto it = std::lower_bound(window.begin(), window.end(), seq);
    if (it != window.end() && *it == seq) window.erase(it);
  }

  void Reset(const LedgerKey& key, const LedgerHistory& h, size_t max) {
    referenced = false;
    device_id = key.device_id;
    stream = key.stream;
    older = std::max(h.older, h.floor);
    window.clear();
    window.reserve(max + 1);  // Add inserts before it trims
    for (int64_t seq : h.recent) Add(seq, max);
  }
};

// A load from the store under way for a key not held: what RecordApplied
// committed for the key meanwhile, merged when the load lands (the load may
// have read the store before that commit).
struct Loading {
  int loaders = 0;
  std::vector<int64_t> recorded;
  // The highest number whose write failed meanwhile (it may have committed).
  int64_t doubt = INT64_MIN;
};

}  // namespace

struct CachedLedger::Counters {
  explicit Counters(metrics::Registry& m)
      : hits(Lookups(m).WithLabels({"hit"})),
        key_misses(Lookups(m).WithLabels({"miss_key"})),
        old_misses(Lookups(m).WithLabels({"miss_old"})),
        evictions(
            m.GetCounter("fleetd_ledger_cache_evictions_total",
                         "Ledger keys (device, stream) dropped from "
                         "memory to stay within FLEET_LEDGER_CACHE_KEYS.")),
        conflicts(m.GetCounter(
            "fleetd_ledger_conflicts_total",
            "Batches recorded in the ledger that were there already (applied "
            "by another server, or twice): their backend writes were "
            "repeated, harmlessly.")),
        keys(m.GetGauge("fleetd_ledger_cache_keys",
                        "Ledger keys (device, stream) held in memory.")) {}

  static metrics::Family<metrics::Counter>& Lookups(metrics::Registry& m) {
    return m.CounterFamily(
        "fleetd_ledger_cache_lookups_total",
        "Ledger checks by where the answer came from: hit (memory), miss_key "
        "(key loaded from PostgreSQL), miss_old (below the cached window, "
        "asked PostgreSQL).",
        {"result"});
  }

  metrics::Counter& hits;
  metrics::Counter& key_misses;
  metrics::Counter& old_misses;
  metrics::Counter& evictions;
  metrics::Counter& conflicts;
  metrics::Gauge& keys;
};

struct CachedLedger::Shard {
  absl::Mutex mu;
  size_t capacity = 0;
  // Slots never move (deque), so `index` can view their strings.
  std::deque<Slot> slots ABSL_GUARDED_BY(mu);
  absl::flat_hash_map<KeyRef, uint32_t> index ABSL_GUARDED_BY(mu);
  size_t hand ABSL_GUARDED_BY(mu) = 0;
  absl::flat_hash_map<std::pair<std::string, std::string>, Loading> loading
      ABSL_GUARDED_BY(mu);

  // A slot for a new key: a fresh one below capacity, else the first the
  // clock hand finds unreferenced (its key leaves the index).
  uint32_t Take(Counters& counters) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (slots.size() < capacity) {
      slots.emplace_back();
      counters.keys.Add(1);
      return static_cast<uint32_t>(slots.size() - 1);
    }
    for (;;) {
      size_t i = hand;
      hand = (hand + 1) % slots.size();
      Slot& victim = slots[i];
      if (victim.referenced) {
        victim.referenced = false;
        continue;
      }
      index.erase(KeyRef(victim.device_id, victim.stream));
      counters.evictions.Increment();
      return static_cast<uint32_t>(i);
    }
  }
};

CachedLedger::CachedLedger(LedgerStore* store, Options options)
    : store_(store), options_(options) {
  metrics::Registry* registry = options_.metrics;
  if (registry == nullptr) {
    own_metrics_ = std::make_unique<metrics::Registry>();
    registry = own_metrics_.get();
  }
  counters_ = std::make_unique<Counters>(*registry);
  // Shards spread the lock; small caches keep one so the bound is exact.
  shard_count_ = options_.max_keys >= 16 * 1024 ? 16 : 1;
  shards_ = std::make_unique<Shard[]>(shard_count_);
  for (size_t i = 0; i < shard_count_; ++i) {
    shards_[i].capacity = static_cast<size_t>(options_.max_keys) / shard_count_;
  }
}

CachedLedger::~CachedLedger() = default;

absl::StatusOr<std::unique_ptr<CachedLedger>> CachedLedger::Create(
    LedgerStore* store, Options options) {
  if (store == nullptr) return absl::InvalidArgumentError("no ledger store");
  if (options.max_keys < 1 || options.max_keys > (int64_t{1} << 32)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ledger cache keys must be 1 to 2^32, not ", options.max_keys));
  }
  if (options.window < 1 || options.window > 4096) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ledger cache window must be 1 to 4096, not ", options.window));
  }
  return std::unique_ptr<CachedLedger>(new CachedLedger(store, options));
}

CachedLedger::Shard& CachedLedger::ShardFor(size_t hash) const {
  // High bits: the hash table inside the shard uses the low ones.
  return shards_[(hash >> 48) % shard_count_];
}

absl::StatusOr<std::vector<bool>> CachedLedger::AreApplied(
    absl::Span<const LedgerEntry> entries) {
  std::vector<bool> out(entries.size(), false);
  std::vector<size_t> missing;  // key not held
  std::vector<size_t> unknown;  // below the window: the store answers
  int64_t hits = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const LedgerEntry& e = entries[i];
    const KeyRef key(e.device_id, e.stream);
    const size_t hash = HashOf(key);
    Shard& shard = ShardFor(hash);
    absl::MutexLock lock(&shard.mu);
    auto it = shard.index.find(key, hash);
    if (it == shard.index.end()) {
      missing.push_back(i);
      continue;
    }
    Slot& slot = shard.slots[it->second];
    slot.referenced = true;
    Answer a = slot.Evaluate(e.sequence_number);
    if (a == Answer::kUnknown) {
      unknown.push_back(i);
      continue;
    }
    out[i] = a == Answer::kApplied;
    ++hits;
  }
  if (hits > 0) counters_->hits.Increment(static_cast<double>(hits));
  if (!missing.empty()) {
    RETURN_IF_ERROR(LoadAndAnswer(entries, missing, out, unknown));
  }
  if (!unknown.empty()) {
    counters_->old_misses.Increment(static_cast<double>(unknown.size()));
    std::vector<LedgerEntry> asked;
    asked.reserve(unknown.size());
    for (size_t i : unknown) asked.push_back(entries[i]);
    ASSIGN_OR_RETURN(std::vector<bool> answers, store_->AreApplied(asked));
    if (answers.size() != asked.size()) {
      return absl::InternalError("ledger store answered the wrong count");
    }
    for (size_t j = 0; j < unknown.size(); ++j) out[unknown[j]] = answers[j];
  }
  return out;
}

absl::Status CachedLedger::LoadAndAnswer(absl::Span<const LedgerEntry> entries,
                                         absl::Span<const size_t> missing,
                                         std::vector<bool>& out,
                                         std::vector<size_t>& unknown) {
  counters_->key_misses.Increment(static_cast<double>(missing.size()));
  // The distinct keys, and which entries ask about each.
  std::vector<LedgerKey> keys;
  std::vector<size_t> hashes;
  std::vector<std::vector<size_t>> asking;
  absl::flat_hash_map<KeyRef, size_t> seen;
  for (size_t i : missing) {
    const KeyRef key(entries[i].device_id, entries[i].stream);
    auto [it, inserted] = seen.emplace(key, keys.size());
    if (inserted) {
      keys.push_back({entries[i].device_id, entries[i].stream});
      hashes.push_back(HashOf(key));
      asking.emplace_back();
    }
    asking[it->second].push_back(i);
  }
  return LoadKeys(keys, hashes, [&](size_t k, const Slot& slot) {
    for (size_t i : asking[k]) {
      Answer a = slot.Evaluate(entries[i].sequence_number);
      if (a == Answer::kUnknown) {
        unknown.push_back(i);
      } else {
        out[i] = a == Answer::kApplied;
      }
    }
  });
}

template <typename Visit>
absl::Status CachedLedger::LoadKeys(const std::vector<LedgerKey>& keys,
                                    const std::vector<size_t>& hashes,
                                    Visit visit) {
  const size_t window = static_cast<size_t>(options_.window);
  // Announce the loads before reading the store: a record committed after
  // this point reaches the load's `recorded`; one committed before it is in
  // what the store returns.
  for (size_t k = 0; k < keys.size(); ++k) {
    Shard& shard = ShardFor(hashes[k]);
    absl::MutexLock lock(&shard.mu);
    ++shard.loading[{keys[k].device_id, keys[k].stream}].loaders;
  }
  absl::StatusOr<std::vector<LedgerHistory>> loaded =
      store_->LoadHistory(keys, options_.window);
  if (loaded.ok() && loaded->size() != keys.size()) {
    loaded = absl::InternalError("ledger store loaded the wrong count");
  }
  for (size_t k = 0; k < keys.size(); ++k) {
    Shard& shard = ShardFor(hashes[k]);
    absl::MutexLock lock(&shard.mu);
    auto lit =
        shard.loading.find(std::make_pair(keys[k].device_id, keys[k].stream));
    std::vector<int64_t> recorded;
    const int64_t doubt = lit->second.doubt;
    if (--lit->second.loaders == 0) {
      recorded = std::move(lit->second.recorded);
      shard.loading.erase(lit);
    } else {
      recorded = lit->second.recorded;
    }
    if (!loaded.ok()) continue;
    const LedgerHistory& history = (*loaded)[k];
    const KeyRef key(keys[k].device_id, keys[k].stream);
    auto it = shard.index.find(key, hashes[k]);
    Slot* slot;
    if (it != shard.index.end()) {  // another call loaded it meanwhile
      slot = &shard.slots[it->second];
      slot->Merge(history, window);
    } else {
      uint32_t taken = shard.Take(*counters_);
      slot = &shard.slots[taken];
      slot->Reset(keys[k], history, window);
      shard.index.emplace(KeyRef(slot->device_id, slot->stream), taken);
    }
    // A new key starts unreferenced (Reset): one that is never asked about
    // again is the first to go.
    for (int64_t seq : recorded) slot->Add(seq, window);
    if (doubt != INT64_MIN) slot->Doubt(doubt);
    visit(k, *slot);
  }
  return loaded.status();
}

absl::StatusOr<int64_t> CachedLedger::Warm(absl::Duration within) {
  ASSIGN_OR_RETURN(
      std::vector<LedgerKey> recent,
      store_->RecentKeys(within, static_cast<size_t>(options_.max_keys / 2)));
  int64_t loaded = 0;
  std::vector<LedgerKey> keys;
  std::vector<size_t> hashes;
  for (size_t from = 0; from < recent.size(); from += kWarmChunk) {
    keys.clear();
    hashes.clear();
    const size_t to = std::min(recent.size(), from + kWarmChunk);
    for (size_t i = from; i < to; ++i) {
      const KeyRef key(recent[i].device_id, recent[i].stream);
      const size_t hash = HashOf(key);
      Shard& shard = ShardFor(hash);
      absl::MutexLock lock(&shard.mu);
      if (shard.index.find(key, hash) != shard.index.end()) continue;
      keys.push_back(std::move(recent[i]));
      hashes.push_back(hash);
    }
    if (keys.empty()) continue;
    RETURN_IF_ERROR(LoadKeys(keys, hashes, [](size_t, const Slot&) {}));
    loaded += static_cast<int64_t>(keys.size());
  }
  return loaded;
}

template <typename Fn>
void CachedLedger::WithKey(const LedgerEntry& e, Fn fn) const {
  const KeyRef key(e.device_id, e.stream);
  const size_t hash = HashOf(key);
  Shard& shard = ShardFor(hash);
  absl::MutexLock lock(&shard.mu);
  auto it = shard.index.find(key, hash);
  Slot* slot = it != shard.index.end() ? &shard.slots[it->second] : nullptr;
  Loading* loading = nullptr;
  if (!shard.loading.empty()) {
    auto lit = shard.loading.find(std::make_pair(e.device_id, e.stream));
    if (lit != shard.loading.end()) loading = &lit->second;
  }
  fn(slot, loading);
}

absl::Status CachedLedger::RecordApplied(
    absl::Span<const LedgerEntry> entries) {
  if (entries.empty()) return absl::OkStatus();
  absl::StatusOr<int64_t> present_or =
      store_->RecordAppliedCountingPresent(entries);
  if (!present_or.ok()) {
    // The write may have committed although it failed (a connection lost
    // during COMMIT): the numbers become unknown here, so the next check of
    // each asks the store instead of answering "not applied" from memory.
    for (const LedgerEntry& e : entries) {
      WithKey(e, [&](Slot* slot, Loading* loading) {
        if (slot != nullptr) slot->Doubt(e.sequence_number);
        if (loading != nullptr) {
          loading->doubt = std::max(loading->doubt, e.sequence_number);
        }
      });
    }
    return present_or.status();
  }
  const int64_t present = *present_or;
  if (present > 0) {
    counters_->conflicts.Increment(static_cast<double>(present));
    LOG_EVERY_N(WARNING, 100)
        << "ledger: " << present << " of " << entries.size()
        << " batches just recorded were recorded already (applied by another "
           "server, or twice); their backend writes were repeated (idempotent)"
           " [logged every 100th time]";
  }
  const size_t window = static_cast<size_t>(options_.window);
  for (const LedgerEntry& e : entries) {
    WithKey(e, [&](Slot* slot, Loading* loading) {
      if (slot != nullptr) {
        slot->referenced = true;
        slot->Add(e.sequence_number, window);
      }
      // A load under way may have read the store before this commit, and
      // may land after this key's slot is evicted: it gets the number either
      // way. A key neither held nor loading is read from the store when next
      // asked.
      if (loading != nullptr) loading->recorded.push_back(e.sequence_number);
    });
  }
  return absl::OkStatus();
}

CachedLedger::Stats CachedLedger::stats() const {
  Stats s;
  s.hits = static_cast<int64_t>(counters_->hits.Value());
  s.key_misses = static_cast<int64_t>(counters_->key_misses.Value());
  s.old_misses = static_cast<int64_t>(counters_->old_misses.Value());
  s.evictions = static_cast<int64_t>(counters_->evictions.Value());
  s.conflicts = static_cast<int64_t>(counters_->conflicts.Value());
  int64_t keys = 0;
  for (size_t i = 0; i < shard_count_; ++i) {
    absl::MutexLock lock(&shards_[i].mu);
    keys += static_cast<int64_t>(shards_[i].index.size());
  }
  s.keys = keys;
  return s;
}

}  // namespace fleetd::server
