#include "agent/transport/transport.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "agent/transport/connect_error.h"
#include "agent/transport/server_url.h"
#include "common/config/config.h"
#include "common/status/retry_after.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace fleetd::agent {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::StatusIs;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Optional;

// A file in a fresh temporary directory, removed afterwards.
class TempFile {
 public:
  explicit TempFile(const std::string& contents) {
    char dir[] = "/tmp/fleetd-transport-test-XXXXXX";
    dir_ = mkdtemp(dir);
    path_ = dir_ + "/ca.pem";
    std::ofstream(path_) << contents;
  }
  ~TempFile() {
    std::remove(path_.c_str());
    rmdir(dir_.c_str());
  }
  const std::string& path() const { return path_; }

 private:
  std::string dir_;
  std::string path_;
};

// --- ParseServerUrl -------------------------------------------------------

TEST(ParseServerUrlTest, HttpsWithPort) {
  absl::StatusOr<ServerUrl> url = ParseServerUrl("https://fleet.example:8443");
  ASSERT_THAT(url, IsOk());
  EXPECT_TRUE(url->tls);
  EXPECT_EQ(url->host, "fleet.example");
  EXPECT_EQ(url->port, 8443);
  EXPECT_EQ(url->path, "");
  EXPECT_EQ(url->Authority(), "fleet.example:8443");
  EXPECT_EQ(url->Base(), "https://fleet.example:8443");
}

TEST(ParseServerUrlTest, DefaultPortsAndCaseInsensitiveScheme) {
  absl::StatusOr<ServerUrl> https = ParseServerUrl("HTTPS://fleet.example");
  ASSERT_THAT(https, IsOk());
  EXPECT_EQ(https->port, 443);
  absl::StatusOr<ServerUrl> http = ParseServerUrl("http://10.0.0.1/");
  ASSERT_THAT(http, IsOk());
  EXPECT_FALSE(http->tls);
  EXPECT_EQ(http->port, 80);
  EXPECT_EQ(http->path, "");
}

TEST(ParseServerUrlTest, Ipv6AndPathPrefix) {
  absl::StatusOr<ServerUrl> url = ParseServerUrl("http://[::1]:8080/fleet/");
  ASSERT_THAT(url, IsOk());
  EXPECT_EQ(url->host, "::1");
  EXPECT_EQ(url->port, 8080);
  EXPECT_EQ(url->path, "/fleet");
  EXPECT_EQ(url->Authority(), "[::1]:8080");
  EXPECT_EQ(url->Base(), "http://[::1]:8080/fleet");
}

TEST(ParseServerUrlTest, RejectsMalformedUrlsNamingTheVariable) {
  for (const char* bad :
       {"", "fleet.example:443", "ftp://fleet.example", "https://",
        "https://:443", "http://host:0", "http://host:65536",
        "http://host:", "http://host:12ab", "http://user:pw@host",
        "http://host/?x=1", "http://host/#frag", "http://[::1",
        "http://[zz]:80", "http://ho st", "http://host/a b"}) {
    EXPECT_THAT(ParseServerUrl(bad),
                StatusIs(absl::StatusCode::kInvalidArgument,
                         HasSubstr("FLEET_SERVER_URL")))
        << bad;
  }
}

// --- NewTransport ---------------------------------------------------------

TransportOptions Options(const std::string& url) {
  TransportOptions options;
  options.server_url = url;
  options.api_key = "key-1";
  return options;
}

TEST(NewTransportTest, CreatesGrpcByDefaultWithoutConnecting) {
  // Nothing listens on port 1; creating the transport must not care.
  TransportOptions options = Options("http://127.0.0.1:1");
  options.kind = "";
  absl::StatusOr<std::unique_ptr<SyncTransport>> transport =
      NewTransport(options);
  ASSERT_THAT(transport, IsOk());
  EXPECT_EQ((*transport)->stats().calls, 0);
}

TEST(NewTransportTest, CreatesConnectWithPathPrefix) {
  TransportOptions options = Options("https://fleet.example/api");
  options.kind = "connect";
  options.compression = "gzip";
  EXPECT_THAT(NewTransport(options), IsOk());
}

TEST(NewTransportTest, UnknownKindNamesFleetTransport) {
  TransportOptions options = Options("http://127.0.0.1:1");
  options.kind = "quic";
  EXPECT_THAT(NewTransport(options),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("FLEET_TRANSPORT")));
}

