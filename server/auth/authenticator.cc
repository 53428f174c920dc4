#include "server/auth/authenticator.h"

#include <algorithm>
#include <cstdint>
#include <limits>

#include "absl/strings/str_cat.h"
#include "glog/logging.h"
#include "server/auth/api_key.h"

namespace fleetd::server {

CachingAuthenticator::CachingAuthenticator(KeyLookup* lookup, Clock* clock,
                                           Options options)
    : lookup_(lookup), clock_(clock), options_(options) {}

CachingAuthenticator::Entry& CachingAuthenticator::Put(
    const std::string& hash) {
  auto it = cache_.find(hash);
  if (it == cache_.end()) {
    if (cache_.size() >= options_.max_entries && !lru_.empty()) {
      cache_.erase(lru_.back());
      lru_.pop_back();
    }
    lru_.push_front(hash);
    it = cache_.emplace(hash, Entry{}).first;
    it->second.lru = lru_.begin();
    it->second.checks = checks_;
  } else {
    lru_.splice(lru_.begin(), lru_, it->second.lru);
  }
  return it->second;
}

void CachingAuthenticator::SetNextCheck(absl::Time when) {
  next_check_ = when;
  next_check_hint_.store(when == absl::InfiniteFuture()
                             ? std::numeric_limits<int64_t>::max()
                             : absl::ToUnixNanos(when),
                         std::memory_order_relaxed);
}

void CachingAuthenticator::MaybeCheckRevocations(absl::Time now) {
  // Most calls: not due, seen without the lock.
  if (absl::ToUnixNanos(now) <
      next_check_hint_.load(std::memory_order_relaxed)) {
    return;
  }
  absl::Time since;
  bool baseline;
  {
    absl::MutexLock lock(&mu_);
    if (!can_list_revocations_ || checking_ || now < next_check_) return;
    checking_ = true;
    // The first check only learns the store's time to ask from next: it
    // looks at no revocation, so it confirms no key (keys cached from now on
    // are looked up after it).
    baseline = since_ == absl::InfinitePast();
    since = baseline ? absl::InfiniteFuture() : since_;
  }
  absl::StatusOr<KeyLookup::Revocations> revoked = lookup_->RevokedSince(since);
  absl::MutexLock lock(&mu_);
  checking_ = false;
  if (!revoked.ok()) {
    if (absl::IsUnimplemented(revoked.status())) {
      can_list_revocations_ = false;
      SetNextCheck(absl::InfiniteFuture());
    } else {
      // Cached keys age towards their own lookup meanwhile; try again soon.
      SetNextCheck(now + options_.ttl / 8);
      LOG_EVERY_T(WARNING, 60)
          << "cannot check API keys for revocations: " << revoked.status();
    }
    return;
  }
  for (const std::string& hash : revoked->hashes) {
    auto it = cache_.find(hash);
    if (it == cache_.end() || !it->second.identity.has_value()) continue;
    lru_.erase(it->second.lru);
    cache_.erase(it);
  }
  if (!baseline) {
    checked_ = std::max(checked_, now);
    ++checks_;
  }
  since_ = revoked->now - options_.revocation_margin;
  SetNextCheck(now + options_.ttl / 2);
}

absl::Status CachingAuthenticator::Warm() {
  const absl::Time start = clock_->MonotonicNow();
  absl::StatusOr<KeyLookup::ValidKeySet> valid =
      lookup_->ValidKeys(options_.max_entries);
  if (!valid.ok()) return valid.status();
  absl::MutexLock lock(&mu_);
  // Oldest first, so the newest end up most recently used.
  for (auto it = valid->keys.rbegin(); it != valid->keys.rend(); ++it) {
    Entry& e = Put(it->first);
    if (e.identity.has_value() && e.confirmed > start) continue;
    e.identity = it->second;
    e.confirmed = start;
    e.checks = checks_;
  }
  if (since_ == absl::InfinitePast()) {
    // Revocations after the listing are what the next check must see.
    since_ = valid->now - options_.revocation_margin;
    SetNextCheck(start + options_.ttl / 2);
  }
  return absl::OkStatus();
}

absl::StatusOr<DeviceIdentity> CachingAuthenticator::Authenticate(
    absl::string_view api_key) {
  if (api_key.empty())
    return absl::UnauthenticatedError("missing API key (X-API-Key)");
  if (!LooksLikeApiKey(api_key))
    return absl::UnauthenticatedError("invalid API key");
  std::string hash = HashApiKey(api_key);
  absl::Time now = clock_->MonotonicNow();
  MaybeCheckRevocations(now);
  {
    absl::MutexLock lock(&mu_);
    auto it = cache_.find(hash);
    if (it != cache_.end()) {
      const Entry& e = it->second;
      const bool fresh =
          e.identity.has_value()
              ? now < e.confirmed + options_.ttl ||
                    (e.checks < checks_ && now < checked_ + options_.ttl)
              : now < e.expires;
      if (fresh) {
        ++hits_;
        lru_.splice(lru_.begin(), lru_, e.lru);
        if (!e.identity.has_value()) {
          return absl::UnauthenticatedError("invalid API key");
        }
        return *e.identity;
      }
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
    Entry& e = Put(hash);
    e.identity = *found;
    e.confirmed = now;
    e.expires = now + options_.negative_ttl;
    // Only checks applied from now on confirm what this lookup saw.
    e.checks = checks_;
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
