#include "server/rpc/net/net.h"

#include <openssl/ssl.h>

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/rpc/net/tls_context.h"
#include "server/rpc/testing/test_tls.h"

namespace fleetd::server::rpc {
namespace {

using ::fleetd::testing::IsOk;
using ::fleetd::testing::IsOkAndHolds;
using ::fleetd::testing::StatusIs;
using ::testing::HasSubstr;

TEST(ParseHostPortTest, AcceptsIpv4NameIpv6AndEmptyHost) {
  absl::StatusOr<HostPort> v4 = ParseHostPort("127.0.0.1:8080");
  ASSERT_THAT(v4, IsOk());
  EXPECT_EQ(v4->host, "127.0.0.1");
  EXPECT_EQ(v4->port, 8080);

  absl::StatusOr<HostPort> v6 = ParseHostPort("[::1]:0");
  ASSERT_THAT(v6, IsOk());
  EXPECT_EQ(v6->host, "::1");
  EXPECT_EQ(v6->port, 0);

  absl::StatusOr<HostPort> any = ParseHostPort(":9090");
  ASSERT_THAT(any, IsOk());
  EXPECT_EQ(any->host, "0.0.0.0");
}

TEST(ParseHostPortTest, RejectsMalformedAddresses) {
  for (const char* bad : {"localhost", "1.2.3.4:", "1.2.3.4:70000", "::1:80",
                          "[::1]80", "host:port"}) {
    EXPECT_THAT(ParseHostPort(bad),
                StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr(bad)))
        << bad;
  }
}

TEST(ListenTcpTest, BindsPortZeroAndReportsThePort) {
  absl::StatusOr<UniqueFd> fd = ListenTcp({"127.0.0.1", 0});
  ASSERT_THAT(fd, IsOk());
  EXPECT_GT(LocalPort(fd->get()), 0);
}

TEST(ListenTcpTest, BusyPortIsUnavailable) {
  absl::StatusOr<UniqueFd> first = ListenTcp({"127.0.0.1", 0});
  ASSERT_THAT(first, IsOk());
  EXPECT_THAT(ListenTcp({"127.0.0.1", LocalPort(first->get())}),
              StatusIs(absl::StatusCode::kUnavailable, HasSubstr("listen")));
}

TEST(FormatHostPortTest, BracketsIpv6) {
  EXPECT_EQ(FormatHostPort("10.0.0.1", 80), "10.0.0.1:80");
  EXPECT_EQ(FormatHostPort("::1", 80), "[::1]:80");
}

TEST(Tls13ContextTest, LoadsMatchingCertificateAndPinsVersionTo13) {
  absl::StatusOr<testing::TestCertificate> cert =
      testing::TestCertificate::Create();
  ASSERT_THAT(cert, IsOk());
  absl::StatusOr<SslCtxPtr> ctx = NewTls13ServerContext(
      cert->cert_file(), cert->key_file(), AlpnPolicy::kRequireH2);
  ASSERT_THAT(ctx, IsOk());
  EXPECT_EQ(SSL_CTX_get_min_proto_version(ctx->get()), TLS1_3_VERSION);
  EXPECT_EQ(SSL_CTX_get_max_proto_version(ctx->get()), TLS1_3_VERSION);
}

TEST(Tls13ContextTest, MissingOrMismatchedFilesAreInvalidArgument) {
  absl::StatusOr<testing::TestCertificate> a =
      testing::TestCertificate::Create();
  absl::StatusOr<testing::TestCertificate> b =
      testing::TestCertificate::Create();
  ASSERT_THAT(a, IsOk());
  ASSERT_THAT(b, IsOk());
  EXPECT_THAT(NewTls13ServerContext("/nonexistent/cert.pem", a->key_file(),
                                    AlpnPolicy::kHttp11),
              StatusIs(absl::StatusCode::kInvalidArgument,
                       HasSubstr("certificate chain")));
  EXPECT_THAT(
      NewTls13ServerContext(a->cert_file(), b->key_file(), AlpnPolicy::kHttp11),
      StatusIs(absl::StatusCode::kInvalidArgument, HasSubstr("private key")));
}

// Runs a TLS handshake between `server_ctx` and a client offering `alpn`
// over an in-memory BIO pair, and returns the protocol the server selected
// (empty when none), or an error when the handshake fails.
absl::StatusOr<std::string> NegotiateAlpn(
    SSL_CTX* server_ctx, const std::vector<std::string>& alpn) {
  SslCtxPtr client_ctx(SSL_CTX_new(TLS_client_method()));
  SSL_CTX_set_verify(client_ctx.get(), SSL_VERIFY_NONE, nullptr);
  SslPtr client(SSL_new(client_ctx.get()));
  SslPtr server(SSL_new(server_ctx));
  BIO* client_bio = nullptr;
  BIO* server_bio = nullptr;
  if (BIO_new_bio_pair(&client_bio, 0, &server_bio, 0) != 1) {
    return absl::InternalError("BIO_new_bio_pair");
  }
  SSL_set_bio(client.get(), client_bio, client_bio);
  SSL_set_bio(server.get(), server_bio, server_bio);
  std::string wire;
  for (const std::string& protocol : alpn) {
    wire += static_cast<char>(protocol.size());
    wire += protocol;
  }
  if (!wire.empty() &&
      SSL_set_alpn_protos(client.get(),
                          reinterpret_cast<const unsigned char*>(wire.data()),
                          wire.size()) != 0) {
    return absl::InternalError("SSL_set_alpn_protos");
  }
  SSL_set_connect_state(client.get());
  SSL_set_accept_state(server.get());
  bool client_done = false;
  bool server_done = false;
  for (int round = 0; round < 20 && !(client_done && server_done); ++round) {
    for (SSL* ssl : {client.get(), server.get()}) {
      bool& done = ssl == client.get() ? client_done : server_done;
      if (done) continue;
      int rc = SSL_do_handshake(ssl);
      if (rc == 1) {
        done = true;
        continue;
      }
      int error = SSL_get_error(ssl, rc);
      if (error != SSL_ERROR_WANT_READ && error != SSL_ERROR_WANT_WRITE) {
        return absl::UnavailableError(
            absl::StrCat("handshake failed: ", DrainOpenSslErrors()));
      }
    }
  }
  if (!client_done || !server_done) {
    return absl::DeadlineExceededError("handshake did not finish");
  }
  const unsigned char* selected = nullptr;
  unsigned int selected_len = 0;
  SSL_get0_alpn_selected(server.get(), &selected, &selected_len);
  return std::string(reinterpret_cast<const char*>(selected), selected_len);
}

TEST(Tls13ContextTest, AlpnPolicyPicksTheProtocol) {
  absl::StatusOr<testing::TestCertificate> cert =
      testing::TestCertificate::Create();
  ASSERT_THAT(cert, IsOk());
  auto negotiate =
      [&](AlpnPolicy policy,
          std::vector<std::string> offer) -> absl::StatusOr<std::string> {
    absl::StatusOr<SslCtxPtr> ctx =
        NewTls13ServerContext(cert->cert_file(), cert->key_file(), policy);
    if (!ctx.ok()) return ctx.status();
    return NegotiateAlpn(ctx->get(), offer);
  };
  constexpr AlpnPolicy kH2OrHttp11 = AlpnPolicy::kH2OrHttp11;
  EXPECT_THAT(negotiate(kH2OrHttp11, {"http/1.1", "h2"}), IsOkAndHolds("h2"));
  EXPECT_THAT(negotiate(kH2OrHttp11, {"h2"}), IsOkAndHolds("h2"));
  EXPECT_THAT(negotiate(kH2OrHttp11, {"http/1.1"}), IsOkAndHolds("http/1.1"));
  // Neither offered, or no ALPN: the handshake succeeds without an answer
  // (and the front door speaks HTTP/1.1).
  EXPECT_THAT(negotiate(kH2OrHttp11, {"spdy/3", "h3"}), IsOkAndHolds(""));
  EXPECT_THAT(negotiate(kH2OrHttp11, {}), IsOkAndHolds(""));

  EXPECT_THAT(negotiate(AlpnPolicy::kRequireH2, {"http/1.1", "h2"}),
              IsOkAndHolds("h2"));
  EXPECT_THAT(negotiate(AlpnPolicy::kRequireH2, {"http/1.1"}),
              StatusIs(absl::StatusCode::kUnavailable));

  EXPECT_THAT(negotiate(AlpnPolicy::kHttp11, {"h2", "http/1.1"}),
              IsOkAndHolds("http/1.1"));
  EXPECT_THAT(negotiate(AlpnPolicy::kHttp11, {"h2"}), IsOkAndHolds(""));
}

}  // namespace
}  // namespace fleetd::server::rpc
