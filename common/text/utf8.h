// UTF-8 well-formedness, shared by the agent's collectors (which repair text
// they read) and its store (which refuses records that would not parse).
//
// Proto3 `string` fields must hold valid UTF-8: a receiver that finds anything
// else fails to parse the whole message, so one bad byte makes a whole batch
// undeliverable. "Valid" here is RFC 3629: no overlong forms, no surrogates
// (U+D800..U+DFFF), nothing above U+10FFFF, no truncated sequences.
#ifndef FLEETD_COMMON_TEXT_UTF8_H_
#define FLEETD_COMMON_TEXT_UTF8_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace fleetd {

// The length of the longest prefix of `s` that is valid UTF-8; s.size() when
// all of `s` is. The byte at that offset starts the first invalid sequence.
size_t ValidUtf8PrefixLength(absl::string_view s);

// Whether `s` is valid UTF-8.
inline bool IsValidUtf8(absl::string_view s) {
  return ValidUtf8PrefixLength(s) == s.size();
}

// A copy of `s` that is valid UTF-8 (every byte that does not start a valid
// sequence is replaced by U+FFFD) and at most `max_bytes` long, cut on a
// character boundary. `*truncated` (may be null) says whether anything was cut
// off.
std::string SanitizeUtf8(absl::string_view s, size_t max_bytes,
                         bool* truncated);

}  // namespace fleetd

#endif  // FLEETD_COMMON_TEXT_UTF8_H_
