// Device authentication by API key, with a cache of bounded staleness.
#ifndef FLEETD_SERVER_AUTH_AUTHENTICATOR_H_
#define FLEETD_SERVER_AUTH_AUTHENTICATOR_H_

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

// Caches key lookups so the key store sees one query per key per `ttl`, not per
// call. A revoked key therefore stops working within `ttl`; unknown keys are
// cached for `negative_ttl` so a client hammering with a bad key cannot hammer
// the store. Safe for concurrent use.
class CachingAuthenticator final : public Authenticator {
 public:
  struct Options {
    absl::Duration ttl = absl::Seconds(10);
    absl::Duration negative_ttl = absl::Seconds(2);
    size_t max_entries = 100'000;
  };

  // `lookup` and `clock` must outlive this object.
  CachingAuthenticator(KeyLookup* lookup, Clock* clock, Options options);

  absl::StatusOr<DeviceIdentity> Authenticate(
      absl::string_view api_key) override;

  // Cache statistics.
  int64_t hits();
  int64_t misses();

 private:
  struct Entry {
    std::optional<DeviceIdentity> identity;  // nullopt: known to be invalid
    absl::Time expires;
    std::list<std::string>::iterator lru;
  };

  KeyLookup* const lookup_;
  Clock* const clock_;
  const Options options_;
  absl::Mutex mu_;
  std::unordered_map<std::string, Entry> cache_
      ABSL_GUARDED_BY(mu_);                          // by key hash
  std::list<std::string> lru_ ABSL_GUARDED_BY(mu_);  // most recent first
  int64_t hits_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t misses_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_AUTH_AUTHENTICATOR_H_
