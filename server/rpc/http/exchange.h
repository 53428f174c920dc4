// One HTTP request and its response, independent of the HTTP version: what
// the front door's protocol handlers (gRPC, gRPC-Web, Connect) see.
//
// Threading. A connection runs on one strand (one thread at a time). The
// server calls the ExchangeHandler and every RequestObserver method on that
// strand; they must not block (hand blocking work to a worker pool). The
// response methods of Exchange may be called from any thread: they are
// queued to the connection's strand and take effect in call order. After the
// connection is gone they do nothing.
#ifndef FLEETD_SERVER_RPC_HTTP_EXCHANGE_H_
#define FLEETD_SERVER_RPC_HTTP_EXCHANGE_H_

#include <cstddef>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/string_view.h"

namespace fleetd::server::rpc::http {

// A header field. Request names arrive lower-cased (HTTP/2 requires it; the
// HTTP/1.1 session lower-cases them). Response names must be lower-case.
struct Header {
  std::string name;
  std::string value;
};
using Headers = std::vector<Header>;

// The first value of `name` (lower-case) in `headers`, if any.
std::optional<absl::string_view> FindHeader(const Headers& headers,
                                            absl::string_view name);

enum class HttpVersion { kHttp11, kHttp2 };

class Exchange {
 public:
  virtual ~Exchange() = default;

  // ---- The request (immutable; readable from any thread) ----
  // "GET", "POST", ...
  virtual const std::string& method() const = 0;
  // The request target: path and query, e.g.
  // "/fleetd.v1.SyncService/SyncMetrics".
  virtual const std::string& path() const = 0;
  // HTTP/2 pseudo-headers (":authority" etc.) are not included; the
  // authority is in authority() (":authority" or the Host header).
  virtual const Headers& headers() const = 0;
  virtual const std::string& authority() const = 0;
  virtual HttpVersion version() const = 0;
  // The client's address, "ip:port".
  virtual const std::string& peer() const = 0;
  // Whether the connection is TLS.
  virtual bool secure() const = 0;

  // ---- The response (any thread; see the file comment) ----
  // Sends the status line and headers. With `end_stream` the response has no
  // body. A response without content-length on HTTP/1.1 is sent chunked.
  // REQUIRES: called once, first.
  virtual void SendHeaders(int status, Headers headers, bool end_stream) = 0;
  // Sends body bytes (empty is allowed, to end the stream). REQUIRES: after
  // SendHeaders without end_stream, and not after the end.
  virtual void SendData(std::string data, bool end_stream) = 0;
  // Ends the response with trailers: HTTP/2 trailers; on HTTP/1.1 the
  // trailer section of a chunked body (dropped when the response has a
  // content-length). REQUIRES: after SendHeaders without end_stream.
  virtual void SendTrailers(Headers trailers) = 0;
  // A whole response in one step: the same as SendHeaders(status, headers,
  // false), SendData(body, trailers.empty()) and, with trailers,
  // SendTrailers(trailers). The default makes exactly those calls; an engine
  // overrides it to queue the response to its connection once, not three
  // times. REQUIRES: nothing sent yet.
  virtual void SendResponse(int status, Headers headers, std::string body,
                            Headers trailers) {
    const bool trailed = !trailers.empty();
    SendHeaders(status, std::move(headers), false);
    SendData(std::move(body), !trailed);
    if (trailed) SendTrailers(std::move(trailers));
  }
  // Abandons the exchange: HTTP/2 RST_STREAM (CANCEL, or INTERNAL_ERROR when
  // `internal_error`); on HTTP/1.1 the connection is closed (the response
  // cannot be ended otherwise). Later calls do nothing.
  virtual void Reset(bool internal_error) = 0;

  // ---- Request flow control (any thread) ----
  // Acknowledges `bytes` of request body as consumed, for an exchange whose
  // observer ControlsRequestWindow(): on HTTP/2 the stream's receive window
  // opens by that much (WINDOW_UPDATE), so the client may send more. Ignored
  // otherwise, on HTTP/1.1 and after the exchange ended.
  virtual void ConsumeRequest(size_t bytes) {}
};

// The request part of an exchange, as an engine parsed it.
struct RequestHead {
  std::string method;
  std::string path;
  std::string authority;
  Headers headers;
  HttpVersion version = HttpVersion::kHttp11;
  std::string peer;
  bool secure = false;
};

// The engines' exchanges derive from this: it answers the request accessors
// from a RequestHead; the engine implements the response methods.
class HeadExchange : public Exchange {
 public:
  explicit HeadExchange(RequestHead head) : head_(std::move(head)) {}

  const std::string& method() const final { return head_.method; }
  const std::string& path() const final { return head_.path; }
  const Headers& headers() const final { return head_.headers; }
  const std::string& authority() const final { return head_.authority; }
  HttpVersion version() const final { return head_.version; }
  const std::string& peer() const final { return head_.peer; }
  bool secure() const final { return head_.secure; }

 private:
  const RequestHead head_;
};

// Receives the request body of one exchange, on the connection's strand.
class RequestObserver {
 public:
  virtual ~RequestObserver() = default;
  // A piece of the request body, in order.
  virtual void OnData(absl::string_view chunk) = 0;
  // The client ended the request (half-close). Not called after OnCancel.
  virtual void OnEnd() = 0;
  // The exchange ended before the response did: stream reset by the client,
  // connection lost or closed by the server (shutdown, limits). Called at most
  // once, and never after the response ended. The Exchange stays valid (its
  // response methods then do nothing).
  virtual void OnCancel() = 0;
  // Asked once, right after the ExchangeHandler returned this observer. When
  // true, HTTP/2 opens the stream's receive window only as the handler calls
  // Exchange::ConsumeRequest: a client then has at most the stream window
  // (1 MiB) of body in flight beyond what the handler consumed, which is how a
  // long-lived stream's reader slows a fast writer. The connection's window is
  // opened as bytes arrive either way, so one slow stream never stalls the
  // others. HTTP/1.1 reads a body as it comes regardless.
  virtual bool ControlsRequestWindow() const { return false; }
};

// An observer for a body nobody needs (the response is decided already).
std::unique_ptr<RequestObserver> IgnoreBody();

// Called on the connection's strand once a request's headers are complete.
// Returns the observer for its body (never null). The handler keeps the
// Exchange as long as it needs to respond.
using ExchangeHandler = std::function<std::unique_ptr<RequestObserver>(
    std::shared_ptr<Exchange> exchange)>;

}  // namespace fleetd::server::rpc::http

#endif  // FLEETD_SERVER_RPC_HTTP_EXCHANGE_H_
