// TLS helpers for front-end tests: a throw-away self-signed certificate and a
// raw OpenSSL client handshake with chosen protocol versions.
#ifndef FLEETD_SERVER_RPC_TESTING_TEST_TLS_H_
#define FLEETD_SERVER_RPC_TESTING_TEST_TLS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "server/rpc/net/net.h"

namespace fleetd::server::testing {

// A self-signed EC P-256 certificate for "localhost" and 127.0.0.1, written as
// PEM files into a fresh temporary directory that is removed on destruction.
class TestCertificate {
 public:
  static absl::StatusOr<TestCertificate> Create();

  TestCertificate(TestCertificate&& other) noexcept;
  TestCertificate& operator=(TestCertificate&&) = delete;
  TestCertificate(const TestCertificate&) = delete;
  TestCertificate& operator=(const TestCertificate&) = delete;
  ~TestCertificate();

  const std::string& cert_file() const { return cert_file_; }
  const std::string& key_file() const { return key_file_; }
  const std::string& cert_pem() const { return cert_pem_; }

 private:
  TestCertificate() = default;
  std::string dir_, cert_file_, key_file_, cert_pem_;
};

// A blocking TCP connection to 127.0.0.1:`port`, invalid when the connect
// fails. With a positive `timeout`, reads and writes on it time out after
// that long (SO_RCVTIMEO, SO_SNDTIMEO).
rpc::UniqueFd ConnectLoopback(int port,
                              absl::Duration timeout = absl::ZeroDuration());

struct HandshakeResult {
  std::string version;  // e.g. "TLSv1.3"
  std::string alpn;     // selected protocol, empty if none
};

// Connects to 127.0.0.1:`port` and runs a TLS client handshake limited to
// [min_version, max_version] (e.g. TLS1_2_VERSION), offering `alpn`. The server
// certificate is not verified. Returns the negotiated parameters, or
// Unavailable carrying OpenSSL's reason when the handshake fails.
absl::StatusOr<HandshakeResult> TryTlsHandshake(
    int port, int min_version, int max_version,
    const std::vector<std::string>& alpn,
    absl::Duration timeout = absl::Seconds(10));

}  // namespace fleetd::server::testing

#endif  // FLEETD_SERVER_RPC_TESTING_TEST_TLS_H_
