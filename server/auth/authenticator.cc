#include "server/auth/authenticator.h"

#include "absl/strings/str_cat.h"
#include "server/auth/api_key.h"

namespace fleetd::server {

CachingAuthenticator::CachingAuthenticator(KeyLookup* lookup, Clock* clock,
                                           Options options)
    : lookup_(lookup), clock_(clock), options_(options) {}

absl::StatusOr<DeviceIdentity> CachingAuthenticator::Authenticate(
    absl::string_view api_key) {
  if (api_key.empty())
    return absl::UnauthenticatedError("missing API key (X-API-Key)");
  if (!LooksLikeApiKey(api_key))
    return absl::UnauthenticatedError("invalid API key");
  std::string hash = HashApiKey(api_key);
  absl::Time now = clock_->MonotonicNow();
  {
    absl::MutexLock lock(&mu_);
    auto it = cache_.find(hash);
    if (it != cache_.end() && it->second.expires > now) {
      ++hits_;
      lru_.splice(lru_.begin(), lru_, it->second.lru);
      if (!it->second.identity.has_value()) {
        return absl::UnauthenticatedError("invalid API key");
      }
      return *it->second.identity;
    }
    ++misses_;
  }
  // Looked up without the lock: a slow store must not block calls with cached
  // keys.
  absl::StatusOr<std::optional<DeviceIdentity>> found =
      lookup_->LookupKeyHash(hash);
  if (!found.ok()) {
    return absl::UnavailableError(
        absl::StrCat("cannot check API key: ", found.status().message()));
  }
  {
    absl::MutexLock lock(&mu_);
    auto it = cache_.find(hash);
    if (it == cache_.end()) {
      if (cache_.size() >= options_.max_entries && !lru_.empty()) {
        cache_.erase(lru_.back());
        lru_.pop_back();
      }
      lru_.push_front(hash);
      it = cache_.emplace(hash, Entry{std::nullopt, now, lru_.begin()}).first;
    } else {
      lru_.splice(lru_.begin(), lru_, it->second.lru);
    }
    it->second.identity = *found;
    it->second.expires =
        now + (found->has_value() ? options_.ttl : options_.negative_ttl);
  }
  if (!found->has_value()) return absl::UnauthenticatedError("invalid API key");
  return **found;
}

int64_t CachingAuthenticator::hits() {
  absl::MutexLock lock(&mu_);
  return hits_;
}

int64_t CachingAuthenticator::misses() {
  absl::MutexLock lock(&mu_);
  return misses_;
}

}  // namespace fleetd::server
