#include "agent/transport/transport.h"

#include <fstream>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "agent/transport/connect_transport.h"
#include "agent/transport/grpc_transport.h"
#include "agent/transport/server_url.h"

namespace fleetd::agent {
namespace {

// Reads the CA bundle so that a wrong FLEET_CA_FILE fails at start-up, not on
// the first call.
absl::StatusOr<std::string> ReadCaFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    return absl::InvalidArgumentError(
        absl::StrCat("FLEET_CA_FILE \"", path, "\": cannot be read"));
  }
  std::ostringstream contents;
  contents << in.rdbuf();
  if (in.bad()) {
    return absl::InvalidArgumentError(
        absl::StrCat("FLEET_CA_FILE \"", path, "\": read error"));
  }
  std::string pem = contents.str();
  if (!absl::StrContains(pem, "-----BEGIN CERTIFICATE-----")) {
    return absl::InvalidArgumentError(absl::StrCat(
        "FLEET_CA_FILE \"", path, "\": no PEM certificate in the file"));
  }
  return pem;
}

// gRPC metadata and HTTP header values: printable ASCII.
bool IsValidApiKey(absl::string_view key) {
  for (char c : key) {
    if (c < 0x20 || c > 0x7e) return false;
  }
  return absl::StripAsciiWhitespace(key) == key;
}

}  // namespace

void AddTransportSettings(Settings& settings, TransportOptions* options) {
  settings
      .Choice("FLEET_TRANSPORT", "transport",
              "Protocol to the Fleet server: gRPC over HTTP/2, or Connect over "
              "HTTP/1.1",
              &options->kind, {"grpc", "connect"})
      .String("FLEET_SERVER_URL", "server-url",
              "Fleet server URL: https://host:port (TLS) or http://host:port",
              &options->server_url)
      .String("FLEET_API_KEY", "api-key",
              "This device's API key, sent as X-API-Key", &options->api_key)
      .String("FLEET_CA_FILE", "ca-file",
              "PEM CA bundle trusted for https:// (default: system roots)",
              &options->ca_file)
      .Choice("FLEET_TRANSPORT_COMPRESSION", "transport-compression",
              "Transport compression of requests", &options->compression,
              {"none", "gzip"});
}

absl::StatusOr<std::unique_ptr<SyncTransport>> NewTransport(
    const TransportOptions& options) {
  const std::string kind = absl::AsciiStrToLower(options.kind);
  if (!kind.empty() && kind != "grpc" && kind != "connect") {
    return absl::InvalidArgumentError(
        absl::StrCat("FLEET_TRANSPORT \"", options.kind,
                     "\": must be \"grpc\" or \"connect\""));
  }
  const bool grpc = kind.empty() || kind == "grpc";

  absl::StatusOr<ServerUrl> url = ParseServerUrl(options.server_url);
  if (!url.ok()) return url.status();
  if (grpc && !url->path.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("FLEET_SERVER_URL \"", options.server_url,
                     "\": gRPC takes no path (a path prefix works only with "
                     "FLEET_TRANSPORT=connect)"));
  }

  std::string ca_pem;
  if (!options.ca_file.empty()) {
    if (!url->tls) {
      return absl::InvalidArgumentError(absl::StrCat(
          "FLEET_CA_FILE is set but FLEET_SERVER_URL \"", options.server_url,
          "\" is plaintext http://; use https:// or unset FLEET_CA_FILE"));
    }
    absl::StatusOr<std::string> pem = ReadCaFile(options.ca_file);
    if (!pem.ok()) return pem.status();
    ca_pem = *std::move(pem);
  }

  if (!IsValidApiKey(options.api_key)) {
    return absl::InvalidArgumentError(
        "FLEET_API_KEY: only printable ASCII without surrounding spaces is "
        "allowed");
  }
  const std::string compression = absl::AsciiStrToLower(options.compression);
  if (!compression.empty() && compression != "none" && compression != "gzip") {
    return absl::InvalidArgumentError(
        absl::StrCat("FLEET_TRANSPORT_COMPRESSION \"", options.compression,
                     "\": must be \"none\" or \"gzip\""));
  }
  if (options.connect_timeout <= absl::ZeroDuration() ||
      options.keepalive_time <= absl::ZeroDuration() ||
      options.keepalive_timeout <= absl::ZeroDuration() ||
      options.max_response_bytes <= 0) {
    return absl::InvalidArgumentError(
        "transport: connect_timeout, keepalive_time, keepalive_timeout and "
        "max_response_bytes must be positive");
  }

  TransportOptions normalized = options;
  normalized.kind = grpc ? "grpc" : "connect";
  normalized.compression = compression == "gzip" ? "gzip" : "none";
  if (normalized.clock == nullptr) normalized.clock = Clock::Real();
  if (grpc) return NewGrpcTransport(normalized, *url, ca_pem);
  return NewConnectTransport(normalized, *url);
}

}  // namespace fleetd::agent
