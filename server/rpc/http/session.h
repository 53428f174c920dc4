// The HTTP/1.1 and HTTP/2 protocol engines of the front door, without I/O.
//
// A ConnectionSession turns the bytes a connection reads into Exchanges
// (exchange.h) and the Exchanges' responses into bytes to write. It does no
// I/O and owns no thread: the connection driver (server.h) feeds it what it
// reads, writes what it takes, and runs every call on the connection's strand.
// That keeps the protocol engines testable with plain strings and lets one
// driver serve TLS and plaintext, HTTP/1.1 and HTTP/2 alike.
#ifndef FLEETD_SERVER_RPC_HTTP_SESSION_H_
#define FLEETD_SERVER_RPC_HTTP_SESSION_H_

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/functional/any_invocable.h"
#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "server/rpc/http/exchange.h"

namespace fleetd::server::rpc::http {

// Queues work onto a connection's strand. Exchanges keep it (they may outlive
// their connection, e.g. in a worker thread): once Close() has been called,
// Post drops the work (destroys it unrun). Safe for concurrent use.
class StrandPoster {
 public:
  virtual ~StrandPoster() = default;
  // Runs `fn` on the strand later, never inline.
  virtual void Post(absl::AnyInvocable<void() &&> fn) = 0;
};

struct SessionLimits {
  // Bytes of one request's header block (names, values and, for HTTP/1.1,
  // the request line). Beyond it: HTTP/1.1 431 and close; HTTP/2 the stream
  // is refused (RST_STREAM) or, when HPACK state is at stake, the connection
  // ends with GOAWAY.
  size_t max_header_bytes = 16 << 10;
  // HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS the server advertises; streams
  // beyond it are refused (REFUSED_STREAM, which clients retry).
  uint32_t max_concurrent_streams = 100;
  // Response bytes queued in the session and not yet taken by the driver,
  // per connection, above which HTTP/2 stops reading from the peer (the
  // driver checks WantsRead): a client that reads nothing cannot make the
  // server buffer without bound.
  size_t max_pending_output_bytes = 4 << 20;
};

struct SessionOptions {
  ExchangeHandler handler;
  // The connection's strand, for the Exchanges' response methods.
  std::shared_ptr<StrandPoster> poster;
  // Called on the strand when output appeared outside Feed (a response sent
  // from another thread, via the poster): the driver calls TakeOutput soon.
  std::function<void()> output_ready;
  std::string peer;  // "ip:port"
  bool secure = false;
  SessionLimits limits;
};

// Not thread-safe: every method runs on the connection's strand.
class ConnectionSession {
 public:
  virtual ~ConnectionSession() = default;

  // Processes bytes read from the peer: parses them and calls the handler
  // and observers. An error (protocol violation, a limit) means the
  // connection must end: the session has queued what the peer should be
  // told (HTTP/1.1 400/431 with Connection: close, HTTP/2 GOAWAY) and
  // WantsClose() is true; the driver writes the output, then closes.
  virtual absl::Status Feed(absl::string_view bytes) = 0;
  // Appends every byte ready to send to `*out`.
  virtual void TakeOutput(std::string* out) = 0;
  // False while the peer should not be read from (pending output over the
  // limit; HTTP/1.1 while a response is still being produced, since requests
  // are handled one at a time).
  virtual bool WantsRead() const = 0;
  // True when the connection should close once the output taken so far is
  // written: Connection: close, GOAWAY sent with no stream left, an error.
  virtual bool WantsClose() const = 0;
  // True when no exchange is open (for the driver's idle timeout).
  virtual bool Idle() const = 0;
  // Asks the peer for a sign of life: HTTP/2 PING (its ACK is bytes read, which
  // is all the driver watches). False when the protocol has none (HTTP/1.1:
  // the driver relies on TCP keepalive there) or the session is ending.
  virtual bool Ping() { return false; }
  // Memory an idle session keeps only for its next frames (HTTP/2: the
  // outbound frame buffer's pages, once frames went through them). True only
  // while ReleaseIdleMemory would give something back: nothing open or
  // queued. The driver releases it once the connection has been idle for a
  // moment, not after every exchange: a busy connection would pay for
  // dropping and faulting the pages in each time. Default: none.
  virtual bool HoldsIdleMemory() const { return false; }
  virtual void ReleaseIdleMemory() {}
  // Graceful shutdown: HTTP/2 GOAWAY (open streams finish); HTTP/1.1 closes
  // after the response in progress, or at once when there is none.
  virtual void Shutdown() = 0;
  // The connection is gone (EOF, error, timeout): every open exchange gets
  // OnCancel. Called once, last; the driver closes the poster before.
  virtual void Abort() = 0;
};

// HTTP/2 (RFC 9113) with nghttp2: the client connection preface is expected
// first (h2 over TLS via ALPN, or h2c with prior knowledge).
std::unique_ptr<ConnectionSession> NewHttp2Session(SessionOptions options);

// HTTP/1.1 (RFC 9112) with Boost.Beast's parser: keep-alive; requests are
// handled one at a time (a pipelined request waits until the previous
// response ended).
std::unique_ptr<ConnectionSession> NewHttp1Session(SessionOptions options);

// The HTTP/2 client connection preface, "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n":
// a plaintext connection starting with it is h2c with prior knowledge.
inline constexpr absl::string_view kHttp2Preface =
    "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

}  // namespace fleetd::server::rpc::http

#endif  // FLEETD_SERVER_RPC_HTTP_SESSION_H_