TEST(NewTransportTest, BadUrlNamesFleetServerUrl) {
  EXPECT_THAT(NewTransport(Options("")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("FLEET_SERVER_URL")));
  EXPECT_THAT(NewTransport(Options("grpc://127.0.0.1:9090")),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("FLEET_SERVER_URL")));
  // gRPC has no notion of a path prefix.
  EXPECT_THAT(
      NewTransport(Options("http://127.0.0.1:9090/api")),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr("FLEET_SERVER_URL"), HasSubstr("path"))));
}

TEST(NewTransportTest, CaFileIsCheckedUpFront) {
  TransportOptions missing = Options("https://127.0.0.1:9090");
  missing.ca_file = "/nonexistent/ca.pem";
  EXPECT_THAT(
      NewTransport(missing),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("FLEET_CA_FILE")));

  TempFile not_pem("hello");
  TransportOptions garbage = Options("https://127.0.0.1:9090");
  garbage.ca_file = not_pem.path();
  EXPECT_THAT(NewTransport(garbage),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       AllOf(HasSubstr("FLEET_CA_FILE"), HasSubstr("PEM"))));

  TempFile pem(
      "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n");
  TransportOptions plaintext = Options("http://127.0.0.1:9090");
  plaintext.ca_file = pem.path();
  EXPECT_THAT(
      NewTransport(plaintext),
      StatusIs(absl::StatusCode::kInvalidArgument,
               AllOf(HasSubstr("FLEET_CA_FILE"), HasSubstr("http://"))));
}

TEST(NewTransportTest, ApiKeyMustBeAValidHeaderValue) {
  TransportOptions options = Options("http://127.0.0.1:9090");
  options.api_key = "key\r\nX-Injected: 1";
  EXPECT_THAT(
      NewTransport(options),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("FLEET_API_KEY")));
}

TEST(NewTransportTest, UnknownCompressionIsRejected) {
  TransportOptions options = Options("http://127.0.0.1:9090");
  options.compression = "brotli";
  EXPECT_THAT(NewTransport(options),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("FLEET_TRANSPORT_COMPRESSION")));
}

TEST(NewTransportTest, ConnectHasNoBidiStreamOverHttp1) {
  TransportOptions options = Options("http://127.0.0.1:1");
  options.kind = "connect";
  absl::StatusOr<std::unique_ptr<SyncTransport>> transport =
      NewTransport(options);
  ASSERT_THAT(transport, IsOk());
  EXPECT_THAT((*transport)->OpenStream(),
              StatusIs(absl::StatusCode::kUnimplemented, HasSubstr("HTTP/2")));
}

TEST(TransportSettingsTest, EnvironmentFillsOptions) {
  TransportOptions options;
  Settings settings;
  AddTransportSettings(settings, &options);
  ASSERT_THAT(settings.Resolve(MapEnv({
                  {"FLEET_TRANSPORT", "connect"},
                  {"FLEET_SERVER_URL", "https://fleet.example:8443"},
                  {"FLEET_API_KEY", "k"},
                  {"FLEET_CA_FILE", "/etc/fleet/ca.pem"},
                  {"FLEET_TRANSPORT_COMPRESSION", "gzip"},
              })),
              IsOk());
  EXPECT_EQ(options.kind, "connect");
  EXPECT_EQ(options.server_url, "https://fleet.example:8443");
  EXPECT_EQ(options.api_key, "k");
  EXPECT_EQ(options.ca_file, "/etc/fleet/ca.pem");
  EXPECT_EQ(options.compression, "gzip");

  TransportOptions defaults;
  Settings bad;
  AddTransportSettings(bad, &defaults);
  EXPECT_THAT(bad.Resolve(MapEnv({{"FLEET_TRANSPORT", "smoke-signals"}})),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("FLEET_TRANSPORT")));
}

// --- Connect errors ---------------------------------------------------------

