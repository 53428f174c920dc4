// API key format and hashing.
//
// A key is "fdk_<key id>_<secret>": a 12-hex-digit id (safe to log and to name
// in admin commands) and 256 random bits as 64 hex digits. The server stores
// only the SHA-256 of the whole key; a plain hash suffices because the secret
// has full entropy (no dictionary to attack), and it lets lookups use an index.
#ifndef FLEETD_SERVER_AUTH_API_KEY_H_
#define FLEETD_SERVER_AUTH_API_KEY_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fleetd::server {

struct GeneratedKey {
  std::string key_id;
  std::string api_key;
};

// A fresh key from the operating system's CSPRNG. INTERNAL if no randomness is
// available.
absl::StatusOr<GeneratedKey> GenerateApiKey();

// Lower-case hex SHA-256 of `api_key`.
std::string HashApiKey(absl::string_view api_key);

// Whether `api_key` has the key format (cheap check before any lookup).
bool LooksLikeApiKey(absl::string_view api_key);

}  // namespace fleetd::server

#endif  // FLEETD_SERVER_AUTH_API_KEY_H_
