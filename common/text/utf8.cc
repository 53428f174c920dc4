#include "common/text/utf8.h"

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace fleetd {
namespace {

// Length of the valid UTF-8 sequence at s[i], or 0 when it is invalid.
inline size_t SequenceLength(absl::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  const unsigned char c = byte(i);
  if (c < 0x80) return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;  // no overlongs
    if (c == 0xED) hi = 0x9F;  // no surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;  // no overlongs
    if (c == 0xF4) hi = 0x8F;  // nothing above U+10FFFF
  } else {
    return 0;  // continuation byte, overlong lead (C0, C1) or F5..FF
  }
  if (i + len > s.size()) return 0;
  if (byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (size_t k = 2; k < len; ++k) {
    if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return 0;
  }
  return len;
}

inline uint64_t Word(absl::string_view s, size_t i) {
  uint64_t word;
  std::memcpy(&word, s.data() + i, sizeof(word));
  return word;
}

}  // namespace

size_t ValidUtf8PrefixLength(absl::string_view s) {
  constexpr uint64_t kHighBits = 0x8080808080808080ull;
  const size_t n = s.size();
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  size_t i = 0;
  while (i < n) {
    // Telemetry text is mostly ASCII: skip it eight bytes at a time, then
    // byte by byte, and decode sequences only where a high bit is set.
    while (i + 8 <= n) {
      if ((Word(s, i) & kHighBits) != 0) break;
      i += 8;
    }
    // A tail shorter than a word: one overlapping read of the last eight
    // bytes (already checked ones are ASCII).
    if (i + 8 > n && n >= 8 && (Word(s, n - 8) & kHighBits) == 0) break;
    while (i < n && byte(i) < 0x80) ++i;
    if (i == n) break;
    const size_t len = SequenceLength(s, i);
    if (len == 0) return i;
    i += len;
  }
  return n;
}

std::string SanitizeUtf8(absl::string_view s, size_t max_bytes,
                         bool* truncated) {
  static constexpr absl::string_view kReplacement = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(std::min(s.size(), max_bytes));
  bool cut = false;
  size_t i = 0;
  while (i < s.size()) {
    const size_t len = SequenceLength(s, i);
    const absl::string_view piece = len == 0 ? kReplacement : s.substr(i, len);
    if (out.size() + piece.size() > max_bytes) {
      cut = true;
      break;
    }
    out.append(piece.data(), piece.size());
    i += len == 0 ? 1 : len;
  }
  if (truncated != nullptr) *truncated = cut;
  return out;
}

}  // namespace fleetd