TEST(ConnectErrorTest, AllSixteenCodesRoundTripByName) {
  int named = 0;
  for (int i = 1; i <= 16; ++i) {
    const auto code = static_cast<absl::StatusCode>(i);
    absl::string_view name = ConnectCodeName(code);
    ASSERT_FALSE(name.empty()) << i;
    EXPECT_THAT(ConnectCodeFromName(name), Optional(code)) << name;
    ++named;
  }
  EXPECT_EQ(named, 16);
  EXPECT_EQ(ConnectCodeName(absl::StatusCode::kCancelled), "canceled");
  EXPECT_EQ(ConnectCodeFromName("cancelled"), std::nullopt);
  EXPECT_EQ(ConnectCodeFromName("UNAVAILABLE"), std::nullopt);
  EXPECT_EQ(ConnectCodeName(absl::StatusCode::kOk), "");
}

TEST(ConnectErrorTest, HttpStatusFallback) {
  EXPECT_EQ(CodeFromHttpStatus(400), absl::StatusCode::kInternal);
  EXPECT_EQ(CodeFromHttpStatus(401), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(CodeFromHttpStatus(403), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(CodeFromHttpStatus(404), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(CodeFromHttpStatus(429), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(CodeFromHttpStatus(502), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeFromHttpStatus(503), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeFromHttpStatus(504), absl::StatusCode::kUnavailable);
  EXPECT_EQ(CodeFromHttpStatus(500), absl::StatusCode::kUnknown);
  EXPECT_EQ(CodeFromHttpStatus(418), absl::StatusCode::kUnknown);
}

TEST(ConnectErrorTest, ErrorJsonGivesCodeAndMessage) {
  EXPECT_THAT(
      StatusFromConnectError(
          503, "application/json",
          R"({"code":"resource_exhausted","message":"slow down","details":[]})"),
      StatusIs(absl::StatusCode::kResourceExhausted, "slow down"));
  // The JSON code wins over the HTTP status, and parameters on the media type
  // are fine.
  EXPECT_THAT(StatusFromConnectError(400, "application/json; charset=utf-8",
                                     R"({"code":"failed_precondition"})"),
              StatusIs(absl::StatusCode::kFailedPrecondition, ""));
  EXPECT_THAT(StatusFromConnectError(500, "application/json",
                                     R"({"code":"teapot","message":"m"})"),
              StatusIs(absl::StatusCode::kUnknown, HasSubstr("teapot")));
}

TEST(ConnectErrorTest, NonConnectBodiesFallBackToHttpStatus) {
  EXPECT_THAT(
      StatusFromConnectError(502, "text/html", "<html>Bad Gateway</html>"),
      StatusIs(absl::StatusCode::kUnavailable,
               AllOf(HasSubstr("502"), HasSubstr("Bad Gateway"))));
  // JSON, but not a Connect error.
  EXPECT_THAT(StatusFromConnectError(429, "application/json",
                                     R"({"error":"rate limited"})"),
              StatusIs(absl::StatusCode::kResourceExhausted));
  EXPECT_THAT(StatusFromConnectError(401, "application/json", "{broken"),
              StatusIs(absl::StatusCode::kUnauthenticated));
  // A JSON body without the JSON content type is not trusted as Connect.
  EXPECT_THAT(
      StatusFromConnectError(503, "text/plain", R"({"code":"not_found"})"),
      StatusIs(absl::StatusCode::kUnavailable));
}

TEST(ConnectErrorTest, ParseRetryAfter) {
  const absl::Time now = absl::FromUnixSeconds(1445412480);  // 07:28:00 GMT
  EXPECT_THAT(ParseRetryAfter("120", now), Optional(absl::Seconds(120)));
  EXPECT_THAT(ParseRetryAfter(" 0 ", now), Optional(absl::ZeroDuration()));
  EXPECT_THAT(ParseRetryAfter("Wed, 21 Oct 2015 07:28:30 GMT", now),
              Optional(absl::Seconds(30)));
  // A date in the past means "now".
  EXPECT_THAT(ParseRetryAfter("Wed, 21 Oct 2015 07:00:00 GMT", now),
              Optional(absl::ZeroDuration()));
  EXPECT_EQ(ParseRetryAfter("", now), std::nullopt);
  EXPECT_EQ(ParseRetryAfter("-5", now), std::nullopt);
  EXPECT_EQ(ParseRetryAfter("soon", now), std::nullopt);
  EXPECT_EQ(ParseRetryAfter("Wed, 21 Oct 2015 07:28:30", now), std::nullopt);
}

}  // namespace
}  // namespace fleetd::agent
