// The HTTP/1.1 server under the Connect front end: cpp-httplib's request
// parsing, routing and thread pool, with the connection loop replaced.
//
// httplib's own loop cannot close a connection whose request body the handler
// chose not to read (it would parse the rest of that body as the next
// request), cannot enforce a TLS version through its SSLServer without giving
// up that control, and decompresses request bodies itself without a bound.
// This loop instead
//   - serves plaintext or TLS 1.3 (our own OpenSSL context, ALPN http/1.1),
//   - closes the connection after a response when the handler asks
//     (RequestInfo::close_after_response), e.g. when it refused an oversized
//     body without reading it,
//   - takes Content-Encoding and Accept-Encoding out of the request before
//     httplib sees them (so httplib neither inflates the body nor compresses
//     the response) and hands them to the handler in RequestInfo,
//   - bounds idle keep-alive time and wakes idle connections on Stop().
#ifndef FLEETD_SERVER_RPC_CONNECT_HTTP_SERVER_H_
#define FLEETD_SERVER_RPC_CONNECT_HTTP_SERVER_H_

#include <httplib.h>

#include <map>
#include <optional>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "common/metrics/metrics.h"
#include "server/rpc/net/net.h"
#include "server/rpc/net/tls_context.h"

namespace fleetd::server::rpc::connect {

class HttpServer : public httplib::Server {
 public:
  struct Options {
    SslCtxPtr tls;  // null: plaintext
    int threads = 16;
    absl::Duration read_timeout = absl::Seconds(10);
    absl::Duration write_timeout = absl::Seconds(10);
    absl::Duration idle_timeout = absl::Seconds(5);
    absl::Duration handshake_timeout = absl::Seconds(10);
    int max_requests_per_connection = 1000;
    metrics::Registry* metrics = nullptr;  // may be null
  };

  // What the connection loop knows about the request being handled; valid
  // for the duration of a handler call, on the thread running it.
  struct RequestInfo {
    // The request's Content-Encoding / Accept-Encoding (values of repeated
    // headers joined with ","), nullopt when absent.
    std::optional<std::string> content_encoding;
    std::optional<std::string> accept_encoding;
    std::string peer;  // "ip:port"
    // Set by the handler: close the connection after this response.
    bool close_after_response = false;
  };
  // The current request's info; null outside a handler.
  static RequestInfo* Current();

  explicit HttpServer(Options options);
  ~HttpServer() override;

  // Binds the listening socket. Unavailable when the address cannot be bound.
  absl::StatusOr<int> Bind(const HostPort& address);
  // Serves until Stop(); run it on its own thread after Bind.
  void Run();
  // Blocks until Run() is accepting connections.
  void WaitUntilRunning() { running_.WaitForNotification(); }
  // Stops accepting, closes idle connections at once and lets busy ones
  // finish their current request. Run() returns once every worker is done.
  void Stop();

 private:
  class Connection;

  bool process_and_close_socket(socket_t sock) override;
  // Registers the connection as idle (waiting for a request or handshake,
  // which Stop() may cut short) or busy. False once stopping.
  bool SetIdle(int sock, bool idle);
  void Forget(int sock);

  Options options_;
  absl::Notification running_;
  metrics::Counter* handshake_failed_ = nullptr;
  metrics::Counter* connections_ = nullptr;

  absl::Mutex mu_;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::map<int, bool> sockets_ ABSL_GUARDED_BY(mu_);  // socket -> idle
};

}  // namespace fleetd::server::rpc::connect

#endif  // FLEETD_SERVER_RPC_CONNECT_HTTP_SERVER_H_
