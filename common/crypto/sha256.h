// SHA-256 digests, as the wire (batch checksums) and the key store (key
// hashes) use them.
#ifndef FLEETD_COMMON_CRYPTO_SHA256_H_
#define FLEETD_COMMON_CRYPTO_SHA256_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace fleetd {

// Bytes in a SHA-256 digest.
inline constexpr size_t kSha256Size = 32;

// The 32-byte SHA-256 digest of `data`, as raw bytes.
//
// Cost: the digest itself (OpenSSL, with the CPU's SHA extensions when it has
// them). The algorithm is looked up once per process and the digest context
// is kept per thread, so a call allocates nothing but the result: OpenSSL 3's
// one-shot SHA256() looks the algorithm up again on every call, which cost as
// much as hashing a few kilobytes. Thread-safe. Aborts if OpenSSL has no
// SHA-256 (a broken installation).
std::string Sha256(absl::string_view data);

// The digest of `data` as 64 lower-case hex digits.
std::string Sha256Hex(absl::string_view data);

}  // namespace fleetd

#endif  // FLEETD_COMMON_CRYPTO_SHA256_H_
