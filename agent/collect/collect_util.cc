#include "agent/collect/collect_util.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace fleetd::agent::collect_internal {

absl::StatusOr<std::string> ReadSmallFile(const std::string& path,
                                          size_t max_bytes) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    int err = errno;
    std::string msg = absl::StrCat(path, ": ", std::strerror(err));
    if (err == ENOENT || err == ENOTDIR) return absl::NotFoundError(msg);
    return absl::UnavailableError(msg);
  }
  std::string out;
  char buf[8192];
  while (true) {
    ssize_t n = ::read(fd, buf, sizeof(buf));
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      return absl::UnavailableError(
          absl::StrCat(path, ": read: ", std::strerror(err)));
    }
    if (n == 0) break;
    if (out.size() + static_cast<size_t>(n) > max_bytes) {
      ::close(fd);
      return absl::OutOfRangeError(
          absl::StrCat(path, ": larger than ", max_bytes, " bytes"));
    }
    out.append(buf, static_cast<size_t>(n));
  }
  ::close(fd);
  return out;
}

google::protobuf::Timestamp ToProtoTimestamp(absl::Time t) {
  google::protobuf::Timestamp ts;
  // ToUnixSeconds rounds toward negative infinity, so the remainder is >= 0.
  int64_t seconds = absl::ToUnixSeconds(t);
  int64_t nanos = absl::ToInt64Nanoseconds(t - absl::FromUnixSeconds(seconds));
  ts.set_seconds(seconds);
  ts.set_nanos(static_cast<int32_t>(nanos));
  return ts;
}

bool InProtoTimestampRange(absl::Time t) {
  // 0001-01-01T00:00:00Z and 9999-12-31T23:59:59.999999999Z.
  static const absl::Time kMin = absl::FromUnixSeconds(-62135596800);
  static const absl::Time kMax = absl::FromUnixSeconds(253402300800);
  return t >= kMin && t < kMax;
}

namespace {

// Length of the valid UTF-8 sequence at s[i], or 0 when it is invalid.
size_t Utf8SequenceLength(absl::string_view s, size_t i) {
  const auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = byte(i);
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
    return 0;
  }
  if (i + len > s.size()) return 0;
  if (byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (size_t k = 2; k < len; ++k) {
    if (byte(i + k) < 0x80 || byte(i + k) > 0xBF) return 0;
  }
  return len;
}

}  // namespace

bool IsValidUtf8(absl::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t len = Utf8SequenceLength(s, i);
    if (len == 0) return false;
    i += len;
  }
  return true;
}

std::string SanitizeUtf8(absl::string_view s, size_t max_bytes,
                         bool* truncated) {
  static constexpr absl::string_view kReplacement = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(std::min(s.size(), max_bytes));
  bool cut = false;
  size_t i = 0;
  while (i < s.size()) {
    size_t len = Utf8SequenceLength(s, i);
    absl::string_view piece = len == 0 ? kReplacement : s.substr(i, len);
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

absl::Status SplitHostPort(absl::string_view address, absl::string_view setting,
                           std::string* host, int* port) {
  size_t colon = address.rfind(':');
  if (colon == absl::string_view::npos || colon == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(setting, ": \"", address, "\" is not host:port"));
  }
  absl::string_view h = address.substr(0, colon);
  if (h.size() >= 2 && h.front() == '[' && h.back() == ']') {
    h = h.substr(1, h.size() - 2);
  } else if (h.find(':') != absl::string_view::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        setting, ": \"", address, "\": IPv6 hosts go in brackets"));
  }
  int p = 0;
  if (h.empty() || !absl::SimpleAtoi(address.substr(colon + 1), &p) || p < 0 ||
      p > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        setting, ": \"", address, "\" has no valid host and port"));
  }
  *host = std::string(h);
  *port = p;
  return absl::OkStatus();
}

std::string UnderRoot(absl::string_view root, absl::string_view path) {
  while (!root.empty() && root.back() == '/') root.remove_suffix(1);
  return absl::StrCat(root, path);
}

}  // namespace fleetd::agent::collect_internal
