// The OpenSSL server context both front ends terminate TLS with: TLS 1.3 only.
//
// grpc++ 1.51 cannot set a minimum TLS version (its SslServerCredentials accept
// TLS 1.2), so the front ends do the handshake themselves with a context from
// here, whose minimum and maximum protocol version are both TLS 1.3: a client
// that offers only TLS 1.2 or older fails the handshake with a
// protocol_version alert before any HTTP byte is exchanged.
#ifndef FLEETD_SERVER_RPC_NET_TLS_CONTEXT_H_
#define FLEETD_SERVER_RPC_NET_TLS_CONTEXT_H_

#include <openssl/ssl.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace fleetd::server::rpc {

struct SslCtxFree {
  void operator()(SSL_CTX* ctx) const { SSL_CTX_free(ctx); }
};
using SslCtxPtr = std::unique_ptr<SSL_CTX, SslCtxFree>;

struct SslFree {
  void operator()(SSL* ssl) const { SSL_free(ssl); }
};
using SslPtr = std::unique_ptr<SSL, SslFree>;

// Which application protocol (ALPN) the server agrees to.
enum class AlpnPolicy {
  // HTTP/2 for gRPC: the client must offer "h2", else the handshake fails
  // (no_application_protocol alert). gRPC clients always offer it.
  kRequireH2,
  // HTTP/1.1: "http/1.1" is selected when offered; clients that offer no ALPN
  // (curl without it, OpenSSL s_client) are accepted; a client offering only
  // other protocols (e.g. only "h2") gets no ALPN answer and falls back or
  // fails on its side.
  kHttp11,
  // The front door (server/rpc/http/server.h): "h2" when the client offers
  // it, else "http/1.1" when offered. A client offering neither, or no ALPN
  // at all, gets no ALPN answer and the handshake goes on: the server then
  // speaks HTTP/1.1 (RFC 7301 lets the server pick only from the client's
  // list, so http/1.1 cannot be named to such a client).
  kH2OrHttp11,
};

// A server context speaking TLS 1.3 only, with the certificate chain and
// private key from PEM files. InvalidArgument (with OpenSSL's reason) when a
// file cannot be read or the key does not match the certificate. The context
// is safe to share between threads once created.
absl::StatusOr<SslCtxPtr> NewTls13ServerContext(
    const std::string& cert_chain_file, const std::string& private_key_file,
    AlpnPolicy alpn);

// Empties this thread's OpenSSL error queue and returns its entries joined by
// "; " (empty when there were none).
std::string DrainOpenSslErrors();

}  // namespace fleetd::server::rpc

#endif  // FLEETD_SERVER_RPC_NET_TLS_CONTEXT_H_
