// A small HTTP/1.1 client for talking to backends (VictoriaMetrics, Loki,
// ClickHouse) and for tests.
//
// `HttpClient` is the seam: writers take an `HttpClient*` so that unit tests
// can hand them a fake, and production code creates the libcurl implementation
// with NewCurlHttpClient().
//
// Contract of Send():
//   - Any HTTP response, whatever its status code (2xx, 4xx, 5xx), is a
//   successful
//     transport exchange: Send() returns OK with the status code, headers and
//     body. The caller decides what a 429 or a 503 means for it.
//   - Transport failures are statuses picked by what the caller should do:
//       DeadlineExceeded  the request did not complete within
//       HttpRequest::timeout; Unavailable       connection
//       refused/reset/closed, DNS or TLS failure, or any
//                         other failure to exchange a request and response;
//       ResourceExhausted the response body exceeded the client's size limit;
//       InvalidArgument   the request itself is malformed (bad URL or scheme,
//       bad method,
//                         a header name or value that would break the framing).
//   Unavailable and DeadlineExceeded are retryable (common/status/retryable.h);
//   a retry after DeadlineExceeded may duplicate a request the server did
//   process.
#ifndef FLEETD_COMMON_HTTP_HTTP_CLIENT_H_
#define FLEETD_COMMON_HTTP_HTTP_CLIENT_H_

#include <cstddef>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace fleetd {

// Header fields in the order they are sent or were received. Names are compared
// case-insensitively by the lookup helpers; duplicates are kept.
using HttpHeaders = std::vector<std::pair<std::string, std::string>>;

struct HttpRequest {
  // Any token: "GET", "POST", "PUT", "DELETE", "HEAD", ...
  std::string method = "GET";
  // Absolute http:// or https:// URL, already percent-encoded where needed.
  std::string url;
  // Sent exactly as given. The client adds no Content-Type of its own (set one
  // when sending a body) and never sends `Expect: 100-continue` unless asked
  // to. An empty value sends the header with an empty value.
  HttpHeaders headers;
  // Request body, sent with a Content-Length. Ignored for HEAD.
  std::string body;
  // Bound on the whole exchange: connect, send, wait and receive. Must be
  // positive; absl::InfiniteDuration() means no bound.
  absl::Duration timeout = absl::Seconds(30);
};

struct HttpResponse {
  int status_code = 0;
  // Headers of the final response (those of any interim 1xx response are
  // dropped).
  HttpHeaders headers;
  // The body as received; Content-Encoding is not undone.
  std::string body;

  // Value of the first header named `name` (case-insensitive), or nullopt.
  std::optional<std::string> Header(absl::string_view name) const;
};

// Sends HTTP requests. Implementations document their own thread-safety.
class HttpClient {
 public:
  virtual ~HttpClient() = default;

  // Sends `request` and waits for the complete response. See the file comment
  // for the mapping of failures to status codes.
  virtual absl::StatusOr<HttpResponse> Send(const HttpRequest& request) = 0;
};

struct CurlHttpClientOptions {
  // Bound on establishing a TCP (and TLS) connection; the request timeout still
  // applies when it is shorter.
  absl::Duration connect_timeout = absl::Seconds(10);
  // Responses with larger bodies fail with ResourceExhausted instead of growing
  // memory without bound.
  size_t max_response_body_bytes = 64 << 20;
  // Sent as User-Agent unless the request has its own.
  std::string user_agent = "fleetd-http-client";
  // Verify the server certificate and host name for https:// (leave on outside
  // tests).
  bool verify_tls = true;
  // PEM bundle of trusted CAs for https://; empty means the system default.
  std::string ca_file;
};

// An HttpClient on libcurl. It keeps one libcurl easy handle, so connections to
// a server are kept alive and reused by later requests (HTTP keep-alive); a
// connection the server closed is replaced transparently on the next request.
//
// Thread-safety: safe for concurrent use, but one client performs one request
// at a time (Send() holds a mutex for the whole exchange). Threads that need
// requests in parallel should each own a client, or share a pool of clients.
//
// Fails with InvalidArgument for invalid options, Internal if libcurl cannot be
// set up.
absl::StatusOr<std::unique_ptr<HttpClient>> NewCurlHttpClient(
    const CurlHttpClientOptions& options = {});

}  // namespace fleetd

#endif  // FLEETD_COMMON_HTTP_HTTP_CLIENT_H_
