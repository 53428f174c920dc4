#include "agent/transport/server_url.h"

#include <algorithm>
#include <cstdint>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace fleetd::agent {
namespace {

absl::Status BadUrl(absl::string_view url, absl::string_view why) {
  return absl::InvalidArgumentError(
      absl::StrCat("FLEET_SERVER_URL \"", url, "\": ", why,
                   " (expected https://host:port or http://host:port)"));
}

bool IsHostNameChar(char c) {
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '-' ||
         c == '.' || c == '_';
}

bool IsIpv6Char(char c) {
  return absl::ascii_isxdigit(static_cast<unsigned char>(c)) || c == ':' ||
         c == '.';
}

bool IsPathChar(char c) {
  // Unreserved and sub-delims of RFC 3986, plus '/', ':', '@' and '%'
  // (percent-encoding); no spaces or controls.
  return absl::ascii_isalnum(static_cast<unsigned char>(c)) ||
         absl::StrContains("-._~!$&'()*+,;=:@/%", c);
}

}  // namespace

std::string ServerUrl::Authority() const {
  if (host.find(':') != std::string::npos) {
    return absl::StrCat("[", host, "]:", port);
  }
  return absl::StrCat(host, ":", port);
}

std::string ServerUrl::Base() const {
  return absl::StrCat(tls ? "https://" : "http://", Authority(), path);
}

absl::StatusOr<ServerUrl> ParseServerUrl(absl::string_view url) {
  if (url.empty()) return BadUrl(url, "not set");
  ServerUrl result;
  absl::string_view rest = url;
  if (absl::StartsWithIgnoreCase(rest, "https://")) {
    result.tls = true;
    rest.remove_prefix(8);
  } else if (absl::StartsWithIgnoreCase(rest, "http://")) {
    rest.remove_prefix(7);
  } else {
    return BadUrl(url, "the scheme must be http:// or https://");
  }
  if (rest.find_first_of("?#") != absl::string_view::npos) {
    return BadUrl(url, "a query or fragment is not allowed");
  }
  const size_t slash = rest.find('/');
  absl::string_view authority = rest.substr(0, slash);
  absl::string_view path =
      slash == absl::string_view::npos ? "" : rest.substr(slash);
  if (authority.find('@') != absl::string_view::npos) {
    return BadUrl(url, "user info is not allowed (use FLEET_API_KEY)");
  }

  absl::string_view host;
  absl::string_view port_text;
  if (absl::StartsWith(authority, "[")) {
    const size_t close = authority.find(']');
    if (close == absl::string_view::npos) {
      return BadUrl(url, "unterminated IPv6 address");
    }
    host = authority.substr(1, close - 1);
    absl::string_view after = authority.substr(close + 1);
    if (!after.empty()) {
      if (!absl::StartsWith(after, ":")) {
        return BadUrl(url, "unexpected text after the IPv6 address");
      }
      port_text = after.substr(1);
      if (port_text.empty()) return BadUrl(url, "empty port");
    }
    if (host.empty() || !std::all_of(host.begin(), host.end(), IsIpv6Char) ||
        host.find(':') == absl::string_view::npos) {
      return BadUrl(url, "malformed IPv6 address");
    }
  } else {
    const size_t colon = authority.find(':');
    host = authority.substr(0, colon);
    if (colon != absl::string_view::npos) {
      port_text = authority.substr(colon + 1);
      if (port_text.empty()) return BadUrl(url, "empty port");
    }
    if (host.empty()) return BadUrl(url, "missing host");
    if (!std::all_of(host.begin(), host.end(), IsHostNameChar)) {
      return BadUrl(url, "malformed host");
    }
  }
  result.host = std::string(host);

  if (port_text.empty()) {
    result.port = result.tls ? 443 : 80;
  } else {
    int port = 0;
    if (!std::all_of(port_text.begin(), port_text.end(),
                     [](char c) { return absl::ascii_isdigit(c); }) ||
        port_text.size() > 5 || !absl::SimpleAtoi(port_text, &port) ||
        port < 1 || port > 65535) {
      return BadUrl(url, "the port must be a number in 1..65535");
    }
    result.port = port;
  }

  while (absl::EndsWith(path, "/")) path.remove_suffix(1);
  if (!std::all_of(path.begin(), path.end(), IsPathChar)) {
    return BadUrl(url, "malformed path");
  }
  result.path = std::string(path);
  return result;
}

}  // namespace fleetd::agent
