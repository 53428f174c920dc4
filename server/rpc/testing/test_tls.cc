#include "server/rpc/testing/test_tls.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "server/rpc/net/net.h"
#include "server/rpc/net/tls_context.h"

namespace fleetd::server::testing {
namespace {

struct PkeyFree {
  void operator()(EVP_PKEY* p) const { EVP_PKEY_free(p); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct ExtFree {
  void operator()(X509_EXTENSION* e) const { X509_EXTENSION_free(e); }
};

absl::Status AddExtension(X509* cert, int nid, const char* value) {
  X509V3_CTX ctx;
  X509V3_set_ctx_nodb(&ctx);
  X509V3_set_ctx(&ctx, cert, cert, nullptr, nullptr, 0);
  std::unique_ptr<X509_EXTENSION, ExtFree> ext(
      X509V3_EXT_conf_nid(nullptr, &ctx, nid, value));
  if (ext == nullptr || X509_add_ext(cert, ext.get(), -1) != 1) {
    return absl::InternalError(
        absl::StrCat("extension ", value, ": ", rpc::DrainOpenSslErrors()));
  }
  return absl::OkStatus();
}

absl::Status WritePem(const std::string& path, const std::string& pem) {
  std::FILE* f = std::fopen(path.c_str(), "w");
  if (f == nullptr) {
    return absl::InternalError(
        absl::StrCat("open ", path, ": ", std::strerror(errno)));
  }
  size_t n = std::fwrite(pem.data(), 1, pem.size(), f);
  std::fclose(f);
  if (n != pem.size()) return absl::InternalError("short write " + path);
  return absl::OkStatus();
}

template <typename Fn>
std::string ToPem(Fn write) {
  BIO* bio = BIO_new(BIO_s_mem());
  write(bio);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  std::string out(data, static_cast<size_t>(len));
  BIO_free(bio);
  return out;
}

}  // namespace

absl::StatusOr<TestCertificate> TestCertificate::Create() {
  std::unique_ptr<EVP_PKEY, PkeyFree> key(EVP_EC_gen("P-256"));
  if (key == nullptr) {
    return absl::InternalError(
        absl::StrCat("EC key: ", rpc::DrainOpenSslErrors()));
  }
  std::unique_ptr<X509, X509Free> cert(X509_new());
  X509_set_version(cert.get(), 2);
  ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), 1);
  X509_gmtime_adj(X509_getm_notBefore(cert.get()), -3600);
  X509_gmtime_adj(X509_getm_notAfter(cert.get()), 86400);
  X509_set_pubkey(cert.get(), key.get());
  X509_NAME* name = X509_get_subject_name(cert.get());
  X509_NAME_add_entry_by_txt(
      name, "CN", MBSTRING_ASC,
      reinterpret_cast<const unsigned char*>("localhost"), -1, -1, 0);
  X509_set_issuer_name(cert.get(), name);
  absl::Status status =
      AddExtension(cert.get(), NID_basic_constraints, "critical,CA:TRUE");
  if (status.ok()) {
    status = AddExtension(cert.get(), NID_subject_alt_name,
                          "DNS:localhost,IP:127.0.0.1");
  }
  if (!status.ok()) return status;
  if (X509_sign(cert.get(), key.get(), EVP_sha256()) == 0) {
    return absl::InternalError(
        absl::StrCat("sign: ", rpc::DrainOpenSslErrors()));
  }

  TestCertificate out;
  std::string pattern =
      (std::filesystem::temp_directory_path() / "fleetd-rpc-tls-XXXXXX")
          .string();
  if (::mkdtemp(pattern.data()) == nullptr) {
    return absl::InternalError(absl::StrCat("mkdtemp: ", std::strerror(errno)));
  }
  out.dir_ = pattern;
  out.cert_file_ = out.dir_ + "/cert.pem";
  out.key_file_ = out.dir_ + "/key.pem";
  out.cert_pem_ = ToPem([&](BIO* bio) { PEM_write_bio_X509(bio, cert.get()); });
  std::string key_pem = ToPem([&](BIO* bio) {
    PEM_write_bio_PrivateKey(bio, key.get(), nullptr, nullptr, 0, nullptr,
                             nullptr);
  });
  status = WritePem(out.cert_file_, out.cert_pem_);
  if (status.ok()) status = WritePem(out.key_file_, key_pem);
  if (!status.ok()) return status;
  return out;
}

TestCertificate::TestCertificate(TestCertificate&& other) noexcept
    : dir_(std::move(other.dir_)),
      cert_file_(std::move(other.cert_file_)),
      key_file_(std::move(other.key_file_)),
      cert_pem_(std::move(other.cert_pem_)) {
  other.dir_.clear();
}

TestCertificate::~TestCertificate() {
  if (!dir_.empty()) {
    std::error_code ignored;
    std::filesystem::remove_all(dir_, ignored);
  }
}

rpc::UniqueFd ConnectLoopback(int port, absl::Duration timeout) {
  rpc::UniqueFd fd(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (timeout > absl::ZeroDuration()) {
    timeval tv = absl::ToTimeval(timeout);
    ::setsockopt(fd.get(), SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    ::setsockopt(fd.get(), SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  }
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd.get(), reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) !=
      0) {
    return rpc::UniqueFd();
  }
  return fd;
}

absl::StatusOr<HandshakeResult> TryTlsHandshake(
    int port, int min_version, int max_version,
    const std::vector<std::string>& alpn, absl::Duration timeout) {
  // The server may hang up mid-handshake; that must fail the handshake, not
  // kill the test with SIGPIPE.
  rpc::ScopedSigpipeBlock no_sigpipe;
  rpc::UniqueFd fd = ConnectLoopback(port, timeout);
  if (!fd.valid()) {
    return absl::UnavailableError(
        absl::StrCat("connect: ", std::strerror(errno)));
  }
  rpc::SslCtxPtr ctx(SSL_CTX_new(TLS_client_method()));
  SSL_CTX_set_min_proto_version(ctx.get(), min_version);
  SSL_CTX_set_max_proto_version(ctx.get(), max_version);
  if (!alpn.empty()) {
    std::string wire;
    for (const std::string& p : alpn) {
      wire.push_back(static_cast<char>(p.size()));
      wire += p;
    }
    SSL_CTX_set_alpn_protos(ctx.get(),
                            reinterpret_cast<const unsigned char*>(wire.data()),
                            static_cast<unsigned int>(wire.size()));
  }
  rpc::SslPtr ssl(SSL_new(ctx.get()));
  SSL_set_fd(ssl.get(), fd.get());
  SSL_set_tlsext_host_name(ssl.get(), "localhost");
  if (SSL_connect(ssl.get()) != 1) {
    return absl::UnavailableError(
        absl::StrCat("TLS handshake failed: ", rpc::DrainOpenSslErrors()));
  }
  HandshakeResult result;
  result.version = SSL_get_version(ssl.get());
  const unsigned char* selected = nullptr;
  unsigned int selected_len = 0;
  SSL_get0_alpn_selected(ssl.get(), &selected, &selected_len);
  if (selected != nullptr) {
    result.alpn.assign(reinterpret_cast<const char*>(selected), selected_len);
  }
  SSL_shutdown(ssl.get());
  return result;
}

}  // namespace fleetd::server::testing
