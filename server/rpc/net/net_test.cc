#include "server/rpc/net/net.h"

#include "common/testing/status_matchers.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/rpc/net/tls_context.h"
#include "server/rpc/testing/test_tls.h"

namespace fleetd::server::rpc {
namespace {

using ::fleetd::testing::IsOk;
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

}  // namespace
}  // namespace fleetd::server::rpc
