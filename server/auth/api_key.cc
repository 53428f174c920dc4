#include "server/auth/api_key.h"

#include <openssl/rand.h>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/crypto/sha256.h"

namespace fleetd::server {
namespace {

constexpr absl::string_view kPrefix = "fdk_";
constexpr size_t kIdHex = 12;
constexpr size_t kSecretHex = 64;

bool IsLowerHex(absl::string_view s) {
  for (char c : s) {
    if (!absl::ascii_isxdigit(c) || absl::ascii_isupper(c)) return false;
  }
  return true;
}

}  // namespace

absl::StatusOr<GeneratedKey> GenerateApiKey() {
  unsigned char id[kIdHex / 2];
  unsigned char secret[kSecretHex / 2];
  if (RAND_bytes(id, sizeof(id)) != 1 ||
      RAND_bytes(secret, sizeof(secret)) != 1) {
    return absl::InternalError("no randomness available for key generation");
  }
  GeneratedKey key;
  key.key_id = absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(id), sizeof(id)));
  key.api_key =
      absl::StrCat(kPrefix, key.key_id, "_",
                   absl::BytesToHexString(absl::string_view(
                       reinterpret_cast<const char*>(secret), sizeof(secret))));
  return key;
}

std::string HashApiKey(absl::string_view api_key) { return Sha256Hex(api_key); }

bool LooksLikeApiKey(absl::string_view api_key) {
  if (api_key.size() != kPrefix.size() + kIdHex + 1 + kSecretHex) return false;
  if (!absl::StartsWith(api_key, kPrefix)) return false;
  absl::string_view rest = api_key.substr(kPrefix.size());
  return IsLowerHex(rest.substr(0, kIdHex)) && rest[kIdHex] == '_' &&
         IsLowerHex(rest.substr(kIdHex + 1));
}

}  // namespace fleetd::server
