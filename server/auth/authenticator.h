// Device authentication by API key, with a cache of bounded staleness.
#ifndef FLEETD_SERVER_AUTH_AUTHENTICATOR_H_
#define FLEETD_SERVER_AUTH_AUTHENTICATOR_H_

#include <atomic>
#include <cstdint>
#include <limits>
#include <list>
#include <optional>
#include <string>
#include <unordered_map>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock/clock.h"
#include "server/model/batch.h"
#include "server/store/store.h"

namespace fleetd::server {

class Authenticator {
 public:
  virtual ~Authenticator() = default;
  // The identity an API key writes as. UNAUTHENTICATED for a missing,
  // malformed, unknown or revoked key; UNAVAILABLE when the key store cannot be
  // reached (the caller retries).
  virtual absl::StatusOr<DeviceIdentity> Authenticate(
      absl::string_view api_key) = 0;
};

// Caches key lookups. A valid key is looked up in the store once and then
// trusted for as long as the store keeps confirming that it was not revoked:
// every `ttl`/2 one call asks the store which keys were revoked since it last
// asked (KeyLookup::RevokedSince, starting `revocation_margin` before the
// store's time of the last answer, so that a revocation that became visible
// late is not missed) and drops those. A fleet of devices costs one such query
// per `ttl`/2, not one lookup per key per `ttl` (most devices sync less often
// than every `ttl`, so that was a store query per call).
//
// Bounded staleness whatever happens: a cached valid key is trusted until
// `ttl` after it was last confirmed, by its own lookup or by the start of the
// last successful revocation check applied while the key was held, whichever
// is later; then it is looked up again. So a revoked key stops working within
// `ttl`, also while the store cannot answer (its lookup then fails UNAVAILABLE)
// or cannot list revocations (UNIMPLEMENTED: each key is then looked up again
// every `ttl`). Unknown keys are cached for `negative_ttl`, so a client
// hammering with a bad key cannot hammer the store. At most `max_entries` keys
// are held, the least recently used evicted first. Safe for concurrent use; a
// slow store blocks only the calls that wait for it.
class CachingAuthenticator final : public Authenticator {
 public:
  struct Options {
    absl::Duration ttl = absl::Seconds(10);
    absl::Duration negative_ttl = absl::Seconds(2);
    size_t max_entries = 100'000;
    // How far before the store's time of its last answer the next revocation
    // check starts (covers revocations committed after their time stamp).
    absl::Duration revocation_margin = absl::Minutes(5);
  };

  // `lookup` and `clock` must outlive this object.
  CachingAuthenticator(KeyLookup* lookup, Clock* clock, Options options);

  absl::StatusOr<DeviceIdentity> Authenticate(
      absl::string_view api_key) override;

  // Loads up to `max_entries` valid keys from the store in one query (for a
  // server that starts with many devices about to reconnect). The store's
  // error if it fails (the cache then fills key by key as before).
  absl::Status Warm();

  // Cache statistics.
  int64_t hits();
  int64_t misses();

 private:
  struct Entry {
    std::optional<DeviceIdentity> identity;  // nullopt: known to be invalid
    absl::Time confirmed;  // valid keys: when its lookup started
    absl::Time expires;    // invalid keys: until when that is believed
    // checks_ when it was put: a revocation check applied after that (so
    // while the entry was held) confirms it too.
    uint64_t checks = 0;
    std::list<std::string>::iterator lru;
  };

  // Asks the store for revocations if one is due and no other call is asking.
  void MaybeCheckRevocations(absl::Time now) ABSL_LOCKS_EXCLUDED(mu_);
  void SetNextCheck(absl::Time when) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Adds or refreshes the entry of `hash`, evicting the least recently used
  // entry when full.
  Entry& Put(const std::string& hash) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  KeyLookup* const lookup_;
  Clock* const clock_;
  const Options options_;
  absl::Mutex mu_;
  std::unordered_map<std::string, Entry> cache_
      ABSL_GUARDED_BY(mu_);                          // by key hash
  std::list<std::string> lru_ ABSL_GUARDED_BY(mu_);  // most recent first
  int64_t hits_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t misses_ ABSL_GUARDED_BY(mu_) = 0;
  // Revocation checks: the start (monotonic) of the last successful one, the
  // store time the next asks from (InfinitePast: none yet), when the next is
  // due, whether one is under way, and whether the store can answer at all.
  absl::Time checked_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  uint64_t checks_ ABSL_GUARDED_BY(mu_) = 0;  // successful ones applied
  absl::Time since_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  absl::Time next_check_ ABSL_GUARDED_BY(mu_) = absl::InfinitePast();
  // next_check_ in Unix nanoseconds, read without the lock (a stale value
  // only sends a call to the lock, which decides).
  std::atomic<int64_t> next_check_hint_{std::numeric_limits<int64_t>::min()};
  bool checking_ ABSL_GUARDED_BY(mu_) = false;
  bool can_list_revocations_ ABSL_GUARDED_BY(mu_) = true;
};

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_AUTH_AUTHENTICATOR_H_
