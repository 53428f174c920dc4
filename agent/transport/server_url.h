// Parsing of the agent's server URL (FLEET_SERVER_URL).
#ifndef FLEETD_AGENT_TRANSPORT_SERVER_URL_H_
#define FLEETD_AGENT_TRANSPORT_SERVER_URL_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace fleetd::agent {

struct ServerUrl {
  // https:// (true) or http:// (false).
  bool tls = false;
  // Host name or IP address; an IPv6 address without its brackets.
  std::string host;
  int port = 0;
  // "" or a path prefix such as "/fleet" (never a trailing slash).
  std::string path;

  // "host:port", or "[v6addr]:port".
  std::string Authority() const;
  // "https://host:port/path" without a trailing slash.
  std::string Base() const;
};

// Parses "http[s]://host[:port][/path]". The scheme is case-insensitive; the
// port defaults to 80 (http) or 443 (https). Fails with InvalidArgument naming
// FLEET_SERVER_URL for an empty URL, another scheme, a missing or malformed
// host, a port outside 1..65535, user info, a query or a fragment.
absl::StatusOr<ServerUrl> ParseServerUrl(absl::string_view url);

}  // namespace fleetd::agent

#endif  // FLEETD_AGENT_TRANSPORT_SERVER_URL_H_
