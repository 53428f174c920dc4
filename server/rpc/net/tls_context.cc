#include "server/rpc/net/tls_context.h"

#include <openssl/err.h>

#include <cstring>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace fleetd::server::rpc {
namespace {

// Picks `want` (length-prefixed ALPN wire form) from the client's list.
bool FindProtocol(const unsigned char* in, unsigned int inlen, const char* want,
                  const unsigned char** out, unsigned char* outlen) {
  size_t want_len = std::strlen(want);
  unsigned int i = 0;
  while (i < inlen) {
    unsigned int len = in[i];
    if (i + 1 + len > inlen) return false;
    if (len == want_len && std::memcmp(in + i + 1, want, len) == 0) {
      *out = in + i + 1;
      *outlen = static_cast<unsigned char>(len);
      return true;
    }
    i += 1 + len;
  }
  return false;
}

int SelectH2(SSL*, const unsigned char** out, unsigned char* outlen,
             const unsigned char* in, unsigned int inlen, void*) {
  return FindProtocol(in, inlen, "h2", out, outlen)
             ? SSL_TLSEXT_ERR_OK
             : SSL_TLSEXT_ERR_ALERT_FATAL;
}

int SelectHttp11(SSL*, const unsigned char** out, unsigned char* outlen,
                 const unsigned char* in, unsigned int inlen, void*) {
  return FindProtocol(in, inlen, "http/1.1", out, outlen)
             ? SSL_TLSEXT_ERR_OK
             : SSL_TLSEXT_ERR_NOACK;
}

int SelectH2OrHttp11(SSL*, const unsigned char** out, unsigned char* outlen,
                     const unsigned char* in, unsigned int inlen, void*) {
  return FindProtocol(in, inlen, "h2", out, outlen) ||
                 FindProtocol(in, inlen, "http/1.1", out, outlen)
             ? SSL_TLSEXT_ERR_OK
             : SSL_TLSEXT_ERR_NOACK;
}

SSL_CTX_alpn_select_cb_func AlpnCallback(AlpnPolicy alpn) {
  switch (alpn) {
    case AlpnPolicy::kRequireH2:
      return SelectH2;
    case AlpnPolicy::kHttp11:
      return SelectHttp11;
    case AlpnPolicy::kH2OrHttp11:
      return SelectH2OrHttp11;
  }
  return SelectHttp11;
}

}  // namespace

std::string DrainOpenSslErrors() {
  std::string out;
  unsigned long code;
  while ((code = ERR_get_error()) != 0) {
    char buf[256];
    ERR_error_string_n(code, buf, sizeof(buf));
    if (!out.empty()) out += "; ";
    out += buf;
  }
  return out;
}

absl::StatusOr<SslCtxPtr> NewTls13ServerContext(
    const std::string& cert_chain_file, const std::string& private_key_file,
    AlpnPolicy alpn) {
  ERR_clear_error();
  SslCtxPtr ctx(SSL_CTX_new(TLS_server_method()));
  if (ctx == nullptr) {
    return absl::InternalError(
        absl::StrCat("SSL_CTX_new: ", DrainOpenSslErrors()));
  }
  if (SSL_CTX_set_min_proto_version(ctx.get(), TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx.get(), TLS1_3_VERSION) != 1) {
    return absl::InternalError(absl::StrCat(
        "cannot restrict the TLS version to 1.3: ", DrainOpenSslErrors()));
  }
  if (SSL_CTX_use_certificate_chain_file(ctx.get(), cert_chain_file.c_str()) !=
      1) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot load TLS certificate chain ", cert_chain_file,
                     ": ", DrainOpenSslErrors()));
  }
  if (SSL_CTX_use_PrivateKey_file(ctx.get(), private_key_file.c_str(),
                                  SSL_FILETYPE_PEM) != 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot load TLS private key ", private_key_file, ": ",
                     DrainOpenSslErrors()));
  }
  if (SSL_CTX_check_private_key(ctx.get()) != 1) {
    return absl::InvalidArgumentError(absl::StrCat(
        "TLS private key ", private_key_file, " does not match certificate ",
        cert_chain_file, ": ", DrainOpenSslErrors()));
  }
  // Partial writes let the relay hand SSL_write whatever it has; the buffer
  // may move between retries because it is a growing std::string.
  SSL_CTX_set_mode(ctx.get(), SSL_MODE_ENABLE_PARTIAL_WRITE |
                                  SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
                                  SSL_MODE_RELEASE_BUFFERS);
  SSL_CTX_set_alpn_select_cb(ctx.get(), AlpnCallback(alpn), nullptr);
  // Resumption by TLS 1.3 stateless session tickets: the ticket carries the
  // session sealed with this context's key, so a device reconnecting (a new
  // cellular link, a restarted agent) skips the certificate and its
  // signature, and the server keeps nothing per device. No server-side
  // session cache: it would hold memory for every recent connection and
  // tickets need none. One ticket per handshake (OpenSSL sends two by
  // default); tickets are valid until the process restarts (the key is made
  // here).
  SSL_CTX_set_session_cache_mode(ctx.get(), SSL_SESS_CACHE_OFF);
  if (SSL_CTX_set_num_tickets(ctx.get(), 1) != 1) {
    return absl::InternalError(
        absl::StrCat("cannot set TLS session tickets: ", DrainOpenSslErrors()));
  }
  return ctx;
}

}  // namespace fleetd::server::rpc
